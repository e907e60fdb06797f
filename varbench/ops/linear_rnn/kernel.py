"""fla (flash-linear-attention) Triton kernels behind the same signatures as `reference.py`.

Every fla import is inside a function: importing this module never needs fla, triton or a GPU. The kernels take an
initial state and return the final one, which is what appending a whole scale to a carried state needs. fla asserts
that the state is fp32; its state layout is [B, H, K, V] (we never ask for `state_v_first`).

Shape legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch


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
    kwargs = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    if g is not None and g.ndim == 4:
        from fla.ops.gla import chunk_gla

        return chunk_gla(q, k, v, g, **kwargs)
    if g is not None or g_gamma is not None:
        from fla.ops.simple_gla import chunk_simple_gla

        return chunk_simple_gla(q, k, v, g=g, g_gamma=g_gamma, **kwargs)
    from fla.ops.linear_attn import chunk_linear_attn

    return chunk_linear_attn(q, k, v, normalize=False, **kwargs)


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
    kwargs = dict(
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm,
    )
    beta = beta.to(q.dtype)
    if g is None and mode == "chunk":
        if q.dtype == torch.float32:
            raise ValueError(
                "fla's chunk_delta_rule has no fp32 path (it asserts bf16/fp16 inputs): run DeltaNet under bf16 "
                "autocast, or set mode='fused_recurrent', or use backend='reference'"
            )
        from fla.ops.delta_rule import chunk_delta_rule

        return chunk_delta_rule(q, k, v, beta, **kwargs)
    if g is None:
        from fla.ops.delta_rule import fused_recurrent_delta_rule

        return fused_recurrent_delta_rule(q, k, v, beta, **kwargs)
    if mode == "chunk":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        return chunk_gated_delta_rule(q, k, v, g, beta, **kwargs)
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    return fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, **kwargs)
