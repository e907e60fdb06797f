"""Mamba-1's selective scan (S6) with an initial state, in plain PyTorch: the CPU oracle for `kernel.py`.

Shape legend: B batch, E channels (Mamba's d_inner), L tokens, N state dim.
Per channel e and token t (state h_t of shape (N,), dt_t = softplus(delta_t + delta_bias) when asked):
    h_t = exp(dt_t * A_e) * h_(t-1) + dt_t * B_t * u_t,     y_t = (C_t . h_t + D_e * u_t) * SiLU(z_t).
Signature and layout (channels before tokens) follow mamba_ssm's `selective_scan_fn`, plus `initial_state`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.utils.precision import at_least_fp32, no_autocast


def discretize_dt(delta, delta_bias=None, delta_softplus=False) -> torch.Tensor:
    """dt in fp32 (fp64 for fp64 inputs), as the CUDA kernel forms it: softplus(delta + delta_bias)."""
    dtype = at_least_fp32(delta.dtype)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


@no_autocast
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """The selective scan, one token at a time.

    Args:
        u (torch.Tensor): inputs of shape (B, E, L).
        delta (torch.Tensor): step sizes of shape (B, E, L) (raw when `delta_softplus`).
        A (torch.Tensor): decay rates of shape (E, N) (negative).
        B (torch.Tensor): input maps of shape (B, N, L).
        C (torch.Tensor): output maps of shape (B, N, L).
        D (torch.Tensor, Optional): skip of shape (E,). Default: None.
        z (torch.Tensor, Optional): gate of shape (B, E, L); the output is multiplied by SiLU(z). Default: None.
        delta_bias (torch.Tensor, Optional): added to delta, shape (E,). Default: None.
        delta_softplus (bool, Optional): dt <- softplus(delta + delta_bias). Default: False.
        initial_state (torch.Tensor, Optional): state of shape (B, E, N) before token 0. Default: zeros.

    Returns:
        y (B, E, L) in u's dtype and the last state (B, E, N) in fp32 (fp64 for fp64 inputs).
    """
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    dtype = dt.dtype
    u_, A_, B_, C_ = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    decay_BELN = torch.exp(dt[..., None] * A_[:, None, :])
    drive_BELN = (dt * u_)[..., None] * B_.transpose(1, 2)[:, None]
    h = u_.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.to(dtype)
    ys = []
    # views per token from unbind: their backward is one stack, where indexing [:, :, t] in the loop made a full-size
    # gradient per token (quadratic in L: 50 s instead of ~1 s for a training step of the tiny CPU model)
    decays_BEN, drives_BEN, Cs_BN = decay_BELN.unbind(2), drive_BELN.unbind(2), C_.unbind(2)
    for t in range(u.shape[2]):
        h = decays_BEN[t] * h + drives_BEN[t]
        ys.append(torch.einsum("ben,bn->be", h, Cs_BN[t]))
    y = torch.stack(ys, dim=-1) if ys else u_.new_zeros(u.shape)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), h
