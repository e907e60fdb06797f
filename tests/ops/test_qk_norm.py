"""VAR's q/k L2 normalisation as Triton kernels (`varbench.ops.qk_norm.kernel`), which attention runs in training on
a GPU (`qk_norm: auto`): its q, k, v and its gradients (of the qkv output and of the temperature) are those of the
torch form (`l2_qk` with its written backward, itself checked against autograd in tests/test_l2qk_backward.py) to
rounding: no further from the fp64 values than the torch form in the same dtype is. On the CPU the kernels run in
Triton's interpreter; on a GPU compiled, under bf16 autocast and inside a compiled training step (one graph)."""

import pytest
import torch
from triton_interpreter import run_interpreted

from varbench.modules.attention import ScaleAttention
from varbench.modules.fused import NORMALIZE_EPS, L2QKTraining

# (B, L, H, d): VAR's head dim, a head dim that is no power of two, tokens that fill no whole tile
SHAPES = [(2, 37, 2, 64), (1, 5, 3, 24)]


def torch_form(qkv_BLX, temperature_1H11, heads):
    """What attention runs without the kernels: the normalisation of the q, k views, v as a view."""
    B, L, X = qkv_BLX.shape
    qkv_3BHLd = qkv_BLX.view(B, L, 3, heads, X // (3 * heads)).permute(2, 0, 3, 1, 4)
    q, k = L2QKTraining.apply(qkv_3BHLd[:2], temperature_1H11, qkv_BLX.dtype)
    return q, k, qkv_3BHLd[2]


def values_and_grads(fn, qkv, temperature, heads, dtype, device, autocast=False, unused=None):
    """q, k, v and the gradients of qkv and the temperature of a fixed random reduction of them (`unused`: an output
    the reduction leaves out, so its gradient is None)."""
    qkv = qkv.to(device, dtype).detach().requires_grad_()
    temperature = temperature.to(device, torch.float64 if dtype == torch.float64 else torch.float32)
    temperature = temperature.detach().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        outs = fn(qkv, temperature, heads)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(device, o.dtype) for o in outs]
    sum((o * w).double().sum() for i, (o, w) in enumerate(zip(outs, weights)) if i != unused).backward()
    return [o.detach().double() for o in outs] + [qkv.grad.double(), temperature.grad.double()]


def make_inputs(B, L, H, d):
    torch.manual_seed(0)
    qkv = torch.randn(B, L, 3 * H * d, dtype=torch.float64)
    qkv[0, 3, :d] = 0.0  # a zero q row
    qkv[-1, 1, H * d:H * d + d] = NORMALIZE_EPS / 100  # a k row below the eps
    return qkv, torch.rand(1, H, 1, 1, dtype=torch.float64) * 4


def excess_errors(device, dtype, autocast=False, unused=None):
    """For each shape and each of q, k, v, d qkv, d temperature: how much further from the fp64 torch form the kernels
    are than the torch form in `dtype` is, in units of `dtype`'s eps times the largest fp64 value (<= 1: as close
    as the torch form, to one rounding)."""
    from varbench.ops.qk_norm.kernel import qkv_l2_norm
    kernels = lambda qkv, t, heads: qkv_l2_norm(qkv, t, heads, NORMALIZE_EPS)  # noqa: E731
    errors = []
    for B, L, H, d in SHAPES:
        qkv, temperature = make_inputs(B, L, H, d)
        exact = values_and_grads(torch_form, qkv, temperature, H, torch.float64, "cpu", unused=unused)
        ref = values_and_grads(torch_form, qkv, temperature, H, dtype, device, autocast, unused)
        got = values_and_grads(kernels, qkv, temperature, H, dtype, device, autocast, unused)
        for e, r, k in zip(exact, ref, got):
            scale = torch.finfo(dtype).eps * e.abs().max().item()
            errors.append(((k.cpu() - e).abs().max().item() - (r.cpu() - e).abs().max().item()) / scale)
    return errors


def test_the_kernels_equal_the_torch_form_in_tritons_interpreter():
    pytest.importorskip("triton", reason="the kernels are Triton's (no Triton in this torch build)")
    script = ("import torch, test_qk_norm as t\n"
              "print(*t.excess_errors('cpu', torch.float32))\n"
              "print(*t.excess_errors('cpu', torch.float32, unused=2))\n")
    run = run_interpreted(script)
    assert run.returncode == 0, run.stderr[-3000:]
    errors = [float(v) for line in run.stdout.split("\n") if line for v in line.split()]
    assert len(errors) == 2 * 5 * len(SHAPES) and max(errors) <= 1.0, run.stdout


def written_into_cache(device, dtype) -> bool:
    """Whether `qkv_l2_norm_into` returns `qkv_l2_norm`'s q (laid out as (B, L, H, d)) and writes its k and v into a
    slice of a larger cache, for each shape, leaving every other cache entry as it was."""
    from varbench.ops.qk_norm.kernel import qkv_l2_norm, qkv_l2_norm_into
    for B, L, H, d in SHAPES:
        qkv, temperature = (t.to(device, dtype) for t in make_inputs(B, L, H, d))
        want = qkv_l2_norm(qkv, temperature, H, NORMALIZE_EPS)
        caches = [torch.full((B, H, L + 7, d), 5.0, device=device, dtype=dtype) for _ in range(2)]
        q = qkv_l2_norm_into(qkv, temperature, H, NORMALIZE_EPS, caches[0][:, :, 3:3 + L], caches[1][:, :, 3:3 + L])
        untouched = [torch.cat((c[:, :, :3], c[:, :, 3 + L:]), 2) for c in caches]
        written = [c[:, :, 3:3 + L] for c in caches]
        if not (torch.equal(q, want[0]) and q.transpose(1, 2).is_contiguous()
                and all(torch.equal(c, w) for c, w in zip(written, want[1:]))
                and all(bool((u == 5.0).all()) for u in untouched)):
            return False
    return True


def test_the_kernel_writes_k_and_v_into_a_cache_slice_in_tritons_interpreter():
    """Sampling's KV-cached step: the forward kernel stores k and v in the cache's slice of the scale."""
    pytest.importorskip("triton", reason="the kernels are Triton's (no Triton in this torch build)")
    script = "import torch, test_qk_norm as t\nprint(t.written_into_cache('cpu', torch.float32))\n"
    run = run_interpreted(script)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["True"], run.stdout


def test_the_kernel_refuses_a_cache_slice_of_another_shape_or_dtype():
    pytest.importorskip("triton", reason="the kernels are Triton's (no Triton in this torch build)")
    from varbench.ops.qk_norm.kernel import qkv_l2_norm_into
    qkv, temperature = make_inputs(1, 5, 3, 24)
    good = torch.empty(1, 3, 5, 24, dtype=torch.float64)
    for bad in (torch.empty(1, 3, 4, 24, dtype=torch.float64), torch.empty(1, 3, 5, 24),
                torch.empty(1, 3, 24, 5, dtype=torch.float64).transpose(2, 3)):
        with pytest.raises(ValueError, match=r"qkv_l2_norm: k must be a torch.float64 \(1, 3, 5, 24\) tensor"):
            qkv_l2_norm_into(qkv, temperature, 3, NORMALIZE_EPS, bad, good)


def test_qk_norm_is_checked():
    with pytest.raises(ValueError, match="qk_norm='cuda'.*auto, triton, torch"):
        ScaleAttention(32, 2, qk_norm="cuda")
    attention = ScaleAttention(32, 2, qk_norm="triton")
    with pytest.raises(ValueError, match="qk_norm=triton runs on CUDA tensors; got cpu"):
        attention.qkv(torch.randn(1, 3, 32))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_on_cuda_the_kernels_equal_the_torch_form(autocast):
    assert max(excess_errors("cuda", torch.bfloat16 if autocast else torch.float32, autocast)) <= 1.0


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_cuda_the_kernel_writes_k_and_v_into_a_cache_slice(dtype):
    assert written_into_cache("cuda", dtype)


@needs_cuda
def test_on_cuda_attention_trains_through_the_kernels_in_one_compiled_graph():
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    kernels, reference = (ScaleAttention(128, 2, qk_norm=name).cuda() for name in ("auto", "torch"))
    reference.load_state_dict(kernels.state_dict())
    x = torch.randn(4, 50, 128, device="cuda")
    weights = torch.randn(3, 4, 2, 50, 64, device="cuda")  # a fixed random reduction (no cancelling gradients)
    loss = lambda m, x: sum((t * w).sum() for t, w in zip(m.qkv(x), weights))  # noqa: E731
    torch._dynamo.reset()
    counters.clear()
    for module, run in ((kernels, torch.compile(loss, fullgraph=True)), (reference, loss)):
        run(module, x).backward()  # in fp32: bf16's values are the test above's
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    wants = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert sorted(wants) == sorted(n for n, p in kernels.named_parameters() if p.grad is not None)  # not proj
    for name, p in kernels.named_parameters():  # the same gradients to fp32 rounding (sums of 200 tokens)
        if name in wants:
            assert (p.grad - wants[name]).abs().max() <= 1e-5 * wants[name].abs().max(), name
