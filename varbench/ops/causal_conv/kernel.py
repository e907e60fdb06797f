"""causal_conv1d's CUDA kernel behind the signature of `reference.causal_conv1d_ref` (CUDA only), as custom ops.

Shape legend: B batch, L tokens, D channels, W kernel width, w = W - 1 tail length.
The kernel takes x as (B, D, L). It has two code paths: "channel-first" (stride(2) == 1) and "channel-last"
(stride(1) == 1, i.e. a (B, L, D) contiguous tensor transposed). Only the channel-last path accepts initial states,
and only when they are themselves channel-last ((B, W - 1, D) contiguous, transposed) and D is a multiple of 8.

The kernel runs as the custom ops `varbench::causal_conv1d_fwd` / `varbench::causal_conv1d_bwd`, so torch.compile
sees one opaque node per conv. Called directly, the package's `causal_conv1d_fn` breaks dynamo's graph in every block:
its own op writes into `out=` tensors that `empty_like` makes channel-last, hence non-contiguous, which dynamo refuses.
Inside our op the package runs eagerly, and the op returns fresh (B, L, D) contiguous tensors, whatever the layout of
the inputs: callers never meet the kernel's layout rules. The channel-last path reads x and dy through their strides
and writes y and dx through theirs, so a slice of in_proj's output (Mamba2's xBC: channels contiguous, rows 4256
apart) goes in as it is, and y / dx are written straight into (B, L, D) contiguous buffers: no layout copy either way
(`kernel_layout`; their `aten::copy_` took 4.0 ms of M-VAR-d16's training step, 0.05 ms after: session 36).
causal_conv1d is imported inside the functions, so importing this module never needs it (CPU machines).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from varbench.ops.causal_conv.reference import empty_tail, next_tail
from varbench.ops.custom import autograd_grads, fake_grads, op_grads

VIA = ("initial_states", "pad")
WIDTHS = (2, 3, 4)  # the kernel's compiled widths


def causal_conv1d(x, weight, bias=None, tail=None, activation=None, via="initial_states"):
    """`causal_conv1d_ref` through causal_conv1d's kernel (the custom op `varbench::causal_conv1d_fwd`).

    Args:
        x (torch.Tensor): inputs of shape (B, L, D), D a multiple of 8, any strides.
        weight (torch.Tensor): depthwise kernel of shape (D, W), 2 <= W <= 4.
        bias (torch.Tensor, Optional): shape (D,), weight's dtype. Default: None.
        tail (torch.Tensor, Optional): the W - 1 inputs before x, (B, W - 1, D). Default: zeros.
        activation (str, Optional): None or "silu". Default: None.
        via (str, Optional): how the tail enters the kernel: "initial_states" (the kernel's own argument,
            channel-last) or "pad" (prepend the tail to x and drop the first W - 1 outputs). Default: "initial_states".

    Returns:
        y (B, L, D) in x's dtype, contiguous, and the next tail (B, W - 1, D). The tail is sliced in torch rather
        than taken from the kernel's `final_states`, which is then exact also when L < W - 1.
    """
    check_arguments(x, weight, activation, via)
    W, silu = weight.shape[1], activation == "silu"
    tail_x = None if tail is None else tail.to(x.dtype)  # the kernel reads the tail in x's dtype
    if via == "initial_states":
        y = torch.ops.varbench.causal_conv1d_fwd(x, weight, bias, tail_x, silu)
    else:
        xt = torch.cat([empty_tail(x, W) if tail is None else tail_x, x], dim=1)
        y = torch.ops.varbench.causal_conv1d_fwd(xt, weight, bias, None, silu)[:, W - 1:].contiguous()
    return y, next_tail(x, tail, W)


def check_arguments(x, weight, activation, via) -> None:
    """A ValueError naming what the kernel cannot take, before it fails with a message naming none of it."""
    if x.shape[-1] % 8:
        raise ValueError(f"causal_conv1d needs channels divisible by 8, got {x.shape[-1]}")
    if weight.shape[1] not in WIDTHS:
        raise ValueError(f"causal_conv1d's kernel takes widths {WIDTHS}, got {weight.shape[1]}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if via not in VIA:
        raise ValueError(f"via must be one of {VIA}, got {via!r}")


def channel_last(t_BLD: Tensor) -> Tensor:
    """(B, L, D) -> the (B, D, L) view with contiguous channels: the kernel's channel-last layout."""
    return t_BLD.contiguous().transpose(1, 2)


def kernel_layout(t_BLD: Tensor) -> Tensor:
    """(B, L, D) -> a (B, D, L) view the channel-last path reads through its strides: `t` itself where its C++ checks
    and its 16-byte vector loads allow (channels contiguous; row and batch strides multiples of 8 elements; an
    aligned start), else a contiguous copy."""
    readable = (t_BLD.stride(2) == 1 and t_BLD.stride(1) > 1 and t_BLD.stride(1) % 8 == 0
                and t_BLD.stride(0) % 8 == 0 and t_BLD.data_ptr() % 16 == 0)
    return t_BLD.transpose(1, 2) if readable else channel_last(t_BLD)


def conv_forward(x_BLD: Tensor, weight: Tensor, bias: Tensor | None, tail_BwD: Tensor | None, silu: bool) -> Tensor:
    """The package's forward in our layout: y (B, L, D) contiguous in x's dtype (what the fake promises), written by
    the kernel itself (its own entry point `causal_conv1d_fwd_function` would allocate y like x: strided for a
    slice)."""
    from causal_conv1d.cpp_functions import _causal_conv1d_fwd_cpp

    init = None if tail_BwD is None else channel_last(tail_BwD)
    bias = None if bias is None else bias.contiguous()
    y_BLD = torch.empty(x_BLD.shape, dtype=x_BLD.dtype, device=x_BLD.device)
    _causal_conv1d_fwd_cpp(kernel_layout(x_BLD), weight.contiguous(), bias, None, init, y_BLD.transpose(1, 2), None,
                           silu)
    return y_BLD


def conv_backward(dy_BLD: Tensor, x_BLD: Tensor, weight: Tensor, bias: Tensor | None, tail_BwD: Tensor | None,
                  silu: bool) -> list[Tensor]:
    """The package's backward in our layout: gradients of (x, weight, bias, tail), each as its input (contiguous,
    its dtype), an empty tensor for an absent bias or tail."""
    from causal_conv1d.cpp_functions import causal_conv1d_bwd_function

    init = None if tail_BwD is None else channel_last(tail_BwD)
    bias_c = None if bias is None else bias.contiguous()
    dx_BLD = torch.empty(x_BLD.shape, dtype=x_BLD.dtype, device=x_BLD.device)
    _, dweight, dbias, dtail_BDw = causal_conv1d_bwd_function(
        kernel_layout(x_BLD), weight.contiguous(), bias_c, kernel_layout(dy_BLD.to(x_BLD.dtype)), None, init, None,
        dx_BLD.transpose(1, 2), tail_BwD is not None, silu)
    dtail = None if dtail_BDw is None else dtail_BDw.transpose(1, 2)
    return op_grads((dx_BLD, dweight, dbias, dtail), (x_BLD, weight, bias, tail_BwD), dy_BLD)


@torch.library.custom_op("varbench::causal_conv1d_fwd", mutates_args=(), device_types="cuda")
def _causal_conv1d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], tail: Optional[Tensor],
                       silu: bool) -> Tensor:
    return conv_forward(x, weight, bias, tail, silu)


@_causal_conv1d_fwd.register_fake
def _(x, weight, bias, tail, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("varbench::causal_conv1d_bwd", mutates_args=(), device_types="cuda")
def _causal_conv1d_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], tail: Optional[Tensor],
                       silu: bool) -> list[Tensor]:
    return conv_backward(dy, x, weight, bias, tail, silu)


@_causal_conv1d_bwd.register_fake
def _(dy, x, weight, bias, tail, silu):
    return fake_grads((x, weight, bias, tail), dy)


def _causal_conv1d_setup_context(ctx, inputs, output):
    *tensors, ctx.silu = inputs
    ctx.save_for_backward(*tensors)


def _causal_conv1d_backward(ctx, dy):
    tensors = ctx.saved_tensors  # x, weight, bias, tail
    grads = torch.ops.varbench.causal_conv1d_bwd(dy, *tensors, ctx.silu)
    return (*autograd_grads(grads, tensors), None)


_causal_conv1d_fwd.register_autograd(_causal_conv1d_backward, setup_context=_causal_conv1d_setup_context)
