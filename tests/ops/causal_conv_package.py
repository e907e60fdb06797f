"""causal_conv1d's Python entry points (`causal_conv1d.cpp_functions`, 1.7.0: the forward op, the backward function)
emulated in torch on CPU, for the tests of the custom ops' bodies (test_causal_conv_custom_op.py): each checks the
layout rules that the package's C++ entry points check on their channel-last path, and computes with the reference conv
(forward) or in closed form (backward: an op's body runs below autograd, so it cannot differentiate the reference).

Shape legend: B batch, L tokens, D channels, W kernel width, T = W - 1 + L.
"""

import torch
import torch.nn.functional as F

from varbench.ops.causal_conv.reference import causal_conv1d_ref
from varbench.utils.precision import at_least_fp32


def channel_last_checked(t, name):
    """The layout checks of causal_conv1d's C++ entry points for a (B, D, L) argument on its channel-last path, and
    the 16-byte alignment its vector loads and stores need (unchecked there: a misaligned start faults)."""
    assert t.stride(1) == 1 and t.stride(2) > 1 and t.stride(2) % 8 == 0 and t.stride(0) % 8 == 0, (name, t.stride())
    assert t.data_ptr() % 16 == 0, (name, t.data_ptr())
    return t.transpose(1, 2)  # (B, L, D): the reference's layout


def package_forward(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation):
    """The op `causal_conv1d.cpp_functions._causal_conv1d_fwd_cpp` emulated (1.7.0): y written into `out`, which
    the channel-last kernel writes through its row stride and with contiguous channels."""
    assert bias is None or bias.dtype == weight.dtype
    init = None if initial_states is None else channel_last_checked(initial_states, "initial_states")
    assert init is None or init.dtype == x.dtype
    assert out.shape == x.shape and out.dtype == x.dtype
    y, _ = causal_conv1d_ref(channel_last_checked(x, "x"), weight, bias, init, "silu" if silu_activation else None)
    channel_last_checked(out, "out").copy_(y)


def package_backward(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, return_dinitial, silu):
    """`causal_conv1d_bwd_function` emulated in closed form (an op's body runs below autograd): dx like x, dweight
    and dbias in their inputs' dtypes, dinitial_states channel-last (B, D, W - 1), or None."""
    x_BLD, dy_BLD = channel_last_checked(x, "x"), channel_last_checked(dout, "dout")
    (B, _, D), W = x_BLD.shape, weight.shape[1]
    init = x_BLD.new_zeros(B, W - 1, D) if initial_states is None else channel_last_checked(initial_states, "init")
    f = at_least_fp32(x.dtype)  # the kernel computes in fp32 whatever the inputs' dtypes
    xt_BDT = torch.cat([init, x_BLD], dim=1).transpose(1, 2).to(f)  # T = W - 1 + L
    z_BDL = F.conv1d(xt_BDT, weight[:, None].to(f), None if bias is None else bias.to(f), groups=D)
    s = torch.sigmoid(z_BDL)
    dz_BDL = dy_BLD.transpose(1, 2).to(f) * (s * (1 + z_BDL * (1 - s)) if silu else 1)  # SiLU' = s (1 + z (1 - s))
    dxt_BDT = F.conv_transpose1d(dz_BDL, weight[:, None].to(f), groups=D)  # the adjoint of the depthwise conv
    dweight = torch.einsum("bdl,bdlw->dw", dz_BDL, xt_BDT.unfold(-1, W, 1)).to(weight.dtype)
    dbias = None if bias is None else dz_BDL.sum((0, 2)).to(bias.dtype)
    dinit = torch.empty(B, W - 1, D, dtype=x.dtype).transpose(1, 2).copy_(dxt_BDT[..., :W - 1])
    if dx is None:
        dx = torch.empty_like(x)
    channel_last_checked(dx, "dx").copy_(dxt_BDT[..., W - 1:].transpose(1, 2))
    return dx, dweight, dbias, dinit if return_dinitial else None
