"""The element-wise parts of a ScaleAR block, each one fused kernel under `torch.compile` (issue 18: sampling speed).

Shape legend: B batch, L tokens, C width, H heads, d head dim.
Between its matmuls, a block runs chains of element-wise ops, each a kernel that reads and writes the whole
activation: the AdaLN pre-norm (LayerNorm, then times 1 + scale plus shift in one addcmul: 2 kernels, and under
autocast the cast of the Linear that reads it: 1), the gated residual (2) and VAR's L2-normalised q and k (norm,
clamp, divide, temperature, casts: up to 6). Fused, a branch's gated residual and the next branch's pre-norm are one
kernel, which writes the next branch's input in the autocast dtype of the Linear that reads it. Where the GPU is busy
(sampling at batch 64) they are memory traffic, not arithmetic. Each function below is the eager reference (the
oracle, what the blocks run by default) and `fused(fn)` its compiled form: Inductor generates one kernel per chain,
for every shape (`dynamic=True`: one compile serves all scales and batches). The blocks use them only when asked
(`ScaleAR.set_fused_elementwise`), in eval mode without autograd (`runs_fused`). The first call of each compiles
(seconds on a GPU), so sampling with CUDA graphs compiles in its untimed warm-up. The arithmetic is the same in the
same dtypes; Inductor's reductions may round differently in the last bits.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F


def ln_modulate(x_BLC: torch.Tensor, scale1p_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift, with a non-affine LayerNorm (`scale1p_B1C` is 1 + scale). The product and the sum
    are one `addcmul` (one kernel, not VAR's mul then add): the same fp32 arithmetic, the sum possibly fused into
    the multiply's rounding (one ulp). `dtype`: the result cast to it, in the same kernel when fused: the autocast
    dtype of the Linear that reads it next, which would cast it so itself (the same values, without a pass that
    reads the fp32 result back; `AdaLNBlock.modulate`)."""
    out_BLC = torch.addcmul(shift_B1C, F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=eps), scale1p_B1C)
    return out_BLC if dtype is None else out_BLC.to(dtype)


def gated_residual(x_BLC: torch.Tensor, y_BLC: torch.Tensor, gate_B1C: torch.Tensor) -> torch.Tensor:
    """x + y * gate: a branch's gated update of the residual stream."""
    return x_BLC + y_BLC.mul(gate_B1C)


def residual_modulate(x_BLC: torch.Tensor, y_BLC: torch.Tensor, gate_B1C: torch.Tensor, scale1p_B1C: torch.Tensor,
                      shift_B1C: torch.Tensor, eps: float,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`gated_residual`, then `ln_modulate` of its result: the new residual stream and the next branch's input. Fused,
    one kernel reads x and y once and writes both (the LayerNorm reads the new residual where it was computed, not
    back from memory)."""
    x_BLC = gated_residual(x_BLC, y_BLC, gate_B1C)
    return x_BLC, ln_modulate(x_BLC, scale1p_B1C, shift_B1C, eps, dtype)


def l2_qk(qk_2BHLd: torch.Tensor, temperature_1H11: torch.Tensor,
          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """VAR's attn_l2_norm: q and k (stacked, as the qkv projection lays them out) normalised over d, q times the
    per-head temperature, both cast to `dtype` (v's). One normalisation serves both (each row's is its own, so the
    values are VAR's): three kernels fewer than normalising q and k apart."""
    q_BHLd, k_BHLd = F.normalize(qk_2BHLd, dim=-1).unbind(0)
    return q_BHLd.mul(temperature_1H11).to(dtype), k_BHLd.to(dtype)


NORMALIZE_EPS = 1e-12  # F.normalize's


class L2QKTraining(torch.autograd.Function):
    """`l2_qk` with its backward written out, for training: the same forward, and a backward that recomputes the
    normalised rows from the saved input, so no fp32 copy of them is kept for it. Attention runs it under autograd
    on a CPU and with `qk_norm: torch`; on a GPU the Triton kernels of `varbench.ops.qk_norm.kernel` run by default
    (session 30, one H100: VAR-d16's compiled step 85.1 ms against 91.4 with this), and this is their oracle.
    Session 29 (VAR-d16, batch 32, compiled, one H200, `results/gpu/h200/README.md`): the step's peak memory 21.0 GiB
    against 22.4 with autograd's backward, at the same speed (84.9 against 85.1 ms). With y = x / max(|x|, eps) over
    d and dy the gradient of y: dx = (dy - y (y . dy)) / |x| where |x| >= eps (the clamp passes the gradient there),
    dy / eps below it (the clamp holds the denominator constant). Arithmetic in fp32, as the autocast forward's."""

    @staticmethod
    def forward(ctx, qk_2BHLd: torch.Tensor, temperature_1H11: torch.Tensor, dtype: torch.dtype):
        ctx.save_for_backward(qk_2BHLd, temperature_1H11)
        return l2_qk(qk_2BHLd, temperature_1H11, dtype)

    @staticmethod
    def backward(ctx, dq_BHLd: torch.Tensor, dk_BHLd: torch.Tensor):
        qk_2BHLd, temperature_1H11 = ctx.saved_tensors
        work = torch.promote_types(qk_2BHLd.dtype, torch.float32)  # fp32 arithmetic, fp64 kept fp64
        x_2BHLd = qk_2BHLd.to(work)
        norm_2BHL1 = x_2BHLd.norm(dim=-1, keepdim=True)
        y_2BHLd = x_2BHLd / norm_2BHL1.clamp_min(NORMALIZE_EPS)
        dq_BHLd = dq_BHLd.to(work)
        d_temperature_1H11 = (dq_BHLd * y_2BHLd[0]).sum(dim=(0, 2, 3), keepdim=True)
        dy_2BHLd = torch.stack((dq_BHLd * temperature_1H11, dk_BHLd.to(work)))
        along_2BHL1 = (y_2BHLd * dy_2BHLd).sum(dim=-1, keepdim=True)
        dx_2BHLd = torch.where(norm_2BHL1 >= NORMALIZE_EPS, (dy_2BHLd - y_2BHLd * along_2BHL1) / norm_2BHL1,
                               dy_2BHLd / NORMALIZE_EPS)
        return dx_2BHLd.to(qk_2BHLd.dtype), d_temperature_1H11.to(temperature_1H11.dtype), None


def runs_fused(module: torch.nn.Module) -> bool:
    """Whether `module` runs its chains fused now: asked for (its `fused_elementwise`), in eval mode (training's
    stochastic depth acts on the gates) and without autograd (inference kernels: each grad mode would compile
    anew)."""
    return module.fused_elementwise and not module.training and not torch.is_grad_enabled()


# compiles one function may keep: autocast on / off, a one-token scale, input dtypes, gate layouts and devices each
# make a variant of their own, and a process (a test session) may meet many; dynamo's default stops at 8
RECOMPILE_LIMIT = 64


@functools.cache
def fused(fn: Callable) -> Callable:
    """`fn` compiled into fused kernels for any shape (one graph, no break), built once per function. Each call
    evaluates dynamo's guards on the host: with CUDA graphs, which replay the kernels without the Python, that costs
    nothing; in eager sampling at small batch it costs more than the fusion saves."""
    compiled = torch.compile(fn, dynamic=True, fullgraph=True)

    @functools.wraps(fn)
    def run(*args):
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args)
    return run
