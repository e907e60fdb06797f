"""mamba_ssm's zero-state selective-scan CUDA kernel (`selective_scan_cuda`, mamba-ssm 2.2.2 to 2.3.x) as custom ops.

Shape legend: B batch, E channels, L tokens, N state dim, K = ceil(L / 2048) the kernel's chunks.
The kernel runs as the custom ops `varbench::selective_scan_fwd` / `varbench::selective_scan_bwd`, so torch.compile
sees one opaque node per scan. Called directly, the package's `selective_scan_fn` (a plain autograd.Function) breaks
dynamo's graph in every Mamba-1 block. Inside our ops the package's C++ entry points run eagerly on contiguous copies
(the kernel needs unit stride over tokens, which the mixer's transposed (B, L, E) tensors lack), and the ops return
fresh contiguous tensors: callers never meet the kernel's layout rules.
The forward op also returns what the kernel's backward needs: the per-chunk scan states (B, E, K, 2N) (the last
state is their last chunk's odd entries, as in `selective_scan_fn`) and, with a gate, the output before it.
The last state carries no gradient: the kernel's backward takes none (`selective_scan_fn` drops it silently).
selective_scan_cuda is imported inside the functions, so importing this module never needs it (CPU machines).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from varbench.ops.custom import as_promised, autograd_grads, fake_grads, op_grads

CHUNK = 2048  # tokens per chunk of the kernel's saved states (selective_scan.cpp: n_chunks = ceil(L / 2048))


def selective_scan_zero_state(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """`selective_scan_ref` from a zero state through mamba_ssm's kernel (the custom op `varbench::selective_scan_fwd`).

    Args: as `selective_scan_ref` without `initial_state`: u, delta, z (B, E, L) and B, C (B, N, L) in one dtype (fp32,
        bf16 or fp16), any strides; A (E, N), D and delta_bias (E,) in fp32.

    Returns:
        y (B, E, L) in u's dtype, contiguous, and the last state (B, E, N) in fp32 (a view, without gradient).
    """
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError(f"the selective scan takes B and C of shape (B, N, L), got {tuple(B.shape)} and "
                         f"{tuple(C.shape)}")
    y, chunk_states, _ = torch.ops.varbench.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return y, chunk_states[:, :, -1, 1::2]


def unit_stride(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                 delta_bias: Tensor | None, delta_softplus: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The package's forward in our layout: y (gated when z is given), the chunk states and the output before the
    gate (an empty tensor without z), each contiguous in the dtype the fake promises."""
    import selective_scan_cuda

    out, chunk_states, *gated = selective_scan_cuda.fwd(
        u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous()[:, None], C.contiguous()[:, None],
        unit_stride(D), unit_stride(z), unit_stride(delta_bias), delta_softplus)
    y = gated[0] if z is not None else out
    return as_promised(y, u), chunk_states.contiguous(), as_promised(out, u) if z is not None else u.new_empty(0)


def scan_backward(dy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  z: Tensor | None, delta_bias: Tensor | None, chunk_states: Tensor, ungated: Tensor,
                  delta_softplus: bool) -> list[Tensor]:
    """The package's backward in our layout: gradients of (u, delta, A, B, C, D, z, delta_bias), each as its input
    (contiguous, its dtype), an empty tensor for an absent input."""
    import selective_scan_cuda

    du, ddelta, dA, dB, dC, dD, ddelta_bias, *dz = selective_scan_cuda.bwd(
        u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous()[:, None], C.contiguous()[:, None],
        unit_stride(D), unit_stride(z), unit_stride(delta_bias), dy.to(u.dtype).contiguous(), chunk_states,
        ungated if z is not None else None, None, delta_softplus, False)
    grads = (du, ddelta, dA, dB[:, 0], dC[:, 0], dD, dz[0] if z is not None else None, ddelta_bias)  # inputs' order
    return op_grads(grads, (u, delta, A, B, C, D, z, delta_bias), dy)


@torch.library.custom_op("varbench::selective_scan_fwd", mutates_args=(), device_types="cuda")
def _selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], delta_bias: Optional[Tensor],
                        delta_softplus: bool) -> tuple[Tensor, Tensor, Tensor]:
    return scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@_selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    batch, channels, length = u.shape
    chunks = (length + CHUNK - 1) // CHUNK
    chunk_states = u.new_empty((batch, channels, chunks, 2 * A.shape[1]), dtype=A.dtype)
    return u.new_empty(u.shape), chunk_states, u.new_empty(u.shape) if z is not None else u.new_empty(0)


@torch.library.custom_op("varbench::selective_scan_bwd", mutates_args=(), device_types="cuda")
def _selective_scan_bwd(dy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], delta_bias: Optional[Tensor], chunk_states: Tensor, ungated: Tensor,
                        delta_softplus: bool) -> list[Tensor]:
    return scan_backward(dy, u, delta, A, B, C, D, z, delta_bias, chunk_states, ungated, delta_softplus)


@_selective_scan_bwd.register_fake
def _(dy, u, delta, A, B, C, D, z, delta_bias, chunk_states, ungated, delta_softplus):
    return fake_grads((u, delta, A, B, C, D, z, delta_bias), dy)


def _selective_scan_setup_context(ctx, inputs, output):
    *tensors, ctx.delta_softplus = inputs
    _, chunk_states, ungated = output
    ctx.mark_non_differentiable(chunk_states, ungated)  # the kernel's intermediates; the last state is a view of them
    ctx.save_for_backward(*tensors, chunk_states, ungated)


def _selective_scan_backward(ctx, dy, _dchunk_states, _dungated):
    *tensors, chunk_states, ungated = ctx.saved_tensors  # u, delta, A, B, C, D, z, delta_bias
    grads = torch.ops.varbench.selective_scan_bwd(dy, *tensors, chunk_states, ungated, ctx.delta_softplus)
    return (*autograd_grads(grads, tensors), None)


_selective_scan_fwd.register_autograd(_selective_scan_backward, setup_context=_selective_scan_setup_context)
