"""Where one eager VAR-d16 (or M-VAR-d16) generation spends its time (issue 18 goal 2: eager batch-1 sampling was
0.88x the official code's on an H200, and counting ops on a CPU found the two dispatch about the same,
results/cpu_opcount/).

One generation (batch `--batch`, CFG 1.5, top-k 900, top-p 0.96, bf16 autocast on CUDA, random weights, after
`--warmup` untimed ones) is run three ways, each written as records:
- timed: median wall time over `--repeats` (`varbench.eval.timing.time_ms`: CUDA events);
- under `torch.cuda.set_sync_debug_mode("warn")`: every host synchronisation, counted by call site (file:line of the
  innermost varbench frame). A sync stalls the host until the GPU drains, so the host cannot queue ahead of it;
- under `torch.profiler` with the parts of `benchmarks/op_count.py` as labelled ranges: per part the host time
  (`cpu_ms`, the range's own wall time on the host) and the GPU time of the kernels it launched (`gpu_ms`), and for
  the whole generation the GPU's busy time (union of kernel intervals) against the wall time: a launch-bound
  generation has a busy fraction well below 1.

- the kernels of that profile by total GPU time (`top_kernels`: the `--top` largest with their calls, beside the
  GPU's busy time): which kernels a part's time is made of.

    python benchmarks/sample_profile.py OUT.jsonl [--model var] [--batch 1] [--width 1024] [--ch 160] [--fused]
        [--decode-mode eager] [--block-weights fp32] [--top 30]
`--model mvar`: M-VAR-d16 (the mamba2 mixer and the full intra-scale attention, their YAMLs' options), its
Mamba2 steps and intra-scale attention as parts of their own (`block.mixer`, `block.intra`); records name the
mixer and intra variant.
`--fused`, `--decode-mode` and `--block-weights bf16` profile the sampling options of task=bench
(`fused_elementwise`, `decode_mode`, `block_weights`), so that the kernels are those of a timed configuration; the
records name them. CUDA graphs are not profiled: a graph replays the same kernels, without their launches.

On a CPU (a smoke test of the script) only the timing and the profile run, with the widths given.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from op_count import BLOCK_PARTS, ONCE_PARTS, SCALE_PARTS, SETTINGS, OpCounter, instrument, var_d16  # noqa: E402

from varbench.backbones import sampling  # noqa: E402
from varbench.backbones.scale_ar import ScaleAR  # noqa: E402
from varbench.eval.timing import time_ms  # noqa: E402
from varbench.registry import factory, load_option  # noqa: E402
from varbench.tokenizers import MultiScaleVQVAE  # noqa: E402
from varbench.tokenizers.fast_decode import DECODE_MODES  # noqa: E402
from varbench.utils.precision import hold_linear_weights_in  # noqa: E402
from varbench.utils.records import append_records, make_record  # noqa: E402

PARTS = BLOCK_PARTS + ("block.mixer", "block.intra") + SCALE_PARTS + ONCE_PARTS
MODELS = {"var": ("attention", "none"), "mvar": ("mamba2", "full")}  # --model: (mixer, intra)
RANGES = {*PARTS, "generation"}  # the profiler ranges this script labels


class Ranges(OpCounter):
    """op_count's labels as profiler ranges. `instrument` pushes and pops labels on `stack` (nested: a block's step
    holds its AdaLN projection, mixer and FFN) and sets the phase between labelled calls ("guide", "next_input",
    ...); a phase's range is open only while no label is, so that ranges never overlap, they only nest."""

    def __init__(self):
        super().__init__()
        self.stack, self.phase_range = LabelStack(self), None

    def enter_phase(self, phase: str) -> None:
        self.phase = phase
        self.close_phase()
        if not self.stack:
            self.open_phase()

    def open_phase(self) -> None:
        self.phase_range = record_function(self.phase)
        self.phase_range.__enter__()

    def close_phase(self) -> None:
        if self.phase_range is not None:
            self.phase_range.__exit__(None, None, None)
            self.phase_range = None


class LabelStack(list):
    """A label stack whose pushes and pops open and close profiler ranges."""

    def __init__(self, owner: Ranges):
        super().__init__()
        self.owner, self.ranges = owner, []

    def append(self, label: str) -> None:
        if not self:
            self.owner.close_phase()
        super().append(label)
        self.ranges.append(record_function(label))
        self.ranges[-1].__enter__()

    def pop(self, *args) -> str:
        self.ranges.pop().__exit__(None, None, None)
        label = super().pop(*args)
        if not self:
            self.owner.open_phase()
        return label


def build(model: str, width: int, ch: int, device) -> tuple[ScaleAR, MultiScaleVQVAE]:
    """The depth-16 model `--model` names and a VQ-VAE, random weights from seed 0, in eval mode on `device`: VAR as
    op_count builds it; M-VAR from the registry's mamba2 mixer and full intra variant."""
    if model == "var":
        return var_d16(width, ch, device)
    torch.manual_seed(0)
    mixer, intra = (factory(load_option(group, name)) for group, name in zip(("mixer", "intra"), MODELS[model]))
    net = ScaleAR(mixer=mixer, intra=intra, depth=16, width=width, num_heads=width // 64, drop_path_rate=0.0)
    return net.eval().to(device), MultiScaleVQVAE(ch=ch).eval().to(device)


def sync_sites(generate) -> Counter:
    """Host synchronisations of one generation by call site (the innermost frame under varbench/)."""
    sites = Counter()

    def note(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "/varbench/" in f.filename]
        sites[f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else f"{filename}:{lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")
        try:
            generate()
        finally:
            torch.cuda.set_sync_debug_mode("default")  # (before our own synchronize, which is not the generation's)
    torch.cuda.synchronize()
    return sites


def busy_ms(kernels: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (microseconds in, milliseconds out)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(kernels):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total / 1e3


def exclusive(events, parts, key) -> dict:
    """Per part, the sum over its ranges of `key(range)` less `key` of the labelled ranges directly inside it (the
    innermost label owns the time, as in op_count)."""
    ranges = sorted((e for e in events if e.name in parts and e.device_type.name == "CPU"),
                    key=lambda e: (e.time_range.start, -e.time_range.end))
    totals, open_ = dict.fromkeys(parts, 0.0), []
    for e in ranges:
        while open_ and open_[-1].time_range.end <= e.time_range.start:
            open_.pop()
        totals[e.name] += key(e)
        if open_:
            totals[open_[-1].name] -= key(e)
        open_.append(e)
    return totals


def profile_parts(generate, model, tokenizer, cuda: bool) -> tuple[dict, dict]:
    """Per part {cpu_ms, gpu_ms} (host time of its ranges; GPU time of the kernels they launched), and the
    generation's {wall_ms, gpu_busy_ms, kernels}."""
    ranges = Ranges()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with instrument(ranges, model, tokenizer), profile(activities=activities) as prof:
        with record_function("generation"):
            ranges.enter_phase("setup")
            generate()
            ranges.close_phase()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    cpu = exclusive(events, PARTS, lambda e: e.time_range.elapsed_us() / 1e3)
    gpu = exclusive(events, PARTS, lambda e: e.device_time_total / 1e3 if cuda else 0.0)
    kernels = [(e.time_range.start, e.time_range.end) for e in events if is_kernel(e)]
    wall = next(e.time_range.elapsed_us() / 1e3 for e in events if e.name == "generation")
    parts = {p: {"cpu_ms": cpu[p], "gpu_ms": gpu[p]} for p in PARTS}
    return parts, {"wall_ms": wall, "gpu_busy_ms": busy_ms(kernels), "kernels": len(kernels),
                   "by_kernel": kernel_totals(events)}


def is_kernel(event) -> bool:
    """Whether a profiler event is work on the GPU: the labelled ranges' spans on the GPU's timeline are not (session
    33's first profile counted them among the kernels and in the busy time)."""
    return (event.device_type.name == "CUDA" and not getattr(event, "is_user_annotation", False)
            and event.name not in RANGES)


def kernel_totals(events) -> list[dict]:
    """The GPU kernels of a profile, summed by name: [{kernel, gpu_ms, calls}], largest total first."""
    totals: dict[str, list] = {}
    for e in events:
        if is_kernel(e):
            total = totals.setdefault(e.name, [0.0, 0])
            total[0] += e.time_range.elapsed_us() / 1e3
            total[1] += 1
    return [{"kernel": name, "gpu_ms": ms, "calls": calls}
            for name, (ms, calls) in sorted(totals.items(), key=lambda item: -item[1][0])]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="JSON-lines file the records are appended to")
    parser.add_argument("--model", default="var", choices=sorted(MODELS), help="VAR-d16 or M-VAR-d16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--width", type=int, default=1024, help="the model's width (VAR-d16's and M-VAR-d16's)")
    parser.add_argument("--ch", type=int, default=160, help="the tokenizer's base channels (VAR's VQ-VAE: 160)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fused", action="store_true",
                        help="the blocks' fused element-wise chains and the tokenizer's compiled bicubic upsampling")
    parser.add_argument("--decode-mode", default="eager", choices=DECODE_MODES)
    parser.add_argument("--block-weights", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--top", type=int, default=30, help="kernels in the top_kernels record")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model, tokenizer = build(args.model, args.width, args.ch, device)
    for module in (model, tokenizer):
        module.set_fused_elementwise(args.fused)
    tokenizer.set_decode_mode(args.decode_mode)
    if args.block_weights == "bf16":
        hold_linear_weights_in(model.blocks, torch.bfloat16)
    sampler = sampling.ScaleSampler(model, tokenizer, **SETTINGS)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def generate():
        with torch.no_grad(), precision:
            return sampler(labels)

    mixer, intra = MODELS[args.model]
    fields = dict(mixer=mixer, intra=intra, batch=args.batch, depth=16, width=args.width, tokenizer_ch=args.ch,
                  cuda_graphs=False, random_weights=True, precision="bf16 autocast" if cuda else "fp32",
                  fused_elementwise=args.fused, decode_mode=args.decode_mode, block_weights=args.block_weights,
                  **SETTINGS)
    timing = time_ms(generate, warmup=args.warmup, repeats=args.repeats)
    records = [make_record("sample_latency_ms", timing.pop("median_ms"), "ms", device=device, **timing, **fields)]
    if cuda:
        sites = sync_sites(generate)
        records.append(make_record("host_syncs", sum(sites.values()), "syncs per generation", device=device,
                                   sites=dict(sites.most_common()), **fields))
    parts, whole = profile_parts(generate, model, tokenizer, cuda)
    by_kernel = whole.pop("by_kernel")
    records.append(make_record("profiled_generation_ms", whole.pop("wall_ms"), "ms", device=device,
                               note="wall time under the profiler (slower than the timed runs)", **whole, **fields))
    records.append(make_record("top_kernels", len(by_kernel), "kernel names", device=device,
                               kernels=by_kernel[:args.top], gpu_busy_ms=whole["gpu_busy_ms"], **fields))
    records += [make_record("part_time_ms", t["cpu_ms"], "ms", device=device, part=p, gpu_ms=t["gpu_ms"], **fields)
                for p, t in parts.items()]
    append_records(args.out, records)
    for r in records:
        print(r["metric"], r.get("part", ""), round(r["value"], 3), r.get("gpu_ms", r.get("gpu_busy_ms", "")))
    for k in by_kernel[:args.top]:
        print(f"{k['gpu_ms']:9.2f} ms {k['calls']:6d}x  {k['kernel'][:150]}")


if __name__ == "__main__":
    main()
