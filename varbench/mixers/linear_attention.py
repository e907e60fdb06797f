"""Linear attention (Katharopoulos et al. 2020) as an inter-scale mixer, parameterised as fla's `LinearAttention`
layer: the no-decay baseline of the linear-recurrent family.

S_t = S_{t-1} + phi(k_t) v_t^T, o_t = S_t^T phi(q_t) / sqrt(K), unnormalised (fla's default
`do_feature_map_norm=False`), output RMSNorm per head, then o_proj. phi is fla's default learnable
`elementwise_product` map (two linears per head dim, multiplied), or elu + 1, relu, identity.
Kernel: fla `chunk_linear_attn(normalize=False)` (backend "fla"); oracle: `varbench.ops.linear_rnn.gla_chunk_ref`
without decay.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, C width, H heads, K key dim per head,
V value dim per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from varbench.mixers.linear_rnn import LinearRNNMixer, divide, expand, pick_heads
from varbench.modules import RMSNorm
from varbench.ops.linear_rnn import gla


class HadamardFeatureMap(nn.Module):
    """phi(x) = layer1(x) * layer2(x) over a head dim (fla's `HadamardFeatureMap`, the `elementwise_product` map)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(head_dim, head_dim)
        self.layer2 = nn.Linear(head_dim, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(x) * self.layer2(x)


PARAMETER_FREE_MAPS = {"elu": lambda x: F.elu(x) + 1.0, "relu": F.relu, "identity": lambda x: x}


class LinearAttentionMixer(LinearRNNMixer):
    r"""Linear attention over the flattened scales.

    Args:
        dim (int): model width C.
        num_heads (int, Optional): the backbone's attention head count; used only when `heads` is `None`.
        layer_idx (int, Optional): block index. Default: 0.
        backend (str, Optional): `auto`, `fla` or `reference`. Default: `auto`.
        heads (int, Optional): heads. Default: 8 (fla's default).
        expand_k (float, Optional): key dim = dim * expand_k. Default: 1.0.
        expand_v (float, Optional): value dim = dim * expand_v. Default: 1.0.
        feature_map (str, Optional): `elementwise_product`, `elu`, `relu` or `identity`. Default: `elementwise_product`.
        tie_feature_map_qk (bool, Optional): one learnable map for q and k. Default: `False`.
        output_norm (str, Optional): `rmsnorm` or `identity`. Default: `rmsnorm`.
        norm_q (bool, Optional): divide phi(q) by its sum (+1e-4). Default: `False`.
        norm_k (bool, Optional): divide phi(k) by its sum (+1e-4). Default: `False`.
        elementwise_affine (bool, Optional): learnable output-norm weight. Default: `True`.
        norm_eps (float, Optional): output-norm epsilon. Default: 1e-5.
    """

    kv_flops = 4

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        layer_idx: int = 0,
        backend: str = "auto",
        heads: int | None = 8,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        feature_map: str = "elementwise_product",
        tie_feature_map_qk: bool = False,
        output_norm: str = "rmsnorm",
        norm_q: bool = False,
        norm_k: bool = False,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if feature_map not in ("elementwise_product", *PARAMETER_FREE_MAPS):
            raise ValueError(f"feature_map must be 'elementwise_product' or one of {list(PARAMETER_FREE_MAPS)}, "
                             f"got {feature_map!r} (fla's hedgehog / t2r / dpfp maps are not ported)")
        if output_norm not in ("rmsnorm", "identity"):
            raise ValueError(f"output_norm must be 'rmsnorm' or 'identity', got {output_norm!r}")
        heads = pick_heads(heads, num_heads, "LinearAttention")
        key_dim = expand(dim, expand_k, "LinearAttention expand_k")
        value_dim = expand(dim, expand_v, "LinearAttention expand_v")
        self._setup(dim, heads, divide(key_dim, heads, "LinearAttention key dim"),
                    divide(value_dim, heads, "LinearAttention value dim"), backend, layer_idx)
        self.feature_map, self.norm_q, self.norm_k = feature_map, norm_q, norm_k

        if feature_map == "elementwise_product":
            self.feature_map_q = HadamardFeatureMap(self.head_k_dim)
            self.feature_map_k = self.feature_map_q if tie_feature_map_qk else HadamardFeatureMap(self.head_k_dim)
        else:
            self.feature_map_q = self.feature_map_k = PARAMETER_FREE_MAPS[feature_map]
        self.q_proj = nn.Linear(dim, key_dim, bias=False)
        self.k_proj = nn.Linear(dim, key_dim, bias=False)
        self.v_proj = nn.Linear(dim, value_dim, bias=False)
        if output_norm == "rmsnorm":
            self.norm = RMSNorm(self.head_v_dim, elementwise_affine, norm_eps)
        else:
            self.norm = nn.Identity()
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def _recurrence(self, x_BlC, h, S0, offset, output_final_state, terms):
        B, l, _ = x_BlC.shape
        q_BlHK = self.feature_map_q(h["q"].view(B, l, self.heads, self.head_k_dim))
        k_BlHK = self.feature_map_k(h["k"].view(B, l, self.heads, self.head_k_dim))
        if self.norm_q:
            q_BlHK = q_BlHK / (q_BlHK.sum(-1, keepdim=True) + 1e-4)
        if self.norm_k:
            k_BlHK = k_BlHK / (k_BlHK.sum(-1, keepdim=True) + 1e-4)
        v_BlHV = h["v"].view(B, l, self.heads, self.head_v_dim)
        return gla(q_BlHK, k_BlHK, v_BlHV, initial_state=S0, output_final_state=output_final_state,
                   backend=self.run_backend(x_BlC))

    def _readout(self, o_BlHV, x_BlC):
        return self.o_proj(self.norm(o_BlHV).flatten(2))

    def _projection_macs(self) -> int:
        """The feature maps act on every head of every token: their linears count H times."""
        macs = super()._projection_macs()
        if self.feature_map == "elementwise_product":
            maps = {id(m): m for m in (self.feature_map_q, self.feature_map_k)}.values()
            macs += (self.heads - 1) * sum(lin.weight.numel() for m in maps for lin in (m.layer1, m.layer2))
        return macs
