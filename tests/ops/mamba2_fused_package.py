"""mamba_ssm's `MambaSplitConv1dScanCombinedFn` (mamba-ssm 2.2.2 to 2.3.x) emulated in torch on CPU, for the tests of
the custom ops' bodies (test_mamba2_fused_custom_op.py): its forward computes the layer with the references and keeps
on the context what the package keeps (its saved tensors in its order, its settings); its backward reads them back,
checks them, and differentiates the references (with autograd switched back on: an op's body runs below it).

Shape legend: B batch, L tokens, H heads, P head dim, G groups, N state dim, E = H * P, F = E + 2GN conv channels.
"""

import torch
import torch.nn.functional as F
from torch._C import DispatchKey, DispatchKeySet

from varbench.ops.causal_conv.reference import causal_conv1d_ref
from varbench.ops.ssd.reference import gated_rmsnorm_ref, ssd_scan_ref

SETTINGS = ("dt_limit", "return_final_states", "activation", "rmsnorm_eps", "norm_before_gate", "chunk_size", "headdim",
            "ngroups")


def layer(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, norm_weight, out_proj_weight, chunk_size, eps, headdim,
          ngroups, norm_before_gate):
    """The layer by the references: the output (B, L, C), the scan's output (B, L, H, P) and the gated input's 1/RMS
    per group and row (G * B * L,) in fp32."""
    (batch, length, _), H = zxbcdt.shape, A.shape[0]
    E, GN = H * headdim, (conv_weight.shape[0] - H * headdim) // 2
    z, xBC, dt = zxbcdt.split([E, E + 2 * GN, H], dim=-1)
    xBC, _ = causal_conv1d_ref(xBC, conv_weight, conv_bias, activation="silu")
    x, B, C = xBC.split([E, GN, GN], dim=-1)
    y, _ = ssd_scan_ref(x.reshape(batch, length, H, headdim), dt, A, B.reshape(batch, length, ngroups, -1),
                        C.reshape(batch, length, ngroups, -1), D, chunk_size=chunk_size, dt_bias=dt_bias,
                        dt_softplus=True)
    y_BLE = y.reshape(batch, length, E)
    gated = (y_BLE if norm_before_gate else y_BLE * F.silu(z)).float().reshape(batch * length, ngroups, -1)
    rstd = torch.rsqrt(gated.square().mean(-1) + eps).transpose(0, 1).reshape(-1)  # group-major, as the kernel
    normed = gated_rmsnorm_ref(y_BLE, norm_weight, z, eps, E // ngroups, norm_before_gate)
    return F.linear(normed, out_proj_weight), y, rstd


class MambaSplitConv1dScanCombinedFn:
    """The package's Function, as the ops' bodies call it: its static forward and backward with a context."""

    @staticmethod
    def forward(ctx, zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, initial_states=None, seq_idx=None,
                dt_limit=(0.0, float("inf")), return_final_states=False, activation="silu", rmsnorm_weight=None,
                rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None, ngroups=1,
                norm_before_gate=True):
        assert not torch.is_autocast_enabled(zxbcdt.device.type)  # the body turns it off
        assert outproj_weight.dtype == zxbcdt.dtype and zxbcdt.is_contiguous()  # cast outside, contiguous inside
        assert initial_states is None and seq_idx is None and outproj_bias is None and activation == "silu"
        out, scan_out, rstd = layer(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight, outproj_weight,
                                    chunk_size, rmsnorm_eps, headdim, ngroups, norm_before_gate)
        ctx.save_for_backward(zxbcdt, conv1d_weight, conv1d_bias, scan_out, A, D, dt_bias, initial_states, seq_idx,
                              rmsnorm_weight, rstd, outproj_weight, outproj_bias)
        for name, value in zip(SETTINGS, (dt_limit, return_final_states, activation, rmsnorm_eps, norm_before_gate,
                                          chunk_size, headdim, ngroups)):
            setattr(ctx, name, value)
        return out

    @staticmethod
    def backward(ctx, dout, *args):
        (zxbcdt, conv1d_weight, conv1d_bias, scan_out, A, D, dt_bias, initial_states, seq_idx, rmsnorm_weight, rstd,
         outproj_weight, outproj_bias) = ctx.saved_tensors
        s = {name: getattr(ctx, name) for name in SETTINGS}
        assert (s["dt_limit"], s["return_final_states"], s["activation"]) == ((0.0, float("inf")), False, "silu")
        assert not ctx._fwd_used_autocast and not torch.is_autocast_enabled(dout.device.type)
        assert dout.dtype == zxbcdt.dtype and initial_states is None and seq_idx is None and outproj_bias is None
        inputs = [t.detach().requires_grad_(True)
                  for t in (zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight, outproj_weight)]
        no_exclusions = DispatchKeySet(DispatchKey.Undefined)  # autograd back on, below the op's autograd
        with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), no_exclusions), \
                torch.enable_grad():
            out, scan_again, rstd_again = layer(*inputs, s["chunk_size"], s["rmsnorm_eps"], s["headdim"], s["ngroups"],
                                                s["norm_before_gate"])
            grads = torch.autograd.grad(out, inputs, dout)
        torch.testing.assert_close(scan_out, scan_again.detach(), rtol=0, atol=0)  # what forward kept, in order
        torch.testing.assert_close(rstd, rstd_again.detach(), rtol=0, atol=0)
        dzxbcdt, dweight, dbias, ddt_bias, dA, dD, dnorm, dout_proj = grads
        return (dzxbcdt, dweight, dbias, ddt_bias, dA, dD, None, None, None, None, None, None, dnorm, None, dout_proj,
                None, None, None, None)
