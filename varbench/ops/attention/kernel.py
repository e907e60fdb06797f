"""GPU attention backends for scale-structured masks: flex_attention block masks, SDPA per scale, varlen flash
attention (flash-attn's or torch's), xformers.

Shape legend: B batch, H heads, L tokens, d head dim, T = B*L packed tokens.
Each backend computes exactly `masked_attention_ref` with the mask of its `kind`; the GPU parity script checks it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from varbench.layout import Layout, RasterLayout, ScaleLayout

_compiled_flex = None


def _flex():
    # flex_attention is only fast when compiled; compile it once per process.
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


# (layout, kind, window, device) -> BlockMask, built eagerly by `prepare_block_masks` / the first eager call
_BLOCK_MASKS: dict = {}


def _build_block_mask(layout: Layout, kind: str, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask
    ids = layout.scale_ids(device)
    if kind == "block_causal":
        def mask_mod(b, h, q, kv):
            return ids[q] >= ids[kv]
    elif kind == "block_diag":
        def mask_mod(b, h, q, kv):
            return ids[q] == ids[kv]
    elif kind == "window":
        row, col = layout.positions_in_scale(device)

        def mask_mod(b, h, q, kv):
            near = ((row[q] - row[kv]).abs() <= window) & ((col[q] - col[kv]).abs() <= window)
            return (ids[q] == ids[kv]) & near
    else:
        raise ValueError(f"unknown mask kind {kind!r}; valid: block_causal, block_diag, window")
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=layout.L, KV_LEN=layout.L, device=device)


def _device_key(device) -> str:
    """'cuda' and 'cuda:0' name one device: key masks by the indexed name, as a tensor's `.device` gives it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def prepare_block_masks(layout: Layout, device, masks) -> None:
    """Build the BlockMasks `masks` ((kind, window) pairs) of `layout` on `device` now, outside any compiled region,
    and the compiled flex_attention that runs them.

    A compiled forward then finds each mask in a plain dict (a guarded constant) instead of tracing
    `create_block_mask` into its graph at every step, and finds the compiled flex_attention made: a trace that made
    it would change the module global its guard reads, and dynamo would trace the whole forward again (sessions 20
    and 24: a raster step of 2 frames; M-VAR-d16's first step compiled twice). `compile_for_training` calls this for
    every module whose `flex_mask` names a mask."""
    _flex()
    for kind, window in masks:
        key = (layout, kind, int(window), _device_key(device))
        if key not in _BLOCK_MASKS:
            _BLOCK_MASKS[key] = _build_block_mask(*key)


def prepare_model_masks(model: torch.nn.Module) -> None:
    """`prepare_block_masks` for every module of `model` whose `flex_mask(device)` names a (kind, window) (None: it
    runs no flex attention there), on the model's layout (scale-wise or raster) and device, and the scales' segment
    ends (`segment_ends`) where a module `attends_varlen(device)`. A model without a layout needs none."""
    layout = next((m.layout for m in model.modules() if isinstance(getattr(m, "layout", None), Layout)), None)
    device = next(model.parameters()).device
    if layout is None or device.type != "cuda":  # the modules attend with flex or varlen on CUDA tensors only
        return
    masks = {m.flex_mask(device) for m in model.modules() if hasattr(m, "flex_mask")} - {None}
    if masks:
        prepare_block_masks(layout, device, sorted(masks))
    if any(m.attends_varlen(device) for m in model.modules() if hasattr(m, "attends_varlen")):
        segment_ends(layout, device)


def flex_masked_attention(q_BHLd, k_BHLd, v_BHLd, layout: Layout, kind: str, scale: float, window: int = 0):
    """Attention with a flex BlockMask built from the layout's scale ids (cached per layout, kind and device;
    build it with `prepare_block_masks` before compiling, or a compiled graph traces its construction)."""
    key = (layout, kind, int(window), _device_key(q_BHLd.device))
    block_mask = _cached(_BLOCK_MASKS, key, lambda: _build_block_mask(*key))
    return _flex()(q_BHLd, k_BHLd, v_BHLd, block_mask=block_mask, scale=scale)


def _cached(store: dict, key, build):
    """store[key], built by `build()` when absent; one built while torch.compile traces is the graph's own (a traced
    value), never stored."""
    value = store.get(key)
    if value is None:
        value = build()
        if not torch.compiler.is_compiling():
            store[key] = value
    return value


VARLEN_IMPLS = ("flash_attn", "torch")
# (layout, device) -> int32 (K,) end of each scale in a sample's tokens, built eagerly by `prepare_model_masks`
_SEGMENT_ENDS: dict = {}


def segment_ends(layout: ScaleLayout, device) -> torch.Tensor:
    """The int32 (K,) end of each scale within a sample, on `device`, cached per layout and device: built outside a
    compiled region (`prepare_model_masks`), a compiled graph reads it as a constant on the device instead of copying
    a host constant in at every step (a host-to-device copy would keep Inductor from replaying the step as CUDA
    graphs)."""
    key = (layout, _device_key(device))
    return _cached(_SEGMENT_ENDS, key, lambda: torch.tensor(layout.offsets[1:], dtype=torch.int32,
                                                            device=device))


def block_diag_cu_seqlens(layout: ScaleLayout, batch: int, device) -> torch.Tensor:
    """Varlen's int32 (batch * K + 1,) boundaries of every scale of every sample (`ScaleLayout.cu_seqlens`), made on
    the device from `segment_ends` and an arange."""
    starts_B1 = torch.arange(batch, dtype=torch.int32, device=device)[:, None] * layout.L
    return F.pad((starts_B1 + segment_ends(layout, device)).flatten(), (1, 0))


def varlen_block_diag_attention(q_BHLd, k_BHLd, v_BHLd, layout: ScaleLayout, scale: float, impl: str = "flash_attn"):
    """Block-diagonal attention as one varlen flash-attention call: every scale of every sample a packed sequence of
    its own (max_seqlen from the layout). No mask and no per-scale slices: the packing is a view of the qkv
    projection's (B, L, 3, H, d) output, and the (T, H, d) output a view of (B, L, H, d), which the output
    projection reads as it is, forward and backward.
    `impl`: "flash_attn" (the flash-attn package's `flash_attn_varlen_func`, as M-VAR calls it) or "torch" (torch's
    own varlen flash kernel, `torch.nn.attention.varlen.varlen_attn`: no package to install). Both take fp16 / bf16
    q, k, v only (autocast's dtype)."""
    if q_BHLd.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"varlen attention runs flash-attention kernels, which take float16 / bfloat16 q, k, v (run "
                         f"under autocast); got {q_BHLd.dtype}")
    B, H, L, d = q_BHLd.shape
    pack = lambda t: t.transpose(1, 2).reshape(B * L, H, d)  # noqa: E731  (B,H,L,d) -> (T,H,d)
    cu = block_diag_cu_seqlens(layout, B, q_BHLd.device)
    longest = max(layout.lengths)
    if impl == "flash_attn":
        from flash_attn import flash_attn_varlen_func
        o_THd = flash_attn_varlen_func(pack(q_BHLd), pack(k_BHLd), pack(v_BHLd), cu, cu, longest, longest,
                                       softmax_scale=scale)
    elif impl == "torch":
        from torch.nn.attention.varlen import varlen_attn
        o_THd = varlen_attn(pack(q_BHLd), pack(k_BHLd), pack(v_BHLd), cu, cu, longest, longest, scale=scale)
    else:
        raise ValueError(f"varlen_block_diag_attention: impl={impl!r}; valid: {', '.join(VARLEN_IMPLS)}")
    return o_THd.view(B, L, H, d).transpose(1, 2)


def xformers_block_diag_attention(q_BHLd, k_BHLd, v_BHLd, layout: ScaleLayout, scale: float):
    """Block-diagonal attention through xformers' BlockDiagonalMask."""
    from xformers.ops import fmha
    B, H, L, d = q_BHLd.shape
    pack = lambda t: t.transpose(1, 2).reshape(1, B * L, H, d)  # noqa: E731
    bias = fmha.BlockDiagonalMask.from_seqlens(list(layout.lengths) * B)
    o = fmha.memory_efficient_attention(pack(q_BHLd), pack(k_BHLd), pack(v_BHLd), attn_bias=bias, scale=scale)
    return o.view(B, L, H, d).transpose(1, 2)


# (layout, kind, tokens, device) -> the dense mask of the first scales that attend together (sdpa_scales)
_FIRST_MASKS: dict = {}
# SDPA's kernels by the names the sdpa_scales options give them (torch.nn.attention.SDPBackend)
SDPA_KERNELS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                "math": "MATH"}
MASKED_KERNELS = ("efficient", "math")  # the kernels that surely take a dense mask (flash takes none)


def check_sdpa_scales_options(together_below: int, sdpa_kernels, owner: str) -> tuple[str, ...]:
    """Check a module's sdpa_scales options, naming `owner`'s key: `together_below` at least 1, `sdpa_kernels` (None
    or names of SDPA_KERNELS) able to run the first scales' masked call where there is one; returns the kernels."""
    if int(together_below) < 1:
        raise ValueError(f"{owner}.together_below = {together_below}: give 1 or more (1: every scale its own call)")
    kernels = tuple(sdpa_kernels or ())
    if unknown := [k for k in kernels if k not in SDPA_KERNELS]:
        raise ValueError(f"{owner}.sdpa_kernels: unknown {unknown}; valid: {list(SDPA_KERNELS)}")
    if kernels and together_below > 1 and not set(kernels) & set(MASKED_KERNELS):
        raise ValueError(f"{owner}.sdpa_kernels = {list(kernels)}: the first scales attend in one masked call "
                         f"(together_below = {together_below}), which needs one of {list(MASKED_KERNELS)} in the list "
                         f"(or together_below: 1)")
    return kernels


def _preferring(kernels: tuple[str, ...]):
    """A context in which SDPA runs only `kernels` (names of SDPA_KERNELS), the first it can, in their order; none
    given: SDPA's own choice."""
    if not kernels:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([getattr(SDPBackend, SDPA_KERNELS[k]) for k in kernels], set_priority=True)


def sdpa_scales_attention(q_BHLd, k_BHLd, v_BHLd, layout: Layout, kind: str, scale: float,
                          together_below: int = 64, kernels: tuple[str, ...] = ()):
    """Block-causal or block-diagonal attention as one unmasked SDPA call per scale, so that SDPA can pick its
    flash kernel (a mask rules it out): a scale's queries against the keys it sees, which are a contiguous prefix
    (block_causal: every scale up to its own) or its own scale (block_diag). The first scales with fewer than
    `together_below` tokens each (VAR's 1..36: 91 tokens) attend in one call with their small dense mask instead: a
    kernel launch per scale would cost more than their math. The scales' outputs are concatenated in order.
    `kernels` (names of SDPA_KERNELS, checked by `check_sdpa_scales_options`): the SDPA kernels the calls may run,
    in order of preference; empty: SDPA's own choice. Block-causal attention in raster order (every scale one
    token) is causal attention: one causal SDPA call."""
    if kind not in ("block_causal", "block_diag"):
        raise ValueError(f"sdpa_scales_attention: unknown mask kind {kind!r}; valid: block_causal, block_diag")
    with _preferring(kernels):
        if kind == "block_causal" and isinstance(layout, RasterLayout):
            return F.scaled_dot_product_attention(q_BHLd, k_BHLd, v_BHLd, is_causal=True, scale=scale)
        return _per_scale(q_BHLd, k_BHLd, v_BHLd, layout, kind, scale, together_below)


def _first_alone(layout: ScaleLayout, together_below: int) -> int:
    """The first scale with a call of its own: the first with at least `together_below` tokens."""
    return next((i for i, n in enumerate(layout.lengths) if n >= together_below), layout.num_scales)


def sdpa_scales_calls(layout: ScaleLayout, together_below: int) -> tuple[int, ...]:
    """Token counts of `sdpa_scales_attention`'s calls on a scale layout, in order: the first scales with fewer than
    `together_below` tokens each in one masked call (absent where there are none), then one call per scale."""
    first = _first_alone(layout, together_below)
    return ((layout.offsets[first],) if first else ()) + layout.lengths[first:]


def _first_mask(layout: ScaleLayout, kind: str, P: int, device) -> torch.Tensor:
    """The dense (P, P) mask of the first P tokens (the first scales' call), cached per layout, kind and device."""
    full = layout.block_causal_mask if kind == "block_causal" else layout.block_diag_mask
    key = (layout, kind, P, _device_key(device))
    return _cached(_FIRST_MASKS, key, lambda: full(device)[:P, :P].contiguous())


def sdpa_scales_block_diag(parts, layout: ScaleLayout, scale: float, together_below: int = 64,
                           kernels: tuple[str, ...] = ()):
    """`sdpa_scales_attention`'s block-diagonal attention on q, k, v already cut into its calls' tokens: `parts`
    holds one (q, k, v) triple of (B, H, l, d) per call of `sdpa_scales_calls(layout, together_below)`, in order.
    Cut the qkv projection's output into parts before its heads are split out (`ScaleAttention.qkv_parts`): the
    backward then concatenates the parts' gradients in the projection's own layout. Slicing q, k and v of the whole
    sequence made Inductor sum zero-padded slices, stack and permute: three passes over d(qkv), about 4.4 ms of
    M-VAR-d16's compiled step on an H100 (session 36). `benchmarks/intra_grad_layout.py` times both."""
    masked = _first_alone(layout, together_below) > 0
    outs = []
    with _preferring(kernels):
        for i, (q_BHld, k_BHld, v_BHld) in enumerate(parts):
            mask = _first_mask(layout, "block_diag", q_BHld.shape[2], q_BHld.device) if masked and i == 0 else None
            outs.append(F.scaled_dot_product_attention(q_BHld, k_BHld, v_BHld, attn_mask=mask, scale=scale))
    return torch.cat(outs, dim=2)


def _per_scale(q_BHLd, k_BHLd, v_BHLd, layout: ScaleLayout, kind: str, scale: float, together_below: int):
    """`sdpa_scales_attention`'s calls on a scale layout: the first scales together, then one per scale."""
    sizes = sdpa_scales_calls(layout, together_below)
    if kind == "block_diag":
        parts = zip(*(t.split(sizes, dim=2) for t in (q_BHLd, k_BHLd, v_BHLd)))
        return sdpa_scales_block_diag(list(parts), layout, scale, together_below)
    masked, outs, end = _first_alone(layout, together_below) > 0, [], 0
    for i, n in enumerate(sizes):
        queries, keys = slice(end, end + n), slice(0, end + n)  # a scale sees every scale up to its own
        mask = _first_mask(layout, kind, n, q_BHLd.device) if masked and i == 0 else None
        outs.append(F.scaled_dot_product_attention(q_BHLd[:, :, queries], k_BHLd[:, :, keys], v_BHLd[:, :, keys],
                                                   attn_mask=mask, scale=scale))
        end += n
    return torch.cat(outs, dim=2)
