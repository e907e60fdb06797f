"""Time the attention of VAR's scale layout alone, forward and forward + backward, in each way varbench can run it,
and append one JSON line per variant to OUT (`attention_ms`: the forward + backward median).

Issue 18 goal 1 (VAR-d16 training at 2.5x the official code): in session 26's bf16 step (94.5 ms on an H100) cuDNN's
attention backward took 11.0 ms against its forward's 3.3 ms, 3.3x where about 2.5x is the arithmetic. This script
says which way of calling the kernels does better, and so which backend and `sdpa_scales` options to time the
training step with:

- `flex`: one flex_attention call with the layout's BlockMask (the mixers' `flex` backend);
- `reference`: one SDPA call with the dense boolean mask (the oracle; SDPA's masked kernels);
- `sdpa_scales:N:K`: the mixers' `sdpa_scales` backend (`sdpa_scales_attention`), the scales with fewer than N
  tokens in one masked call (the mixers' `together_below`, 64 by default; 1: every scale its own unmasked call),
  SDPA restricted to the kernels K, first preferred (the mixers' `sdpa_kernels`; `auto`: SDPA's own choice;
  `cudnn`, `flash` or `efficient`, each with the memory-efficient kernel behind it for a masked call, which flash
  cannot run).

Each record names the kernels that ran (the profiler's attention operators of one forward + backward), the forward
and forward + backward medians (CUDA events), TFLOP/s over the pairs the mask allows, and how far the variant's
output and input gradients are from the fp64 oracle's (`max_abs_diff_*`; q, k, v as VAR's: unit-norm rows, q
times its temperature 4). Shapes: VAR-d16 at 256 px by default (batch 32, 16 heads of 64, 680 tokens).

    python benchmarks/attention_backends.py OUT.jsonl [--kinds block_causal block_diag] [--together 1 64 128 256]
        [--kernels auto cudnn flash efficient] [--batch 32] [--resolution 256]
`--tiny` runs a small layout on the CPU (SDPA's own kernel only: a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.eval.timing import time_ms  # noqa: E402
from varbench.layout import ScaleLayout  # noqa: E402
from varbench.ops.attention.kernel import flex_masked_attention, sdpa_scales_attention  # noqa: E402
from varbench.ops.attention.reference import masked_attention_ref  # noqa: E402
from varbench.utils.records import record  # noqa: E402

KERNELS = ("auto", "cudnn", "flash", "efficient")
TEMPERATURE = 4.0  # VAR's initial exp(scale_mul): q's rows have this norm, k's are unit


def sdpa_kernels(kernels: str) -> tuple[str, ...]:
    """The `sdpa_kernels` option a variant runs with (first preferred; the memory-efficient kernel behind it for a
    masked call, which flash cannot run); () for SDPA's own choice."""
    return () if kernels == "auto" else tuple(dict.fromkeys((kernels, "efficient")))


def mask_of(layout: ScaleLayout, kind: str, device) -> torch.Tensor:
    """The dense (L, L) mask of `kind` on `device`."""
    return {"block_causal": layout.block_causal_mask, "block_diag": layout.block_diag_mask}[kind](device)


def attend_fn(variant: str, layout: ScaleLayout, kind: str, device):
    """(q, k, v) -> o for a variant name (module docstring), its tensors on `device`."""
    if variant == "flex":
        return lambda q, k, v: flex_masked_attention(q, k, v, layout, kind, 1.0)
    if variant == "reference":
        mask = mask_of(layout, kind, device)  # built once, as the mixers' reference path is not timed here
        return lambda q, k, v: masked_attention_ref(q, k, v, mask, 1.0)
    _, together, kernels = variant.split(":")
    return lambda q, k, v: sdpa_scales_attention(q, k, v, layout, kind, 1.0, together_below=int(together),
                                                 kernels=sdpa_kernels(kernels))


def inputs(batch: int, heads: int, head_dim: int, tokens: int, device, dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, H, L, d) as VAR attends with them (L2-normalised rows, q times its temperature), and an output
    gradient; fixed seeds."""
    g = torch.Generator().manual_seed(0)
    rand = lambda: torch.randn(batch, heads, tokens, head_dim, generator=g)  # noqa: E731
    q, k, v, grad = F.normalize(rand(), dim=-1) * TEMPERATURE, F.normalize(rand(), dim=-1), rand(), rand()
    return tuple(t.to(device, dtype) for t in (q, k, v, grad))


def kernels_ran(fn) -> list[str]:
    """The attention operators one call of `fn` ran (profiler names, e.g. aten::_cudnn_attention_backward)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "attention" in n and ("aten::_" in n or "triton_tem" in n))


def variant_record(out, variant: str, layout: ScaleLayout, kind: str, qkvg, repeats: int) -> dict:
    """Time one variant, check it against the fp64 oracle and append its record."""
    q, k, v, grad = (t.detach().requires_grad_(i < 3) for i, t in enumerate(qkvg))
    attend, mask = attend_fn(variant, layout, kind, q.device), mask_of(layout, kind, q.device)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    oracle = masked_attention_ref(*exact, mask, 1.0)
    oracle.backward(grad.double())

    def forward_backward():
        for t in (q, k, v):
            t.grad = None
        o = attend(q, k, v)
        o.backward(grad)
        return o

    o = forward_backward()
    diffs = {f"max_abs_diff_{name}": (mine - ref).abs().max().item() for name, mine, ref in
             [("out", o.detach().double(), oracle.detach())] +
             [(f"d{n}", t.grad.double(), e.grad) for n, t, e in zip("qkv", (q, k, v), exact)]}
    with torch.no_grad():
        fwd = time_ms(lambda: attend(q, k, v), warmup=3, repeats=repeats)
    both = time_ms(forward_backward, warmup=3, repeats=repeats)
    pairs = int(mask.sum())
    flops = 4 * pairs * q.shape[-1] * q.shape[0] * q.shape[1]  # q.k and p.v per allowed pair, all batch and heads
    ms = both["median_ms"]
    rec = record(out, "attention_ms", ms, "ms", variant=variant, kind=kind, batch=q.shape[0], heads=q.shape[1],
                 head_dim=q.shape[-1], patch_nums=list(layout.patch_nums), dtype=str(q.dtype).removeprefix("torch."),
                 kernels_ran=kernels_ran(forward_backward), forward_ms=fwd["median_ms"],
                 backward_ms=ms - fwd["median_ms"], forward_tflops=flops / (fwd["median_ms"] * 1e-3) / 1e12,
                 # forward and backward: 2 + 5 matmuls per pair (the backward recomputes q.k), 3.5x the forward
                 tflops=3.5 * flops / (ms * 1e-3) / 1e12, pairs=pairs, timing=both, **diffs)
    print(f"{kind:12s} {variant:24s} fwd {fwd['median_ms']:7.3f} ms  fwd+bwd {ms:7.3f} ms  "
          f"max|d out| {diffs['max_abs_diff_out']:.1e}  {rec['kernels_ran']}")
    return rec


def variants(together: list[int], kernels: list[str], cuda: bool) -> list[str]:
    """Every variant to time: on a GPU flex and the reference too, on a CPU SDPA's own kernel only."""
    scales = [f"sdpa_scales:{n}:{k}" for k in (kernels if cuda else ["auto"]) for n in together]
    return (["flex", "reference"] if cuda else ["reference"]) + scales


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--kinds", nargs="+", default=["block_causal", "block_diag"],
                        choices=["block_causal", "block_diag"])
    parser.add_argument("--together", nargs="+", type=int, default=[1, 64, 128, 256])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="a small layout on the CPU: a check of the script")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    layout = ScaleLayout((1, 2, 3, 4)) if args.tiny else ScaleLayout.for_resolution(args.resolution)
    batch, heads, head_dim = (2, 2, 8) if args.tiny else (args.batch, 16, 64)
    qkvg = inputs(batch, heads, head_dim, layout.L, "cuda" if cuda else "cpu",
                  torch.bfloat16 if cuda else torch.float32)
    for kind in args.kinds:
        for variant in variants(args.together, args.kernels, cuda):
            try:
                variant_record(args.out, variant, layout, kind, qkvg, 3 if args.tiny else args.repeats)
            except RuntimeError as err:  # a kernel set SDPA cannot run here: say so, time the others
                record(args.out, "attention_error", None, "", variant=variant, kind=kind, error=str(err)[:500])
                print(f"{kind:12s} {variant:24s} failed: {str(err).splitlines()[0][:200]}")


if __name__ == "__main__":
    main()
