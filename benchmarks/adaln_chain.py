"""Time the element-wise chain of one VAR-d16 block around its branches (first pre-norm, gated residual fused with
the second pre-norm, last gated residual) as one compiled forward + backward, in the torch form that Inductor fuses
and with the Triton kernels of `varbench.ops.adaln.kernel` (issue 18: fuse AdaLN modulate + LayerNorm), and append
one JSON line per way to OUT (`adaln_chain_ms`: the forward + backward median).

In VAR-d16's compiled training step (one H100, session 40) Inductor's kernels of this chain took about 11 of its 79 ms
of GPU time: its LayerNorm reduces over the width and the AdaLN gradients over the tokens, so it reads the
activations again for each. The branches' outputs here are fixed random tensors (bf16, as autocast's Linears give
them), and so are the gradients of the two branch inputs and of the block's output: the chain alone, no GEMM.
`triton` runs once per kernel launch configuration of `--configs` (ROWS tokens per program, TILE elements of a tile
in registers, warps; the module's defaults first); each record names it, the median, the largest gradient distance
from the torch form relative to its largest gradient, and the ten longest kernels.
Shapes: VAR-d16 at 256 px (batch 32, width 1024, 680 tokens).

    python benchmarks/adaln_chain.py OUT.jsonl [--batch 32] [--repeats 30] [--configs 32:4096:4,16:4096:8]
`--tiny` runs a small shape on the CPU (the torch form only; the kernels need a GPU): a check of the script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.eval.timing import time_ms, top_ops  # noqa: E402
from varbench.modules.fused import gated_residual, ln_modulate, residual_modulate  # noqa: E402
from varbench.training.loop import INDUCTOR_OPTIONS, compile_options  # noqa: E402
from varbench.utils.records import record  # noqa: E402

EPS = 1e-6


def chain(way: str):
    """(x, y1, y2, rows) -> (h1, h2, x2): a two-branch block's element-wise work around its branches, `way` torch or
    triton; rows (B, 6, 1, C) are gamma1, gamma2, 1 + scale1, 1 + scale2, shift1, shift2 (VAR's order)."""
    if way == "triton":
        from varbench.ops.adaln.kernel import adaln_modulate as modulate
        from varbench.ops.adaln.kernel import adaln_residual_modulate as residual_then_modulate
    else:
        modulate, residual_then_modulate = ln_modulate, residual_modulate

    def forward(x_BLC, y1_BLC, y2_BLC, rows_B61C):
        g1, g2, s1, s2, b1, b2 = rows_B61C.unbind(1)
        h1_BLC = modulate(x_BLC, s1, b1, EPS, torch.bfloat16)
        x1_BLC, h2_BLC = residual_then_modulate(x_BLC, y1_BLC, g1, s2, b2, EPS, torch.bfloat16)
        return h1_BLC, h2_BLC, gated_residual(x1_BLC, y2_BLC, g2)
    return forward


def time_way(out, way: str, config, inputs, grads, repeats: int, baseline: list | None) -> list:
    """Compile one way's forward + backward, time it, compare its gradients with the baseline's and record it."""
    torch._dynamo.reset()
    forward = torch.compile(chain(way), **compile_options())  # as training compiles

    def step():
        for t in inputs:
            t.grad = None
        torch.autograd.backward(forward(*inputs), grads)

    step()
    got = [t.grad.float().clone() for t in inputs]
    diff = None if baseline is None else max(((g - b).abs().max() / b.abs().max()).item()
                                            for g, b in zip(got, baseline))
    timing = time_ms(step, warmup=3, repeats=repeats)
    ops = top_ops(step, steps=3, limit=None)
    x = inputs[0]
    record(out, "adaln_chain_ms", timing["median_ms"], "ms", way=way, kernel_config=config, batch=x.shape[0],
           tokens=x.shape[1], width=x.shape[2], max_rel_diff_grads_vs_torch=diff, inductor_options=INDUCTOR_OPTIONS,
           timing=timing, top_ops=ops[:10])
    print(f"{way:7s} {config or '':16s} fwd+bwd {timing['median_ms']:7.3f} ms  grads vs torch {diff}  "
          f"{[(o['op'][:50], round(o['ms_per_step'], 3)) for o in ops[:5]]}")
    return got


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--configs", default="", help="ROWS:TILE:WARPS,... beside the module's defaults")
    parser.add_argument("--tiny", action="store_true", help="a small shape on the CPU: a check of the script")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    B, L, C = (2, 30, 64) if args.tiny else (args.batch, 680, 1024)
    torch.manual_seed(0)
    inputs = [torch.randn(B, L, C, device=device), *(torch.randn(B, L, C, device=device, dtype=torch.bfloat16)
                                                    for _ in range(2)), torch.randn(B, 6, 1, C, device=device)]
    inputs = [t.requires_grad_() for t in inputs]
    grads = [torch.randn(B, L, C, device=device, dtype=dtype) for dtype in (torch.bfloat16, torch.bfloat16,
                                                                           torch.float32)]
    baseline = time_way(args.out, "torch", None, inputs, grads, 3 if args.tiny else args.repeats, None)
    if args.tiny:
        return
    from varbench.ops.adaln import kernel
    for config in [None] + [c for c in args.configs.split(",") if c]:
        if config:
            kernel.ROWS, kernel.TILE, kernel.WARPS = map(int, config.split(":"))
        time_way(args.out, "triton", config or f"{kernel.ROWS}:{kernel.TILE}:{kernel.WARPS or 'auto'}", inputs,
                 grads, args.repeats, baseline)


if __name__ == "__main__":
    main()
