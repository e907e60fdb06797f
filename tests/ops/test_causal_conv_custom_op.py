"""causal_conv1d's kernel as the custom ops `varbench::causal_conv1d_fwd` / `causal_conv1d_bwd`
(varbench/ops/causal_conv/kernel.py).

On CPU: the fakes promise the shapes, dtypes and strides that the reference conv (the oracle) returns, on fake CUDA
tensors, with and without a tail, through both ways the tail enters; autograd reaches the backward op with a gradient
per input; the op bodies hand the package its channel-last layout and return contiguous tensors equal to the reference's
(the package stood in for by a torch emulation that checks the layout rules of its C++ entry points), and a slice the
kernel can read (in_proj's) reaches the package uncopied; with those bodies registered for CPU, torch.library.opcheck
passes and dynamo and AOT autograd trace the conv on a sliced input into one graph (fullgraph=True) whose gradients are
the reference's.
On a GPU: the op equals the package's own `causal_conv1d_fn`, and itself on a slice's contiguous copy, and the reference
in float64 in values and gradients within the GPU parity tolerance (benchmarks/gpu_parity_mamba.py), also fed one scale
at a time; it passes torch.library.opcheck; a Mamba2 mixer on its kernels compiles into one graph (fullgraph=True),
forward and backward and its sampling step.
Shape legend: B batch, L tokens, D channels, W kernel width.
"""

import sys
import types

import pytest
import torch
from causal_conv_package import package_backward, package_forward
from compile_checks import assert_sampling_step_compiles_into_one_graph, assert_training_compiles_into_one_graph
from torch._subclasses.fake_tensor import FakeTensorMode

from varbench.layout import ScaleLayout
from varbench.ops.causal_conv import kernel
from varbench.ops.causal_conv.reference import causal_conv1d_ref
from varbench.utils.compare import rel_rms

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and causal_conv1d")
B, L, D = 2, 30, 16
# relative RMS against the float64 reference: benchmarks/gpu_parity_mamba.py's TOL (fp32 measured ~1e-6 there)
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def make_inputs(W=4, dtype=torch.float32, device="cpu", seed=0, length=L):
    """x in `dtype` (bf16: what autocast hands the conv), an fp32 weight and bias (parameters), a tail like x."""
    g = torch.Generator().manual_seed(seed)
    x, w, b, tail = (torch.randn(*s, generator=g) for s in ((B, length, D), (D, W), (D,), (B, W - 1, D)))
    return x.to(device, dtype), w.to(device), b.to(device), tail.to(device, dtype)


def on_cuda(mode, t):
    """A fake CUDA tensor like `t` (no GPU needed): the op has a CUDA kernel only, as on a real machine."""
    return mode.from_tensor(t).to("cuda")


def meta(t):
    return t.shape, t.dtype, t.stride()


@pytest.mark.parametrize("via", kernel.VIA)
@pytest.mark.parametrize("with_tail", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fake_promises_what_the_reference_returns(dtype, with_tail, via):
    x, w, b, tail = make_inputs(dtype=dtype)
    tail = tail if with_tail else None
    y_ref, tail_ref = causal_conv1d_ref(x, w, b, tail, activation="silu")
    x_wide = torch.cat([x, x], dim=-1)
    with FakeTensorMode() as mode:
        x_wide = on_cuda(mode, x_wide)[..., :D]  # a slice, as in_proj's split hands the conv
        y, new_tail = kernel.causal_conv1d(x_wide, on_cuda(mode, w), on_cuda(mode, b),
                                           on_cuda(mode, tail) if with_tail else None, activation="silu", via=via)
    assert (y_ref.shape, y_ref.dtype) == ((B, L, D), dtype)
    assert meta(y) == ((B, L, D), dtype, (L * D, D, 1))  # contiguous, whatever the input's layout
    assert (new_tail.shape, new_tail.dtype) == (tail_ref.shape, tail_ref.dtype)


@pytest.mark.parametrize("with_tail", [False, True])
def test_the_backward_fake_promises_a_gradient_like_each_input(with_tail):
    x, w, b, tail = make_inputs(dtype=torch.bfloat16)
    with FakeTensorMode() as mode:
        fake = [on_cuda(mode, t) for t in (x, w, b, tail if with_tail else None) if t is not None]
        grads = torch.ops.varbench.causal_conv1d_bwd(fake[0], *fake, *([] if with_tail else [None]), True)
    expected = [meta(t) for t in (x, w, b)] + ([meta(tail)] if with_tail else [((0,), x.dtype, (1,))])
    assert [meta(g) for g in grads] == expected


@pytest.mark.parametrize("with_tail", [False, True])
def test_autograd_reaches_the_backward_op_with_a_gradient_per_input(with_tail):
    # autograd's engine needs a real device for fake CUDA tensors: fake CPU ones here (the op's fakes run on any)
    x, w, b, tail = make_inputs(dtype=torch.bfloat16)
    with FakeTensorMode() as mode:
        leaves = [mode.from_tensor(t).requires_grad_(True) for t in (x, w, b) + ((tail,) if with_tail else ())]
        y, new_tail = kernel.causal_conv1d(*leaves[:3], leaves[3] if with_tail else None, activation="silu")
        assert type(y.grad_fn).__name__ == "GeneratedBackwardFor_varbench_causal_conv1d_fwd_defaultBackward"
        grads = torch.autograd.grad(y.float().sum() + new_tail.float().sum(), leaves)
    for grad, leaf in zip(grads, leaves):
        assert (grad.shape, grad.dtype) == (leaf.shape, leaf.dtype)


def test_the_op_has_no_cpu_kernel():
    # never a quiet CPU computation under the kernel's name: the mixers pick the reference off the GPU
    with pytest.raises(NotImplementedError, match="varbench::causal_conv1d_fwd"):
        kernel.causal_conv1d(*make_inputs())


@pytest.mark.parametrize("D_bad,W_bad,activation,via,match", [
    (12, 4, None, "pad", "divisible by 8, got 12"), (16, 5, None, "pad", r"widths \(2, 3, 4\), got 5"),
    (16, 4, "gelu", "pad", "activation must be None or 'silu'"), (16, 4, None, "both", "via must be one of")])
def test_what_the_kernel_cannot_take_is_refused_by_name(D_bad, W_bad, activation, via, match):
    x, w = torch.randn(B, L, D_bad), torch.randn(D_bad, W_bad)
    with pytest.raises(ValueError, match=match):
        kernel.causal_conv1d(x, w, activation=activation, via=via)


@pytest.fixture
def package(monkeypatch):
    """causal_conv1d stood in for by its emulation (tests/ops/causal_conv_package.py)."""
    cpp = types.ModuleType("causal_conv1d.cpp_functions")
    cpp._causal_conv1d_fwd_cpp, cpp.causal_conv1d_bwd_function = package_forward, package_backward
    monkeypatch.setitem(sys.modules, "causal_conv1d", types.ModuleType("causal_conv1d"))
    monkeypatch.setitem(sys.modules, "causal_conv1d.cpp_functions", cpp)


@pytest.mark.parametrize("with_tail", [False, True])
def test_the_op_bodies_hand_the_package_its_layout_and_return_the_references_result(package, with_tail):
    x, w, b, tail = (t.double() for t in make_inputs())
    # x, tail and dy with strided channels: layouts the kernel's channel-last path refuses
    x_BDL = x.transpose(1, 2).contiguous().requires_grad_(True)
    x_strided = x_BDL.transpose(1, 2)
    tail = tail.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True) if with_tail else None
    leaves = [x_BDL, w.requires_grad_(True), b.requires_grad_(True)] + ([tail] if with_tail else [])
    y_ref, _ = causal_conv1d_ref(x_strided, w, b, tail, activation="silu")
    dy = torch.randn(B, D, L, dtype=y_ref.dtype).transpose(1, 2)
    expected = torch.autograd.grad(y_ref, leaves, dy)
    y = kernel.conv_forward(x_strided, w, b, tail, True)
    with FakeTensorMode() as mode:
        promised = torch.ops.varbench.causal_conv1d_fwd(*(on_cuda(mode, t) if t is not None else None
                                                          for t in (x_strided, w, b, tail)), True)
    assert meta(y) == meta(promised) and y.is_contiguous()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    dx, dw, db, dtail = kernel.conv_backward(dy, x_strided, w, b, tail, True)
    assert all(g.is_contiguous() for g in (dx, dw, db, dtail))
    torch.testing.assert_close(dx, expected[0].transpose(1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close([dw, db], list(expected[1:3]), rtol=0, atol=1e-12)
    if with_tail:
        torch.testing.assert_close(dtail, expected[3], rtol=0, atol=1e-12)
    else:
        assert dtail.numel() == 0  # an empty stand-in, None again for autograd


@pytest.mark.parametrize("offset,copied", [(0, False), (8, False), (3, True)])
def test_a_slice_of_in_projs_output_reaches_the_package_uncopied_where_the_kernel_can_read_it(package, monkeypatch,
                                                                                               offset, copied):
    # Mamba2's xBC: D channels at `offset` in rows of `wide` (offset 3: a start the kernel's 16-byte loads refuse)
    _, w, b, _ = make_inputs()
    seen, x = {}, torch.randn(B, L, 40)[..., offset:offset + D]
    forward, backward = package_forward, package_backward

    def spy_forward(x_BDL, *args):
        seen["fwd"] = x_BDL.data_ptr()
        forward(x_BDL, *args)

    def spy_backward(x_BDL, weight, bias, dout, *args):
        seen["bwd"] = x_BDL.data_ptr()
        return backward(x_BDL, weight, bias, dout, *args)

    cpp = sys.modules["causal_conv1d.cpp_functions"]
    monkeypatch.setattr(cpp, "_causal_conv1d_fwd_cpp", spy_forward)
    monkeypatch.setattr(cpp, "causal_conv1d_bwd_function", spy_backward)
    y = kernel.conv_forward(x, w, b, None, True)
    dx, *_ = kernel.conv_backward(torch.randn(B, L, D), x, w, b, None, True)
    assert (seen["fwd"] == x.data_ptr(), seen["bwd"] == x.data_ptr()) == (not copied,) * 2
    assert y.is_contiguous() and dx.is_contiguous()
    torch.testing.assert_close(y, causal_conv1d_ref(x, w, b, None, activation="silu")[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_tail", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_on_cpu_with_the_package_emulated(cpu_bodies, dtype, with_tail):
    # the fakes against what the bodies return (shapes, dtypes, strides), the schema, the autograd registration, and
    # AOT autograd with dynamic shapes; on the GPU with the package itself: test_opcheck below
    x, w, b, tail = make_inputs(dtype=dtype)
    leaves = [t.requires_grad_(True) for t in (x, w, b, tail)]
    torch.library.opcheck(torch.ops.varbench.causal_conv1d_fwd, (*leaves[:3], leaves[3] if with_tail else None, True))


# ---- on a GPU ----


def cuda_leaves(W=4, dtype=torch.float32, with_tail=True, length=L):
    x, w, b, tail = make_inputs(W=W, dtype=dtype, device="cuda", length=length)
    leaves = [x, w, b] + ([tail] if with_tail else [])
    for t in leaves:
        t.requires_grad_(True)
    return leaves


def grads_of(fn, leaves, dy):
    y, _ = fn(*leaves[:3], leaves[3] if len(leaves) == 4 else None, activation="silu")
    return [y, *torch.autograd.grad(y, leaves, dy.to(y.dtype))]


@CUDA
@pytest.mark.parametrize("with_tail", [False, True])
def test_the_op_equals_the_package_in_values_and_input_gradients(with_tail):
    from causal_conv1d import causal_conv1d_fn

    leaves = cuda_leaves(with_tail=with_tail)
    x, w, b = leaves[:3]
    tail = leaves[3].contiguous().transpose(1, 2) if with_tail else None
    y_lib = causal_conv1d_fn(x.contiguous().transpose(1, 2), w, b, initial_states=tail, activation="silu")
    dy = torch.randn_like(x)
    y_lib = y_lib.transpose(1, 2)
    ours = grads_of(kernel.causal_conv1d, leaves, dy)
    theirs = [y_lib, *torch.autograd.grad(y_lib, leaves, dy)]
    # the same kernels on the same inputs: y, dx and dtail exactly; dweight and dbias are summed over sequence
    # chunks with atomic adds (checked against the reference below)
    for i in (0, 1) + ((4,) if with_tail else ()):
        torch.testing.assert_close(ours[i], theirs[i], rtol=0, atol=0)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_a_slice_of_a_wider_tensor_the_op_equals_itself_on_the_contiguous_copy(dtype):
    # in_proj's xBC slice, read in place by the kernel's channel-last path: the same y and dx to the bit
    _, w, b, _ = make_inputs(device="cuda")
    x_wide = torch.randn(B, 680, 5 * D, device="cuda", dtype=dtype)
    x_slice = x_wide[..., 2 * D:3 * D]
    dy = torch.randn(B, 680, D, device="cuda", dtype=dtype)
    results = []
    for x in (x_slice, x_slice.contiguous()):
        x = x.detach().requires_grad_(True)
        y, _ = kernel.causal_conv1d(x, w, b, None, activation="silu")
        results.append((y, *torch.autograd.grad(y, x, dy)))
    assert results[0][0].is_contiguous() and results[0][1].is_contiguous()
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@CUDA
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_tail", [False, True])
def test_the_op_equals_the_float64_reference_in_values_and_gradients(W, dtype, with_tail):
    leaves = cuda_leaves(W=W, dtype=dtype, with_tail=with_tail, length=680)  # VAR's 256 px sequence
    dy = torch.randn(B, 680, D, device="cuda")
    ours = grads_of(kernel.causal_conv1d, leaves, dy)
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = grads_of(causal_conv1d_ref, leaves64, dy.to(dtype))
    for name, a, r in zip(["y", "dx", "dweight", "dbias", "dtail"], ours, ref):
        assert rel_rms(a, r) <= TOL[dtype], (name, rel_rms(a, r))


@CUDA
@pytest.mark.parametrize("via", kernel.VIA)
def test_fed_one_scale_at_a_time_the_op_equals_one_reference_pass(via):
    layout = ScaleLayout.for_resolution(256)  # its first scale has 1 token: shorter than the tail
    x, w, b, _ = make_inputs(device="cuda", length=layout.L)
    y64, tail64 = causal_conv1d_ref(x.double(), w.double(), b.double(), activation="silu")
    tail, ys = None, []
    for sl in layout.segments():
        y, tail = kernel.causal_conv1d(x[:, sl], w, b, tail, activation="silu", via=via)
        ys.append(y)
    assert rel_rms(torch.cat(ys, dim=1), y64) <= TOL[torch.float32]
    torch.testing.assert_close(tail, tail64.float(), rtol=0, atol=0)


@CUDA
@pytest.mark.parametrize("with_tail", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype, with_tail):
    x, w, b, *tail = cuda_leaves(dtype=dtype, with_tail=with_tail)
    torch.library.opcheck(torch.ops.varbench.causal_conv1d_fwd, (x, w, b, tail[0] if tail else None, True))


def mamba2_on_its_kernels():
    from varbench.mixers.mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    mixer = Mamba2Mixer(64, backend="mamba_ssm").cuda()  # F = 2 * 64 + 2 * 64 = 256 conv channels
    assert mixer.backend_on("cuda") == "mamba_ssm"
    return mixer, ScaleLayout((1, 2, 3, 4, 5))


@CUDA
def test_a_mamba2_mixer_on_its_kernels_compiles_into_one_graph_forward_and_backward():
    assert_training_compiles_into_one_graph(*mamba2_on_its_kernels(), 64, TOL[torch.bfloat16])


@CUDA
def test_compiled_as_training_compiles_the_conv_reads_in_projs_output_in_place():
    # M-VAR-d16's in_proj rows: 4256 channels (8512 bytes). Inductor's comprehensive padding stretches them to 4288,
    # and then copies the conv's slice back to the strides traced eagerly before the op (session 36); the training
    # compile turns padding off (varbench.training.loop.INDUCTOR_OPTIONS), so the op reads a view of the GEMM's output
    from torch._inductor.utils import run_and_get_code

    from varbench.mixers.mamba2 import Mamba2Mixer
    from varbench.training.loop import compile_options

    mixer, layout = Mamba2Mixer(1024, backend="mamba_ssm").cuda(), ScaleLayout((1, 2, 3, 4))
    x = torch.randn(2, layout.L, 1024, device="cuda")

    def forward(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return mixer(x, layout)

    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(forward, **compile_options()), x)
    call = codes[0][codes[0].index("def call("):]
    assert call.split("varbench.causal_conv1d_fwd.default(", 1)[1].startswith("reinterpret_tensor(")


@CUDA
def test_a_mamba2_sampling_step_on_its_kernels_compiles_into_one_graph():
    mixer, layout = mamba2_on_its_kernels()
    state = mixer.init_state(2, layout, device="cuda")
    state["conv"].normal_()  # a carried tail: the kernel's initial_states path
    assert_sampling_step_compiles_into_one_graph(mixer, layout, state, 64, TOL[torch.bfloat16])


@pytest.fixture
def cpu_bodies(package):
    """The ops' bodies registered for CPU tensors for one test (the package emulated), so that dynamo and AOT autograd
    trace the ops on CPU as they do on a GPU, and the bodies run."""
    lib = torch.library.Library("varbench", "IMPL")
    lib.impl("causal_conv1d_fwd", kernel.conv_forward, "CPU")
    lib.impl("causal_conv1d_bwd", kernel.conv_backward, "CPU")
    yield
    lib._destroy()


def test_dynamo_and_aot_autograd_trace_the_op_into_one_graph(cpu_bodies):
    from torch._dynamo.utils import counters

    x, w, b, tail = (t.double() for t in make_inputs())
    leaves = [torch.cat([x, x], dim=-1), w, b, tail]
    for t in leaves:
        t.requires_grad_(True)

    def loss(conv, x_wide, w, b, tail):
        y, new_tail = conv(x_wide[..., D:], w, b, tail, activation="silu")  # a slice, as in_proj's split hands it
        return y.square().mean() + new_tail.square().mean()

    expected = torch.autograd.grad(loss(causal_conv1d_ref, *leaves), leaves)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(lambda *t: loss(kernel.causal_conv1d, *t), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
