"""Linear recurrences with a carried state: gated linear attention (GLA, RetNet, linear attention, HGRN2) and the
(gated) delta rule (DeltaNet, Gated DeltaNet).

`gla` and `delta_rule` dispatch to the pure-PyTorch chunked reference (`backend="reference"`, any device, the oracle)
or to fla's Triton kernels (`backend="fla"`, GPU). Both take `initial_state` and return the final state, so a whole
scale can be appended to the state the earlier scales left.

Shape legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

from __future__ import annotations

import torch

from varbench.ops.linear_rnn.reference import (
    delta_rule_chunk_ref,
    delta_rule_recurrent_ref,
    gla_chunk_ref,
    gla_recurrent_ref,
    l2norm_ref,
)

BACKENDS = ("reference", "fla")


def _on_cuda(q: torch.Tensor, backend: str) -> None:
    if not q.is_cuda:  # fla's Triton kernels would fail on a CPU pointer with a message naming none of this
        raise ValueError(f"backend {backend!r} runs on CUDA tensors, got tensors on {q.device}; "
                         f"use backend='reference'")


def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Gated linear attention S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t).

    Args:
        q, k, v (torch.Tensor): `[B, T, H, K]`, `[B, T, H, K]`, `[B, T, H, V]`.
        g (torch.Tensor, Optional): log-decay `[B, T, H, K]` (per key dim) or `[B, T, H]` (per head).
        g_gamma (torch.Tensor, Optional): constant log-decay per head `[H]` (RetNet).
        scale (float, Optional): query scale. Default: `K ** -0.5`.
        initial_state (torch.Tensor, Optional): fp32 `[B, H, K, V]`. Default: `None` (zeros).
        output_final_state (bool, Optional): return the final state. Default: `False`.
        backend (str, Optional): `reference` or `fla`. Default: `reference`.
    """
    if backend == "fla":
        _on_cuda(q, backend)
        from varbench.ops.linear_rnn.kernel import gla_fla

        return gla_fla(q, k, v, g=g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state)
    if backend != "reference":
        raise ValueError(f"unknown backend {backend!r}; valid: {BACKENDS}")
    if g_gamma is not None:
        if g is not None:
            raise ValueError("give g (data-dependent decay) or g_gamma (constant per head), not both")
        g = g_gamma.to(q.device).expand(*q.shape[:2], -1)
    # a decay per key dim materialises [B, H, N, C, C, K] inside the chunked form: smaller chunks keep it light
    chunk_size = 16 if g is not None and g.ndim == 4 else 64
    return gla_chunk_ref(q, k, v, g, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, chunk_size=chunk_size)


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
    backend: str = "reference",
    mode: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""(Gated) delta rule S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T with a_t = exp(g_t),
    o_t = S_t^T (scale q_t).

    Args:
        q, k, v (torch.Tensor): `[B, T, H, K]`, `[B, T, H, K]`, `[B, T, H, V]`.
        beta (torch.Tensor): write strengths `[B, T, H]`.
        g (torch.Tensor, Optional): log-decay per head `[B, T, H]`. Default: `None` (DeltaNet).
        scale, initial_state, output_final_state: as `gla`.
        use_qk_l2norm (bool, Optional): l2-normalise q and k first. Default: `False`.
        backend (str, Optional): `reference` or `fla`. Default: `reference`.
        mode (str, Optional): fla kernel, `chunk` or `fused_recurrent` (see `kernel.delta_rule_fla`); the reference
            always runs its chunked form. Default: `chunk`.
    """
    kwargs = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                  use_qk_l2norm=use_qk_l2norm)
    if backend == "fla":
        _on_cuda(q, backend)
        from varbench.ops.linear_rnn.kernel import delta_rule_fla

        return delta_rule_fla(q, k, v, beta, g, mode=mode, **kwargs)
    if backend != "reference":
        raise ValueError(f"unknown backend {backend!r}; valid: {BACKENDS}")
    return delta_rule_chunk_ref(q, k, v, beta, g, chunk_size=32, **kwargs)


__all__ = [
    "BACKENDS",
    "delta_rule",
    "delta_rule_chunk_ref",
    "delta_rule_recurrent_ref",
    "gla",
    "gla_chunk_ref",
    "gla_recurrent_ref",
    "l2norm_ref",
]
