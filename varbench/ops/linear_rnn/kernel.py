"""fla (flash-linear-attention) Triton kernels behind the same signatures as `reference.py`, as custom ops.

Every fla import is inside a function: importing this module never needs fla, triton or a GPU. The kernels take an
initial state and return the final one, which is what appending a whole scale to a carried state needs. fla asserts
that the state is fp32; its state layout is [B, H, K, V] (we never ask for `state_v_first`).

Each kernel runs as the custom ops `varbench::fla_fwd` / `varbench::fla_bwd`, so torch.compile sees one opaque node
per call (fla's public functions are `torch.compiler.disable`d: dynamo would break the graph around each). `fla_fwd`
drives fla's own `torch.autograd.Function.forward` by hand with a stand-in ctx, so it runs exactly fla's code, and
keeps only the inputs. `fla_bwd` computes the gradients from the inputs:
- `chunk_simple_gla` (RetNet, linear attention, per-head decays) and `chunk_gla` (GLA, HGRN2) call fla's backward
  functions directly, as their Functions' backward does: simple GLA's backward needs nothing the forward computed
  (it recomputes the chunk states itself), GLA's needs the intra-chunk scores A, which it recomputes (fla's cheap
  intra-chunk kernel) instead of saving. No recompute of the forward: the compiled step costs what fla's costs.
- the (gated) delta rules RECOMPUTE: `fla_bwd` runs the Function's forward again, then its backward. Their Functions
  save private intermediates (the WY matrices, l2-norm rstd, cumulated gates, in shapes and dtypes that change
  between fla releases) that a fake would have to promise; the recompute costs one kernel forward per backward.
Since the Functions are called directly, fla's public wrappers and their backend `dispatch` (FlashQLA for Gated
DeltaNet when installed) are bypassed: the Triton kernels run.

Shape legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Optional

import torch
from torch import Tensor

from varbench.ops.custom import as_promised, autograd_grads, fake_grads, op_grads

# kernel name -> fla's autograd.Function behind it (module, class)
FUNCTIONS = {
    "chunk_gla": ("fla.ops.gla.chunk", "ChunkGLAFunction"),
    "chunk_simple_gla": ("fla.ops.simple_gla.chunk", "ChunkSimpleGLAFunction"),
    "chunk_delta_rule": ("fla.ops.delta_rule.chunk", "ChunkDeltaRuleFunction"),
    "fused_recurrent_delta_rule": ("fla.ops.delta_rule.fused_recurrent", "FusedRecurrentFunction"),
    "chunk_gated_delta_rule": ("fla.ops.gated_delta_rule.chunk", "ChunkGatedDeltaRuleFunction"),
    "fused_recurrent_gated_delta_rule": ("fla.ops.gated_delta_rule.fused_recurrent", "FusedRecurrentFunction"),
}
DIFFERENTIABLE = ("q", "k", "v", "g", "g_gamma", "beta", "initial_state")


def fla_call(kernel: str, q, k, v, g=None, g_gamma=None, beta=None, initial_state=None, scale=None,
             output_final_state=False, use_qk_l2norm=False) -> tuple[Tensor, Tensor | None]:
    """Run fla's `kernel` (a key of `FUNCTIONS`) through the custom op; the final state is None unless asked for."""
    if kernel not in FUNCTIONS:
        raise ValueError(f"unknown fla kernel {kernel!r}; valid: {sorted(FUNCTIONS)}")
    if g_gamma is not None and g_gamma.requires_grad:
        raise ValueError("fla's chunk_simple_gla does not differentiate g_gamma: pass a constant (detached) g_gamma")
    if initial_state is not None:
        initial_state = initial_state.float()  # fla asserts an fp32 state
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, final = torch.ops.varbench.fla_fwd(kernel, q, k, v, g, g_gamma, beta, initial_state, scale, output_final_state,
                                          use_qk_l2norm)
    return o, (final if output_final_state else None)


class _Ctx:
    """Stands in for autograd's ctx when a library Function's forward and backward are called by hand."""

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors


def _function(kernel: str):
    module, name = FUNCTIONS[kernel]
    return getattr(importlib.import_module(module), name)


def _forward_kwargs(fn, **given):
    """`given` narrowed to the parameters of `fn.forward`; a set option the Function does not take is an error."""
    params = inspect.signature(fn.forward).parameters
    unknown = [name for name, value in given.items() if name not in params and value not in (None, False)]
    if unknown:
        raise ValueError(f"{fn.__module__}.{fn.__name__} takes no {unknown}")
    defaults = dict(state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None)  # required by some, fixed by us
    return {name: value for name, value in {**defaults, **given}.items() if name in params}


def _run_forward(kernel, q, k, v, g, g_gamma, beta, initial_state, scale, output_final_state, use_qk_l2norm):
    fn, ctx = _function(kernel), _Ctx()
    kwargs = _forward_kwargs(fn, q=q, k=k, v=v, g=g, g_gamma=g_gamma, beta=beta, initial_state=initial_state,
                             scale=scale, output_final_state=output_final_state,
                             use_qk_l2norm_in_kernel=use_qk_l2norm)
    o, final = fn.forward(ctx, **kwargs)
    return fn, ctx, o, final


def _library_backward(fn, ctx, do, dht) -> dict:
    """`fn.backward` after `_run_forward`, its gradients by input name: a Function's backward returns one per
    parameter of its forward, in the signature's order (those we left at their defaults included)."""
    names = list(inspect.signature(fn.forward).parameters)[1:]  # after ctx
    return dict(zip(names, fn.backward(ctx, do, dht)))


@torch.library.custom_op("varbench::fla_fwd", mutates_args=(), device_types="cuda")
def _fla_fwd(kernel: str, q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], g_gamma: Optional[Tensor],
             beta: Optional[Tensor], initial_state: Optional[Tensor], scale: float, output_final_state: bool,
             use_qk_l2norm: bool) -> tuple[Tensor, Tensor]:
    *_, o, final = _run_forward(kernel, q, k, v, g, g_gamma, beta, initial_state, scale, output_final_state,
                                use_qk_l2norm)
    final = final.float().contiguous() if output_final_state else q.new_empty(0)
    return as_promised(o, q), final


@_fla_fwd.register_fake
def _(kernel, q, k, v, g, g_gamma, beta, initial_state, scale, output_final_state, use_qk_l2norm):
    batch, _, heads, head_v = v.shape
    final_shape = (batch, heads, q.shape[-1], head_v) if output_final_state else (0,)
    return q.new_empty(v.shape), q.new_empty(final_shape, dtype=torch.float32)


def _simple_gla_backward(q, k, v, g, g_gamma, initial_state, scale, do, dht) -> dict:
    """`ChunkSimpleGLAFunction.backward` from the inputs, prepared as its forward prepares them (64-token chunks,
    gates cumulated per chunk and, as g_gamma, scaled to base 2)."""
    from fla.ops.simple_gla.chunk import chunk_simple_gla_bwd
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2

    chunk = 64
    g_cum = None if g is None else chunk_local_cumsum(g, chunk_size=chunk, scale=RCP_LN2)
    g_gamma = None if g_gamma is None else g_gamma * RCP_LN2
    dq, dk, dv, dg, dh0 = chunk_simple_gla_bwd(q=q, k=k, v=v, g=g_cum, g_gamma=g_gamma, initial_state=initial_state,
                                               do=do, dht=dht, scale=scale, chunk_size=chunk)
    dg = None if g is None else chunk_local_cumsum(dg, chunk_size=chunk, reverse=True)
    return dict(q=dq, k=dk, v=dv, g=dg, initial_state=dh0)


def _gla_backward(q, k, v, g, g_gamma, initial_state, scale, do, dht) -> dict:
    """`ChunkGLAFunction.backward` from the inputs: the chunk length its forward picks, the cumulated gates it
    recomputes itself for low-precision gates, and the intra-chunk scores A its forward would have saved."""
    import triton
    from fla.ops.gla.chunk import chunk_gla_bwd, chunk_gla_fwd_intra_gk
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2

    chunk = min(64, max(16, triton.next_power_of_2(q.shape[1])))
    g_cum = chunk_local_cumsum(g, chunk, scale=RCP_LN2)
    A = chunk_gla_fwd_intra_gk(q=q, k=k, g=g_cum, scale=scale, chunk_size=chunk)
    dq, dk, dv, dg, dh0 = chunk_gla_bwd(q=q, k=k, v=v, g=None, g_cumsum=g_cum, scale=scale,
                                        initial_state=initial_state, h=None, A=A, do=do, dht=dht, chunk_size=chunk)
    return dict(q=dq, k=dk, v=dv, g=dg, initial_state=dh0)


# kernels whose backward runs from the inputs without recomputing the forward
DIRECT_BACKWARDS = {"chunk_simple_gla": _simple_gla_backward, "chunk_gla": _gla_backward}


@torch.library.custom_op("varbench::fla_bwd", mutates_args=(), device_types="cuda")
def _fla_bwd(kernel: str, do: Tensor, dfinal: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor],
             g_gamma: Optional[Tensor], beta: Optional[Tensor], initial_state: Optional[Tensor], scale: float,
             output_final_state: bool, use_qk_l2norm: bool) -> list[Tensor]:
    dht = dfinal if output_final_state else None
    if kernel in DIRECT_BACKWARDS:
        from fla.utils import input_guard  # contiguous inputs on the inputs' device, as for fla's own backward

        grads = input_guard(DIRECT_BACKWARDS[kernel])(q, k, v, g, g_gamma, initial_state, scale, do, dht)
    else:
        fn, ctx, _, _ = _run_forward(kernel, q, k, v, g, g_gamma, beta, initial_state, scale, output_final_state,
                                     use_qk_l2norm)
        grads = _library_backward(fn, ctx, do, dht)
    return op_grads([grads.get(name) for name in DIFFERENTIABLE], (q, k, v, g, g_gamma, beta, initial_state), do)


@_fla_bwd.register_fake
def _(kernel, do, dfinal, q, k, v, g, g_gamma, beta, initial_state, scale, output_final_state, use_qk_l2norm):
    return fake_grads((q, k, v, g, None, beta, initial_state), do)  # fla never differentiates g_gamma


def _fla_setup_context(ctx, inputs, output):
    ctx.kernel, *tensors, ctx.scale, ctx.output_final_state, ctx.use_qk_l2norm = inputs
    ctx.save_for_backward(*tensors)


def _fla_backward(ctx, do, dfinal):
    tensors = ctx.saved_tensors
    grads = torch.ops.varbench.fla_bwd(ctx.kernel, do, dfinal, *tensors, ctx.scale, ctx.output_final_state,
                                       ctx.use_qk_l2norm)
    return (None, *autograd_grads(grads, tensors), None, None, None)


_fla_fwd.register_autograd(_fla_backward, setup_context=_fla_setup_context)


def gla_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Gated linear attention through fla's chunked kernels.

    Args:
        q, k, v (torch.Tensor): `[B, T, H, K]`, `[B, T, H, K]`, `[B, T, H, V]`.
        g (torch.Tensor, Optional): log-decay `[B, T, H, K]` (`chunk_gla`) or `[B, T, H]` (`chunk_simple_gla`).
        g_gamma (torch.Tensor, Optional): constant log-decay per head `[H]` (`chunk_simple_gla(g_gamma=)`, the
            kernel behind fla's `chunk_retention`). With neither g nor g_gamma: `chunk_linear_attn`, unnormalised.
        scale (float, Optional): query scale. Default: `K ** -0.5`.
        initial_state (torch.Tensor, Optional): fp32 `[B, H, K, V]`.
        output_final_state (bool, Optional): return the final fp32 state. Default: `False`.
    """
    if g is not None and g_gamma is not None:
        raise ValueError("give g (data-dependent decay) or g_gamma (constant per head), not both")
    if g is not None and g.ndim == 4:
        kernel = "chunk_gla"
    else:  # a decay per head, a constant one, or none (fla's `chunk_linear_attn` is this kernel without a decay)
        kernel = "chunk_simple_gla"
    return fla_call(kernel, q, k, v, g=g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state)


def delta_rule_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
    mode: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""(Gated) delta rule through fla's kernels.

    Args:
        q, k, v, beta, g, scale, initial_state, output_final_state: as `delta_rule_recurrent_ref`.
        use_qk_l2norm (bool, Optional): l2-normalise q and k inside the kernel. Default: `False`.
        mode (str, Optional): `chunk` (`chunk_delta_rule` / `chunk_gated_delta_rule`) or `fused_recurrent`
            (one token at a time, `fused_recurrent_[gated_]delta_rule`). fla's `chunk_delta_rule` refuses fp32 inputs;
            use bf16 (autocast) or `fused_recurrent` for fp32. Default: `chunk`.
    """
    if mode not in ("chunk", "fused_recurrent"):
        raise ValueError(f"mode must be 'chunk' or 'fused_recurrent', got {mode!r}")
    if g is None and mode == "chunk" and q.dtype == torch.float32:
        raise ValueError(
            "fla's chunk_delta_rule has no fp32 path (it asserts bf16/fp16 inputs): run DeltaNet under bf16 "
            "autocast, or set mode='fused_recurrent', or use backend='reference'"
        )
    kernel = f"{mode}_{'delta_rule' if g is None else 'gated_delta_rule'}"
    return fla_call(kernel, q, k, v, g=g, beta=beta.to(q.dtype), scale=scale, initial_state=initial_state,
                    output_final_state=output_final_state, use_qk_l2norm=use_qk_l2norm)
