"""The q/k L2 normalisation's written-out backward (`varbench.modules.fused.L2QKTraining`), which attention runs
under autograd: its gradients are autograd's of `l2_qk` (F.normalize, the temperature, the casts), in fp64 to
rounding, in fp32 and under bf16 autocast within their rounding, and below F.normalize's eps (a zero row) where the
clamp holds the denominator constant; its values are `l2_qk`'s, bit for bit."""

import pytest
import torch

from varbench.modules.fused import NORMALIZE_EPS, L2QKTraining, l2_qk


def inputs(dtype, zero_row=False):
    torch.manual_seed(0)
    qk = torch.randn(2, 3, 2, 7, 16, dtype=dtype)  # (q/k, B, H, L, d)
    if zero_row:
        qk[1, 0, 1, 3] = 0.0
        qk[0, 2, 0, 5] = NORMALIZE_EPS / 100  # norm eps / 25
    temperature = (torch.rand(1, 2, 1, 1, dtype=torch.float32 if dtype == torch.bfloat16 else dtype) * 4)
    return qk.requires_grad_(), temperature.requires_grad_()


def grads(fn, qk, temperature, out_dtype, autocast=False):
    """Values and gradients of q, k (summed against fixed random weights) with respect to qk and the temperature."""
    qk, temperature = (t.detach().clone().requires_grad_() for t in (qk, temperature))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        q, k = fn(qk, temperature, out_dtype)
    g = torch.Generator().manual_seed(1)
    wq, wk = (torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in (q, k))
    ((q * wq).float().sum() + (k * wk).float().sum()).backward()
    return q, k, qk.grad, temperature.grad


@pytest.mark.parametrize("zero_row", [False, True], ids=["rows", "zero-and-tiny-rows"])
def test_gradients_are_autograds_in_fp64(zero_row):
    qk, temperature = inputs(torch.float64, zero_row)
    got = grads(L2QKTraining.apply, qk, temperature, torch.float64)
    want = grads(l2_qk, qk, temperature, torch.float64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_the_function_checks_against_numerical_gradients():
    qk, temperature = inputs(torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: L2QKTraining.apply(a, b, torch.float64), (qk, temperature))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_values_are_l2_qks_and_gradients_autograds_within_rounding(autocast):
    dtype = torch.bfloat16 if autocast else torch.float32
    qk, temperature = inputs(dtype)
    got = grads(L2QKTraining.apply, qk, temperature, dtype, autocast)
    want = grads(l2_qk, qk, temperature, dtype, autocast)
    for g, w in zip(got[:2], want[:2]):
        assert g.dtype == w.dtype == dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    exact = grads(l2_qk, qk.double(), temperature.double(), torch.float64)
    for g, w, e in zip(got[2:], want[2:], exact[2:]):
        assert g.dtype == w.dtype
        # no further from the fp64 gradient than autograd's own, to the input dtype's rounding
        tol = torch.finfo(dtype).eps * e.abs().max().item()
        assert (g.double() - e).abs().max() <= (w.double() - e).abs().max() + tol
