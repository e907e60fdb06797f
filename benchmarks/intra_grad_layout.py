"""Time M-VAR's intra-scale attention (block-diagonal, one SDPA call per scale) as one compiled forward + backward,
projections included, under three ways of cutting the projection's output into scales, and append one JSON line per
way to OUT (`intra_step_ms`: the forward + backward median).

Issue 18 goal 1 (M-VAR-d16 training at 2.5x the official code). In session 36's profile of M-VAR-d16's compiled
step (H100, 138 ms busy) the gradient of q, k, v took three passes over the (B, L, 3C) gradient of the qkv
projection after cuDNN's per-scale backward: `add_slice_backward` (dq, dk, dv each summed from its scales),
`add_slice_backward_stack`, `clone_permute_stack` (into the projection's layout): 4.4 ms per step, of which the last
pass alone took 1.5. Which cut lets Inductor write the gradient in one pass is a question only the GPU answers (on a
CPU, Inductor fused the old cut's three into one loop):

- `slices` (varbench's up to session 36, kept in this script as the baseline): q, k, v as `ScaleAttention.qkv`
  makes them (views of the projection, permuted to (B, H, L, d)), each call's tokens a slice of them (the backward
  adds zero-padded slices);
- `split_qkv` (intra=full's forward on sdpa_scales, `ScaleAttention.qkv_parts`): the projection's output (B, L, 3C)
  split into the calls' tokens first, each part viewed as its q, k, v (the backward concatenates the parts'
  gradients, each already in the projection's layout);
- `split_heads` (`sdpa_scales_attention` on q, k, v): q, k, v as `slices`, each split into the calls' tokens with
  `torch.split` (the backward concatenates dq, dk and dv, then stacks them).

Each record names the way, the forward + backward median (CUDA events), the largest difference of its input and
weight gradients from `slices`' (the same kernels on the same numbers: expected 0), and its ten longest non-GEMM
kernels. Shapes: M-VAR-d16 at 256 px (batch 32, width 1024, 16 heads, 680 tokens), bf16 autocast.

    python benchmarks/intra_grad_layout.py OUT.jsonl [--batch 32] [--repeats 30]
`--tiny` runs a small layout on the CPU: a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.eval.timing import time_ms, top_ops  # noqa: E402
from varbench.intra.full import IntraScaleAttention  # noqa: E402
from varbench.layout import ScaleLayout  # noqa: E402
from varbench.ops.attention.kernel import (  # noqa: E402
    sdpa_scales_attention,
    sdpa_scales_block_diag,
    sdpa_scales_calls,
)
from varbench.training.loop import INDUCTOR_OPTIONS, compile_options  # noqa: E402
from varbench.utils.records import record  # noqa: E402

TOGETHER_BELOW = 64  # intra=full's default: the scales with fewer tokens attend in one masked call


def attend_slices(q, k, v, layout: ScaleLayout, mask_PP, scale: float):
    """`slices`: varbench's block-diagonal `sdpa_scales` up to session 36, each call's q, k, v slices of q, k, v of
    the whole sequence (the baseline, kept here to time against)."""
    sizes = sdpa_scales_calls(layout, TOGETHER_BELOW)
    outs, end = [], 0
    for i, n in enumerate(sizes):
        t = slice(end, end + n)
        outs.append(F.scaled_dot_product_attention(q[:, :, t], k[:, :, t], v[:, :, t],
                                                   attn_mask=mask_PP if i == 0 else None, scale=scale))
        end += n
    return torch.cat(outs, dim=2)


def forward_fn(way: str, module: IntraScaleAttention, layout: ScaleLayout):
    """x_BLC -> the module's output, its attention cut into scales the named way (module docstring)."""
    P = sdpa_scales_calls(layout, TOGETHER_BELOW)[0]
    mask_PP = layout.block_diag_mask(next(module.parameters()).device)[:P, :P].contiguous()  # built once, as varbench's

    def forward(x_BLC):
        if way == "split_qkv":  # intra=full's forward on sdpa_scales (called here so that --tiny runs it on a CPU)
            parts = module.qkv_parts(x_BLC, sdpa_scales_calls(layout, TOGETHER_BELOW))
            return module.out(sdpa_scales_block_diag(parts, layout, module.scale, TOGETHER_BELOW))
        q, k, v = module.qkv(x_BLC)
        if way == "slices":
            return module.out(attend_slices(q, k, v, layout, mask_PP, module.scale))
        return module.out(sdpa_scales_attention(q, k, v, layout, "block_diag", module.scale, TOGETHER_BELOW))
    return forward


def time_way(out, way: str, module, layout, x, grad, repeats: int, baseline: dict | None) -> dict:
    """Compile one way's forward + backward, time it, compare its gradients with the baseline's and record it."""
    torch._dynamo.reset()
    forward = torch.compile(forward_fn(way, module, layout), **compile_options())  # as training compiles
    params = [x, *module.parameters()]

    def step():
        for p in params:
            p.grad = None
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            o = forward(x)
        o.backward(grad)

    step()
    grads = {"x": x.grad.clone()} | {n: p.grad.clone() for n, p in module.named_parameters()}
    diff = None if baseline is None else max((grads[n] - baseline[n]).abs().max().item() for n in grads)
    timing = time_ms(step, warmup=3, repeats=repeats)
    ops = [o for o in top_ops(step, steps=3, limit=None) if not o["op"].startswith(("aten::mm", "aten::addmm"))]
    record(out, "intra_step_ms", timing["median_ms"], "ms", way=way, batch=x.shape[0], width=x.shape[-1],
           heads=module.num_heads, patch_nums=list(layout.patch_nums), autocast="bf16" if x.is_cuda else None,
           max_abs_diff_grads_vs_slices=diff, inductor_options=INDUCTOR_OPTIONS, timing=timing, top_ops=ops[:10])
    print(f"{way:12s} fwd+bwd {timing['median_ms']:7.3f} ms  grads vs slices {diff}  "
          f"{[(o['op'][:60], round(o['ms_per_step'], 3)) for o in ops[:6]]}")
    return grads


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--tiny", action="store_true", help="a small layout on the CPU: a check of the script")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layout = ScaleLayout((1, 2, 3, 4, 8, 9)) if args.tiny else ScaleLayout.for_resolution(256)
    batch, width, heads = (2, 32, 2) if args.tiny else (args.batch, 1024, 16)
    torch.manual_seed(0)
    module = IntraScaleAttention(width, heads).to(device)
    for p in module.parameters():  # VAR's biases start at zero: nonzero ones check that they reach the gradient
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(batch, layout.L, width, device=device, requires_grad=True)
    grad = torch.randn(batch, layout.L, width, device=device)
    baseline = None
    for way in ("slices", "split_qkv", "split_heads"):
        grads = time_way(args.out, way, module, layout, x, grad, 3 if args.tiny else args.repeats, baseline)
        baseline = baseline or grads


if __name__ == "__main__":
    main()
