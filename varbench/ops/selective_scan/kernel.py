"""mamba_ssm's selective-scan CUDA kernel with a carried state, behind the signature of `selective_scan_ref`.

Shape legend: B batch, E channels, L tokens, l tokens of one block, N state dim.
The kernel (a custom op, `zero_state_op.py`) has no initial-state input. The recurrence is linear in the state, so
starting from h0 instead of 0 adds a closed-form term (dt_t = softplus(delta_t + delta_bias), cs_t = dt_1 + ... + dt_t,
per channel e):
    h_t = h_t|zero + exp(A_e * cs_t) * h0                      (the state decays by exp(dt_s A_e) at every step)
    y_t = y_t|zero + (C_t . (exp(A_e * cs_t) * h0)) * SiLU(z_t) (read out by C_t, gated like the rest; D does not
                                                                 touch the state, so it adds nothing)
`add_initial_state` applies it; it is plain torch, so the CPU tests check it against the reference. Where no
gradient is needed (sampling), `selective_scan` runs the same formula as one Triton kernel instead
(`fused_correction.py`: the torch form's (B, E, L, N) decay blocks are most of a carried step's memory traffic).
The kernel's package and Triton are imported only where they run, so importing this module never needs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.ops.selective_scan.reference import discretize_dt
from varbench.ops.selective_scan.zero_state_op import selective_scan_zero_state
from varbench.utils.precision import no_autocast

# elements of the (B, E, l, N) decay block built at once: bounds the correction's memory at 256 MiB in fp32
_BLOCK_ELEMENTS = 1 << 26


@no_autocast  # the correction is fp32 math; under autocast its einsum would run in bf16
def add_initial_state(y, last_state, initial_state, delta, A, C, z=None, delta_bias=None, delta_softplus=False):
    """Turn a zero-initial-state scan result into the result from `initial_state` (closed form, see the module doc).

    Args:
        y (torch.Tensor): zero-state output of shape (B, E, L) (gated when z is given).
        last_state (torch.Tensor): zero-state last state of shape (B, E, N).
        initial_state (torch.Tensor): the carried state h0 of shape (B, E, N).
        delta, A, C, z, delta_bias, delta_softplus: the scan's own arguments (see `selective_scan_ref`).

    Returns:
        y (B, E, L) in y's dtype and the last state (B, E, N) in last_state's dtype.
    """
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    cs_BEL = dt.cumsum(dim=-1)
    A_, C_, h0 = A.to(dt.dtype), C.to(dt.dtype), initial_state.to(dt.dtype)
    Bsz, E, L = dt.shape
    step = max(1, _BLOCK_ELEMENTS // max(1, Bsz * E * A.shape[1]))
    parts = []
    for t0 in range(0, L, step):
        decay_BElN = torch.exp(cs_BEL[:, :, t0:t0 + step, None] * A_[:, None, :])
        parts.append(torch.einsum("beln,ben,bnl->bel", decay_BElN, h0, C_[:, :, t0:t0 + step]))
    extra = torch.cat(parts, dim=-1)
    if z is not None:
        extra = extra * F.silu(z.to(dt.dtype))
    last = last_state.to(dt.dtype) + torch.exp(cs_BEL[:, :, -1:] * A_) * h0
    return (y.to(dt.dtype) + extra).to(y.dtype), last.to(last_state.dtype)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """`selective_scan_ref` through mamba_ssm's kernel from a zero state (`selective_scan_zero_state`) plus the initial
    state's correction: the fused Triton form when no input needs a gradient, else `add_initial_state` (autograd).

    Args: as `selective_scan_ref`; A, D and delta_bias in fp32 (the kernel's requirement).

    Returns:
        y (B, E, L) in u's dtype and the last state (B, E, N) in fp32.
    """
    y, last = selective_scan_zero_state(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if initial_state is None:
        return y, last
    correction = (y, last, initial_state, delta, A, C, z, delta_bias, delta_softplus)
    if _needs_grad(u, delta, A, B, C, z, delta_bias, initial_state):
        return add_initial_state(*correction)
    from varbench.ops.selective_scan.fused_correction import add_initial_state_fused
    return add_initial_state_fused(*correction)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
