"""Time VAR's q/k L2 normalisation compiled, forward and forward + backward, with autograd's backward of `l2_qk`,
with the written-out one (`L2QKTraining`, what attention runs under autograd with `qk_norm: torch`) and as Triton
kernels (`varbench.ops.qk_norm.kernel`, `qk_norm: auto` on a GPU; they also copy v out and write its gradient into
the qkv gradient, which the torch forms leave to the kernels around them), and append one JSON line per variant to
OUT (`l2qk_ms`: the forward + backward median; the input's gradient's largest distance from autograd's beside it).

Issue 18 goal 1: in session 29's profile of VAR-d16's compiled step (H100, batch 32) the normalisation's kernels
took 9.4 of 93.1 ms, most of it in the backward. The input is laid out as attention's is (a view of the qkv
projection's (B, L, 3, H, d) output), under bf16 autocast; shapes: VAR-d16 at 256 px (batch 32, 16 heads of 64, 680
tokens). `--tiny` runs small shapes on the CPU without the Triton variant (a check of the script, not a measurement).

    python benchmarks/l2qk_backward.py OUT.jsonl [--batch 32] [--repeats 20] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.eval.timing import time_ms  # noqa: E402
from varbench.modules.fused import NORMALIZE_EPS, L2QKTraining, l2_qk  # noqa: E402
from varbench.utils.records import record  # noqa: E402


def torch_form(l2):
    """q and k of the qkv output (B, L, 3 H d) as attention's torch form normalises them, by `l2`."""
    def run(qkv_BLX, temperature_1H11, heads):
        B, L, X = qkv_BLX.shape
        qkv_3BHLd = qkv_BLX.view(B, L, 3, heads, X // (3 * heads)).permute(2, 0, 3, 1, 4)
        return l2(qkv_3BHLd[:2], temperature_1H11, qkv_BLX.dtype)
    return run


def triton_kernels(qkv_BLX, temperature_1H11, heads):
    from varbench.ops.qk_norm.kernel import qkv_l2_norm
    return qkv_l2_norm(qkv_BLX, temperature_1H11, heads, NORMALIZE_EPS)[:2]


VARIANTS = {"autograd": torch_form(l2_qk), "written": torch_form(L2QKTraining.apply), "triton": triton_kernels}


def step_fn(normalise, heads: int):
    """q and k of the qkv output, normalised by `normalise`, reduced against fixed weights (a loss of both)."""
    def step(qkv_BLX, temperature_1H11, w_2BHLd):
        q, k = normalise(qkv_BLX, temperature_1H11, heads)
        return (q * w_2BHLd[0]).float().sum() + (k * w_2BHLd[1]).float().sum()
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    B, L, H, d = (2, 30, 2, 16) if args.tiny else (args.batch, 680, 16, 64)
    torch.manual_seed(0)
    qkv = torch.randn(B, L, 3 * H * d, device=device, dtype=torch.bfloat16, requires_grad=True)
    temperature = (torch.rand(1, H, 1, 1, device=device) * 4).requires_grad_()
    w = torch.randn(2, B, H, L, d, device=device, dtype=torch.bfloat16)
    grads = {}
    for name, normalise in VARIANTS.items():
        if name == "triton" and args.tiny:
            continue
        step = torch.compile(step_fn(normalise, H))

        def forward_backward():
            qkv.grad = temperature.grad = None
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = step(qkv, temperature, w)
            loss.backward()

        def forward():  # training's: with the tensors autograd keeps for the backward
            with torch.autocast(device, dtype=torch.bfloat16):
                step(qkv, temperature, w)

        fwd = time_ms(forward, repeats=args.repeats)
        both = time_ms(forward_backward, repeats=args.repeats)
        grads[name] = qkv.grad.float()
        off = (grads[name] - grads["autograd"]).abs().max().item()
        record(args.out, "l2qk_ms", both["median_ms"], "ms", variant=name, batch=B, heads=H, head_dim=d, L=L,
               dtype="bfloat16 autocast", forward_ms=fwd["median_ms"], backward_ms=both["median_ms"] - fwd["median_ms"],
               max_abs_diff_grad_vs_autograd=off, timing=both, config=None)
        print(f"{name:9s} fwd {fwd['median_ms']:.3f} ms  fwd+bwd {both['median_ms']:.3f} ms  max|d grad| {off:.1e}")


if __name__ == "__main__":
    main()
