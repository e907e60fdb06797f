"""The attention mixer's KV cache is preallocated: `step` writes each scale into its slice of one (B, H, L, d) buffer
per key and value, allocated at scale 0, and attends over the filled prefix as a view (issue 18: sampling memory).

CPU-checkable properties: the buffer's storage never moves after scale 0, and no tensor shaped like the cache prefix
(B, H, S > l, d) is created inside a step (the concatenating cache created two per scale, a full copy of the cache).
The CUDA test measures the peak memory of one step against the cache's size.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from varbench.layout import RasterLayout, ScaleLayout
from varbench.mixers.attention import BlockCausalAttention
from varbench.mixers.base import run_steps

B, DIM, HEADS = 2, 48, 2  # head dim 24, not a prefix length of the layouts below (the check looks at shapes)
LAYOUTS = [ScaleLayout((1, 2, 3, 4)), RasterLayout(9)]


def storages(tree) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tree_leaves(tree) if isinstance(t, torch.Tensor)}


class AllocatedShapes(TorchDispatchMode):
    """Records the shape of every tensor an aten op returns in new memory while active (views and in-place results
    share an input's storage and are left out)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = storages((args, kwargs))
        self.shapes += [(str(func), tuple(t.shape)) for t in tree_leaves(out)
                        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs]
        return out


def mixer(device="cpu") -> BlockCausalAttention:
    return BlockCausalAttention(DIM, HEADS).to(device).eval()


@pytest.mark.parametrize("layout", LAYOUTS, ids=type)
def test_cache_storage_is_allocated_once(layout):
    attn = mixer()
    state = attn.init_state(B, layout)
    addresses = []
    with torch.no_grad():
        for k, x_BlC in enumerate(layout.split(torch.randn(B, layout.L, DIM))):
            _, state = attn.step(x_BlC, state, layout, k)
            assert state["k"].shape == state["v"].shape == (B, HEADS, layout.L, DIM // HEADS)
            addresses.append((state["k"].data_ptr(), state["v"].data_ptr()))
    assert len(set(addresses)) == 1, f"the cache moved between scales: {addresses}"


@pytest.mark.parametrize("layout", LAYOUTS, ids=type)
def test_step_never_copies_the_cache(layout):
    attn, head_dim = mixer(), DIM // HEADS
    state = attn.init_state(B, layout)
    with torch.no_grad():
        for k, x_BlC in enumerate(layout.split(torch.randn(B, layout.L, DIM))):
            with AllocatedShapes() as seen:
                _, state = attn.step(x_BlC, state, layout, k)
            l = layout.lengths[k]
            kv_sized = [(op, shape) for op, shape in seen.shapes if len(shape) == 4 and shape[:2] == (B, HEADS)
                        and shape[3] == head_dim and shape[2] > l]
            # scale 0 allocates the key and value buffers for all L tokens; later scales allocate nothing that size
            expected = [(B, HEADS, layout.L, head_dim)] * 2 if k == 0 else []
            assert [shape for _, shape in kv_sized] == expected, f"scale {k} ({l} tokens) allocated {kv_sized}"

def test_step_without_the_previous_state_is_an_error():
    layout, attn = LAYOUTS[0], mixer()
    with pytest.raises(ValueError, match="KV cache holds 0 tokens"):
        attn.step(torch.randn(B, 2 * 2, DIM), attn.init_state(B, layout), layout, 1)


def test_cache_takes_the_dtype_of_the_computation():
    """Under autocast the projections run in bf16 while the activations (init_state's dtype) are fp32."""
    layout, attn = LAYOUTS[0], mixer()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = run_steps(attn, torch.randn(B, layout.L, DIM), layout)
    assert state["k"].dtype == state["v"].dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_of_a_step_is_one_scale_not_the_cache():
    """Raster order (one token per step) makes the gap plain: the cache grows to 4096 tokens, a step adds one."""
    layout, attn = RasterLayout(4096), mixer("cuda")
    x_BLC = torch.randn(B, layout.L, DIM, device="cuda")
    cache_bytes = 2 * B * layout.L * DIM * 4
    state = attn.init_state(B, layout, device="cuda")
    peaks = []
    with torch.no_grad():
        for k, x_BlC in enumerate(layout.split(x_BLC)):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            _, state = attn.step(x_BlC, state, layout, k)
            torch.cuda.synchronize()
            if k >= layout.L - 64:  # the last steps, where a copied prefix is nearly the whole cache (and the
                peaks.append(torch.cuda.max_memory_allocated() - before)  # first ones' one-off workspaces are over)
    assert max(peaks) < cache_bytes / 8, f"a step's peak extra memory {max(peaks)} B; the cache is {cache_bytes} B"
