"""The carried-state correction of `kernel.add_initial_state` as one Triton kernel (inference only: no autograd).

Shape legend: B batch, E channels, L tokens of the scale, N state dim.
The torch form builds the (B, E, L, N) decay exp(cs A) in blocks and contracts it with h0 and C: at batch 64 with
CFG (B = 128) that is ~3e9 fp32 elements per layer written and read again. Here each program keeps a (E, L) tile
of the cumulative dt in registers and loops over the N states, so nothing of size (B, E, L, N) touches memory:
    out[b, e, l] = y[b, e, l] + SiLU(z[b, e, l]) * sum_n C[b, n, l] h0[b, e, n] exp(cs[b, e, l] A[e, n])
Triton is imported with this module: import it only where a kernel may run. With TRITON_INTERPRET=1 set before
that import the kernel runs on CPU tensors (how the CPU tests check it against the torch form).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from varbench.ops.selective_scan.reference import discretize_dt

BLOCK_E, BLOCK_L = 32, 64


@triton.jit
def _correct_kernel(cs_ptr, A_ptr, h0_ptr, C_ptr, y_ptr, z_ptr, out_ptr, E, L,
                    s_y_b, s_y_e, s_y_l, s_z_b, s_z_e, s_z_l, s_C_b, s_C_n, s_C_l,
                    N: tl.constexpr, HAS_Z: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_L: tl.constexpr):
    # cs, out: contiguous (B, E, L); A: contiguous (E, N); h0: contiguous (B, E, N); y, z, C: any strides
    b = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    t = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    e_in, t_in = e < E, t < L
    tile = e_in[:, None] & t_in[None, :]
    at = (b * E + e[:, None]) * L + t[None, :]  # (e, t) in the contiguous (B, E, L) tensors
    cs = tl.load(cs_ptr + at, mask=tile, other=0.0)
    acc = tl.zeros((BLOCK_E, BLOCK_L), dtype=tl.float32)
    for n in tl.static_range(N):
        a = tl.load(A_ptr + e * N + n, mask=e_in, other=0.0)
        h = tl.load(h0_ptr + (b * E + e) * N + n, mask=e_in, other=0.0)
        c = tl.load(C_ptr + b * s_C_b + n * s_C_n + t * s_C_l, mask=t_in, other=0.0).to(tl.float32)
        acc += tl.exp(cs * a[:, None]) * h[:, None] * c[None, :]
    if HAS_Z:
        z = tl.load(z_ptr + b * s_z_b + e[:, None] * s_z_e + t[None, :] * s_z_l, mask=tile, other=0.0)
        z = z.to(tl.float32)
        acc = acc * z * tl.sigmoid(z)
    y = tl.load(y_ptr + b * s_y_b + e[:, None] * s_y_e + t[None, :] * s_y_l, mask=tile, other=0.0)
    tl.store(out_ptr + at, (y.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=tile)


@torch.no_grad()
def add_initial_state_fused(y, last_state, initial_state, delta, A, C, z=None, delta_bias=None, delta_softplus=False):
    """`kernel.add_initial_state` with the output correction in one Triton kernel; same arguments and results.

    The cumulative dt and the last state's correction (B, E, N) stay torch; y and the last state keep their dtypes.
    """
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    if dt.dtype != torch.float32 or C.dim() != 3:
        raise ValueError(f"the fused correction takes fp32 math and C of shape (B, N, L); got {dt.dtype} and C of "
                         f"shape {tuple(C.shape)} (use the torch form, kernel.add_initial_state)")
    cs_BEL = dt.cumsum(dim=-1).contiguous()
    A32, h0 = A.float().contiguous(), initial_state.float().contiguous()
    Bsz, E, L = cs_BEL.shape
    out = torch.empty(Bsz, E, L, dtype=y.dtype, device=y.device)
    grid = (Bsz, triton.cdiv(E, BLOCK_E), triton.cdiv(L, BLOCK_L))
    _correct_kernel[grid](
        cs_BEL, A32, h0, C, y, y if z is None else z, out, E, L,
        *y.stride(), *(y if z is None else z).stride(), *C.stride(),
        N=A.shape[1], HAS_Z=z is not None, BLOCK_E=BLOCK_E, BLOCK_L=BLOCK_L,
    )
    last = last_state.float() + torch.exp(cs_BEL[:, :, -1:] * A32) * h0
    return out, last.to(last_state.dtype)
