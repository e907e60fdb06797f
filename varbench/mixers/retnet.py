"""Multi-scale retention (RetNet; Sun et al. 2023, arXiv 2307.08621) as an inter-scale mixer, parameterised as fla's
`MultiScaleRetention` layer.

S_t = gamma_h S_{t-1} + k_t v_t^T with a fixed decay per head gamma_h = 1 - 2^(-5-h) (h = 0 .. H-1, the RetNet and
fla schedule); q and k carry rotary position embeddings of the token's index in the flattened sequence;
o_t = S_t^T q_t / sqrt(K); output RMSNorm per head times swish(g_proj(x)), then o_proj.
Kernel: fla `chunk_simple_gla(g_gamma=...)`, the kernel behind fla's `chunk_retention` (backend "fla");
oracle: `varbench.ops.linear_rnn.gla_chunk_ref` with a per-head decay.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C width, H heads, K key dim per head,
V value dim per head.
"""

from __future__ import annotations

import torch
from torch import nn

from varbench.mixers.linear_rnn import LinearRNNMixer, divide, expand, pick_heads
from varbench.modules import FusedRMSNormGated, RMSNorm
from varbench.modules.rotary import apply_rotary, cos_sin, inv_freq
from varbench.ops.linear_rnn import gla
from varbench.utils.precision import at_least_fp32


def retention_log_decay(heads: int, device=None) -> torch.Tensor:
    """log gamma_h = log(1 - 2^(-5-h)), `[H]` fp32 (fla `chunk_retention` / `naive_retention`)."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float32, device=device))))


class RetNetMixer(LinearRNNMixer):
    r"""Multi-scale retention over the flattened scales.

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention head count; used only when `heads` is `None`.
        layer_idx (int, Optional): block index. Default: 0.
        backend (str, Optional): `auto`, `fla` or `reference`. Default: `auto`.
        heads (int, Optional): retention heads (each its own decay). Default: 8 (fla's default).
        expand_k (float, Optional): key dim = dim * expand_k. Default: 1.0.
        expand_v (float, Optional): value dim = dim * expand_v. Default: 2.0.
        use_output_gate (bool, Optional): swish output gate `g_proj`. Default: `True`.
        use_short_conv (bool, Optional): short causal convs on q, k, v. Default: `False`.
        conv_size (int, Optional): short-conv width. Default: 4.
        conv_bias (bool, Optional): short-conv bias. Default: `False`.
        elementwise_affine (bool, Optional): learnable output-norm weight. Default: `True`.
        norm_eps (float, Optional): output-norm epsilon. Default: 1e-5.
        rotary_base (float, Optional): rotary base. Default: 10000.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        layer_idx: int = 0,
        backend: str = "auto",
        heads: int | None = 8,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        use_output_gate: bool = True,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        rotary_base: float = 10000.0,
    ):
        super().__init__()
        heads = pick_heads(heads, num_heads, "RetNet")
        key_dim, value_dim = expand(dim, expand_k, "RetNet expand_k"), expand(dim, expand_v, "RetNet expand_v")
        self._setup(dim, heads, divide(key_dim, heads, "RetNet key dim"), divide(value_dim, heads, "RetNet value dim"),
                    backend, layer_idx)
        if self.head_k_dim % 2:
            raise ValueError(f"RetNet's rotary needs an even key head dim, got {self.head_k_dim}")
        self.use_output_gate, self.rotary_base = use_output_gate, rotary_base

        self.q_proj = nn.Linear(dim, key_dim, bias=False)
        self.k_proj = nn.Linear(dim, key_dim, bias=False)
        self.v_proj = nn.Linear(dim, value_dim, bias=False)
        if use_output_gate:
            self.g_proj = nn.Linear(dim, value_dim, bias=False)
        self._add_short_convs(use_short_conv, conv_size, conv_bias,
                              {"q": key_dim, "k": key_dim, "v": value_dim}, dict.fromkeys("qkv", "silu"))
        self.o_proj = nn.Linear(value_dim, dim, bias=False)
        if use_output_gate:
            self.g_norm_swish_gate = FusedRMSNormGated(self.head_v_dim, elementwise_affine, norm_eps)
        else:
            self.g_norm = RMSNorm(self.head_v_dim, elementwise_affine, norm_eps)

    def weight_terms(self):
        """The per-head log decays and the rotary frequencies (fixed by the configuration): computed once per
        generation when sampling."""
        device = self.q_proj.weight.device
        return {"log_decay_H": retention_log_decay(self.heads, device),
                "inv_freq_K": inv_freq(self.head_k_dim, self.rotary_base, device)}

    def _recurrence(self, x_BlC, h, S0, offset, output_final_state, terms):
        B, l, _ = x_BlC.shape
        q_BlHK, k_BlHK = (h[n].view(B, l, self.heads, self.head_k_dim) for n in "qk")
        # positions continue across scales: token i of scale k sits at offsets[k] + i in the flattened sequence
        cos, sin = cos_sin(terms["inv_freq_K"], offset, l, at_least_fp32(q_BlHK.dtype))
        q_BlHK, k_BlHK = apply_rotary(q_BlHK, cos, sin), apply_rotary(k_BlHK, cos, sin)
        v_BlHV = h["v"].view(B, l, self.heads, self.head_v_dim)
        return gla(q_BlHK, k_BlHK, v_BlHV, g_gamma=terms["log_decay_H"], initial_state=S0,
                   output_final_state=output_final_state, backend=self.run_backend(x_BlC))

    def _readout(self, o_BlHV, x_BlC):
        if self.use_output_gate:
            o_BlHV = self.g_norm_swish_gate(o_BlHV, self.g_proj(x_BlC).view_as(o_BlHV))
        else:
            o_BlHV = self.g_norm(o_BlHV)
        return self.o_proj(o_BlHV.flatten(2))
