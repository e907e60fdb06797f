"""DeltaNet (Schlag et al. 2021; Yang et al. 2024, arXiv 2406.06484) as an inter-scale mixer, parameterised as fla's
`DeltaNet` layer.

The delta rule S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T writes v_t under key k_t, overwriting what the state
stored there (no decay); q and k pass a short causal conv with SiLU and are l2-normalised, beta_t = sigmoid(b_proj(x));
o_t = S_t^T q_t / sqrt(K); output RMSNorm per head (times swish(g_proj(x)) when `use_gate`), then o_proj.
Kernel: fla `chunk_delta_rule` (bf16/fp16 only: fla refuses fp32) or `fused_recurrent_delta_rule` (backend "fla");
oracle: `varbench.ops.linear_rnn.delta_rule_chunk_ref`.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C width, H heads, K key dim per head,
V value dim per head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from varbench.mixers.linear_rnn import LinearRNNMixer, divide, expand, pick_heads
from varbench.modules import FusedRMSNormGated, RMSNorm
from varbench.ops.linear_rnn import delta_rule

QK_ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "elu": lambda x: F.elu(x) + 1.0, "identity": lambda x: x}


class DeltaNetMixer(LinearRNNMixer):
    r"""DeltaNet over the flattened scales.

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention head count; used only when `heads` is `None`.
        layer_idx (int, Optional): block index. Default: 0.
        backend (str, Optional): `auto`, `fla` or `reference`. Default: `auto`.
        heads (int, Optional): DeltaNet heads. Default: 4 (fla's default).
        expand_k (float, Optional): key dim = dim * expand_k. Default: 1.0.
        expand_v (float, Optional): value dim = dim * expand_v. Default: 1.0.
        use_beta (bool, Optional): learned write strength beta = sigmoid(b_proj(x)); else beta = 1. Default: `True`.
        use_gate (bool, Optional): swish output gate `g_proj`. Default: `False`.
        use_short_conv (bool, Optional): short causal convs on q, k, v. Default: `True`.
        conv_size (int, Optional): short-conv width. Default: 4.
        conv_bias (bool, Optional): short-conv bias. Default: `False`.
        allow_neg_eigval (bool, Optional): beta in (0, 2) instead of (0, 1). Default: `False`.
        qk_activation (str, Optional): `silu`, `relu`, `elu` (elu + 1) or `identity`. Default: `silu`.
        qk_norm (str, Optional): `l2` or `sum` (L1) normalisation of q and k. Default: `l2`.
        norm_eps (float, Optional): output-norm epsilon. Default: 1e-5.
        mode (str, Optional): fla kernel, `chunk` (bf16/fp16 inputs only) or `fused_recurrent`. Default: `chunk`.
    """

    kv_flops = 6
    v_flops = 2

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        layer_idx: int = 0,
        backend: str = "auto",
        heads: int | None = 4,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_beta: bool = True,
        use_gate: bool = False,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        qk_activation: str = "silu",
        qk_norm: str = "l2",
        norm_eps: float = 1e-5,
        mode: str = "chunk",
    ):
        super().__init__()
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f"qk_activation must be one of {list(QK_ACTIVATIONS)}, got {qk_activation!r}")
        if qk_norm not in ("l2", "sum"):
            raise ValueError(f"qk_norm must be 'l2' or 'sum', got {qk_norm!r}")
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent', got {mode!r}")
        heads = pick_heads(heads, num_heads, "DeltaNet")
        key_dim, value_dim = expand(dim, expand_k, "DeltaNet expand_k"), expand(dim, expand_v, "DeltaNet expand_v")
        self._setup(dim, heads, divide(key_dim, heads, "DeltaNet key dim"),
                    divide(value_dim, heads, "DeltaNet value dim"), backend, layer_idx)
        self.use_beta, self.use_gate, self.allow_neg_eigval = use_beta, use_gate, allow_neg_eigval
        self.qk_activation, self.qk_norm, self.mode = qk_activation, qk_norm, mode

        self.q_proj = nn.Linear(dim, key_dim, bias=False)
        self.k_proj = nn.Linear(dim, key_dim, bias=False)
        self.v_proj = nn.Linear(dim, value_dim, bias=False)
        if use_beta:
            self.b_proj = nn.Linear(dim, heads, bias=False)
        # as fla: the convs carry SiLU for q and k only when it is the qk activation, always for v
        qk_act = "silu" if qk_activation == "silu" else None
        self._add_short_convs(use_short_conv, conv_size, conv_bias, {"q": key_dim, "k": key_dim, "v": value_dim},
                              {"q": qk_act, "k": qk_act, "v": "silu"})
        if use_gate:
            self.g_proj = nn.Linear(dim, value_dim, bias=False)
            self.o_norm = FusedRMSNormGated(self.head_v_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def _recurrence(self, x_BlC, h, S0, offset, output_final_state, terms):
        B, l, _ = x_BlC.shape
        q_BlHK, k_BlHK = (h[n].view(B, l, self.heads, self.head_k_dim) for n in "qk")
        v_BlHV = h["v"].view(B, l, self.heads, self.head_v_dim)
        if not self.use_short_conv:  # (the short convs end in their own SiLU)
            v_BlHV = F.silu(v_BlHV)
            if self.qk_activation == "silu":
                q_BlHK, k_BlHK = F.silu(q_BlHK), F.silu(k_BlHK)
        if self.qk_activation != "silu":
            activation = QK_ACTIVATIONS[self.qk_activation]
            q_BlHK, k_BlHK = activation(q_BlHK), activation(k_BlHK)
        if self.qk_norm == "sum":
            q_BlHK, k_BlHK = (F.normalize(t, p=1, dim=-1, eps=1e-6) for t in (q_BlHK, k_BlHK))
        if self.use_beta:
            beta_BlH = self.b_proj(x_BlC).sigmoid()
        else:
            beta_BlH = q_BlHK.new_ones(B, l, self.heads)
        if self.allow_neg_eigval:
            beta_BlH = beta_BlH * 2.0
        return delta_rule(q_BlHK, k_BlHK, v_BlHV, beta_BlH, initial_state=S0, output_final_state=output_final_state,
                          use_qk_l2norm=self.qk_norm == "l2", backend=self.run_backend(x_BlC), mode=self.mode)

    def _readout(self, o_BlHV, x_BlC):
        if self.use_gate:
            o_BlHV = self.o_norm(o_BlHV, self.g_proj(x_BlC).view_as(o_BlHV))
        else:
            o_BlHV = self.o_norm(o_BlHV)
        return self.o_proj(o_BlHV.flatten(2))
