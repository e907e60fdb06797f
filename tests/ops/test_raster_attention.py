"""Attention's GPU backends in raster order (AiM's backbone with attention, LlamaGen-style): every token is its own
scale, so the block-causal mask is the causal mask. flex builds its BlockMask from the raster layout, and sdpa_scales
makes one causal SDPA call; both compute exactly the dense-mask reference. (Session 17's study_raster_lr: every
attention cell failed on the GPU, since flex, "auto"'s pick there, asked the raster layout for its scale sides.)"""

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from varbench.layout import RasterLayout
from varbench.ops.attention import kernel as attention_kernel
from varbench.ops.attention.reference import masked_attention_ref
from varbench.registry import build

RASTER = RasterLayout(37)


def _qkv(layout, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, layout.L, 8, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


def test_sdpa_scales_in_raster_order_is_causal_attention_in_values_and_gradients():
    q, k, v = _qkv(RASTER)
    ref = masked_attention_ref(q, k, v, RASTER.block_causal_mask(), 0.3)
    out = attention_kernel.sdpa_scales_attention(q, k, v, RASTER, "block_causal", 0.3)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_the_flex_block_mask_of_a_raster_layout_is_the_causal_mask(monkeypatch):
    monkeypatch.setattr(attention_kernel, "_BLOCK_MASKS", {})
    monkeypatch.setattr(attention_kernel, "_flex", lambda: flex_attention)  # flex's unfused eager form runs on CPU
    q, k, v = (t.detach() for t in _qkv(RASTER, dtype=torch.float32))  # (no flex backward on the CPU)
    out = attention_kernel.flex_masked_attention(q, k, v, RASTER, "block_causal", 0.3)
    want = masked_attention_ref(q, k, v, RASTER.block_causal_mask(), 0.3)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert list(attention_kernel._BLOCK_MASKS) == [(RASTER, "block_causal", 0, "cpu")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend, ran", [("auto", "flex"), ("flex", "flex"), ("sdpa_scales", "sdpa_scales")])
def test_on_cuda_raster_attention_on_each_backend_matches_its_reference_under_bf16_autocast(backend, ran):
    torch.manual_seed(0)
    fast = build("mixer", "attention", dim=128, num_heads=2, backend=backend).cuda()
    reference = build("mixer", "attention", dim=128, num_heads=2, backend="reference").cuda()
    reference.load_state_dict(fast.state_dict())
    layout = RasterLayout(257)  # AiM's input: the class token and 256 image tokens
    x = torch.randn(4, layout.L, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, want = fast(x, layout), reference(x, layout)
    assert fast.backend_ran == ran
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_compiled_raster_attention_step_builds_its_causal_mask_first_and_is_one_graph(monkeypatch):
    """The study's attention raster arm trains compiled: compile_for_training builds the raster layout's BlockMask
    before compiling (none is built inside the graph) and the training step is one graph without breaks."""
    from torch._dynamo.utils import counters

    from varbench.backbones.raster_ar import RasterAR
    from varbench.registry import factory, load_option
    from varbench.training.loop import compile_for_training
    cfg = load_option("mixer", "attention")
    cfg.backend = "flex"
    model = RasterAR(mixer=factory(cfg), depth=2, width=128, num_heads=2, vocab_size=32, num_classes=5,
                     num_tokens=16).cuda().train()
    monkeypatch.setattr(attention_kernel, "_BLOCK_MASKS", {})
    build, built = attention_kernel._build_block_mask, []
    monkeypatch.setattr(attention_kernel, "_build_block_mask", lambda *key: built.append(key) or build(*key))
    torch._dynamo.reset()
    counters.clear()
    net = compile_for_training(model, len(model.blocks), backend="eager")
    assert [key[0] for key in built] == [model.layout]  # built by compile_for_training, for the raster layout
    labels, ids = torch.tensor([1, 2], device="cuda"), torch.randint(0, 32, (2, 16), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        net(labels, ids, inputs_checked=True).float().pow(2).mean().backward()
    # one graph, not one frame: dynamo also counts frames it only looked at (session 20 on an H200: 2 frames; session
    # 29: the flex test of tests/test_compile.py logged one trace, of the forward, and counted 2 frames)
    assert len(built) == 1 and counters["stats"]["unique_graphs"] == 1, (
        dict(counters["frames"]), dict(counters["stats"]), dict(counters["graph_break"]))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
