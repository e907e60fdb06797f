"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv 2412.06464) as an inter-scale mixer, parameterised as fla's
`GatedDeltaNet` layer.

The gated delta rule S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T: a Mamba2-style scalar decay
per head, alpha_t = exp(-exp(A_log) * softplus(a_proj(x) + dt_bias)), on top of DeltaNet's overwrite;
beta_t = sigmoid(b_proj(x)); q, k, v pass short causal convs with SiLU, q and k are l2-normalised;
o_t = S_t^T q_t / sqrt(K); output RMSNorm per head times swish(g_proj(x)), then o_proj.
Kernel: fla `chunk_gated_delta_rule` (backend "fla"); oracle: `varbench.ops.linear_rnn.delta_rule_chunk_ref` with g.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C width, H heads, K key dim per head,
V value dim per head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from varbench.mixers.base import NO_WEIGHT_DECAY
from varbench.mixers.linear_rnn import LinearRNNMixer, divide, expand, pick_heads
from varbench.modules import FusedRMSNormGated, RMSNorm
from varbench.ops.linear_rnn import delta_rule
from varbench.utils.precision import at_least_fp32, upcast


class GatedDeltaNetMixer(LinearRNNMixer):
    r"""Gated DeltaNet over the flattened scales.

    fla sizes the layer as hidden 2048, 6 heads of head_dim 256, expand_v 2: key dim 0.75 * hidden, value dim
    1.5 * hidden (about 6 * hidden^2 parameters with the output gate, like Mamba2). The default here keeps those
    ratios at any width: head_dim = 0.75 * dim / heads.

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention head count; used only when `heads` is `None`.
        layer_idx (int, Optional): block index. Default: 0.
        backend (str, Optional): `auto`, `fla` or `reference`. Default: `auto`.
        heads (int, Optional): heads. Default: 6 (fla's default).
        head_dim (int, Optional): key dim per head K. Default: `None` (0.75 * dim / heads).
        expand_v (float, Optional): value dim per head V = head_dim * expand_v. Default: 2.
        use_gate (bool, Optional): swish output gate `g_proj`. Default: `True`.
        use_short_conv (bool, Optional): short causal convs on q, k, v. Default: `True`.
        conv_size (int, Optional): short-conv width. Default: 4.
        conv_bias (bool, Optional): short-conv bias. Default: `False`.
        allow_neg_eigval (bool, Optional): beta in (0, 2) instead of (0, 1). Default: `False`.
        norm_eps (float, Optional): output-norm epsilon. Default: 1e-5.
        mode (str, Optional): fla kernel, `chunk` or `fused_recurrent`. Default: `chunk`.
    """

    kv_flops = 7
    v_flops = 2
    # as fla's GatedDeltaNet marks them (they belong to no Linear/Conv: the backbone's init never touches them)
    library_markers = {NO_WEIGHT_DECAY: ("A_log", "dt_bias")}

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        layer_idx: int = 0,
        backend: str = "auto",
        heads: int | None = 6,
        head_dim: int | None = None,
        expand_v: float = 2.0,
        use_gate: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        norm_eps: float = 1e-5,
        mode: str = "chunk",
    ):
        super().__init__()
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent', got {mode!r}")
        heads = pick_heads(heads, num_heads, "GatedDeltaNet")
        if head_dim is None:
            head_dim = divide(expand(dim, 0.75, "GatedDeltaNet key dim"), heads, "GatedDeltaNet key dim (0.75 * dim)")
        head_v_dim = expand(head_dim, expand_v, "GatedDeltaNet expand_v")
        key_dim, value_dim = heads * head_dim, heads * head_v_dim
        self._setup(dim, heads, head_dim, head_v_dim, backend, layer_idx)
        self.use_gate, self.allow_neg_eigval, self.mode = use_gate, allow_neg_eigval, mode

        self.q_proj = nn.Linear(dim, key_dim, bias=False)
        self.k_proj = nn.Linear(dim, key_dim, bias=False)
        self.v_proj = nn.Linear(dim, value_dim, bias=False)
        self.a_proj = nn.Linear(dim, heads, bias=False)
        self.b_proj = nn.Linear(dim, heads, bias=False)
        # fla's init: A ~ U(0, 16); dt log-uniform in [1e-3, 0.1] stored as softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(0, 16).log())
        dt = torch.exp(torch.rand(heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self._add_short_convs(use_short_conv, conv_size, conv_bias, {"q": key_dim, "k": key_dim, "v": value_dim},
                              dict.fromkeys("qkv", "silu"))
        if use_gate:
            self.g_proj = nn.Linear(dim, value_dim, bias=False)
            self.o_norm = FusedRMSNormGated(head_v_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def weight_terms(self):
        """-exp(A_log) (H,), at least fp32: computed once per generation when sampling."""
        return {"neg_A_H": -upcast(self.A_log).exp()}

    def _recurrence(self, x_BlC, h, S0, offset, output_final_state, terms):
        B, l, _ = x_BlC.shape
        q_BlHK, k_BlHK = (h[n].view(B, l, self.heads, self.head_k_dim) for n in "qk")
        v_BlHV = h["v"].view(B, l, self.heads, self.head_v_dim)
        if not self.use_short_conv:  # (the short convs end in their own SiLU)
            q_BlHK, k_BlHK, v_BlHV = F.silu(q_BlHK), F.silu(k_BlHK), F.silu(v_BlHV)
        # log-decay in fp32 (fla's layer computed it so before moving it into the kernel)
        dtype = at_least_fp32(x_BlC.dtype)
        g_BlH = terms["neg_A_H"].to(dtype) * F.softplus(self.a_proj(x_BlC).to(dtype) + self.dt_bias.to(dtype))
        beta_BlH = self.b_proj(x_BlC).sigmoid()
        if self.allow_neg_eigval:
            beta_BlH = beta_BlH * 2.0
        return delta_rule(q_BlHK, k_BlHK, v_BlHV, beta_BlH, g_BlH, initial_state=S0,
                          output_final_state=output_final_state, use_qk_l2norm=True, backend=self.run_backend(x_BlC),
                          mode=self.mode)

    def _readout(self, o_BlHV, x_BlC):
        if self.use_gate:
            o_BlHV = self.o_norm(o_BlHV, self.g_proj(x_BlC).view_as(o_BlHV))
        else:
            o_BlHV = self.o_norm(o_BlHV)
        return self.o_proj(o_BlHV.flatten(2))
