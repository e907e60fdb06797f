"""mamba_ssm's whole-layer Mamba2 kernel (`mamba_split_conv1d_scan_combined`, Mamba2's `use_mem_eff_path`) as the
custom ops `varbench::mamba2_fused_fwd` / `varbench::mamba2_fused_bwd` (CUDA only).

Shape legend: B batch, L tokens, H heads, P head dim, G groups, N state dim, E = H * P channels, F = E + 2GN conv
channels, Z = 2E + 2GN + H in_proj outputs, C model width, W conv width.
Called directly, the package's autograd.Function breaks dynamo's graph in every block: it calls causal_conv1d's entry
point that dynamo refuses (causal_conv/kernel.py). Here the Function's own forward and backward run eagerly inside
the ops, each given a stand-in for its context (`PackageContext`) that carries what the package keeps between them:
its saved tensors in its order and its settings (the same in mamba-ssm 2.2.2 to 2.3.x). The forward op returns, besides
the output, the two tensors the package computes in forward and reads in backward: the scan's output before the norm
(B, L, H, P) and the norm's reciprocal RMS per row and group (G * B * L,) in fp32.
Autocast is decided outside the ops, as the package decides it inside (out_proj's weight in the dtype of in_proj's
output), and the bodies run with autocast off, so the fakes know every dtype.
mamba_ssm is imported inside the bodies, so importing this module never needs it (CPU machines).
"""

from __future__ import annotations

import torch
from torch import Tensor

from varbench.ops.custom import as_promised, autograd_grads, fake_grads, op_grads

DT_LIMIT = (0.0, float("inf"))  # the package's default: no clamp of dt
# where the package's backward returns the gradients of our op's differentiable inputs (its forward's argument order)
GRAD_SLOTS = (0, 1, 2, 3, 4, 5, 12, 14)  # zxbcdt, conv weight, conv bias, dt_bias, A, D, norm weight, out_proj weight
SCAN_OUT, RSTD = 3, 10  # their places among the package's saved tensors


class PackageContext:
    """What `MambaSplitConv1dScanCombinedFn` reads and writes on its autograd context, outside autograd."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def mamba2_fused_forward(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, chunk_size, norm_weight, norm_eps,
                         out_proj_weight, headdim, ngroups, norm_before_gate=False) -> Tensor:
    """The whole Mamba2 layer after in_proj in one call (`mamba_split_conv1d_scan_combined`): conv + SiLU, SSD scan,
    gated RMSNorm, out_proj. Zero initial state, no final state, so it serves `forward` only.

    Args:
        zxbcdt (torch.Tensor): in_proj output of shape (B, L, Z), order [z, x, B, C, dt].
        conv_weight (torch.Tensor): depthwise conv weight of shape (F, W).
        conv_bias (torch.Tensor): conv bias of shape (F,).
        dt_bias, A, D: as in `kernel.ssd_scan` (D per head).
        chunk_size (int): the SSD chunk length.
        norm_weight (torch.Tensor): gated RMSNorm weight of shape (E,).
        norm_eps (float): RMSNorm epsilon.
        out_proj_weight (torch.Tensor): output projection of shape (C, E).
        headdim (int): P.
        ngroups (int): G.
        norm_before_gate (bool, Optional): see `gated_rmsnorm_ref`. Default: False.

    Returns:
        Tensor of shape (B, L, C) in zxbcdt's dtype.
    """
    out_proj_weight = out_proj_weight.to(zxbcdt.dtype)  # what the package casts it to under autocast
    return torch.ops.varbench.mamba2_fused_fwd(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight,
                                               out_proj_weight, chunk_size, norm_eps, headdim, ngroups,
                                               norm_before_gate)[0]


def fused_forward(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor,
                  norm_weight: Tensor, out_proj_weight: Tensor, chunk_size: int, norm_eps: float, headdim: int,
                  ngroups: int, norm_before_gate: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The package's forward: the output (B, L, C), the scan's output (B, L, H, P) and the norm's 1/RMS (G * B * L,)."""
    from mamba_ssm.ops.triton.ssd_combined import MambaSplitConv1dScanCombinedFn

    ctx = PackageContext()
    with torch.autocast(zxbcdt.device.type, enabled=False):
        out = MambaSplitConv1dScanCombinedFn.forward(
            ctx, zxbcdt.contiguous(), conv_weight.contiguous(), conv_bias.contiguous(), dt_bias, A, D, chunk_size,
            None, None, DT_LIMIT, False, "silu", norm_weight, norm_eps, out_proj_weight, None, headdim, ngroups,
            norm_before_gate)
    scan_out, rstd = ctx.saved_tensors[SCAN_OUT], ctx.saved_tensors[RSTD]
    return as_promised(out, zxbcdt), as_promised(scan_out, zxbcdt), rstd.float().contiguous()


def fused_backward(dout: Tensor, zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor, dt_bias: Tensor, A: Tensor,
                   D: Tensor, norm_weight: Tensor, out_proj_weight: Tensor, scan_out: Tensor, rstd: Tensor,
                   chunk_size: int, norm_eps: float, headdim: int, ngroups: int,
                   norm_before_gate: bool) -> list[Tensor]:
    """The package's backward: gradients of (zxbcdt, conv weight, conv bias, dt_bias, A, D, norm weight, out_proj
    weight), each as its input (contiguous, its dtype)."""
    from mamba_ssm.ops.triton.ssd_combined import MambaSplitConv1dScanCombinedFn

    ctx = PackageContext()
    ctx.saved_tensors = (zxbcdt.contiguous(), conv_weight.contiguous(), conv_bias.contiguous(), scan_out, A, D,
                         dt_bias, None, None, norm_weight.contiguous(), rstd, out_proj_weight, None)
    ctx.dt_limit, ctx.return_final_states, ctx.activation, ctx.rmsnorm_eps = DT_LIMIT, False, "silu", norm_eps
    ctx.norm_before_gate, ctx.chunk_size, ctx.headdim, ctx.ngroups = norm_before_gate, chunk_size, headdim, ngroups
    ctx._fwd_used_autocast, ctx._dtype = False, torch.get_autocast_dtype(dout.device.type)  # read by custom_bwd
    with torch.autocast(dout.device.type, enabled=False):
        grads = MambaSplitConv1dScanCombinedFn.backward(ctx, dout.to(zxbcdt.dtype).contiguous())
    inputs = (zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight)
    return op_grads([grads[i] for i in GRAD_SLOTS], inputs, dout)


@torch.library.custom_op("varbench::mamba2_fused_fwd", mutates_args=(), device_types="cuda")
def _mamba2_fused_fwd(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor,
                      norm_weight: Tensor, out_proj_weight: Tensor, chunk_size: int, norm_eps: float, headdim: int,
                      ngroups: int, norm_before_gate: bool) -> tuple[Tensor, Tensor, Tensor]:
    return fused_forward(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight, chunk_size,
                         norm_eps, headdim, ngroups, norm_before_gate)


@_mamba2_fused_fwd.register_fake
def _(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight, chunk_size, norm_eps, headdim,
      ngroups, norm_before_gate):
    batch, length, _ = zxbcdt.shape
    return (zxbcdt.new_empty((batch, length, out_proj_weight.shape[0])),
            zxbcdt.new_empty((batch, length, A.shape[0], headdim)),
            zxbcdt.new_empty((ngroups * batch * length,), dtype=torch.float32))


@torch.library.custom_op("varbench::mamba2_fused_bwd", mutates_args=(), device_types="cuda")
def _mamba2_fused_bwd(dout: Tensor, zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Tensor, dt_bias: Tensor,
                      A: Tensor, D: Tensor, norm_weight: Tensor, out_proj_weight: Tensor, scan_out: Tensor,
                      rstd: Tensor, chunk_size: int, norm_eps: float, headdim: int, ngroups: int,
                      norm_before_gate: bool) -> list[Tensor]:
    return fused_backward(dout, zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight, scan_out,
                          rstd, chunk_size, norm_eps, headdim, ngroups, norm_before_gate)


@_mamba2_fused_bwd.register_fake
def _(dout, zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight, scan_out, rstd, chunk_size,
      norm_eps, headdim, ngroups, norm_before_gate):
    return fake_grads((zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight), dout)


def _mamba2_fused_setup_context(ctx, inputs, output):
    *tensors, ctx.chunk_size, ctx.norm_eps, ctx.headdim, ctx.ngroups, ctx.norm_before_gate = inputs
    _, scan_out, rstd = output
    ctx.mark_non_differentiable(scan_out, rstd)  # the package's intermediates
    ctx.save_for_backward(*tensors, scan_out, rstd)


def _mamba2_fused_backward(ctx, dout, _dscan_out, _drstd):
    *tensors, scan_out, rstd = ctx.saved_tensors
    grads = torch.ops.varbench.mamba2_fused_bwd(dout, *tensors, scan_out, rstd, ctx.chunk_size, ctx.norm_eps,
                                                ctx.headdim, ctx.ngroups, ctx.norm_before_gate)
    return (*autograd_grads(grads, tensors), None, None, None, None, None)


_mamba2_fused_fwd.register_autograd(_mamba2_fused_backward, setup_context=_mamba2_fused_setup_context)
