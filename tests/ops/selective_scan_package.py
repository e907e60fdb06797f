"""mamba_ssm's selective-scan extension (`selective_scan_cuda.fwd` / `.bwd`, mamba-ssm 2.2.2 to 2.3.x) emulated in torch
on CPU, for the tests of the custom ops' bodies (test_selective_scan_custom_op.py): each checks the layout and dtype
rules that the extension's C++ entry points check (selective_scan.cpp) for a real A and variable B, C of one group,
and computes with the reference scan (forward) or in closed form (backward: an op's body runs below autograd, so it
cannot differentiate the reference).

Shape legend: B batch, E channels, L tokens, N state dim, K = ceil(L / 2048) chunks.
"""

import torch
import torch.nn.functional as F

from varbench.ops.selective_scan.reference import discretize_dt, selective_scan_ref
from varbench.utils.precision import at_least_fp32

CHUNK = 2048


def checked(u, delta, A, B, C, D, z, delta_bias):
    """The C++ entry points' checks: one input dtype, fp32-like A, D and delta_bias, unit stride over tokens, B and C
    of shape (B, 1, N, L); returns B and C as the reference takes them, (B, N, L)."""
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        assert t is None or (t.dtype == u.dtype and t.stride(-1) == 1), (name, t.dtype, t.stride())
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        assert t is None or t.dtype == A.dtype, (name, t.dtype)
    assert B.dim() == C.dim() == 4 and B.shape[1] == C.shape[1] == 1, (B.shape, C.shape)
    return B[:, 0], C[:, 0]


def package_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """`selective_scan_cuda.fwd` emulated: [out, x, out_z (with z)]. out is the output before the gate; x holds per
    chunk the decay over the chunk (even entries) and the state at the chunk's end (odd entries), in A's dtype."""
    B3, C3 = checked(u, delta, A, B, C, D, z, delta_bias)
    (batch, E, L), N = u.shape, A.shape[1]
    out, _ = selective_scan_ref(u, delta, A, B3, C3, D, None, delta_bias, delta_softplus)
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    x = torch.empty(batch, E, (L + CHUNK - 1) // CHUNK, 2 * N, dtype=A.dtype)
    for k in range(x.shape[2]):
        end = min(L, (k + 1) * CHUNK)
        x[..., k, 0::2] = torch.exp(dt[..., k * CHUNK:end].sum(-1, keepdim=True) * A)
        x[..., k, 1::2] = selective_scan_ref(u[..., :end], delta[..., :end], A, B3[..., :end], C3[..., :end], None,
                                             None, delta_bias, delta_softplus)[1]
    if z is None:
        return [out, x]
    f = at_least_fp32(u.dtype)
    return [out, x, (out.to(f) * F.silu(z.to(f))).to(u.dtype)]


def package_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
    """`selective_scan_cuda.bwd` emulated in closed form: [du, ddelta, dA, dB, dC, dD, ddelta_bias, dz (with z)],
    each in its input's dtype (dB, dC of shape (B, 1, N, L)), None for an absent D or delta_bias.

    Per token t (g: the gradient of the output before the gate, lam_t: of the state h_t):
        lam_t = g_t C_t + exp(dt_(t+1) A) lam_(t+1),  d dt_t = sum_n lam_t (A exp(dt_t A) h_(t-1) + B_t u_t).
    """
    B3, C3 = checked(u, delta, A, B, C, D, z, delta_bias)
    (batch, E, L), N = u.shape, A.shape[1]
    assert dout.dtype == u.dtype and dout.stride(-1) == 1 and dz is None and not recompute_out_z
    assert x.is_contiguous() and x.dtype == A.dtype and x.shape == (batch, E, (L + CHUNK - 1) // CHUNK, 2 * N)
    assert (out is not None) == (z is not None) and (out is None or out.dtype == u.dtype)
    f = at_least_fp32(u.dtype)
    dt, u_, A_, B_, C_ = discretize_dt(delta, delta_bias, delta_softplus), u.to(f), A.to(f), B3.to(f), C3.to(f)
    decay_BELN = torch.exp(dt[..., None] * A_[:, None])
    drive_BELN = (dt * u_)[..., None] * B_.transpose(1, 2)[:, None]
    h_BELN = torch.zeros(batch, E, L + 1, N, dtype=f)  # h_BELN[:, :, t + 1] is the state after token t
    for t in range(L):
        h_BELN[:, :, t + 1] = decay_BELN[:, :, t] * h_BELN[:, :, t] + drive_BELN[:, :, t]
    y_raw = torch.einsum("beln,bnl->bel", h_BELN[:, :, 1:], C_) + (0 if D is None else D.to(f)[:, None] * u_)
    g = dout.to(f) if z is None else dout.to(f) * F.silu(z.to(f))
    lam_BELN, carry = torch.empty_like(decay_BELN), torch.zeros(batch, E, N, dtype=f)
    for t in reversed(range(L)):
        carry = g[:, :, t, None] * C_[:, None, :, t] + carry
        lam_BELN[:, :, t] = carry
        carry = decay_BELN[:, :, t] * carry  # through h_t = exp(dt_t A) h_(t-1) + ...: the step to h_(t-1)
    decayed_prev = decay_BELN * h_BELN[:, :, :-1]
    ddt = (lam_BELN * (A_[:, None] * decayed_prev + u_[..., None] * B_.transpose(1, 2)[:, None])).sum(-1)
    if delta_softplus:
        pre = delta.to(f) + (0 if delta_bias is None else delta_bias.to(f)[:, None])
        ddt = ddt * torch.sigmoid(pre)
    du = (lam_BELN * dt[..., None] * B_.transpose(1, 2)[:, None]).sum(-1) + (0 if D is None else g * D.to(f)[:, None])
    grads = [du.to(u.dtype), ddt.to(delta.dtype),
             (lam_BELN * decayed_prev * dt[..., None]).sum((0, 2)).to(A.dtype),
             torch.einsum("beln,bel->bnl", lam_BELN, dt * u_)[:, None].to(B.dtype),
             torch.einsum("bel,beln->bnl", g, h_BELN[:, :, 1:])[:, None].to(C.dtype),
             None if D is None else (g * u_).sum((0, 2)).to(D.dtype),
             None if delta_bias is None else ddt.sum((0, 2)).to(delta_bias.dtype)]
    if z is None:
        return grads
    s = torch.sigmoid(z.to(f))
    return grads + [(dout.to(f) * y_raw * s * (1 + z.to(f) * (1 - s))).to(z.dtype)]  # SiLU' = s (1 + z (1 - s))
