"""mamba_ssm's Triton SSD kernels behind the signatures of `reference.py` (CUDA only).

Shape legend: B batch, L tokens, H heads, P head dim, G groups, N state dim, E = H * P channels.
mamba_ssm is imported inside the functions, so importing this module never needs mamba_ssm (CPU machines).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from varbench.ops.custom import as_promised, autograd_grads, fake_grads, op_grads


def ssd_scan(x, dt, A, B, C, D=None, initial_state=None, chunk_size=256, dt_bias=None, dt_softplus=False):
    """`ssd_scan_ref` through mamba_ssm's chunked SSD kernels, always returning the final state.

    The kernels run as the custom ops `varbench::ssd_scan_fwd` / `varbench::ssd_scan_bwd` (below), so torch.compile
    sees one opaque node per scan: it neither traces mamba_ssm's Python and Triton launches (which broke inductor's
    codegen for M-VAR) nor breaks the graph around them.

    Args:
        x (torch.Tensor): inputs of shape (B, L, H, P).
        dt (torch.Tensor): step sizes of shape (B, L, H) (raw when `dt_softplus`).
        A (torch.Tensor): per-head decay rates of shape (H,), fp32.
        B (torch.Tensor): input maps of shape (B, L, G, N).
        C (torch.Tensor): output maps of shape (B, L, G, N).
        D (torch.Tensor, Optional): skip of shape (H,) or (H, P). Default: None.
        initial_state (torch.Tensor, Optional): fp32 state of shape (B, H, P, N) before token 0. Default: zeros.
        chunk_size (int, Optional): the kernel's chunk length. Default: 256.
        dt_bias (torch.Tensor, Optional): added to dt inside the kernel, shape (H,). Default: None.
        dt_softplus (bool, Optional): dt <- softplus(dt + dt_bias) inside the kernel. Default: False.

    Returns:
        y (B, L, H, P) in x's dtype and the final state (B, H, P, N) in fp32.
    """
    if initial_state is not None:
        # the kernel reads the state through its strides but accumulates in fp32; hand it fp32, contiguous
        initial_state = initial_state.float().contiguous()
    return torch.ops.varbench.ssd_scan_fwd(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus)


@torch.library.custom_op("varbench::ssd_scan_fwd", mutates_args=(), device_types="cuda")
def _ssd_scan_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  dt_bias: Optional[Tensor], initial_state: Optional[Tensor], chunk_size: int,
                  dt_softplus: bool) -> tuple[Tensor, Tensor]:
    from mamba_ssm.ops.triton.ssd_combined import _mamba_chunk_scan_combined_fwd

    y, _, _, _, _, final_state = _mamba_chunk_scan_combined_fwd(
        x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_state, dt_softplus=dt_softplus)
    return as_promised(y, x), final_state.float().contiguous()  # what the fake below promises


@_ssd_scan_fwd.register_fake
def _(x, dt, A, B, C, D, dt_bias, initial_state, chunk_size, dt_softplus):
    batch, _, heads, head_dim = x.shape
    return x.new_empty(x.shape), x.new_empty((batch, heads, head_dim, B.shape[-1]), dtype=torch.float32)


@torch.library.custom_op("varbench::ssd_scan_bwd", mutates_args=(), device_types="cuda")
def _ssd_scan_bwd(dy: Tensor, dfinal_state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  y: Tensor, D: Optional[Tensor], dt_bias: Optional[Tensor], initial_state: Optional[Tensor],
                  chunk_size: int, dt_softplus: bool) -> list[Tensor]:
    from mamba_ssm.ops.triton.ssd_combined import _mamba_chunk_scan_combined_bwd

    dx, ddt, dA, dB, dC, dD, _, ddt_bias, dinitial = _mamba_chunk_scan_combined_bwd(
        dy, x, dt, A, B, C, y, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_state,
        dfinal_states=dfinal_state, dt_softplus=dt_softplus)
    return op_grads((dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial), (x, dt, A, B, C, D, dt_bias, initial_state), dy)


@_ssd_scan_bwd.register_fake
def _(dy, dfinal_state, x, dt, A, B, C, y, D, dt_bias, initial_state, chunk_size, dt_softplus):
    return fake_grads((x, dt, A, B, C, D, dt_bias, initial_state), dy)


def _ssd_scan_setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, dt_bias, initial_state, ctx.chunk_size, ctx.dt_softplus = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_state, output[0])


def _ssd_scan_backward(ctx, dy, dfinal_state):
    x, dt, A, B, C, D, dt_bias, initial_state, y = ctx.saved_tensors
    grads = torch.ops.varbench.ssd_scan_bwd(dy, dfinal_state, x, dt, A, B, C, y, D, dt_bias, initial_state,
                                            ctx.chunk_size, ctx.dt_softplus)
    return (*autograd_grads(grads, (x, dt, A, B, C, D, dt_bias, initial_state)), None, None)


_ssd_scan_fwd.register_autograd(_ssd_scan_backward, setup_context=_ssd_scan_setup_context)


def gated_rmsnorm(y, weight, z=None, eps=1e-5, group_size=None, norm_before_gate=False):
    """`gated_rmsnorm_ref` through mamba_ssm's Triton `rmsnorm_fn` (the kernel behind `RMSNormGated`)."""
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

    return rmsnorm_fn(y, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
