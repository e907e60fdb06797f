"""Gated Linear Attention (Yang et al. 2023, arXiv 2312.06635) as an inter-scale mixer, parameterised as fla's
`GatedLinearAttention` layer.

S_t = Diag(alpha_t) S_{t-1} + k_t v_t^T with a data-dependent decay per key dim, alpha_t = exp(logsigmoid(W2 W1 x_t
+ b) / gate_logit_normalizer) from a low-rank projection; o_t = S_t^T q_t / sqrt(K); output RMSNorm per head times
swish(g_proj(x)), then o_proj. Kernel: fla `chunk_gla` (backend "fla"); oracle: `varbench.ops.linear_rnn.gla_chunk_ref`.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C width, H heads, K key dim per head,
V value dim per head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from varbench.mixers.linear_rnn import LinearRNNMixer, divide, expand, pick_heads
from varbench.modules import FusedRMSNormGated, RMSNorm
from varbench.ops.linear_rnn import gla
from varbench.utils.precision import upcast


class GLAMixer(LinearRNNMixer):
    r"""Gated linear attention over the flattened scales.

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention head count; used only when `heads` is `None`.
        layer_idx (int, Optional): block index. Default: 0.
        backend (str, Optional): `auto`, `fla` or `reference`. Default: `auto`.
        heads (int, Optional): GLA heads. Default: 4 (fla's default, whatever the width).
        expand_k (float, Optional): key dim = dim * expand_k. Default: 0.5.
        expand_v (float, Optional): value dim = dim * expand_v. Default: 1.0.
        gate_low_rank_dim (int, Optional): rank of the decay projection `gk_proj`. Default: 16.
        gate_logit_normalizer (int, Optional): divides logsigmoid of the decay logits. Default: 16.
        clamp_min (float, Optional): lower bound of the log-decay. Default: `None`.
        use_output_gate (bool, Optional): swish output gate `g_proj`. Default: `True`.
        use_short_conv (bool, Optional): short causal convs on q, k, v. Default: `False`.
        conv_size (int, Optional): short-conv width. Default: 4.
        conv_bias (bool, Optional): short-conv bias. Default: `False`.
        elementwise_affine (bool, Optional): learnable output-norm weight. Default: `True`.
        norm_eps (float, Optional): output-norm epsilon. Default: 1e-5.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        layer_idx: int = 0,
        backend: str = "auto",
        heads: int | None = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: int = 16,
        clamp_min: float | None = None,
        use_output_gate: bool = True,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        heads = pick_heads(heads, num_heads, "GLA")
        key_dim, value_dim = expand(dim, expand_k, "GLA expand_k"), expand(dim, expand_v, "GLA expand_v")
        self._setup(dim, heads, divide(key_dim, heads, "GLA key dim"), divide(value_dim, heads, "GLA value dim"),
                    backend, layer_idx)
        self.gate_logit_normalizer, self.clamp_min = gate_logit_normalizer, clamp_min
        self.use_output_gate = use_output_gate

        self.q_proj = nn.Linear(dim, key_dim, bias=False)
        self.k_proj = nn.Linear(dim, key_dim, bias=False)
        self.v_proj = nn.Linear(dim, value_dim, bias=False)
        if use_output_gate:
            self.g_proj = nn.Linear(dim, value_dim, bias=False)
        self._add_short_convs(use_short_conv, conv_size, conv_bias,
                              {"q": key_dim, "k": key_dim, "v": value_dim}, dict.fromkeys("qkv", "silu"))
        self.gk_proj = nn.Sequential(nn.Linear(dim, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True))
        self.o_proj = nn.Linear(value_dim, dim, bias=False)
        if use_output_gate:
            self.g_norm_swish_gate = FusedRMSNormGated(self.head_v_dim, elementwise_affine, norm_eps)
        else:
            self.g_norm = RMSNorm(self.head_v_dim, elementwise_affine, norm_eps)

    def _recurrence(self, x_BlC, h, S0, offset, output_final_state, terms):
        B, l, _ = x_BlC.shape
        q_BlHK, k_BlHK = (h[n].view(B, l, self.heads, self.head_k_dim) for n in "qk")
        v_BlHV = h["v"].view(B, l, self.heads, self.head_v_dim)
        # log-decay in fp32: it is summed over up to a chunk of tokens before exp
        gk_BlHK = F.logsigmoid(upcast(self.gk_proj(x_BlC))).view(B, l, self.heads, self.head_k_dim)
        gk_BlHK = gk_BlHK / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk_BlHK = gk_BlHK.clamp_min(self.clamp_min)
        return gla(q_BlHK, k_BlHK, v_BlHV, g=gk_BlHK, initial_state=S0, output_final_state=output_final_state,
                   backend=self.run_backend(x_BlC))

    def _readout(self, o_BlHV, x_BlC):
        if self.use_output_gate:
            g = self.g_proj(x_BlC).view_as(o_BlHV)
            o_BlHV = self.g_norm_swish_gate(o_BlHV, g)
        else:
            o_BlHV = self.g_norm(o_BlHV)
        return self.o_proj(o_BlHV.flatten(2))
