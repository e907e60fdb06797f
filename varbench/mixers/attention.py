"""VAR's softmax attention: the shared projection module and the block-causal inter-scale mixer with a KV cache.

Shape legend: B batch, L tokens of all scales, l tokens of the current scale, S cached tokens, C width,
H heads, d head dim.
Parameter names follow VAR (`mat_qkv`, `q_bias`, `zero_k_bias`, `v_bias`, `scale_mul_1H11`, `proj`), so official
checkpoints load by renaming the module only (see `varbench.backbones.convert`).
"""

from __future__ import annotations

import torch

from varbench.layout import ScaleLayout
from varbench.mixers.base import State, TokenMixer, carry_terms
from varbench.modules.attention import ScaleAttention
from varbench.ops.attention.kernel import check_sdpa_scales_options, flex_masked_attention, sdpa_scales_attention
from varbench.ops.attention.reference import masked_attention_ref
from varbench.ops.backend import cuda_and


def empty_kv_cache(k_BHld: torch.Tensor, length: int) -> State:
    """Uninitialised key and value buffers (B, H, length, d) in the dtype and on the device of `k_BHld`; `step` reads
    only the part it has written."""
    B, H, _, d = k_BHld.shape
    return {name: k_BHld.new_empty((B, H, length, d)) for name in ("k", "v")}


class BlockCausalAttention(ScaleAttention, TokenMixer):
    """VAR's inter-scale mixer: softmax attention where a token sees its own scale and every coarser scale.

    Args:
        dim (int): model width.
        num_heads (int): attention heads.
        layer_idx (int, Optional): block index (unused). Default: 0.
        l2_norm (bool, Optional): see `ScaleAttention`. Default: True (all VAR checkpoints).
        backend (str, Optional): "flex" (flex_attention BlockMask, CUDA), "sdpa_scales" (one unmasked SDPA call
            per scale, so SDPA's flash kernel can run; CUDA), "reference" (SDPA, dense mask), or "auto" (flex on
            CUDA, else reference). The KV-cached `step` needs no mask and always runs SDPA. Default: "auto".
        together_below (int, Optional): sdpa_scales: the first scales with fewer tokens each attend in one masked
            call. Default: 64 (VAR's first six scales, 91 tokens).
        sdpa_kernels (list[str], Optional): sdpa_scales: the SDPA kernels its calls may run, in order of preference
            (names of `varbench.ops.attention.kernel.SDPA_KERNELS`). Default: None (SDPA's own choice).
        qk_norm (str, Optional): the q/k normalisation's kernels in training (see `ScaleAttention`). Default: "auto".
    """

    within_scale = "bidirectional"

    def __init__(self, dim: int, num_heads: int, layer_idx: int = 0, l2_norm: bool = True, backend: str = "auto",
                 together_below: int = 64, sdpa_kernels: list[str] | None = None, qk_norm: str = "auto"):
        super().__init__(dim, num_heads, l2_norm, qk_norm)
        self.choose_backend(backend, {"flex": cuda_and(), "sdpa_scales": cuda_and()}, "attention")
        self.together_below = together_below
        self.sdpa_kernels = check_sdpa_scales_options(together_below, sdpa_kernels, "attention")

    def flex_mask(self, device) -> tuple[str, int] | None:
        """The flex BlockMask (kind, window) this module attends with on `device`'s tensors (named, or picked by
        `auto`), built before compiling; None where it runs no flex attention there."""
        return ("block_causal", 0) if self.backend_on(device) == "flex" else None

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        q, k, v = self.qkv(x_BLC)
        backend = self.run_backend(q)
        if backend == "flex":
            o = flex_masked_attention(q, k, v, layout, "block_causal", self.scale)
        elif backend == "sdpa_scales":
            o = sdpa_scales_attention(q, k, v, layout, "block_causal", self.scale, self.together_below,
                                      self.sdpa_kernels)
        else:
            o = masked_attention_ref(q, k, v, layout.block_causal_mask(q.device), self.scale)
        return self.out(o)

    def init_state(self, batch: int, layout: ScaleLayout, device=None, dtype=torch.float32) -> State:
        """The empty KV cache (B, H, 0, d). `step` at scale 0 allocates the buffers for all L tokens, once, in the
        dtype the projections produce: under autocast that is not `dtype`, which is only known at the first step.
        Allocating here would also make `GraphedScales` keep a pristine copy of the whole cache."""
        shape = (batch, self.num_heads, 0, self.head_dim)
        return {"k": torch.empty(shape, device=device, dtype=dtype),
                "v": torch.empty(shape, device=device, dtype=dtype)}

    def step(self, x_BlC: torch.Tensor, state: State, layout: ScaleLayout, k: int) -> tuple[torch.Tensor, State]:
        """Write scale k's keys and values into their slice of the preallocated cache (in place) and attend over the
        filled prefix, a view: nothing of the cache's size is copied or allocated after scale 0. The projection's
        `weight_terms` are computed at scale 0 and carried (mixers/base.py)."""
        terms, scale_k = self.step_terms(state, k), layout.slice(k)
        if k == 0:  # the cache takes the dtype the projection gives (autocast's), known once it has run
            q, k_new, v_new = self.qkv(x_BlC, terms)
            state = carry_terms(empty_kv_cache(k_new, layout.L), terms)
            state["k"][:, :, scale_k], state["v"][:, :, scale_k] = k_new, v_new
        elif state["k"].shape[2] != layout.L:
            raise ValueError(f"scale {k}: the KV cache holds {state['k'].shape[2]} tokens, not the layout's "
                             f"{layout.L}: pass the state that step returned at scale {k - 1}")
        else:
            q = self.qkv_into(x_BlC, terms, state["k"][:, :, scale_k], state["v"][:, :, scale_k])
        end = scale_k.stop
        # the prefix holds exactly the scales <= k, so no mask is needed (VAR's kv_caching path)
        o = masked_attention_ref(q, state["k"][:, :, :end], state["v"][:, :, :end], None, self.scale)
        return self.out(o), state

    def flops(self, layout: ScaleLayout, batch: int = 1) -> int:
        pairs = int(layout.block_causal_mask().sum())
        return batch * (self.qkv_flops(layout.L) + ScaleAttention.score_flops(pairs, self.head_dim, self.num_heads))

    def state_bytes(self, layout: ScaleLayout, batch: int = 1, dtype=torch.bfloat16) -> int:
        return 2 * batch * layout.L * self.num_heads * self.head_dim * dtype.itemsize
