"""Mamba-1's selective scan on the CPU: one token at a time like the reference, with a hand-written backward.

Shape legend: B batch, E channels, L tokens, N state dim.
`selective_scan_ref` (the oracle) builds the (B, E, L, N) decay and drive tensors first and leaves the backward to
autograd: every token then reads strided slices of those blocks, and autograd keeps a graph node per token whose
gradients are stacked back into full-size blocks. Here the per-token terms exp(dt_t A) and dt_t u_t B_t are formed
inside the loop (a (B, E, N) slice that stays in cache), only the states are stored, and the backward runs the
scan in reverse (the adjoint recurrence G_(t-1) = exp(dt_t A) G_t + C_(t-1) dy_(t-1), as mamba_ssm's kernel does).
Softplus, the D skip and the SiLU(z) gate stay in autograd, so they are the reference's own code. Same signature and
results as `selective_scan_ref`; `tests/test_selective_scan_cpu.py` checks values and gradients against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.ops.selective_scan.reference import discretize_dt
from varbench.utils.precision import no_autocast


class _Scan(torch.autograd.Function):
    """h_t = exp(dt_t A) h_(t-1) + dt_t u_t B_t, y_t = C_t . h_t, token-major inputs (L, B, ...)."""

    @staticmethod
    def forward(ctx, dt_LBE, u_LBE, A_EN, B_LBN, C_LBN, h0_BEN):
        states_LBEN = dt_LBE.new_empty(*dt_LBE.shape, A_EN.shape[1])
        h_BEN = h0_BEN
        for t in range(dt_LBE.shape[0]):
            decay_BEN = torch.exp(dt_LBE[t, :, :, None] * A_EN)
            drive_BEN = (dt_LBE[t] * u_LBE[t])[:, :, None] * B_LBN[t, :, None, :]
            h_BEN = torch.addcmul(drive_BEN, decay_BEN, h_BEN, out=states_LBEN[t])
        ctx.save_for_backward(dt_LBE, u_LBE, A_EN, B_LBN, C_LBN, h0_BEN, states_LBEN)
        y_LBE = (states_LBEN @ C_LBN[..., None]).squeeze(-1)
        return y_LBE, h_BEN.clone()

    @staticmethod
    def backward(ctx, gy_LBE, glast_BEN):
        dt_LBE, u_LBE, A_EN, B_LBN, C_LBN, h0_BEN, states_LBEN = ctx.saved_tensors
        gy_LBE = torch.zeros_like(dt_LBE) if gy_LBE is None else gy_LBE
        g_BEN = torch.zeros_like(h0_BEN) if glast_BEN is None else glast_BEN.clone()
        gC_LBN = (gy_LBE[:, :, None, :] @ states_LBEN).squeeze(2)
        gdt_LBE, gu_LBE, gB_LBN = torch.empty_like(dt_LBE), torch.empty_like(u_LBE), torch.empty_like(B_LBN)
        g_dtA_LBEN = torch.empty_like(states_LBEN)  # reduced over tokens and batch after the loop, in one pass
        for t in reversed(range(dt_LBE.shape[0])):
            g_BEN = torch.addcmul(g_BEN, gy_LBE[t, :, :, None], C_LBN[t, :, None, :])  # dLoss/dh_t, all paths
            h_prev_BEN = states_LBEN[t - 1] if t else h0_BEN
            decay_BEN = torch.exp(dt_LBE[t, :, :, None] * A_EN)
            torch.mul(g_BEN * h_prev_BEN, decay_BEN, out=g_dtA_LBEN[t])  # through exp(dt_t A)
            gBh_BE = (g_BEN * B_LBN[t, :, None, :]).sum(-1)  # through dt_t u_t B_t, summed over N
            gu_LBE[t] = gBh_BE * dt_LBE[t]
            gdt_LBE[t] = gBh_BE * u_LBE[t]
            gB_LBN[t] = (g_BEN * (dt_LBE[t] * u_LBE[t])[:, :, None]).sum(1)
            g_BEN = g_BEN * decay_BEN
        gdt_LBE += (g_dtA_LBEN * A_EN).sum(-1)
        gA_EN = (g_dtA_LBEN * dt_LBE[..., None]).sum((0, 1))
        return gdt_LBE, gu_LBE, gA_EN, gB_LBN, gC_LBN, g_BEN


@no_autocast
def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None):
    """The selective scan with the arguments and results of `selective_scan_ref` (see there), faster on a CPU."""
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    dtype = dt.dtype
    u_ = u.to(dtype)
    h0 = u_.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.to(dtype)
    dt_LBE, u_LBE, B_LBN, C_LBN = (x.to(dtype).permute(2, 0, 1).contiguous() for x in (dt, u_, B, C))
    y_LBE, h = _Scan.apply(dt_LBE, u_LBE, A.to(dtype), B_LBN, C_LBN, h0)
    y = y_LBE.permute(1, 2, 0)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), h
