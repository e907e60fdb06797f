"""The AdaLN block's gated residual and modulated LayerNorm for training, as two Triton kernels wrapped in
`torch.library` custom ops (issue 18: "fuse AdaLN modulate + LayerNorm").

Shape legend: B batch, L tokens, C width, T token chunks of ROWS (one program each).
A branch's gated residual x' = x + y * gate and the next branch's input h = LN(x') * (1 + scale) + shift are one
kernel forward: it reads x and y once and writes x' and h, h in the dtype of the Linear that reads it (autocast's),
and each row's mean and 1 / std. One kernel backward reads x', the row statistics, the gradients of h and of x'
(from the rest of the stream) and y, and writes the gradients of x and y; the gradients of gate, scale and shift,
sums over each sample's tokens, come from per-program partial sums (deterministic). Inductor's kernels for the same
chain cannot do that: a LayerNorm reduces over C and the AdaLN gradients over L, so it runs them as separate
reductions, each reading the (B, L, C) tensors again. In VAR-d16's compiled training step (one H100, session 40,
`results/gpu/h100/bench_s40.jsonl`) those kernels took about 11 of its 79 ms of GPU time. The arithmetic is
`varbench.modules.fused.residual_modulate`'s and `ln_modulate`'s under autograd, in fp32:
  x' = x + y g;  x^ = (x' - mean) rstd;  h = x^ s + b  (s = 1 + scale);
  dx^ = dh s;  dx = rstd (dx^ - mean_C(dx^) - x^ mean_C(dx^ x^)) + dx'_rest;  dy = dx g;
  dg = sum_L dx y;  ds = sum_L dh x^;  db = sum_L dh.
Without a residual (a block's first branch) the kernels do the modulated LayerNorm alone.
Triton is imported with this module: import it only where a kernel may run. With TRITON_INTERPRET=1 set before
that import the kernels run on CPU tensors (how the CPU tests check them against the torch form).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

ROWS = 32  # tokens per program: its partial sums of the AdaLN gradients cover them
TILE = 4096  # elements of a (BLOCK_L, C_PAD) tile in registers: BLOCK_L rows at a time
WARPS = None  # warps per program; None: 8 from a padded width of 2048, else 4 (benchmarks/adaln_chain.py tries others)


@triton.jit
def _row_vector(ptr, b, C, col, in_col):
    """Sample b's (C,) vector of a contiguous (B, C) tensor, in fp32."""
    return tl.load(ptr + b * C + col, mask=in_col, other=0.0).to(tl.float32)


@triton.jit
def _rows(chunk, start, b, L, C, col, in_col, ROWS: tl.constexpr, BLOCK_L: tl.constexpr):
    """The tokens of a tile (rows start.. of this program's chunk), which of them exist, and the tile's offsets and
    mask in a contiguous (B, L, C) tensor."""
    tok = chunk * ROWS + start + tl.arange(0, BLOCK_L)
    in_tok = tok < L
    return tok, in_tok, (b * L + tok[:, None]) * C + col[None, :], in_tok[:, None] & in_col[None, :]


@triton.jit
def _forward_kernel(x_ptr, y_ptr, gate_ptr, scale_ptr, shift_ptr, xn_ptr, h_ptr, mean_ptr, rstd_ptr, L, C, eps,
                    RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr, C_PAD: tl.constexpr):
    # x, y, xn, h: contiguous (B, L, C); gate, scale (1 + scale), shift: contiguous (B, C); mean, rstd: (B, L) fp32
    b, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    col = tl.arange(0, C_PAD)
    in_col = col < C
    scale, shift = _row_vector(scale_ptr, b, C, col, in_col), _row_vector(shift_ptr, b, C, col, in_col)
    if RESIDUAL:
        gate = _row_vector(gate_ptr, b, C, col, in_col)
    for start in tl.static_range(0, ROWS, BLOCK_L):
        tok, in_tok, at, inside = _rows(chunk, start, b, L, C, col, in_col, ROWS, BLOCK_L)
        x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
        if RESIDUAL:
            x = x + tl.load(y_ptr + at, mask=inside, other=0.0).to(tl.float32) * gate[None, :]
            tl.store(xn_ptr + at, x.to(xn_ptr.dtype.element_ty), mask=inside)
        mean = tl.sum(x, 1) / C
        centred = tl.where(inside, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / C + eps)
        h = centred * rstd[:, None] * scale[None, :] + shift[None, :]
        tl.store(h_ptr + at, h.to(h_ptr.dtype.element_ty), mask=inside)
        tl.store(mean_ptr + b * L + tok, mean, mask=in_tok)
        tl.store(rstd_ptr + b * L + tok, rstd, mask=in_tok)


@triton.jit
def _backward_kernel(xn_ptr, mean_ptr, rstd_ptr, scale_ptr, dh_ptr, dxn_ptr, y_ptr, gate_ptr, dx_ptr, dy_ptr,
                     part_ptr, B, L, C, T, RESIDUAL: tl.constexpr, DOWNSTREAM: tl.constexpr, ROWS: tl.constexpr,
                     BLOCK_L: tl.constexpr, C_PAD: tl.constexpr):
    # xn (the LayerNorm's input), dh, dxn, y, dx, dy: contiguous (B, L, C); part: (3, B, T, C) fp32, the partial
    # sums of d scale, d shift and d gate of each program
    b, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    col = tl.arange(0, C_PAD)
    in_col = col < C
    scale = _row_vector(scale_ptr, b, C, col, in_col)
    if RESIDUAL:
        gate = _row_vector(gate_ptr, b, C, col, in_col)
    d_scale = tl.zeros((C_PAD,), dtype=tl.float32)
    d_shift = tl.zeros((C_PAD,), dtype=tl.float32)
    d_gate = tl.zeros((C_PAD,), dtype=tl.float32)
    for start in tl.static_range(0, ROWS, BLOCK_L):
        tok, in_tok, at, inside = _rows(chunk, start, b, L, C, col, in_col, ROWS, BLOCK_L)
        mean = tl.load(mean_ptr + b * L + tok, mask=in_tok, other=0.0)
        rstd = tl.load(rstd_ptr + b * L + tok, mask=in_tok, other=0.0)
        x_hat = tl.where(inside, (tl.load(xn_ptr + at, mask=inside, other=0.0).to(tl.float32) - mean[:, None])
                         * rstd[:, None], 0.0)
        dh = tl.load(dh_ptr + at, mask=inside, other=0.0).to(tl.float32)
        d_scale += tl.sum(dh * x_hat, 0)
        d_shift += tl.sum(dh, 0)
        dx_hat = dh * scale[None, :]
        along = tl.sum(dx_hat * x_hat, 1) / C
        dx = (dx_hat - x_hat * along[:, None] - (tl.sum(dx_hat, 1) / C)[:, None]) * rstd[:, None]
        if DOWNSTREAM:
            dx += tl.load(dxn_ptr + at, mask=inside, other=0.0).to(tl.float32)
        tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=inside)
        if RESIDUAL:
            d_gate += tl.sum(dx * tl.load(y_ptr + at, mask=inside, other=0.0).to(tl.float32), 0)
            tl.store(dy_ptr + at, (dx * gate[None, :]).to(dy_ptr.dtype.element_ty), mask=inside)
    part = part_ptr + (b * T + chunk) * C + col
    tl.store(part, d_scale, mask=in_col)
    tl.store(part + B * T * C, d_shift, mask=in_col)
    if RESIDUAL:
        tl.store(part + 2 * B * T * C, d_gate, mask=in_col)


def _launch(x_BLC: torch.Tensor) -> tuple[tuple[int, int], dict]:
    """The grid (a program per ROWS tokens of a sample) and the kernels' compile-time sizes for x's width."""
    B, L, C = x_BLC.shape
    c_pad = triton.next_power_of_2(C)
    block_l = max(1, min(ROWS, TILE // c_pad))
    warps = WARPS or (8 if c_pad >= 2048 else 4)
    return (B, triton.cdiv(L, ROWS)), dict(ROWS=ROWS, BLOCK_L=block_l, C_PAD=c_pad, num_warps=warps)


def _per_sample(v_B1C: torch.Tensor) -> torch.Tensor:
    """An AdaLN row (B, 1, C) as a contiguous (B, C) tensor."""
    return v_B1C.reshape(v_B1C.shape[0], -1).contiguous()


def _expanded(x_BLC: torch.Tensor, rows: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The AdaLN rows, each (B, 1, C) or (1, 1, C), as (B, 1, C) (an expanded one's gradient sums over the batch)."""
    B, _, C = x_BLC.shape
    for name, v in rows.items():
        if v.shape not in ((B, 1, C), (1, 1, C)):
            raise ValueError(f"adaln_ln: {name} must be ({B}, 1, {C}) or (1, 1, {C}), got {tuple(v.shape)}")
    return [v.expand(B, 1, C) for v in rows.values()]


@torch.library.custom_op("varbench::adaln_ln_fwd", mutates_args=())
def adaln_ln_fwd(x_BLC: torch.Tensor, y_BLC: Optional[torch.Tensor], gate_B1C: Optional[torch.Tensor],
                 scale1p_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float, out_dtype: Optional[torch.dtype],
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x_BLC = x_BLC.contiguous()
    B, L, C = x_BLC.shape
    residual = y_BLC is not None
    xn_BLC = torch.empty_like(x_BLC) if residual else x_BLC.new_empty(0)
    h_BLC = x_BLC.new_empty((B, L, C), dtype=out_dtype or x_BLC.dtype)
    mean_BL, rstd_BL = (x_BLC.new_empty((B, L), dtype=torch.float32) for _ in range(2))
    grid, sizes = _launch(x_BLC)
    _forward_kernel[grid](x_BLC, y_BLC.contiguous() if residual else x_BLC,
                          _per_sample(gate_B1C) if residual else x_BLC,
                          _per_sample(scale1p_B1C), _per_sample(shift_B1C),
                          xn_BLC, h_BLC, mean_BL, rstd_BL, L, C, eps, RESIDUAL=residual, **sizes)
    return xn_BLC, h_BLC, mean_BL, rstd_BL


@adaln_ln_fwd.register_fake
def _(x_BLC, y_BLC, gate_B1C, scale1p_B1C, shift_B1C, eps, out_dtype):
    B, L, C = x_BLC.shape
    return (x_BLC.new_empty(x_BLC.shape if y_BLC is not None else (0,)),
            x_BLC.new_empty((B, L, C), dtype=out_dtype or x_BLC.dtype),
            *(x_BLC.new_empty((B, L), dtype=torch.float32) for _ in range(2)))


@torch.library.custom_op("varbench::adaln_ln_bwd", mutates_args=())
def adaln_ln_bwd(xn_BLC: torch.Tensor, mean_BL: torch.Tensor, rstd_BL: torch.Tensor, scale1p_B1C: torch.Tensor,
                 dh_BLC: torch.Tensor, dxn_BLC: Optional[torch.Tensor], y_BLC: Optional[torch.Tensor],
                 gate_B1C: Optional[torch.Tensor],
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, L, C = xn_BLC.shape
    residual, downstream = y_BLC is not None, dxn_BLC is not None
    grid, sizes = _launch(xn_BLC)
    dx_BLC = torch.empty_like(xn_BLC, memory_format=torch.contiguous_format)
    dy_BLC = torch.empty_like(y_BLC, memory_format=torch.contiguous_format) if residual else xn_BLC.new_empty(0)
    part_3BTC = xn_BLC.new_empty((3, B, grid[1], C), dtype=torch.float32)
    _backward_kernel[grid](xn_BLC.contiguous(), mean_BL, rstd_BL, _per_sample(scale1p_B1C),
                           dh_BLC.contiguous(), dxn_BLC.contiguous() if downstream else xn_BLC,
                           y_BLC.contiguous() if residual else xn_BLC,
                           _per_sample(gate_B1C) if residual else xn_BLC, dx_BLC, dy_BLC, part_3BTC,
                           B, L, C, grid[1], RESIDUAL=residual, DOWNSTREAM=downstream, **sizes)
    sums_3B1C = part_3BTC.sum(dim=2, keepdim=True)  # (copies below: no output may be a view of another)
    d_scale1p, d_shift = (s.to(scale1p_B1C.dtype, copy=True) for s in sums_3B1C[:2])
    d_gate = sums_3B1C[2].to(gate_B1C.dtype, copy=True) if residual else xn_BLC.new_empty(0)
    return dx_BLC, dy_BLC, d_gate, d_scale1p, d_shift


@adaln_ln_bwd.register_fake
def _(xn_BLC, mean_BL, rstd_BL, scale1p_B1C, dh_BLC, dxn_BLC, y_BLC, gate_B1C):
    residual = y_BLC is not None
    return (xn_BLC.new_empty(xn_BLC.shape), y_BLC.new_empty(y_BLC.shape) if residual else xn_BLC.new_empty(0),
            gate_B1C.new_empty(gate_B1C.shape) if residual else xn_BLC.new_empty(0),
            scale1p_B1C.new_empty(scale1p_B1C.shape), scale1p_B1C.new_empty(scale1p_B1C.shape))


def _setup_context(ctx, inputs, output):
    x_BLC, y_BLC, gate_B1C, scale1p_B1C, _, _, _ = inputs
    xn_BLC, _, mean_BL, rstd_BL = output
    ctx.residual = y_BLC is not None
    ctx.save_for_backward(xn_BLC if ctx.residual else x_BLC, mean_BL, rstd_BL, scale1p_B1C, y_BLC, gate_B1C)


def _backward(ctx, dxn_BLC, dh_BLC, _dmean, _drstd):
    xn_BLC, mean_BL, rstd_BL, scale1p_B1C, y_BLC, gate_B1C = ctx.saved_tensors
    if dh_BLC is None:  # h unused by the loss: the LayerNorm passes no gradient
        dh_BLC = xn_BLC.new_zeros(xn_BLC.shape)
    downstream = dxn_BLC if ctx.residual else None
    dx, dy, d_gate, d_scale1p, d_shift = adaln_ln_bwd(xn_BLC, mean_BL, rstd_BL, scale1p_B1C, dh_BLC, downstream,
                                                      y_BLC, gate_B1C)
    if not ctx.residual:
        dy = d_gate = None
    return dx, dy, d_gate, d_scale1p, d_shift, None, None


torch.library.register_autograd("varbench::adaln_ln_fwd", _backward, setup_context=_setup_context)


def adaln_modulate(x_BLC: torch.Tensor, scale1p_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LN(x) * (1 + scale) + shift over the last dim, non-affine LayerNorm (`ln_modulate`), in `out_dtype` (None:
    x's); differentiable in x, 1 + scale and shift ((B, 1, C) each)."""
    scale1p_B1C, shift_B1C = _expanded(x_BLC, {"1 + scale": scale1p_B1C, "shift": shift_B1C})
    return adaln_ln_fwd(x_BLC, None, None, scale1p_B1C, shift_B1C, eps, out_dtype)[1]


def adaln_residual_modulate(x_BLC: torch.Tensor, y_BLC: torch.Tensor, gate_B1C: torch.Tensor,
                            scale1p_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float,
                            out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x' = x + y * gate and LN(x') * (1 + scale) + shift (`residual_modulate`): the new residual stream (x's dtype)
    and the next branch's input (in `out_dtype`; None: x's); differentiable in every tensor."""
    rows = _expanded(x_BLC, {"gate": gate_B1C, "1 + scale": scale1p_B1C, "shift": shift_B1C})
    xn_BLC, h_BLC, _, _ = adaln_ln_fwd(x_BLC, y_BLC, *rows, eps, out_dtype)
    return xn_BLC, h_BLC
