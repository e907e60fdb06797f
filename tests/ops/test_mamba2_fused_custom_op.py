"""Mamba2's fused layer (`mamba_split_conv1d_scan_combined`, fused=True) as the custom ops `varbench::mamba2_fused_fwd`
/ `mamba2_fused_bwd` (varbench/ops/ssd/fused_op.py).

On CPU: the fakes promise the shapes and dtypes of the layer's output and of the package's intermediates, on fake CUDA
tensors; the op has no CPU kernel; with the package's Function stood in for by an emulation that computes with the
references and checks what the bodies hand it (tests/ops/mamba2_fused_package.py), a fused Mamba2 mixer through the
ops equals the reference mixer in float64, values and gradients, torch.library.opcheck passes, and dynamo and AOT
autograd trace the mixer, forward and backward, into one graph (fullgraph=True) with the reference's gradients.
On a GPU: the op equals the package's own function in values and gradients; it passes torch.library.opcheck; a fused
Mamba2 mixer compiles into one graph (fullgraph=True), forward and backward.
Shape legend: B batch, L tokens, C model width, Z in_proj outputs, H heads, P head dim, G groups.
"""

import sys
import types

import pytest
import torch
from compile_checks import assert_training_compiles_into_one_graph
from mamba2_fused_package import MambaSplitConv1dScanCombinedFn, layer
from torch._subclasses.fake_tensor import FakeTensorMode

from varbench.layout import ScaleLayout
from varbench.mixers.mamba2 import Mamba2Mixer
from varbench.ops.ssd import fused_op
from varbench.utils.compare import rel_rms

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and mamba_ssm")
LAYOUT = ScaleLayout((1, 2, 3, 4))  # 30 tokens: four of the chunks below
DIM, CHUNK = 32, 8
# relative RMS against the float64 reference: benchmarks/gpu_parity_mamba.py's TOL (fp32 measured ~1e-6 there)
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def make_mixer(dtype=torch.float64, device="cpu"):
    """A Mamba2 mixer with 2 groups and 4 heads of 16 channels (E = 64), its parameters moved off their init."""
    torch.manual_seed(0)
    mixer = Mamba2Mixer(DIM, backend="reference", d_state=16, headdim=16, ngroups=2, chunk_size=CHUNK)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return mixer.to(device, dtype)


def op_args(mixer, x_BLC):
    """The fused op's arguments as `Mamba2Mixer._fused_forward` builds them."""
    return (mixer.in_proj(x_BLC), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, mixer.dt_bias,
            -torch.exp(mixer.A_log), mixer.D, mixer.norm.weight, mixer.out_proj.weight.to(x_BLC.dtype), CHUNK,
            mixer.norm.eps, mixer.headdim, mixer.ngroups, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fakes_promise_the_layers_output_and_the_packages_intermediates(dtype):
    mixer = make_mixer(torch.float32)
    with torch.no_grad():
        args = [a.detach().to(dtype if i in (0, 7) else a.dtype) if torch.is_tensor(a) else a
                for i, a in enumerate(op_args(mixer, torch.randn(2, 30, DIM)))]
        expected = layer(*args[:8], CHUNK, mixer.norm.eps, 16, 2, False)  # the references: (B, L, C), (B, L, H, P)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a).to("cuda") if torch.is_tensor(a) else a for a in args]
        outputs = torch.ops.varbench.mamba2_fused_fwd(*fake)
        grads = torch.ops.varbench.mamba2_fused_bwd(outputs[0], *fake[:8], *outputs[1:], *fake[8:])
    assert [(o.shape, o.dtype) for o in outputs] == [(e.shape, dtype) for e in expected[:2]] + [((2 * 2 * 30,),
                                                                                                 torch.float32)]
    assert expected[2].shape == outputs[2].shape and all(o.is_contiguous() for o in outputs)
    assert [(g.shape, g.dtype) for g in grads] == [(a.shape, a.dtype) for a in args[:8]]


def test_the_op_has_no_cpu_kernel():
    # never a quiet CPU computation under the kernel's name: fused=True refuses CPU tensors before this
    mixer = make_mixer(torch.float32)
    with pytest.raises(NotImplementedError, match="varbench::mamba2_fused_fwd"):
        fused_op.mamba2_fused_forward(*op_args(mixer, torch.randn(1, 30, DIM))[:6], CHUNK, mixer.norm.weight,
                                      mixer.norm.eps, mixer.out_proj.weight, 16, 2)


@pytest.fixture
def cpu_bodies(monkeypatch):
    """The package's Function stood in for by its emulation, and the ops' bodies registered for CPU tensors for one
    test, so that dynamo and AOT autograd trace the ops on CPU as they do on a GPU, and the bodies run. Yields the
    names of the ops whose bodies ran."""
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    combined = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    combined.MambaSplitConv1dScanCombinedFn = MambaSplitConv1dScanCombinedFn
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.triton.ssd_combined", combined)
    lib, ran = torch.library.Library("varbench", "IMPL"), []

    def counted(name, body):
        return lambda *args: (ran.append(name), body(*args))[1]

    lib.impl("mamba2_fused_fwd", counted("fwd", fused_op.fused_forward), "CPU")
    lib.impl("mamba2_fused_bwd", counted("bwd", fused_op.fused_backward), "CPU")
    yield ran
    lib._destroy()


def fused_on_cpu():
    """A float64 mixer and the same mixer on the fused path, which CPU tensors then take (the bodies registered)."""
    reference, fused = make_mixer(), make_mixer()
    fused.fused, fused.run_backend = True, lambda x: "mamba_ssm"
    return reference, fused


def loss_and_grads(mixer, x, compile_it=False):
    def loss(x):
        return mixer(x, LAYOUT).square().mean()

    fn = torch.compile(loss, backend="aot_eager", fullgraph=True) if compile_it else loss  # a graph break raises
    return torch.autograd.grad(fn(x), [x, *mixer.parameters()])


def test_a_fused_mixer_through_the_ops_equals_the_reference_mixer(cpu_bodies):
    reference, fused = fused_on_cpu()
    x = torch.randn(2, LAYOUT.L, DIM, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fused(x, LAYOUT), reference(x, LAYOUT), rtol=0, atol=1e-12)
    torch.testing.assert_close(loss_and_grads(fused, x), loss_and_grads(reference, x), rtol=0, atol=1e-12)
    assert cpu_bodies == ["fwd", "fwd", "bwd"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_on_cpu_with_the_package_emulated(cpu_bodies, dtype):
    mixer = make_mixer(torch.float32)
    with torch.no_grad():
        args = [a.to(dtype) if i in (0, 7) else a for i, a in enumerate(op_args(mixer, torch.randn(2, 30, DIM)))]
    args = [a.detach().requires_grad_(True) if torch.is_tensor(a) else a for a in args]
    torch.library.opcheck(torch.ops.varbench.mamba2_fused_fwd, tuple(args))


def test_dynamo_and_aot_autograd_trace_a_fused_mixer_into_one_graph(cpu_bodies):
    from torch._dynamo.utils import counters

    reference, fused = fused_on_cpu()
    x = torch.randn(2, LAYOUT.L, DIM, dtype=torch.float64, requires_grad=True)
    expected = loss_and_grads(reference, x)
    torch._dynamo.reset()
    counters.clear()
    got = loss_and_grads(fused, x, compile_it=True)
    assert counters["stats"]["unique_graphs"] == 1 and counters["aot_autograd"]["total"] == 1
    assert cpu_bodies[-2:] == ["fwd", "bwd"]  # the fused path ran, not the reference
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# ---- on a GPU ----


def fused_on_its_kernels():
    """A fused Mamba2 mixer on its kernels, with make_mixer's parameters."""
    fused = Mamba2Mixer(DIM, backend="mamba_ssm", d_state=16, headdim=16, ngroups=2, chunk_size=CHUNK,
                        fused=True).cuda()
    fused.load_state_dict(make_mixer(torch.float32, "cuda").state_dict())
    return fused


@CUDA
def test_the_op_equals_the_package_in_values_and_gradients():
    # against the float64 reference: the CPU tests (the plumbing) and benchmarks/gpu_parity_mamba.py (the package,
    # with Triton's TF32 dots off: on here, they are only ~1e-3 accurate)
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined

    fused = fused_on_its_kernels()
    x = torch.randn(2, LAYOUT.L, DIM, device="cuda", requires_grad=True)
    leaves = [x, *fused.parameters()]
    args = op_args(fused, x)
    y_lib = mamba_split_conv1d_scan_combined(*args[:6], CHUNK, activation="silu", rmsnorm_weight=args[6],
                                             rmsnorm_eps=args[9], outproj_weight=args[7], headdim=16, ngroups=2,
                                             norm_before_gate=False)
    y = fused(x, LAYOUT)
    torch.testing.assert_close(y, y_lib, rtol=0, atol=0)  # the same kernels on the same inputs
    dy = torch.randn_like(y)
    ours, theirs = torch.autograd.grad(y, leaves, dy), torch.autograd.grad(y_lib, leaves, dy)
    for a, b in zip(ours, theirs):
        # the backward reduces over chunks and channels with atomic adds: the package differs from itself in the
        # last bits (test_ssd_custom_op.py measured 1.9e-7 relative for the SSD scan's)
        assert rel_rms(a, b) <= TOL[torch.float32], rel_rms(a, b)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    fused = fused_on_its_kernels()
    with torch.no_grad():
        args = [a.to(dtype) if i in (0, 7) else a for i, a in enumerate(op_args(fused, torch.randn(2, 30, DIM,
                                                                                                 device="cuda")))]
    args = [a.detach().requires_grad_(True) if torch.is_tensor(a) else a for a in args]
    torch.library.opcheck(torch.ops.varbench.mamba2_fused_fwd, tuple(args))


@CUDA
def test_a_fused_mamba2_mixer_compiles_into_one_graph_forward_and_backward():
    assert_training_compiles_into_one_graph(fused_on_its_kernels(), LAYOUT, DIM, TOL[torch.bfloat16])
