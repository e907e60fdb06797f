"""HGRN2 (Qin et al. 2024, arXiv 2404.07904) as an inter-scale mixer, parameterised as fla's `HGRN2Attention` layer.

A gated linear RNN with outer-product state expansion: forget gate f_t = sigmoid(f_proj(x)) per state dim, the key is
tied to it (k_t = 1 - f_t), q_t = swish(q_proj(x)), v_t = i_proj(x); S_t = Diag(f_t) S_{t-1} + k_t v_t^T,
o_t = S_t^T q_t / sqrt(K); RMSNorm over the whole width, then o_proj. It is GLA with tied keys, so it runs on the
same op: fla `chunk_gla` (backend "fla"), oracle `varbench.ops.linear_rnn.gla_chunk_ref`. fla's per-layer lower bound
on the forget gate (passed in by its model, not the layer) is not used.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C width, H heads, K state (forget) dim
per head, V value dim per head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from varbench.mixers.linear_rnn import LinearRNNMixer, divide
from varbench.modules import RMSNorm
from varbench.ops.linear_rnn import gla
from varbench.utils.precision import upcast


class HGRN2Mixer(LinearRNNMixer):
    r"""HGRN2 over the flattened scales.

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention head count; used only when both `heads` and
            `expand_ratio` are `None`.
        layer_idx (int, Optional): block index. Default: 0.
        backend (str, Optional): `auto`, `fla` or `reference`. Default: `auto`.
        expand_ratio (int, Optional): state dim per head K; heads = max(1, dim // expand_ratio) (fla has no max:
            it breaks below dim 128). Default: 128 (fla's default).
        heads (int, Optional): heads, used when `expand_ratio` is `None` (then K = dim / heads). Default: `None`.
        use_short_conv (bool, Optional): short causal convs (no activation) on q, f, i. Default: `False`.
        conv_size (int, Optional): short-conv width. Default: 4.
        conv_bias (bool, Optional): short-conv bias. Default: `False`.
        elementwise_affine (bool, Optional): learnable output-norm weight. Default: `True`.
        norm_eps (float, Optional): output-norm epsilon. Default: 1e-5.
    """

    proj_names = ("q", "f", "i")

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        layer_idx: int = 0,
        backend: str = "auto",
        expand_ratio: int | None = 128,
        heads: int | None = None,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if expand_ratio is not None:
            heads = max(1, dim // expand_ratio)
        else:
            heads = heads or num_heads
            if not heads:
                raise ValueError("HGRN2: set expand_ratio or heads")
            expand_ratio = divide(dim, heads, "HGRN2 state dim (dim / heads)")
        forget_dim = heads * expand_ratio
        self._setup(dim, heads, expand_ratio, divide(dim, heads, "HGRN2 value dim"), backend, layer_idx)

        self.q_proj = nn.Linear(dim, forget_dim, bias=False)
        self.f_proj = nn.Linear(dim, forget_dim, bias=False)
        self.i_proj = nn.Linear(dim, dim, bias=False)
        self._add_short_convs(use_short_conv, conv_size, conv_bias, {"q": forget_dim, "f": forget_dim, "i": dim},
                              dict.fromkeys("qfi"))
        self.g_norm = RMSNorm(dim, elementwise_affine, norm_eps)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _recurrence(self, x_BlC, h, S0, offset, output_final_state, terms):
        B, l, _ = x_BlC.shape
        q_BlHK = F.silu(h["q"]).view(B, l, self.heads, self.head_k_dim)
        # log forget gate in fp32: it is summed over a chunk of tokens before exp
        g_BlHK = F.logsigmoid(upcast(h["f"])).view(B, l, self.heads, self.head_k_dim)
        k_BlHK = (1 - g_BlHK.exp()).to(h["i"].dtype)
        v_BlHV = h["i"].view(B, l, self.heads, self.head_v_dim)
        return gla(q_BlHK, k_BlHK, v_BlHV, g=g_BlHK, initial_state=S0, output_final_state=output_final_state,
                   backend=self.run_backend(x_BlC))

    def _readout(self, o_BlHV, x_BlC):
        return self.o_proj(self.g_norm(o_BlHV.flatten(2)))
