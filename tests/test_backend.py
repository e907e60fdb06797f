"""The kernel-dispatch convention (varbench/ops/backend.py): `auto` decides per call from the input's device and
records what ran; a named kernel on CPU tensors is an error, never a quiet run of the reference."""

from __future__ import annotations

import pytest
import torch

import varbench.intra.full
import varbench.intra.local
import varbench.mixers.attention
import varbench.mixers.linear_rnn
import varbench.mixers.mamba
from varbench.layout import ScaleLayout
from varbench.ops.backend import KernelChoice, pick_backend, resolve_backend
from varbench.registry import build

LAYOUT = ScaleLayout((1, 2))
DIM, HEADS = 32, 2
ALWAYS = {"fake": lambda: True}


def test_auto_picks_the_kernel_on_cuda_and_the_reference_elsewhere():
    assert pick_backend("auto", ("fake",), torch.device("cuda"), "m") == "fake"
    assert pick_backend("auto", ("fake",), torch.device("cpu"), "m") == "reference"
    assert pick_backend("auto", (), torch.device("cuda"), "m") == "reference"


def test_a_named_kernel_on_a_cpu_tensor_is_an_error():
    with pytest.raises(ValueError, match="'fake' runs on CUDA tensors, got tensors on cpu"):
        pick_backend("fake", ("fake",), torch.device("cpu"), "m")


def test_a_named_kernel_that_cannot_run_here_is_refused_when_built():
    with pytest.raises(ValueError, match="'fake' is not available on this machine"):
        resolve_backend("fake", {"fake": lambda: False}, "m")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        resolve_backend("nope", ALWAYS, "m")


def test_the_backend_that_ran_is_recorded():
    module = KernelChoice()
    module.choose_backend("auto", ALWAYS, "m")
    assert module.backend_ran is None
    assert module.run_backend(torch.zeros(1)) == "reference" and module.backend_ran == "reference"


# every module with kernels: (group, name, backend to name, the module whose availability check is patched)
KERNELS = [("mixer", "attention", "flex", varbench.mixers.attention),
           ("mixer", "gla", "fla", varbench.mixers.linear_rnn),
           ("intra", "local", "flex", varbench.intra.local),
           ("intra", "full", "flex", varbench.intra.full)]
# kernels only a named backend runs ("auto" prefers the ones above)
NAMED_ONLY = [("mixer", "attention", "sdpa_scales", varbench.mixers.attention),
              ("intra", "full", "sdpa_scales", varbench.intra.full)]


def _pretend_installed(monkeypatch, module):
    monkeypatch.setattr(module, "cuda_and", lambda *packages: (lambda: True))  # as on a CUDA machine with the library


@pytest.mark.parametrize("group, name, kernel, module", KERNELS + NAMED_ONLY)
def test_a_module_built_for_a_kernel_refuses_cpu_tensors(monkeypatch, group, name, kernel, module):
    _pretend_installed(monkeypatch, module)
    m = build(group, name, dim=DIM, num_heads=HEADS, backend=kernel)
    with pytest.raises(ValueError, match=f"'{kernel}' runs on CUDA tensors"):
        m(torch.randn(1, LAYOUT.L, DIM), LAYOUT)


@pytest.mark.parametrize("group, name, kernel, module", KERNELS)
def test_auto_on_a_kernel_machine_runs_the_reference_on_cpu_tensors(monkeypatch, group, name, kernel, module):
    _pretend_installed(monkeypatch, module)
    torch.manual_seed(0)
    auto = build(group, name, dim=DIM, num_heads=HEADS)
    torch.manual_seed(0)
    reference = build(group, name, dim=DIM, num_heads=HEADS, backend="reference")
    x = torch.randn(1, LAYOUT.L, DIM)
    assert torch.equal(auto(x, LAYOUT), reference(x, LAYOUT))
    assert auto.backend_ran == "reference" and auto.backend_on("cuda") == kernel


def test_mamba_built_for_its_kernel_refuses_cpu_tensors(monkeypatch):
    monkeypatch.setitem(varbench.mixers.mamba.KERNELS, "mamba_ssm", lambda: True)
    m = build("mixer", "mamba", dim=DIM, num_heads=HEADS, backend="mamba_ssm")
    with pytest.raises(ValueError, match="'mamba_ssm' runs on CUDA tensors"):
        m(torch.randn(1, LAYOUT.L, DIM), LAYOUT)


def test_mamba2_fused_under_auto_refuses_cpu_tensors(monkeypatch):
    import varbench.mixers.mamba2
    monkeypatch.setitem(varbench.mixers.mamba2.KERNELS, "mamba_ssm", lambda: True)
    m = build("mixer", "mamba2", dim=DIM, num_heads=HEADS, headdim=16, fused=True)
    with pytest.raises(ValueError, match="fused kernel, on CUDA only"):
        m(torch.randn(1, LAYOUT.L, DIM), LAYOUT)


@pytest.mark.parametrize("op", ["gla", "delta_rule"])
def test_the_fla_ops_refuse_cpu_tensors(op):
    from varbench.ops import linear_rnn
    q = k = v = torch.randn(1, 4, 2, 8)
    extra = {"beta": torch.rand(1, 4, 2)} if op == "delta_rule" else {}
    with pytest.raises(ValueError, match="'fla' runs on CUDA tensors"):
        getattr(linear_rnn, op)(q, k, v, backend="fla", **extra)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_runs_the_kernel_on_cuda_tensors_and_the_reference_on_cpu_ones():
    m = build("mixer", "attention", dim=DIM, num_heads=HEADS)  # flex attention: torch alone
    x = torch.randn(1, LAYOUT.L, DIM)
    m.cuda()(x.cuda(), LAYOUT)
    assert m.backend_ran == "flex"
    m.cpu()(x, LAYOUT)
    assert m.backend_ran == "reference"


def test_a_model_names_the_backend_its_mixers_run_never_auto():
    """Records (bench, train) take `mixer_backend`: "auto" there would hide which code was timed."""
    from helpers import tiny_model
    model = tiny_model("gla")  # backend auto, on the CPU: the reference before and after a call
    assert model.blocks[0].mixer.backend == "auto" and model.mixer_backend == "reference"
    model(torch.tensor([1, 2]), torch.randn(2, model.layout.L - 1, model.latent_dim))
    assert model.blocks[0].mixer.backend_ran == "reference" == model.mixer_backend


def test_a_kernel_check_on_a_cuda_machine_accepts_a_stand_in_package_without_a_spec(monkeypatch):
    """The CPU emulations of mamba_ssm / causal_conv1d sit in sys.modules without a __spec__; on a CUDA machine the
    kernel check reaches `has_module`, where importlib's find_spec raised ValueError (GPU run of session 9)."""
    import types

    from varbench.ops.backend import cuda_and
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(__import__("sys").modules, "stand_in_kernel_pkg", types.ModuleType("stand_in_kernel_pkg"))
    assert cuda_and("stand_in_kernel_pkg")()
    assert not cuda_and("no_such_kernel_pkg_installed")()
