"""Mamba-1's CPU scan (varbench/ops/selective_scan/cpu.py, backend "cpu_scan") against the reference, the oracle:
values, final state and the gradients of every input, and the Mamba mixer that runs it under "auto" on the CPU.

Shape legend: B batch, E channels, L tokens, N state dim, C model width.
Tolerances: both run the same recurrence in float64, summing in another order (the backward is hand-written), so
they agree to 4e-16 (measured, max over the 11 tensors); 1e-10 leaves rounding room and still fails any wrong term.
float32 at the tiny model's shape (130 tokens, N 16): at most 2e-7 of the largest value (measured); bound 1e-6.
"""

import pytest
import torch
from test_selective_scan import F64, make_inputs

from varbench.layout import ScaleLayout
from varbench.mixers.mamba import MambaMixer
from varbench.ops.backend import pick_backend
from varbench.ops.selective_scan.cpu import selective_scan_cpu
from varbench.ops.selective_scan.reference import selective_scan_ref
from varbench.utils.compare import rel_max

TENSOR_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def values_and_grads(scan, inp):
    """y, the final state, then the gradient of every tensor input, of a loss that weighs each output differently."""
    inp = {k: v.clone().requires_grad_() if torch.is_tensor(v) else v for k, v in inp.items()}
    y, h = scan(**inp)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    ((y * weights).sum() + (h * h).sum()).backward()
    return [y, h] + [inp[k].grad for k in TENSOR_ARGS if torch.is_tensor(inp.get(k))]


@pytest.mark.parametrize("gate, carried", [(True, True), (False, False), (True, False)])
def test_cpu_scan_equals_the_reference_in_values_and_gradients(gate, carried):
    inp = make_inputs(batch=2, E=6, L=19, N=5, gate=gate)
    inp["initial_state"] = torch.randn(2, 6, 5, dtype=F64) if carried else None
    expected, got = values_and_grads(selective_scan_ref, inp), values_and_grads(selective_scan_cpu, inp)
    assert len(got) == len(expected) == 9 + gate + carried  # y, h, u, delta, A, B, C, D, delta_bias [, z] [, h0]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10)


def test_cpu_scan_in_float32_at_the_tiny_models_shape():
    inp = make_inputs(batch=2, E=64, L=130, N=16, dtype=torch.float32)
    inp["initial_state"] = torch.randn(2, 64, 16)
    for g, e in zip(values_and_grads(selective_scan_cpu, inp), values_and_grads(selective_scan_ref, inp)):
        assert g.dtype == torch.float32 and rel_max(g, e) < 1e-6


def test_mamba_runs_cpu_scan_under_auto_and_equals_its_reference_backend():
    layout, dim = ScaleLayout((1, 2, 3)), 16
    torch.manual_seed(0)
    auto = MambaMixer(dim).double()
    torch.manual_seed(0)
    reference = MambaMixer(dim, backend="reference").double()
    x = torch.randn(2, layout.L, dim, dtype=F64)
    for mixer in (auto, reference):
        mixer(x, layout).square().sum().backward()
    assert auto.backend_ran == "cpu_scan" and reference.backend_ran == "reference"
    for (name, p), q in zip(auto.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=name)


def test_a_cpu_kernel_runs_on_cpu_tensors_only():
    assert pick_backend("auto", ("gpu", "cpu_k"), torch.device("cpu"), "m", ("cpu_k",)) == "cpu_k"
    assert pick_backend("auto", ("cpu_k", "gpu"), torch.device("cuda"), "m", ("cpu_k",)) == "gpu"
    assert pick_backend("auto", ("cpu_k",), torch.device("cuda"), "m", ("cpu_k",)) == "reference"
    with pytest.raises(ValueError, match="'cpu_scan' runs on CPU tensors, got tensors on meta"):
        MambaMixer(16, backend="cpu_scan").to("meta")(torch.empty(1, 3, 16, device="meta"), ScaleLayout((1,)))
