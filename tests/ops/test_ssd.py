"""SSD (Mamba-2) references on CPU: chunked == sequential, state carrying, and the whole Mamba2 mixer in float64.

Shape legend: B batch, L tokens, H heads, P head dim, G groups, N state dim, C model width, E inner width.
Tolerances: float64 runs agree to ~1e-13 (measured), so 1e-10 is tight. Float32 chunked vs float64 sequential
measured 2e-7..5e-7 relative to max|y| at L = 300 (fp32 unit roundoff 6e-8, grown by sums over N and the chunk);
5e-6 leaves 10x headroom and is far below any real mistake (a missing D or an off-by-one decay moves y by > 1e-2).
"""

import pytest
import torch
import torch.nn.functional as F

from varbench.layout import ScaleLayout
from varbench.mixers.base import run_steps, state_nbytes
from varbench.mixers.mamba2 import Mamba2Mixer
from varbench.ops.ssd.reference import gated_rmsnorm_ref, ssd_recurrent_ref, ssd_scan_ref

F64 = torch.float64


def make_inputs(batch=2, L=130, H=4, P=8, G=1, N=16, D_shape="head", dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    D = r(H) if D_shape == "head" else r(H, P)
    A = -torch.empty(H, dtype=dtype).uniform_(1, 16, generator=g)
    return {"x": r(batch, L, H, P), "dt": r(batch, L, H) - 2, "A": A, "B": r(batch, L, G, N),
            "C": r(batch, L, G, N), "D": D, "dt_bias": r(H), "dt_softplus": True}


@pytest.mark.parametrize("chunk_size", [1, 16, 37, 64, 256])
@pytest.mark.parametrize("G,D_shape", [(1, "head"), (2, "channel")])
def test_chunked_equals_sequential_fp64(chunk_size, G, D_shape):
    # L = 130 is not a multiple of any chunk size above but 1: the padded tail must not leak
    inp = make_inputs(G=G, D_shape=D_shape)
    y_seq, s_seq = ssd_recurrent_ref(**inp)
    y, s = ssd_scan_ref(**inp, chunk_size=chunk_size)
    torch.testing.assert_close(y, y_seq, rtol=0, atol=1e-10)
    torch.testing.assert_close(s, s_seq, rtol=0, atol=1e-10)


def test_chunked_fp32_close_to_fp64():
    inp = make_inputs(L=300)
    y_seq, s_seq = ssd_recurrent_ref(**inp)
    inp32 = {k: v.float() if torch.is_tensor(v) else v for k, v in inp.items()}
    y, s = ssd_scan_ref(**inp32, chunk_size=64)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert (y.double() - y_seq).abs().max() <= 5e-6 * y_seq.abs().max()
    assert (s.double() - s_seq).abs().max() <= 5e-6 * s_seq.abs().max()


@pytest.mark.parametrize("chunk_size", [4, 256])
def test_appending_scales_equals_one_pass(chunk_size):
    layout = ScaleLayout((1, 2, 3, 4, 6, 8))
    inp = make_inputs(L=layout.L)
    y_full, s_full = ssd_scan_ref(**inp, chunk_size=chunk_size)
    state, ys = None, []
    for sl in layout.segments():
        part = {k: (v[:, sl] if k in ("x", "dt", "B", "C") else v) for k, v in inp.items()}
        y, state = ssd_scan_ref(**part, initial_state=state, chunk_size=chunk_size)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, s_full, rtol=0, atol=1e-10)


def test_initial_state_chunked_equals_sequential():
    inp = make_inputs(L=50)
    h0 = torch.randn(2, 4, 8, 16, dtype=F64)
    y_seq, s_seq = ssd_recurrent_ref(**inp, initial_state=h0)
    y, s = ssd_scan_ref(**inp, initial_state=h0, chunk_size=16)
    torch.testing.assert_close(y, y_seq, rtol=0, atol=1e-10)
    torch.testing.assert_close(s, s_seq, rtol=0, atol=1e-10)


def test_gated_rmsnorm_formula():
    y, z, w = torch.randn(3, 5, 12, dtype=F64), torch.randn(3, 5, 12, dtype=F64), torch.randn(12, dtype=F64)
    g = y * F.silu(z)
    expected = g / torch.sqrt(g.square().mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(gated_rmsnorm_ref(y, w, z, eps=1e-5), expected, rtol=0, atol=1e-12)
    grouped = gated_rmsnorm_ref(y, w, z, eps=1e-5, group_size=4)
    g4 = g.view(3, 5, 3, 4)
    expected4 = (g4 / torch.sqrt(g4.square().mean(-1, keepdim=True) + 1e-5)).view(3, 5, 12) * w
    torch.testing.assert_close(grouped, expected4, rtol=0, atol=1e-12)


def mamba2_sequential(m: Mamba2Mixer, u_BLC: torch.Tensor) -> torch.Tensor:
    """The whole Mamba2 layer token by token in float64, written independently of the varbench ops."""
    E, H, P, N, W = m.d_inner, m.nheads, m.headdim, m.d_state, m.d_conv
    zxbcdt = u_BLC @ m.in_proj.weight.T
    z, xBC, dt = zxbcdt.split([E, m.conv_dim, H], dim=-1)
    xBC_pad = F.pad(xBC, (0, 0, W - 1, 0))  # zeros before the first token
    w = m.conv1d.weight[:, 0]  # (F, W)
    A = -torch.exp(m.A_log)
    S = u_BLC.new_zeros(u_BLC.shape[0], H, P, N)
    ys = []
    for t in range(u_BLC.shape[1]):
        conv = F.silu((xBC_pad[:, t:t + W] * w.T).sum(1) + m.conv1d.bias)
        x, B, C = conv.split([E, N, N], dim=-1)
        x = x.view(-1, H, P)
        d = F.softplus(dt[:, t] + m.dt_bias)  # (B, H)
        S = torch.exp(d * A)[..., None, None] * S + (d[..., None] * x)[..., None] * B[:, None, None, :]
        y = (S @ C[:, None, :, None]).squeeze(-1) + m.D[:, None] * x
        g = y.reshape(-1, E) * F.silu(z[:, t])
        ys.append(g / torch.sqrt(g.square().mean(-1, keepdim=True) + 1e-5) * m.norm.weight)
    return torch.stack(ys, dim=1) @ m.out_proj.weight.T


@torch.no_grad()
def test_mamba2_mixer_matches_sequential_fp64():
    torch.manual_seed(0)
    m = Mamba2Mixer(dim=32, backend="reference", d_state=16, headdim=16, chunk_size=16).double()
    for p in m.parameters():  # move away from the init (D = 1, norm = 1, zero conv bias) so every term matters
        p.add_(0.1 * torch.randn_like(p))
    layout = ScaleLayout((1, 2, 3, 4, 6, 8))
    u = torch.randn(2, layout.L, 32, dtype=F64)
    expected = mamba2_sequential(m, u)
    torch.testing.assert_close(m(u, layout), expected, rtol=0, atol=1e-10)
    y_steps, state = run_steps(m, u, layout)
    torch.testing.assert_close(y_steps, expected, rtol=0, atol=1e-10)
    assert m.state_bytes(layout, 2, F64) == state_nbytes(state)


def test_with_fit_chunk_each_step_scans_in_the_chunk_fitted_to_its_scale_and_gives_the_same_outputs(monkeypatch):
    """fit_chunk: a scale's step scans in the next power of two >= its tokens (at least 16, at most chunk_size), the
    whole sequence in chunk_size; the same one-chunk math, so the steps' outputs and state are those without it."""
    import varbench.mixers.mamba2 as mamba2
    torch.manual_seed(0)
    plain = Mamba2Mixer(dim=32, backend="reference", d_state=16, headdim=16, chunk_size=64, fit_chunk=False).double()
    fitted = Mamba2Mixer(dim=32, backend="reference", d_state=16, headdim=16, chunk_size=64).double()
    fitted.load_state_dict(plain.state_dict())
    layout = ScaleLayout((1, 2, 3, 4, 6, 8, 10))  # 1, 4, 9, 16, 36, 64 and 100 tokens
    u = torch.randn(2, layout.L, 32, dtype=F64)
    chunks = []
    monkeypatch.setattr(mamba2, "ssd_scan_ref", lambda *a, chunk_size, **kw: chunks.append(chunk_size)
                        or ssd_scan_ref(*a, chunk_size=chunk_size, **kw))
    with torch.no_grad():
        y_plain, state_plain = run_steps(plain, u, layout)
        del chunks[:]
        y_fitted, state_fitted = run_steps(fitted, u, layout)
        assert chunks == [16, 16, 16, 16, 64, 64, 64]
        fitted(u, layout)
    assert chunks[-1] == 64  # the whole sequence (294 tokens): chunk_size's chunks
    assert torch.equal(y_fitted, y_plain) and torch.equal(state_fitted["ssm"], state_plain["ssm"])


def test_a_run_spec_saved_before_fit_chunk_existed_builds_the_mixer_the_yaml_builds_now():
    """A run's spec holds its mixer config as trained: one saved before the key was added rebuilds (task=sample,
    task=evaluate) at the class default, which must be the YAML's, not mamba_ssm's slower tiling."""
    from omegaconf import OmegaConf

    from varbench.registry import factory, load_option
    yaml = OmegaConf.to_container(load_option("mixer", "mamba2"))
    before = {k: v for k, v in yaml.items() if k != "fit_chunk"}
    assert factory(before)(dim=32, backend="reference").fit_chunk is yaml["fit_chunk"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and mamba_ssm")
def test_on_cuda_fit_chunk_steps_stay_within_mamba_ssm_s_own_error():
    """The fitted chunk changes mamba_ssm's tiling and so its summation order (session 45, H100: 3 of 696,320 bf16
    outputs a rounding apart from the configured chunk's), never the math: at every scale of M-VAR-d16's layout under
    bf16 autocast, the fitted and configured chunks' steps differ by less than the configured chunk's steps differ
    from the float64 reference scan (the oracle). A wrong fitted scan (a lost carried state, a token cut off) differs
    by the outputs' own size."""
    torch.manual_seed(0)
    plain = Mamba2Mixer(dim=256, backend="mamba_ssm", fit_chunk=False).cuda()
    fitted = Mamba2Mixer(dim=256, backend="mamba_ssm").cuda()
    oracle = Mamba2Mixer(dim=256, backend="reference").cuda().double()
    fitted.load_state_dict(plain.state_dict())
    oracle.load_state_dict(plain.state_dict())
    layout = ScaleLayout((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    u = torch.randn(4, layout.L, 256, device="cuda")
    with torch.no_grad():
        y_oracle, state_oracle = run_steps(oracle, u.double(), layout)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y_plain, state_plain = run_steps(plain, u, layout)
            y_fitted, state_fitted = run_steps(fitted, u, layout)
    for fitted_out, plain_out, oracle_out in ((y_fitted, y_plain, y_oracle),
                                              (state_fitted["ssm"], state_plain["ssm"], state_oracle["ssm"])):
        kernel_error = (plain_out.double() - oracle_out).abs().max()
        assert (fitted_out.double() - plain_out.double()).abs().max() < kernel_error


def test_mamba2_parameters_match_mvar_d16():
    # mamba.* rows of shared/compat/mvar_d16_keys.tsv (C = 1024), in state-dict order
    expected = {"dt_bias": (32,), "A_log": (32,), "D": (32,), "in_proj.weight": (4256, 1024),
                "conv1d.weight": (2176, 1, 4), "conv1d.bias": (2176,), "norm.weight": (2048,),
                "out_proj.weight": (1024, 2048)}
    m = Mamba2Mixer(dim=1024, num_heads=16, backend="reference")
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    assert list(m.state_dict()) == list(expected)
    assert sum(p.numel() for p in m.parameters()) == 6_468_320  # var_mvar_facts.md 4.4
    assert m.output_projection() is None and isinstance(m.out_proj, torch.nn.Linear)  # M-VAR never rescales it
    softplus_dt = F.softplus(m.dt_bias)
    assert softplus_dt.min() >= 1e-4 * 0.999 and softplus_dt.max() <= 0.1 * 1.001
    A = torch.exp(m.A_log)  # -A ~ U[1, 16]
    assert A.min() >= 1 - 1e-6 and A.max() <= 16 + 1e-5 and (m.D == 1).all()


def test_fused_needs_the_kernel_backend():
    with pytest.raises(ValueError, match="fused"):
        Mamba2Mixer(dim=32, backend="reference", fused=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_kernel_backend_is_an_error_without_cuda():
    with pytest.raises(ValueError, match="not available"):
        Mamba2Mixer(dim=32, backend="mamba_ssm")
