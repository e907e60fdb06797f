"""Pure-PyTorch references of the linear recurrences behind GLA, RetNet, linear attention, DeltaNet and Gated DeltaNet.

Two families, each in a sequential form (the oracle, one token at a time) and a chunked form (fast enough for CPU
tests and the `reference` backend of the mixers), both taking and returning a recurrent state:

- gated linear attention, S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t), with the log-decay g
  per key dimension (GLA, HGRN2), one scalar per head (RetNet, simple GLA), or absent (linear attention);
- (gated) delta rule, S_t = exp(g_t) S_{t-1}, S_t = S_t + beta_t k_t (v_t - S_t^T k_t)^T, o_t = S_t^T (scale q_t),
  with g absent (DeltaNet) or one scalar per head (Gated DeltaNet).

Layout follows fla's ops: [B, T, H, D] inputs, state [B, H, K, V]. Math runs in fp32 (fp64 when the inputs are fp64),
also inside an autocast region; outputs come back in the dtype of q, states in the compute dtype.

Shape legend: B batch, T tokens, H heads, K key dim, V value dim, N chunks, C chunk size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from varbench.utils.precision import at_least_fp32, no_autocast


def _initial_state(q, v, initial_state, dtype):
    B, _, H, K = q.shape
    if initial_state is None:
        return q.new_zeros(B, H, K, v.shape[-1], dtype=dtype)
    return initial_state.to(dtype)


def _to_chunks(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, N, C, ...], zero-padded at the end.

    Padded tokens have k = v = 0 and log-decay 0, so they change neither the outputs kept nor the state.
    """
    T = x.shape[1]
    pad = -T % chunk_size
    x = x.movedim(1, 2)
    if pad:
        x = F.pad(x, (0, 0) * (x.ndim - 3) + (0, pad))
    return x.reshape(*x.shape[:2], -1, chunk_size, *x.shape[3:])


def l2norm_ref(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, as fla's `l2norm` (computed in fp32, returned in x's dtype)."""
    xf = x.to(at_least_fp32(x.dtype))
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


@no_autocast
def gla_recurrent_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Gated linear attention, one token at a time (the oracle of `gla_chunk_ref`).

    Args:
        q (torch.Tensor): queries `[B, T, H, K]`.
        k (torch.Tensor): keys `[B, T, H, K]`.
        v (torch.Tensor): values `[B, T, H, V]`.
        g (torch.Tensor, Optional): log-decay (<= 0), `[B, T, H, K]` per key dim or `[B, T, H]` per head.
            Default: `None` (no decay: linear attention).
        scale (float, Optional): query scale. Default: `K ** -0.5`.
        initial_state (torch.Tensor, Optional): `[B, H, K, V]`. Default: `None` (zeros).
        output_final_state (bool, Optional): return the state after the last token. Default: `False`.

    Returns:
        o `[B, T, H, V]` in q's dtype, and the final state `[B, H, K, V]` (or `None`).
    """
    dtype = at_least_fp32(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S = _initial_state(q, v, initial_state, dtype)
    gs = [None] * q.shape[1] if g is None else g.to(dtype).unbind(1)
    outs = []
    for q_t, k_t, v_t, g_t in zip(q.to(dtype).unbind(1), k.to(dtype).unbind(1), v.to(dtype).unbind(1), gs):
        if g_t is not None:
            # [B, H, K, 1] per key dim or [B, H, 1, 1] per head
            S = S * (g_t[..., None] if g_t.ndim == 3 else g_t[..., None, None]).exp()
        S = S + k_t[..., :, None] * v_t[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t * scale, S))
    o = torch.stack(outs, dim=1).to(q.dtype)
    return o, (S if output_final_state else None)


@no_autocast
def gla_chunk_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Gated linear attention in chunked form: quadratic inside a chunk, recurrent across chunks.

    Same arguments and results as `gla_recurrent_ref`, plus `chunk_size` (any T works: the tail is zero-padded).
    Every exponent is a difference b_t - b_s with s <= t of cumulative log-decays, so it is <= 0 and nothing
    overflows however strong the decay (fla's kernels use a secondary chunking for the same reason). With a decay
    per key dim this materialises a `[B, H, N, C, C, K]` tensor: keep `chunk_size` small (16-32) there.
    """
    dtype, out_dtype = at_least_fp32(q.dtype), q.dtype
    T, K = q.shape[1], q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = _initial_state(q, v, initial_state, dtype)
    q, k, v = (_to_chunks(x.to(dtype), chunk_size) for x in (q, k, v))
    q = q * scale
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    if g is None:
        A = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)
        q_in, k_out, decay_last = q, k, None
    else:
        # cumulative log-decay inside each chunk: [B, H, N, C] per head or [B, H, N, C, K] per key dim
        b = _to_chunks(g.to(dtype), chunk_size).cumsum(3)
        if g.ndim == 3:
            D = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")).exp()
            A = (q @ k.transpose(-1, -2)) * D
            q_in = q * b.exp()[..., None]
            k_out = k * (b[..., -1:] - b).exp()[..., None]
            decay_last = b[..., -1].exp()[..., None, None]
        else:
            D = (b[..., :, None, :] - b[..., None, :, :]).masked_fill(~causal[..., None], float("-inf")).exp()
            A = torch.einsum("bhntk,bhnsk,bhntsk->bhnts", q, k, D)
            q_in = q * b.exp()
            k_out = k * (b[..., -1:, :] - b).exp()
            decay_last = b[..., -1, :].exp()[..., None]
    o_intra = A @ v
    kv = k_out.transpose(-1, -2) @ v  # [B, H, N, K, V]: what each chunk adds to the state
    outs = []
    for n in range(q.shape[2]):
        outs.append(o_intra[:, :, n] + q_in[:, :, n] @ S)
        S = S + kv[:, :, n] if decay_last is None else S * decay_last[:, :, n] + kv[:, :, n]
    o = torch.stack(outs, dim=2).flatten(2, 3)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), (S if output_final_state else None)


@no_autocast
def delta_rule_recurrent_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""(Gated) delta rule, one token at a time (the oracle of `delta_rule_chunk_ref`).

    Args:
        q (torch.Tensor): queries `[B, T, H, K]`.
        k (torch.Tensor): keys `[B, T, H, K]` (l2-normalised, or set `use_qk_l2norm`).
        v (torch.Tensor): values `[B, T, H, V]`.
        beta (torch.Tensor): write strengths `[B, T, H]`.
        g (torch.Tensor, Optional): log-decay per head `[B, T, H]`. Default: `None` (DeltaNet).
        scale (float, Optional): query scale. Default: `K ** -0.5`.
        initial_state (torch.Tensor, Optional): `[B, H, K, V]`. Default: `None` (zeros).
        output_final_state (bool, Optional): return the state after the last token. Default: `False`.
        use_qk_l2norm (bool, Optional): l2-normalise q and k first (fla's `use_qk_l2norm_in_kernel`). Default: `False`.

    Returns:
        o `[B, T, H, V]` in q's dtype, and the final state `[B, H, K, V]` (or `None`).
    """
    dtype, out_dtype = at_least_fp32(q.dtype), q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = l2norm_ref(q.to(dtype)), l2norm_ref(k.to(dtype))
    S = _initial_state(q, v, initial_state, dtype)
    gs = [None] * q.shape[1] if g is None else g.to(dtype).unbind(1)
    outs = []
    steps = zip(q.to(dtype).unbind(1), k.to(dtype).unbind(1), v.to(dtype).unbind(1), beta.to(dtype).unbind(1), gs)
    for q_t, k_t, v_t, beta_t, g_t in steps:
        if g_t is not None:
            S = S * g_t.exp()[..., None, None]
        u_t = beta_t[..., None] * (v_t - torch.einsum("bhk,bhkv->bhv", k_t, S))
        S = S + k_t[..., :, None] * u_t[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t * scale, S))
    o = torch.stack(outs, dim=1).to(out_dtype)
    return o, (S if output_final_state else None)


@no_autocast
def delta_rule_chunk_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""(Gated) delta rule in chunked (WY) form, as fla's `naive_chunk_gated_delta_rule`.

    Same arguments and results as `delta_rule_recurrent_ref`, plus `chunk_size` (any T works). Inside a chunk the
    product of the C Householder-like updates is folded into T = (I + tril(diag(beta) K K^T * Gamma, -1))^{-1}
    (a unit lower-triangular solve, exact, instead of fla's row-by-row forward substitution); across chunks the
    state is carried as in gated linear attention.
    """
    dtype, out_dtype = at_least_fp32(q.dtype), q.dtype
    T_len, K = q.shape[1], q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = l2norm_ref(q.to(dtype)), l2norm_ref(k.to(dtype))
    S = _initial_state(q, v, initial_state, dtype)
    q, k, v = (_to_chunks(x.to(dtype), chunk_size) for x in (q, k, v))
    beta = _to_chunks(beta.to(dtype), chunk_size)[..., None]  # [B, H, N, C, 1]
    C = chunk_size
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    eye = torch.eye(C, dtype=dtype, device=q.device)
    if g is None:
        b = q.new_zeros(q.shape[:-1])
    else:
        b = _to_chunks(g.to(dtype), chunk_size).cumsum(3)  # [B, H, N, C]
    gamma = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # [B, H, N, C, C]
    k_beta = k * beta
    # strictly lower part: token t's update sees the updates of tokens s < t of the same chunk
    A = ((k_beta @ k.transpose(-1, -2)) * gamma).tril(-1)
    T_inv = torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)
    U = T_inv @ (v * beta)                        # [B, H, N, C, V]
    W = T_inv @ (k_beta * b.exp()[..., None])     # [B, H, N, C, K]
    attn = (q * scale) @ k.transpose(-1, -2) * gamma
    q_in = q * scale * b.exp()[..., None]
    k_out = k * (b[..., -1:] - b).exp()[..., None]
    decay_last = b[..., -1].exp()[..., None, None]
    outs = []
    for n in range(q.shape[2]):
        v_new = U[:, :, n] - W[:, :, n] @ S
        outs.append(q_in[:, :, n] @ S + attn[:, :, n] @ v_new)
        S = S * decay_last[:, :, n] + k_out[:, :, n].transpose(-1, -2) @ v_new
    o = torch.stack(outs, dim=2).flatten(2, 3)[:, :, :T_len].transpose(1, 2)
    return o.to(out_dtype), (S if output_final_state else None)
