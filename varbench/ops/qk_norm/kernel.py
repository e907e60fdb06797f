"""VAR's L2-normalised q and k for training, as two Triton kernels wrapped in `torch.library` custom ops.

Shape legend: B batch, L tokens, H heads, d head dim, X = 3 H d the qkv width, T token tiles of BLOCK_L.
Session 29's profile of VAR-d16's compiled training step (one H200, `results/gpu/h200/bench_s29.jsonl`) spent about
9.5 of its 85 ms in Inductor's kernels for this normalisation, 5.5 ms of it in one element-wise kernel of the backward
(341 us a layer, about 1 TB/s). Here one program owns a tile of BLOCK_L tokens of one (batch, head): it reads the
tile's q, k and v rows (d contiguous values each) of the qkv projection's (B, L, 3, H, d) output once and writes
q, k (normalised, q times the temperature) and v as contiguous (B, H, L, d) tensors, the layout the attention
kernels read. The backward reads the saved qkv and the three gradients and writes the gradient of the whole qkv
output in its own layout, so no stack or permute follows it; the temperature's gradient is summed from per-tile
partial sums (deterministic). Session 30 (one H100, one call, `results/gpu/h100/README.md`): VAR-d16's compiled step
85.1 ms against 91.4 with the torch form, its normalisation 3.5 against 10.6 ms, peak memory 0.66 GiB higher (the
copy of v). The arithmetic is `varbench.modules.fused.l2_qk`'s and `L2QKTraining`'s in fp32:
y = x / max(|x|, eps), q = y t; dx = (dy - y (y . dy)) / |x| where |x| >= eps, dy / eps below it.
Triton is imported with this module: import it only where a kernel may run. With TRITON_INTERPRET=1 set before
that import the kernels run on CPU tensors (how the CPU tests check them against the torch form).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from varbench.ops.custom import as_promised

BLOCK_L = 32  # tokens per program: (32, 64) tiles of q, k and v in registers


@triton.jit
def _normalise(x, eps):
    """Rows of `x` (fp32) over d: y = x / max(|x|, eps), and |x|."""
    norm = tl.sqrt(tl.sum(x * x, 1))
    return x / tl.maximum(norm, eps)[:, None], norm


@triton.jit
def _tile(H, L, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's batch and head, its tokens and columns, which of them exist, and their offsets in the
    contiguous (B, L, 3, H, D) qkv (of q; k and v follow at + H D, + 2 H D)."""
    bh = tl.program_id(0)
    b, h = (bh // H).to(tl.int64), bh % H
    tok = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    col = tl.arange(0, D_PAD)
    inside = (tok < L)[:, None] & (col < D)[None, :]
    return b, h, tok, col, inside, (b * L + tok[:, None]) * 3 * H * D + h * D + col[None, :]


@triton.jit
def _forward_kernel(qkv_ptr, t_ptr, q_ptr, k_ptr, v_ptr, H, L, eps,
                    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
                    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_L: tl.constexpr):
    # qkv: contiguous (B, L, 3, H, D); t: contiguous (H,); q, k, v: (B, H, L, D) with unit stride over D (in
    # sampling k and v are slices of the KV cache, q a transposed (B, L, H, D) tensor)
    b, h, tok, col, inside, at = _tile(H, L, D, D_PAD, BLOCK_L)
    src = qkv_ptr + at
    row, col = tok[:, None], col[None, :]
    y_q, _ = _normalise(tl.load(src, mask=inside, other=0.0).to(tl.float32), eps)
    y_k, _ = _normalise(tl.load(src + H * D, mask=inside, other=0.0).to(tl.float32), eps)
    temperature = tl.load(t_ptr + h).to(tl.float32)
    tl.store(q_ptr + b * sq_b + h * sq_h + row * sq_l + col, (y_q * temperature).to(q_ptr.dtype.element_ty),
             mask=inside)
    tl.store(k_ptr + b * sk_b + h * sk_h + row * sk_l + col, y_k.to(k_ptr.dtype.element_ty), mask=inside)
    tl.store(v_ptr + b * sv_b + h * sv_h + row * sv_l + col, tl.load(src + 2 * H * D, mask=inside, other=0.0),
             mask=inside)


@triton.jit
def _input_gradient(x, dy, eps):
    """The gradient of x for rows y = x / max(|x|, eps) given dy (fp32), and y."""
    y, norm = _normalise(x, eps)
    along = tl.sum(y * dy, 1)
    # below eps the clamp held the denominator constant, so the gradient is dy / eps
    return tl.where((norm >= eps)[:, None], (dy - y * along[:, None]) / norm[:, None], dy / eps), y


@triton.jit
def _backward_kernel(qkv_ptr, t_ptr, dq_ptr, dk_ptr, dv_ptr, dqkv_ptr, dt_ptr, H, L, T, eps,
                     sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l,
                     D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_L: tl.constexpr):
    # qkv, dqkv: contiguous (B, L, 3, H, D); dq, dk, dv: (B, H, L, D) with unit stride over D; dt: (B, H, T) fp32
    b, h, tok, col, inside, at = _tile(H, L, D, D_PAD, BLOCK_L)
    dq = tl.load(dq_ptr + b * sq_b + h * sq_h + tok[:, None] * sq_l + col[None, :], mask=inside, other=0.0)
    dk = tl.load(dk_ptr + b * sk_b + h * sk_h + tok[:, None] * sk_l + col[None, :], mask=inside, other=0.0)
    dv = tl.load(dv_ptr + b * sv_b + h * sv_h + tok[:, None] * sv_l + col[None, :], mask=inside, other=0.0)
    dq = dq.to(tl.float32)
    temperature = tl.load(t_ptr + h).to(tl.float32)
    x_q = tl.load(qkv_ptr + at, mask=inside, other=0.0).to(tl.float32)
    dx_q, y_q = _input_gradient(x_q, dq * temperature, eps)
    dx_k, _ = _input_gradient(tl.load(qkv_ptr + at + H * D, mask=inside, other=0.0).to(tl.float32),
                              dk.to(tl.float32), eps)
    out_type = dqkv_ptr.dtype.element_ty
    tl.store(dqkv_ptr + at, dx_q.to(out_type), mask=inside)
    tl.store(dqkv_ptr + at + H * D, dx_k.to(out_type), mask=inside)
    tl.store(dqkv_ptr + at + 2 * H * D, dv.to(out_type), mask=inside)
    tl.store(dt_ptr + (b * H + h) * T + tl.program_id(1), tl.sum(tl.sum(dq * y_q, 1), 0))


def _launch_shape(qkv_BLX: torch.Tensor, heads: int) -> tuple[int, int, int, tuple[int, int]]:
    B, L, X = qkv_BLX.shape
    if X % (3 * heads):
        raise ValueError(f"qkv_l2_norm: the qkv width {X} is not 3 * heads ({heads}) * head dim")
    return B, L, X // (3 * heads), (B * heads, triton.cdiv(L, BLOCK_L))


def _forward(qkv_BLX: torch.Tensor, temperature_1H11: torch.Tensor, heads: int, eps: float, q_BHLd: torch.Tensor,
             k_BHLd: torch.Tensor, v_BHLd: torch.Tensor) -> None:
    """The forward kernel over a contiguous qkv, writing q, k and v (B, H, L, d) wherever they lie."""
    B, L, d, grid = _launch_shape(qkv_BLX, heads)
    for name, out in (("q", q_BHLd), ("k", k_BHLd), ("v", v_BHLd)):
        if out.shape != (B, heads, L, d) or out.stride(-1) != 1 or out.dtype != qkv_BLX.dtype:
            raise ValueError(f"qkv_l2_norm: {name} must be a {qkv_BLX.dtype} ({B}, {heads}, {L}, {d}) tensor with "
                             f"unit stride over d, got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
    _forward_kernel[grid](qkv_BLX, temperature_1H11.reshape(heads).contiguous(), q_BHLd, k_BHLd, v_BHLd, heads, L,
                          eps, *(s for out in (q_BHLd, k_BHLd, v_BHLd) for s in out.stride()[:3]),
                          D=d, D_PAD=triton.next_power_of_2(d), BLOCK_L=BLOCK_L)


@torch.library.custom_op("varbench::qkv_l2_norm_fwd", mutates_args=())
def qkv_l2_norm_fwd(qkv_BLX: torch.Tensor, temperature_1H11: torch.Tensor, heads: int, eps: float,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv_BLX = qkv_BLX.contiguous()
    B, L, d, _ = _launch_shape(qkv_BLX, heads)
    q, k, v = (qkv_BLX.new_empty((B, heads, L, d)) for _ in range(3))
    _forward(qkv_BLX, temperature_1H11, heads, eps, q, k, v)
    return q, k, v


@qkv_l2_norm_fwd.register_fake
def _(qkv_BLX, temperature_1H11, heads, eps):
    B, L, X = qkv_BLX.shape
    return tuple(qkv_BLX.new_empty((B, heads, L, X // (3 * heads))) for _ in range(3))


@torch.library.custom_op("varbench::qkv_l2_norm_bwd", mutates_args=())
def qkv_l2_norm_bwd(qkv_BLX: torch.Tensor, temperature_1H11: torch.Tensor, dq_BHLd: torch.Tensor,
                    dk_BHLd: torch.Tensor, dv_BHLd: torch.Tensor, heads: int, eps: float,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    qkv_BLX = qkv_BLX.contiguous()
    B, L, d, grid = _launch_shape(qkv_BLX, heads)
    grads = [g if g.stride(-1) == 1 else g.contiguous() for g in (dq_BHLd, dk_BHLd, dv_BHLd)]
    dqkv = torch.empty_like(qkv_BLX)
    partial_BHT = qkv_BLX.new_empty((B, heads, grid[1]), dtype=torch.float32)
    _backward_kernel[grid](qkv_BLX, temperature_1H11.reshape(heads).contiguous(), *grads, dqkv, partial_BHT,
                           heads, L, grid[1], eps, *(s for g in grads for s in g.stride()[:3]),
                           D=d, D_PAD=triton.next_power_of_2(d), BLOCK_L=BLOCK_L)
    return dqkv, as_promised(partial_BHT.sum(dim=(0, 2)).reshape(temperature_1H11.shape), temperature_1H11)


@qkv_l2_norm_bwd.register_fake
def _(qkv_BLX, temperature_1H11, dq_BHLd, dk_BHLd, dv_BHLd, heads, eps):
    return qkv_BLX.new_empty(qkv_BLX.shape), temperature_1H11.new_empty(temperature_1H11.shape)


@torch.library.custom_op("varbench::qkv_l2_norm_into", mutates_args=("k_out_BHLd", "v_out_BHLd"))
def qkv_l2_norm_into(qkv_BLX: torch.Tensor, temperature_1H11: torch.Tensor, heads: int, eps: float,
                     k_out_BHLd: torch.Tensor, v_out_BHLd: torch.Tensor) -> torch.Tensor:
    """`qkv_l2_norm`'s forward writing k and v into `k_out_BHLd` and `v_out_BHLd` ((B, H, L, d) in qkv's dtype with
    unit stride over d: a KV cache's slice of one scale) and returning q, without autograd: sampling's KV-cached
    step (`ScaleAttention.qkv_into`). The kernel stores k and v where the cache keeps them, so no copy follows it
    (in a batch-64 VAR-d16 generation on an H100, session 33, the copies of k and v into the cache were two of the
    three bf16 copies per layer and scale that took 12.1 ms). q lies in memory as (B, L, H, d), a transposed view:
    SDPA's cuDNN kernel lays its output out as q is, and the output projection reads it as (B, L, H d), which then
    is a view too (the third copy). Session 34's profile of that generation (one H100) has none of the 484 copies
    among its 40 largest kernels."""
    qkv_BLX = qkv_BLX.contiguous()
    B, L, d, _ = _launch_shape(qkv_BLX, heads)
    q_BHLd = qkv_BLX.new_empty((B, L, heads, d)).transpose(1, 2)
    _forward(qkv_BLX, temperature_1H11, heads, eps, q_BHLd, k_out_BHLd, v_out_BHLd)
    return q_BHLd


@qkv_l2_norm_into.register_fake
def _(qkv_BLX, temperature_1H11, heads, eps, k_out_BHLd, v_out_BHLd):
    B, L, X = qkv_BLX.shape
    return qkv_BLX.new_empty((B, L, heads, X // (3 * heads))).transpose(1, 2)


def _setup_context(ctx, inputs, output):
    qkv_BLX, temperature_1H11, ctx.heads, ctx.eps = inputs
    ctx.save_for_backward(qkv_BLX, temperature_1H11)


def _backward(ctx, dq_BHLd, dk_BHLd, dv_BHLd):
    qkv_BLX, temperature_1H11 = ctx.saved_tensors
    B, L, X = qkv_BLX.shape  # an output the loss did not use has no gradient: zeros of its shape
    grads = [g if g is not None else qkv_BLX.new_zeros((B, ctx.heads, L, X // (3 * ctx.heads)))
             for g in (dq_BHLd, dk_BHLd, dv_BHLd)]
    dqkv, dtemperature = qkv_l2_norm_bwd(qkv_BLX, temperature_1H11, *grads, ctx.heads, ctx.eps)
    return dqkv, dtemperature, None, None


torch.library.register_autograd("varbench::qkv_l2_norm_fwd", _backward, setup_context=_setup_context)


def qkv_l2_norm(qkv_BLX: torch.Tensor, temperature_1H11: torch.Tensor, heads: int, eps: float,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, L, d), contiguous, in qkv's dtype, from the qkv projection's output (B, L, 3 H d): q and k
    L2-normalised over d (eps: the norm's floor, F.normalize's), q times the per-head temperature (1, H, 1, 1);
    differentiable in qkv and the temperature. `ScaleAttention.qkv` runs it under autograd on a GPU."""
    return qkv_l2_norm_fwd(qkv_BLX, temperature_1H11, heads, eps)
