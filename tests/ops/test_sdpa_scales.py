"""The `sdpa_scales` attention backend (varbench/ops/attention/kernel.py): block-causal and block-diagonal attention
as one unmasked SDPA call per scale (the first small scales together, with their dense mask) computes exactly the
dense-mask reference, in values and gradients, whichever scales fall below the grouping threshold."""

import pytest
import torch

from varbench.layout import ScaleLayout
from varbench.ops.attention.kernel import sdpa_scales_attention, sdpa_scales_block_diag, sdpa_scales_calls
from varbench.ops.attention.reference import masked_attention_ref
from varbench.registry import build

VAR = ScaleLayout((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))  # 680 tokens; the first six scales (91 tokens) grouped
SMALL = ScaleLayout((1, 2, 3, 4))


def _qkv(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, layout.L, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("kind", ["block_causal", "block_diag"])
@pytest.mark.parametrize("layout, together_below", [(VAR, 64), (SMALL, 1), (SMALL, 9), (SMALL, 100)],
                         ids=["var-first-six-grouped", "none-grouped", "two-grouped", "all-grouped"])
def test_equals_the_dense_mask_reference_in_values_and_gradients(kind, layout, together_below):
    mask = layout.block_causal_mask() if kind == "block_causal" else layout.block_diag_mask()
    q, k, v = _qkv(layout)
    ref = masked_attention_ref(q, k, v, mask, 0.3)
    out = sdpa_scales_attention(q, k, v, layout, kind, 0.3, together_below=together_below)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, (q, k, v), grad)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout, together_below, calls", [
    (VAR, 64, (91, 64, 100, 169, 256)), (SMALL, 1, (1, 4, 9, 16)), (SMALL, 9, (5, 9, 16)), (SMALL, 100, (30,))])
def test_the_calls_are_the_first_scales_together_then_one_per_scale(layout, together_below, calls):
    assert sdpa_scales_calls(layout, together_below) == calls


@pytest.mark.parametrize("l2_norm", [False, True], ids=["m-var-intra", "l2-norm"])
@pytest.mark.parametrize("layout, together_below", [(VAR, 64), (SMALL, 1), (SMALL, 100)],
                         ids=["var-first-six-grouped", "none-grouped", "all-grouped"])
def test_intra_full_cut_as_projected_equals_the_dense_mask_reference_in_values_and_gradients(l2_norm, layout,
                                                                                            together_below):
    """intra=full's sdpa_scales path: q, k, v cut into the calls' tokens as the projection makes them
    (`qkv_parts`), then `sdpa_scales_block_diag`: the reference's output and the gradients of every parameter and
    of the input."""
    torch.manual_seed(0)
    module = build("intra", "full", dim=16, num_heads=2, l2_norm=l2_norm, backend="reference").double()
    for p in module.parameters():  # the biases start at zero: nonzero ones check that they reach the gradient
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, layout.L, 16, dtype=torch.float64, requires_grad=True)
    inputs = (x, *module.parameters())
    ref = module(x, layout)
    parts = module.qkv_parts(x, sdpa_scales_calls(layout, together_below))
    out = module.out(sdpa_scales_block_diag(parts, layout, module.scale, together_below))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_an_unknown_mask_kind_is_an_error_naming_the_valid_ones():
    q, k, v = _qkv(SMALL)
    with pytest.raises(ValueError, match="unknown mask kind 'window'; valid: block_causal, block_diag"):
        sdpa_scales_attention(q, k, v, SMALL, "window", 0.3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernels", [None, ["flash", "efficient"], ["cudnn", "efficient"], ["efficient"]])
@pytest.mark.parametrize("group, name, kind", [("mixer", "attention", "block_causal"), ("intra", "full", "block_diag")])
def test_on_cuda_a_module_on_sdpa_scales_matches_its_reference_under_bf16_autocast(group, name, kind, kernels):
    torch.manual_seed(0)
    fast = build(group, name, dim=128, num_heads=2, backend="sdpa_scales", sdpa_kernels=kernels).cuda()
    reference = build(group, name, dim=128, num_heads=2, backend="reference").cuda()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(4, VAR.L, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, want = fast(x, VAR), reference(x, VAR)
    assert fast.backend_ran == "sdpa_scales"
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kind", ["block_causal", "block_diag"])
def test_the_kernels_asked_for_are_the_kernels_that_run_and_the_values_stay_the_reference(kind):
    """`sdpa_kernels`: SDPA runs the kernels named, in their order (here the math kernel, where SDPA itself picks
    its CPU flash kernel), forward and backward, and the result is still the dense-mask reference."""
    from torch.profiler import profile
    mask = SMALL.block_causal_mask() if kind == "block_causal" else SMALL.block_diag_mask()
    q, k, v = _qkv(SMALL)
    ref = masked_attention_ref(q, k, v, mask, 0.3)
    ran = {}
    for kernels in ((), ("math",)):
        with profile() as prof:
            out = sdpa_scales_attention(q, k, v, SMALL, kind, 0.3, together_below=9, kernels=kernels)
            out.sum().backward()
        ran[kernels] = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert any("flash_attention_for_cpu" in op for op in ran[()])
    assert any("math" in op for op in ran[("math",)]) and not any("flash" in op for op in ran[("math",)])


@pytest.mark.parametrize("together_below, kernels, message", [
    (0, None, r"attention.together_below = 0: give 1 or more"),
    (64, ["fast"], r"attention.sdpa_kernels: unknown \['fast'\]; valid: \['cudnn', 'flash', 'efficient', 'math'\]"),
    (64, ["flash"], r"attention.sdpa_kernels = \['flash'\]: the first scales attend in one masked call "
                    r"\(together_below = 64\), which needs one of \['efficient', 'math'\]")])
def test_bad_sdpa_scales_options_are_errors_naming_the_key(together_below, kernels, message):
    with pytest.raises(ValueError, match=message):
        build("mixer", "attention", dim=32, num_heads=2, together_below=together_below, sdpa_kernels=kernels)


def test_flash_alone_is_fine_where_no_scale_attends_masked():
    module = build("intra", "full", dim=32, num_heads=2, together_below=1, sdpa_kernels=["flash"])
    assert module.sdpa_kernels == ("flash",)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_kernels_asked_for_compile_into_one_graph():
    """The `sdpa_kernels` context is traced, not a graph break: a compiled forward and backward is one graph."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    module = build("mixer", "attention", dim=128, num_heads=2, backend="sdpa_scales",
                   sdpa_kernels=["flash", "efficient"]).cuda()
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, VAR.L, 128, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = torch.compile(module, backend="eager")(x, VAR)
    out.float().square().mean().backward()
    # one graph, not one frame: dynamo also counts frames it only looked at (session 29: this test counted 2 frames
    # in a process that had run other tests, on an H100, and 1 alone, on an H200)
    assert counters["stats"]["unique_graphs"] == 1 and not sum(counters["graph_break"].values()), (
        dict(counters["frames"]), dict(counters["stats"]), dict(counters["graph_break"]))
