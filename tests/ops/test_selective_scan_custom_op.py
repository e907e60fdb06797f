"""mamba_ssm's selective scan as the custom ops `varbench::selective_scan_fwd` / `selective_scan_bwd`
(varbench/ops/selective_scan/zero_state_op.py).

On CPU: the fakes promise the shapes, dtypes and strides of what the reference scan (the oracle) returns, on fake CUDA
tensors, with and without a gate, past the kernel's 2048-token chunk too; autograd reaches the backward op with a
gradient per input and none for the last state; the op bodies hand the package unit-stride tensors and return
contiguous ones equal to the reference's values and gradients (the package stood in for by a torch emulation that
checks the rules of its C++ entry points, tests/ops/selective_scan_package.py); with those bodies registered for CPU,
torch.library.opcheck passes, and dynamo and AOT autograd trace a whole Mamba-1 mixer on its kernel path, forward and
backward, into one graph (fullgraph=True) whose gradients are the reference mixer's.
On a GPU: the op equals the package's own `selective_scan_fn` and the reference in float64 in values and gradients
within the GPU parity tolerance (benchmarks/gpu_parity_mamba.py); it passes torch.library.opcheck; a Mamba-1 mixer on
its kernels compiles into one graph (fullgraph=True), forward and backward and its sampling step.
Shape legend: B batch, E channels, L tokens, N state dim, C model width.
"""

import sys
import types

import pytest
import torch
from causal_conv_package import package_backward, package_forward
from compile_checks import assert_sampling_step_compiles_into_one_graph, assert_training_compiles_into_one_graph
from selective_scan_package import package_bwd, package_fwd
from torch._subclasses.fake_tensor import FakeTensorMode

from varbench.layout import ScaleLayout
from varbench.mixers.mamba import MambaMixer
from varbench.ops.causal_conv import kernel as conv_kernel
from varbench.ops.selective_scan import zero_state_op
from varbench.ops.selective_scan.reference import selective_scan_ref
from varbench.utils.compare import rel_rms

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and mamba_ssm")
B, E, L, N = 2, 16, 30, 4
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# relative RMS against the float64 reference: benchmarks/gpu_parity_mamba.py's TOL (fp32 measured ~1e-6 there)
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def make_inputs(dtype=torch.float32, device="cpu", gate=True, length=L, seed=0):
    """u, delta, B, C, z in `dtype` as the mixer hands them (transposed (B, L, .) tensors: strided over tokens), and
    A, D, delta_bias in fp32 (parameters), in the order of `selective_scan_ref`'s arguments."""
    g = torch.Generator().manual_seed(seed)

    def tokens_last(channels, shift=0.0):
        return (torch.randn(B, length, channels, generator=g) + shift).to(device, dtype).transpose(1, 2)

    A = -torch.empty(E, N).uniform_(0.5, 4, generator=g).to(device)
    D, delta_bias = (torch.randn(E, generator=g).to(device) for _ in range(2))
    u, delta, B_, C_, z = tokens_last(E), tokens_last(E, -1.0), tokens_last(N), tokens_last(N), tokens_last(E)
    return [u, delta, A, B_, C_, D, z if gate else None, delta_bias]


def on_cuda(mode, t):
    """A fake CUDA tensor like `t` (no GPU needed): the op has a CUDA kernel only, as on a real machine."""
    return None if t is None else mode.from_tensor(t).to("cuda")


def meta(t):
    return t.shape, t.dtype, t.stride()


@pytest.mark.parametrize("length", [L, 2049])  # 2049: two of the kernel's chunks
@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fake_promises_what_the_reference_returns(dtype, gate, length):
    inputs = make_inputs(dtype=dtype, gate=gate, length=length)
    y_ref, last_ref = selective_scan_ref(*inputs, delta_softplus=True)
    with FakeTensorMode() as mode:
        fake = [on_cuda(mode, t) for t in inputs]
        y, last = zero_state_op.selective_scan_zero_state(*fake, delta_softplus=True)
        _, chunk_states, ungated = torch.ops.varbench.selective_scan_fwd(*fake, True)
    assert (y_ref.shape, y_ref.dtype) == ((B, E, length), dtype) and last_ref.dtype == torch.float32
    assert meta(y) == (y_ref.shape, dtype, (E * length, length, 1))  # contiguous, whatever the input's layout
    assert (last.shape, last.dtype) == (last_ref.shape, last_ref.dtype)
    assert (chunk_states.shape, chunk_states.dtype) == ((B, E, 1 + (length > 2048), 2 * N), torch.float32)
    assert chunk_states.is_contiguous() and ungated.is_contiguous()
    assert (ungated.shape, ungated.dtype) == ((B, E, length) if gate else (0,), dtype)


@pytest.mark.parametrize("gate", [True, False])
def test_the_backward_fake_promises_a_gradient_like_each_input(gate):
    inputs = make_inputs(dtype=torch.bfloat16, gate=gate)
    with FakeTensorMode() as mode:
        fake = [on_cuda(mode, t) for t in inputs]
        y, chunk_states, ungated = torch.ops.varbench.selective_scan_fwd(*fake, True)
        grads = torch.ops.varbench.selective_scan_bwd(y, *fake, chunk_states, ungated, True)
    expected = [(t.shape, t.dtype, t.contiguous().stride()) if t is not None else ((0,), torch.bfloat16, (1,))
                for t in inputs]
    assert [meta(g) for g in grads] == expected


@pytest.mark.parametrize("gate", [True, False])
def test_autograd_reaches_the_backward_op_with_a_gradient_per_input_and_none_for_the_last_state(gate):
    # autograd's engine needs a real device for fake CUDA tensors: fake CPU ones here (the op's fakes run on any)
    inputs = make_inputs(dtype=torch.bfloat16, gate=gate)
    with FakeTensorMode() as mode:
        leaves = [None if t is None else mode.from_tensor(t).requires_grad_(True) for t in inputs]
        y, last = zero_state_op.selective_scan_zero_state(*leaves, delta_softplus=True)
        assert type(y.grad_fn).__name__ == "GeneratedBackwardFor_varbench_selective_scan_fwd_defaultBackward"
        assert not last.requires_grad  # the kernel's backward takes no gradient of the last state
        present = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(y.float().sum(), present)
    for grad, leaf in zip(grads, present):
        assert (grad.shape, grad.dtype) == (leaf.shape, leaf.dtype)


def test_the_op_has_no_cpu_kernel():
    # never a quiet CPU computation under the kernel's name: the mixers pick the reference off the GPU
    with pytest.raises(NotImplementedError, match="varbench::selective_scan_fwd"):
        zero_state_op.selective_scan_zero_state(*make_inputs(), delta_softplus=True)


def test_b_and_c_other_than_per_token_maps_are_refused_by_name():
    u, delta, A, B_, C_, D, z, bias = make_inputs()
    with pytest.raises(ValueError, match=r"B and C of shape \(B, N, L\), got \(16, 4\)"):
        zero_state_op.selective_scan_zero_state(u, delta, A, A, C_, D, z, bias)


@pytest.fixture
def package(monkeypatch):
    """mamba_ssm's extension and causal_conv1d stood in for by their emulations (selective_scan_package.py,
    causal_conv_package.py)."""
    scan = types.ModuleType("selective_scan_cuda")
    scan.fwd, scan.bwd = package_fwd, package_bwd
    conv = types.ModuleType("causal_conv1d.cpp_functions")
    conv._causal_conv1d_fwd_cpp, conv.causal_conv1d_bwd_function = package_forward, package_backward
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", scan)
    monkeypatch.setitem(sys.modules, "causal_conv1d", types.ModuleType("causal_conv1d"))
    monkeypatch.setitem(sys.modules, "causal_conv1d.cpp_functions", conv)


@pytest.fixture
def cpu_bodies(package):
    """The scan's and the conv's op bodies registered for CPU tensors for one test (the packages emulated), so that
    dynamo and AOT autograd trace the ops on CPU as they do on a GPU, and the bodies run. Yields the names of the ops
    whose bodies ran, in order."""
    lib, ran = torch.library.Library("varbench", "IMPL"), []

    def counted(name, body):
        return lambda *args: (ran.append(name), body(*args))[1]

    for name, body in (("selective_scan_fwd", zero_state_op.scan_forward),
                       ("selective_scan_bwd", zero_state_op.scan_backward),
                       ("causal_conv1d_fwd", conv_kernel.conv_forward),
                       ("causal_conv1d_bwd", conv_kernel.conv_backward)):
        lib.impl(name, counted(name, body), "CPU")
    yield ran
    lib._destroy()


@pytest.mark.parametrize("gate", [True, False])
def test_the_op_bodies_hand_the_package_its_layout_and_return_the_references_result(package, gate):
    inputs = [None if t is None else t.double().requires_grad_(True) for t in make_inputs(gate=gate)]
    present = [t for t in inputs if t is not None]
    y_ref, last_ref = selective_scan_ref(*inputs, delta_softplus=True)
    dy = torch.randn(B, L, E, dtype=torch.float64).transpose(1, 2)  # strided over tokens, as out_proj's gradient
    expected = torch.autograd.grad(y_ref, present, dy)
    with torch.no_grad():
        y, chunk_states, ungated = zero_state_op.scan_forward(*inputs, True)
        grads = zero_state_op.scan_backward(dy, *inputs, chunk_states, ungated, True)
    assert all(t.is_contiguous() for t in (y, chunk_states, ungated, *grads))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunk_states[:, :, -1, 1::2], last_ref, rtol=0, atol=1e-12)
    got = [g for g, t in zip(grads, inputs) if t is not None]
    for name, g, e in zip([n for n, t in zip(GRAD_NAMES, inputs) if t is not None], got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10, msg=name)
    assert gate or grads[GRAD_NAMES.index("z")].numel() == 0  # an empty stand-in, None again for autograd


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_on_cpu_with_the_package_emulated(cpu_bodies, dtype, gate):
    # the fakes against what the bodies return (shapes, dtypes, strides), the schema, the autograd registration, and
    # AOT autograd with dynamic shapes; on the GPU with the package itself: test_opcheck below
    inputs = [None if t is None else t.requires_grad_(True) for t in make_inputs(dtype=dtype, gate=gate)]
    torch.library.opcheck(torch.ops.varbench.selective_scan_fwd, (*inputs, True))


def mamba_on_cpu_kernels(monkeypatch):
    """A float64 Mamba-1 mixer whose calls take the kernel path on CPU tensors (the bodies registered by cpu_bodies)."""
    torch.manual_seed(0)
    mixer = MambaMixer(16, backend="reference").double()  # E = 32 conv channels: a multiple of 8, as the conv needs
    monkeypatch.setattr(mixer, "run_backend", lambda x: "mamba_ssm")
    return mixer


def test_dynamo_and_aot_autograd_trace_a_mamba1_mixer_into_one_graph(cpu_bodies, monkeypatch):
    from torch._dynamo.utils import counters

    layout = ScaleLayout((1, 2, 3, 4))
    mixer = mamba_on_cpu_kernels(monkeypatch)
    x = torch.randn(2, layout.L, 16, dtype=torch.float64, requires_grad=True)
    leaves = [x, *mixer.parameters()]

    def loss(x):
        return mixer(x, layout).square().mean()

    with monkeypatch.context() as m:
        m.setattr(mixer, "run_backend", lambda x: "reference")
        expected = torch.autograd.grad(loss(x), leaves)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)  # a graph break raises
    got = torch.autograd.grad(compiled(x), leaves)
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["aot_autograd"]["total"] == 1  # the backward traced with the forward, not left to eager
    # the kernel path ran (the gradients alone would not tell it from the reference): the last call's bodies
    assert cpu_bodies[-4:] == ["causal_conv1d_fwd", "selective_scan_fwd", "selective_scan_bwd", "causal_conv1d_bwd"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


# ---- on a GPU ----


def cuda_leaves(dtype=torch.float32, gate=True, length=L):
    inputs = make_inputs(dtype=dtype, device="cuda", gate=gate, length=length)
    return [None if t is None else t.requires_grad_(True) for t in inputs]


def grads_of(scan, inputs, dy):
    """y, the last state and the gradients of y against dy of the inputs present."""
    y, last = scan(*inputs, delta_softplus=True)
    return [y, last, *torch.autograd.grad(y, [t for t in inputs if t is not None], dy.to(y.dtype))]


def names_of(inputs):
    return ["y", "last_state"] + [n for n, t in zip(GRAD_NAMES, inputs) if t is not None]


@CUDA
@pytest.mark.parametrize("gate", [True, False])
def test_the_op_equals_the_package_in_values_and_input_gradients(gate):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    inputs = cuda_leaves(gate=gate)
    dy = torch.randn(B, E, L, device="cuda")
    ours = grads_of(zero_state_op.selective_scan_zero_state, inputs, dy)
    theirs = grads_of(lambda *a, **k: selective_scan_fn(*a, **k, return_last_state=True), inputs, dy)
    # the same kernels on the same inputs: y, the last state, du, ddelta and dz exactly; the parameters' and B, C's
    # gradients are summed over channels or batch with atomic adds (checked against the reference below)
    for name, a, b in zip(names_of(inputs), ours, theirs):
        if name in ("y", "last_state", "u", "delta", "z"):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@CUDA
@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_op_equals_the_float64_reference_in_values_and_gradients(dtype, gate):
    inputs = cuda_leaves(dtype=dtype, gate=gate, length=680)  # VAR's 256 px sequence
    dy = torch.randn(B, E, 680, device="cuda")
    ours = grads_of(zero_state_op.selective_scan_zero_state, inputs, dy)
    inputs64 = [None if t is None else t.detach().double().requires_grad_(True) for t in inputs]
    ref = grads_of(selective_scan_ref, inputs64, dy.to(dtype))
    for name, a, r in zip(names_of(inputs), ours, ref):
        assert rel_rms(a, r) <= TOL[dtype], (name, rel_rms(a, r))


@CUDA
@pytest.mark.parametrize("length", [L, 2100])  # 2100: two of the kernel's chunks
@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype, gate, length):
    torch.library.opcheck(torch.ops.varbench.selective_scan_fwd, (*cuda_leaves(dtype, gate, length), True))


def mamba_on_its_kernels():
    torch.manual_seed(0)
    mixer = MambaMixer(64, backend="mamba_ssm").cuda()
    assert mixer.backend_on("cuda") == "mamba_ssm"
    return mixer, ScaleLayout((1, 2, 3, 4, 5))


@CUDA
def test_a_mamba1_mixer_on_its_kernels_compiles_into_one_graph_forward_and_backward():
    assert_training_compiles_into_one_graph(*mamba_on_its_kernels(), 64, TOL[torch.bfloat16])


@CUDA
def test_a_mamba1_sampling_step_on_its_kernels_compiles_into_one_graph():
    mixer, layout = mamba_on_its_kernels()
    state = mixer.init_state(2, layout, device="cuda")
    state["ssm"].normal_()  # a carried state: the closed-form correction (fused in Triton without gradients)
    state["conv"].normal_()
    assert_sampling_step_compiles_into_one_graph(mixer, layout, state, 64, TOL[torch.bfloat16])
