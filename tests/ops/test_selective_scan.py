"""Mamba-1 selective scan on CPU: the closed-form carried-state correction the kernel path relies on, state
carrying, a cross-check against the SSD reference, and the whole Mamba mixer in float64.

Shape legend: B batch, E channels, L tokens, N state dim, C model width.
Tolerances: float64 agrees to ~1e-14 (measured), so 1e-10 is tight; see test_ssd.py for the float32 rationale.
"""

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import run_interpreted

from varbench.layout import ScaleLayout
from varbench.mixers.base import run_steps, state_nbytes
from varbench.mixers.mamba import MambaMixer
from varbench.ops.selective_scan import kernel as scan_kernel
from varbench.ops.selective_scan.kernel import add_initial_state
from varbench.ops.selective_scan.reference import selective_scan_ref
from varbench.ops.ssd.reference import ssd_scan_ref
from varbench.utils.compare import rel_max

F64 = torch.float64


def make_inputs(batch=2, E=6, L=130, N=5, gate=True, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    A = -torch.empty(E, N, dtype=dtype).uniform_(0.5, 16, generator=g)
    return {"u": r(batch, E, L), "delta": r(batch, E, L) - 2, "A": A, "B": r(batch, N, L), "C": r(batch, N, L),
            "D": r(E), "z": r(batch, E, L) if gate else None, "delta_bias": r(E), "delta_softplus": True}


def correct(y_zero, h_zero, h0, inp):
    """The kernel path's closed-form correction applied to a zero-state result."""
    return add_initial_state(y_zero, h_zero, h0, inp["delta"], inp["A"], inp["C"], inp["z"], inp["delta_bias"], True)


@pytest.mark.parametrize("gate", [True, False])
def test_closed_form_correction_equals_initial_state(gate):
    # the kernel path: zero-state scan + correction; here the zero-state scan is the reference itself
    inp = make_inputs(gate=gate)
    h0 = torch.randn(2, 6, 5, dtype=F64)
    y_expected, h_expected = selective_scan_ref(**inp, initial_state=h0)
    y, h = correct(*selective_scan_ref(**inp), h0, inp)
    torch.testing.assert_close(y, y_expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(h, h_expected, rtol=0, atol=1e-10)


def test_correction_in_blocks(monkeypatch):
    # force many token blocks in the correction's memory-bounded loop
    monkeypatch.setattr(scan_kernel, "_BLOCK_ELEMENTS", 7 * 2 * 6 * 5)
    inp = make_inputs()
    h0 = torch.randn(2, 6, 5, dtype=F64)
    y_expected, h_expected = selective_scan_ref(**inp, initial_state=h0)
    y, h = correct(*selective_scan_ref(**inp), h0, inp)
    torch.testing.assert_close(y, y_expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(h, h_expected, rtol=0, atol=1e-10)


def test_correction_fp32():
    # the kernel gives fp32 states and bf16/fp32 outputs: the correction must hold at fp32 precision
    inp = make_inputs(dtype=torch.float32)
    h0 = torch.randn(2, 6, 5)
    y_expected, h_expected = selective_scan_ref(**inp, initial_state=h0)
    y, h = correct(*selective_scan_ref(**inp), h0, inp)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert (y - y_expected).abs().max() <= 5e-6 * y_expected.abs().max()
    assert (h - h_expected).abs().max() <= 5e-6 * h_expected.abs().max()


# the fused (Triton) correction against the torch form, on the same zero-state result: fp32, any tile remainder
FUSED_SHAPES = [(2, 6, 130, 5), (3, 40, 7, 16), (1, 33, 65, 16)]


def channels_last(x_BCL):
    """The same values, stored (B, L, C) and viewed as (B, C, L)."""
    return x_BCL.transpose(1, 2).contiguous().transpose(1, 2)


def fused_vs_torch(device, gate, shape, dtype):
    """Relative max differences (output, last state) of the fused correction from the torch form."""
    from varbench.ops.selective_scan.fused_correction import add_initial_state_fused
    B, E, L, N = shape
    inp = {k: v.to(device) if torch.is_tensor(v) else v
           for k, v in make_inputs(batch=B, E=E, L=L, N=N, gate=gate, dtype=torch.float32).items()}
    y, h = selective_scan_ref(**inp)
    # C and z as the mixer passes them: transposed views of (B, L, .) tensors (strided over L)
    low = {k: channels_last(inp[k].to(dtype)) for k in ("C", "delta") + (("z",) if gate else ())}
    args = (y.to(dtype), h, torch.randn(B, E, N, device=device), low["delta"], inp["A"], low["C"], low.get("z"),
            inp["delta_bias"], True)
    (y_t, h_t), (y_f, h_f) = add_initial_state(*args), add_initial_state_fused(*args)
    assert y_f.dtype == y_t.dtype == dtype and h_f.dtype == h_t.dtype == torch.float32
    return [rel_max(f, t) for f, t in ((y_f, y_t), (h_f, h_t))]


def test_fused_correction_equals_the_torch_form_in_tritons_interpreter():
    pytest.importorskip("triton", reason="the fused correction is a Triton kernel (no Triton in this torch build)")
    script = ("import torch, test_selective_scan as t\n"
              "for gate in (True, False):\n"
              "    for shape in t.FUSED_SHAPES:\n"
              "        print(*t.fused_vs_torch('cpu', gate, shape, torch.float32))\n")
    run = run_interpreted(script)
    assert run.returncode == 0, run.stderr[-3000:]
    errors = [float(v) for line in run.stdout.split("\n") if line for v in line.split()]
    assert len(errors) == 2 * 2 * len(FUSED_SHAPES) and max(errors) <= 1e-6, run.stdout  # fp32 rounding only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate", [True, False])
def test_fused_correction_equals_the_torch_form_on_the_gpu(gate, dtype):
    tol = 1e-6 if dtype == torch.float32 else 2 ** -8  # bf16: one rounding of the output
    for shape in FUSED_SHAPES:
        assert max(fused_vs_torch("cuda", gate, shape, dtype)) <= tol


def test_appending_scales_equals_one_pass():
    layout = ScaleLayout((1, 2, 3, 4, 6, 8))
    inp = make_inputs(L=layout.L)
    y_full, h_full = selective_scan_ref(**inp)
    state, ys = None, []
    for sl in layout.segments():
        part = {k: (v[..., sl] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inp.items()}
        y, state = selective_scan_ref(**part, initial_state=state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=-1), y_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, h_full, rtol=0, atol=1e-10)


def test_matches_ssd_when_decay_is_shared_over_states():
    # S6 with A[e, n] = a_e and shared B, C is SSD with H = E heads of head dim P = 1: two independent references
    inp = make_inputs(gate=False)
    a = inp["A"][:, 0]
    inp["A"] = a[:, None].expand(-1, 5)
    y_s6, h_s6 = selective_scan_ref(**inp)
    y_ssd, h_ssd = ssd_scan_ref(inp["u"].transpose(1, 2)[..., None], inp["delta"].transpose(1, 2), a,
                                inp["B"].transpose(1, 2)[:, :, None], inp["C"].transpose(1, 2)[:, :, None], inp["D"],
                                chunk_size=32, dt_bias=inp["delta_bias"], dt_softplus=True)
    torch.testing.assert_close(y_ssd[..., 0].transpose(1, 2), y_s6, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_ssd[:, :, 0], h_s6, rtol=0, atol=1e-10)


def mamba_sequential(m: MambaMixer, u_BLC: torch.Tensor) -> torch.Tensor:
    """The whole Mamba layer token by token in float64, written independently of the varbench ops."""
    E, N, W, R = m.d_inner, m.d_state, m.d_conv, m.dt_rank
    x, z = (u_BLC @ m.in_proj.weight.T).chunk(2, dim=-1)
    x_pad = F.pad(x, (0, 0, W - 1, 0))
    A = -torch.exp(m.A_log)  # (E, N)
    h = u_BLC.new_zeros(u_BLC.shape[0], E, N)
    ys = []
    for t in range(u_BLC.shape[1]):
        xc = F.silu((x_pad[:, t:t + W] * m.conv1d.weight[:, 0].T).sum(1) + m.conv1d.bias)  # (B, E)
        dt_low, B, C = (xc @ m.x_proj.weight.T).split([R, N, N], dim=-1)
        dt = F.softplus(dt_low @ m.dt_proj.weight.T + m.dt_proj.bias)
        h = torch.exp(dt[..., None] * A) * h + (dt * xc)[..., None] * B[:, None, :]
        y = (h @ C[..., None]).squeeze(-1) + m.D * xc
        ys.append(y * F.silu(z[:, t]))
    return torch.stack(ys, dim=1) @ m.out_proj.weight.T


@torch.no_grad()
def test_mamba_mixer_matches_sequential_fp64():
    torch.manual_seed(0)
    m = MambaMixer(dim=24, backend="reference").double()
    for p in m.parameters():
        p.add_(0.1 * torch.randn_like(p))
    layout = ScaleLayout((1, 2, 3, 4, 6))
    u = torch.randn(2, layout.L, 24, dtype=F64)
    expected = mamba_sequential(m, u)
    torch.testing.assert_close(m(u, layout), expected, rtol=0, atol=1e-10)
    y_steps, state = run_steps(m, u, layout)
    torch.testing.assert_close(y_steps, expected, rtol=0, atol=1e-10)
    assert m.state_bytes(layout, 2, F64) == state_nbytes(state)


def test_mamba_parameters_match_mamba_ssm():
    m = MambaMixer(dim=1024, backend="reference")
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"A_log": (2048, 16), "D": (2048,), "in_proj.weight": (4096, 1024), "conv1d.weight": (2048, 1, 4),
                      "conv1d.bias": (2048,), "x_proj.weight": (96, 2048), "dt_proj.weight": (2048, 64),
                      "dt_proj.bias": (2048,), "out_proj.weight": (1024, 2048)}
    torch.testing.assert_close(-torch.exp(m.A_log[0]), -torch.arange(1.0, 17.0))  # S4D-real
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
