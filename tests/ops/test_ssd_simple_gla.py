"""Mamba-2's SSD scan as fla's simple GLA (varbench/ops/ssd/simple_gla.py; Mamba2 `backend: fla`).

On CPU: the mapping (q = C, k = B over each group's heads, v = dt x, g = dt A, scale 1, the state transposed), run
through fla's own pure-torch `naive_chunk_simple_gla`, gives the SSD reference's output, final state and gradients.
On a GPU: the Mamba2 mixer on `backend: fla` (fla's Triton kernels) matches the float64 reference forward, chained
per scale and in its gradients, as closely as the mamba_ssm backend does.
Shape legend: B batch, L tokens, H heads, P head dim, G groups, N state dim, C model width.
Tolerance (CPU): fla's naive form computes in fp32 whatever its inputs; against the float64 reference, relative to
the largest |value|, measured 1.5e-8 (D's gradient) to 5.9e-6 (x's) at L = 130, so 5e-5: 10x headroom, far below a
real mistake (a missing D, an untransposed state or a wrong head-to-group map moves a value by more than 1e-2).
"""

import functools

import pytest
import torch
from fla_reference import fla_naive
from test_ssd import make_inputs

from varbench.layout import ScaleLayout
from varbench.mixers.base import run_steps
from varbench.mixers.mamba2 import Mamba2Mixer
from varbench.ops.ssd.reference import ssd_scan_ref
from varbench.ops.ssd.simple_gla import ssd_scan_simple_gla
from varbench.utils.compare import rel_max, rel_rms

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device, mamba_ssm and fla")
DIFFERENTIABLE = ("x", "dt", "B", "C", "D", "dt_bias")


def naive_gla(q, k, v, g, initial_state):
    """fla's pure-torch simple GLA, the layouts of `fla_call`."""
    return fla_naive("simple_gla").naive_chunk_simple_gla(q, k, v, g, initial_state=initial_state,
                                                          output_final_state=True, scale=1.0)


def scan_and_grads(scan, inputs, state, dy, dfinal):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k in DIFFERENTIABLE}
    h0 = None if state is None else state.clone().requires_grad_()
    y, final = scan(**{**inputs, **leaves}, initial_state=h0)
    loss = (y.double() * dy).sum() + (final.double() * dfinal).sum()
    grads = torch.autograd.grad(loss, [*leaves.values()] + ([h0] if h0 is not None else []))
    return y, final, grads


@pytest.mark.parametrize("G,D_shape", [(1, "head"), (2, "channel")])
@pytest.mark.parametrize("with_state", [False, True])
def test_the_scan_as_simple_gla_has_the_references_output_state_and_gradients(G, D_shape, with_state):
    inputs = make_inputs(batch=2, L=130, H=4, P=8, G=G, N=16, D_shape=D_shape)
    g = torch.Generator().manual_seed(1)
    state, dy, dfinal = (torch.randn(*shape, generator=g, dtype=torch.float64)
                         for shape in ((2, 4, 8, 16), (2, 130, 4, 8), (2, 4, 8, 16)))
    state = state if with_state else None
    ref = scan_and_grads(functools.partial(ssd_scan_ref, chunk_size=64), inputs, state, dy, dfinal)
    ours = scan_and_grads(functools.partial(ssd_scan_simple_gla, gla=naive_gla), inputs, state, dy, dfinal)
    assert ours[0].shape == ref[0].shape and ours[1].shape == ref[1].shape
    for got, want in zip([ours[0], ours[1], *ours[2]], [ref[0], ref[1], *ref[2]]):
        assert rel_max(got, want) < 5e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_the_fla_backend_is_an_error_without_cuda():
    with pytest.raises(ValueError, match="'fla' is not available"):
        Mamba2Mixer(dim=64, backend="fla")


@CUDA
def test_the_fused_forward_refuses_the_fla_backend():
    with pytest.raises(ValueError, match="fused=True needs backend 'mamba_ssm'"):
        Mamba2Mixer(dim=64, backend="fla", fused=True)


def forward_and_grads(mixer, x_BLC, dy_BLC, layout, autocast=False):
    mixer.zero_grad(set_to_none=True)
    x_BLC = x_BLC.detach().clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y_BLC = mixer(x_BLC, layout)
    (y_BLC.double() * dy_BLC).sum().backward()
    return [y_BLC, x_BLC.grad, *(p.grad for p in mixer.parameters())]


@CUDA
@pytest.mark.parametrize("autocast", [False, True])
def test_the_fla_backend_is_as_close_to_the_float64_reference_as_mamba_ssms(autocast):
    """Forward, input and parameter gradients, and the per-scale chained step: relative RMS error against float64
    within 2x of the mamba_ssm backend's own (both run Triton dots, TF32 in fp32 unless TRITON_F32_DEFAULT=ieee)."""
    torch.manual_seed(3)
    layout = ScaleLayout.for_resolution(256)
    ref = Mamba2Mixer(dim=256, backend="reference", chunk_size=128).cuda()
    with torch.no_grad():
        for p in ref.parameters():  # away from the init (D = 1, zero conv bias...) so every term is exercised
            p.add_(0.05 * torch.randn_like(p))
    mixers = {}
    for backend in ("mamba_ssm", "fla"):
        mixers[backend] = Mamba2Mixer(dim=256, backend=backend, chunk_size=128).cuda()
        mixers[backend].load_state_dict(ref.state_dict())
    x = torch.randn(2, layout.L, 256, device="cuda")
    dy = torch.randn(2, layout.L, 256, device="cuda", dtype=torch.float64)
    want = forward_and_grads(ref.double(), x.double(), dy, layout)
    got = {b: forward_and_grads(m, x, dy, layout, autocast) for b, m in mixers.items()}
    for i, w in enumerate(want):
        errors = {b: rel_rms(g[i], w) for b, g in got.items()}
        assert errors["fla"] <= 2 * errors["mamba_ssm"] + 1e-6, (i, errors)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        steps = {b: run_steps(m, x, layout, dtype=torch.bfloat16 if autocast else torch.float32)
                 for b, m in mixers.items()}
    for b, (y, state) in steps.items():
        assert mixers[b].backend_ran == b
    errors = {b: rel_rms(y, want[0]) for b, (y, _) in steps.items()}
    assert errors["fla"] <= 2 * errors["mamba_ssm"] + 1e-6, errors
