"""Count the aten ops one VAR-d16 generation dispatches, by part, on CPU (issue 18 goal 2: at batch 1 eager sampling
is launch-bound, so the op count per generation decides its speed on a GPU).

A `TorchDispatchMode` counts every op dispatched (views included: each costs dispatcher time on the host; `kernels`
counts the non-view ops, roughly what launches a kernel on a GPU) under a label saying where it ran:
- per block and scale: `block.ada_lin` (the AdaLN projection of the condition), `block.attention` (the inter-scale
  mixer's step), `block.ffn`, `block.other` (the rest of the block: LayerNorms, modulation, gated residuals); for
  another model, `instrument` labels a mixer that is not VAR's attention `block.mixer` and an intra-scale branch
  `block.intra` (benchmarks/sample_profile.py --model mvar);
- per scale outside the blocks: `head`, `guide` (what runs between the head and the draw: guidance), `sample`
  (top-k / top-p and the multinomial draw), `next_input` (from the drawn ids to the next scale's input: code
  embedding, phi, f_hat, area downsampling, word embedding, CFG doubling);
- once: `setup` (before the first block), `decode` (the tokenizer decode).
The counts do not depend on the width, so a narrow depth-16 model counts what VAR-d16 (width 1024) dispatches.
Beside them, the host's interpreter work: the Python function calls of one generation, tokenizer decode excluded
(`python_call_record`, cProfile's count; deterministic, unlike a CPU timing, which at any width here is mostly the
top-k / top-p sort and the draw).

    python benchmarks/op_count.py results/cpu_opcount/varbench.jsonl [--precision bf16-autocast-cpu]

Writes one JSON line per part and one of Python calls (replacing this system's and precision's earlier lines in
OUT). `instrument`, `part_records` and `python_call_record` are what a harness for another system's sampler reuses
(the official VAR's counts were taken so).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import pstats
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from varbench.backbones import sampling  # noqa: E402
from varbench.backbones.scale_ar import ScaleAR  # noqa: E402
from varbench.mixers.attention import BlockCausalAttention  # noqa: E402
from varbench.tokenizers import MultiScaleVQVAE  # noqa: E402
from varbench.utils.records import make_record, replace_records  # noqa: E402

BLOCK_PARTS = ("block.ada_lin", "block.attention", "block.ffn", "block.other")
SCALE_PARTS = ("head", "guide", "sample", "next_input")
ONCE_PARTS = ("setup", "decode")
SETTINGS = dict(cfg=1.5, top_k=900, top_p=0.96)


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops per (scale, label). The label is the innermost `inside` region, else the phase
    (set by `enter_phase`); `next_scale` (called when block 0 starts) advances the scale."""

    def __init__(self):
        super().__init__()
        self.phase, self.scale, self.stack = "setup", -1, []
        self.ops: dict[tuple[int, str], Counter] = defaultdict(Counter)
        self.kernels: dict[tuple[int, str], int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        key = (self.scale, self.stack[-1] if self.stack else self.phase)
        self.ops[key][str(func.overloadpacket)] += 1
        self.kernels[key] += not func.is_view
        return func(*args, **(kwargs or {}))

    def next_scale(self) -> None:
        self.scale += 1

    def enter_phase(self, phase: str) -> None:
        self.phase = phase

    @contextlib.contextmanager
    def inside(self, label: str):
        self.stack.append(label)
        try:
            yield
        finally:
            self.stack.pop()


def wrap(counter: OpCounter, obj, name: str, label: str, before=None, after: str | None = None) -> None:
    """Count `obj.name(...)` under `label` (an instance attribute shadowing the method, or a module global); call
    `before()` first and enter phase `after` when it returns."""
    inner = getattr(obj, name)

    @functools.wraps(inner)
    def counted(*args, **kwargs):
        if before is not None:
            before()
        with counter.inside(label):
            out = inner(*args, **kwargs)
        if after is not None:
            counter.enter_phase(after)
        return out

    setattr(obj, name, counted)


def hook(counter: OpCounter, module: torch.nn.Module, label: str) -> None:
    """Count `module`'s forward under `label`."""
    def leave(*_) -> None:  # a forward hook's return value would replace the module's output
        counter.stack.pop()

    module.register_forward_pre_hook(lambda *_: counter.stack.append(label))
    module.register_forward_hook(leave)


@contextlib.contextmanager
def instrument(counter: OpCounter, model: ScaleAR, tokenizer):
    """Label varbench's scale loop (`ScaleSampler.scales` and the decode) for `counter` inside this context
    (`sampling.sample_ids` is patched until it exits; the model and tokenizer stay labelled)."""
    for i, block in enumerate(model.blocks):
        wrap(counter, block, "step", "block.other", before=counter.next_scale if i == 0 else None)
        hook(counter, block.ada_lin, "block.ada_lin")
        # VAR's mixer is its attention; another mixer (M-VAR's Mamba2) and an intra-scale branch have parts of their own
        mixer_part = "block.attention" if isinstance(block.mixer, BlockCausalAttention) else "block.mixer"
        wrap(counter, block.mixer, "step", mixer_part)
        if block.intra is not None:
            wrap(counter, block.intra, "step", "block.intra")
        hook(counter, block.ffn, "block.ffn")
    wrap(counter, model, "logits", "head", after="guide")
    wrap(counter, tokenizer, "fhat_to_img", "decode", before=lambda: counter.enter_phase("decode"))
    sample_ids = sampling.sample_ids
    wrap(counter, sampling, "sample_ids", "sample", after="next_input")
    try:
        yield counter
    finally:
        sampling.sample_ids = sample_ids


def part_records(counter: OpCounter, system: str, depth: int, num_scales: int, **fields) -> list[dict]:
    """One record per part: ops per generation (`value`), per unit (block-scale, scale or generation), per scale,
    non-view ops (`kernels`) and the ops by name."""
    records = []
    for part in BLOCK_PARTS + SCALE_PARTS + ONCE_PARTS:
        keys = [key for key in counter.ops if key[1] == part]
        by_name = sum((counter.ops[key] for key in keys), Counter())
        total, kernels = sum(by_name.values()), sum(counter.kernels[key] for key in keys)
        units = depth * num_scales if part in BLOCK_PARTS else num_scales if part in SCALE_PARTS else 1
        per_scale = [sum(counter.ops[key].values()) for key in sorted(keys)] if part not in ONCE_PARTS else None
        records.append(make_record("aten_ops", total, "ops per generation", system=system, part=part,
                                   per_unit=total / units, kernels=kernels, kernels_per_unit=kernels / units,
                                   per_scale=per_scale, ops_by_name=dict(by_name.most_common()), batch=1,
                                   depth=depth, **SETTINGS, **fields))
    return records


PRECISIONS = {"fp32": "cpu", "bf16-autocast-cpu": "cpu", "bf16-autocast-cuda": "cuda"}  # -> device


def autocast_context(precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(PRECISIONS[precision], dtype=torch.bfloat16)


def var_d16(width: int, ch: int, device) -> tuple[ScaleAR, MultiScaleVQVAE]:
    """A depth-16 VAR of width `width` and a VQ-VAE of base channels `ch` (VAR-d16: 1024, 160), random weights from
    seed 0, in eval mode on `device`."""
    torch.manual_seed(0)
    tokenizer = MultiScaleVQVAE(ch=ch).eval().to(device)
    model = ScaleAR(mixer=functools.partial(BlockCausalAttention, l2_norm=True), depth=16, width=width,
                    num_heads=width // 64, drop_path_rate=0.0).eval().to(device)
    return model, tokenizer


def count_varbench(width: int, ch: int, precision: str) -> list[dict]:
    """Count one batch-1 generation of a depth-16 VAR (width `width`, tokenizer base channels `ch`) with VAR's
    sampling settings (CFG 1.5, top-k 900, top-p 0.96), on the device `precision` names (CUDA autocast casts other
    ops than the CPU's: bf16-autocast-cuda is the GPU benchmark's setting)."""
    device = torch.device(PRECISIONS[precision])
    model, tokenizer = var_d16(width, ch, device)
    counter = OpCounter()
    sampler = sampling.ScaleSampler(model, tokenizer, **SETTINGS)
    with instrument(counter, model, tokenizer), torch.no_grad(), autocast_context(precision), counter:
        sampler(torch.tensor([207], device=device), generator=torch.Generator(device).manual_seed(0))
    return part_records(counter, "varbench", 16, model.layout.num_scales, precision=precision, width=width,
                        tokenizer_ch=ch, device=device)


def python_call_record(generate, system: str, precision: str, **fields) -> dict:
    """The Python function calls (cProfile: every call, recursive ones included) of one `generate()`, a batch-1
    generation without the tokenizer decode, after one untimed call (lazy imports, caches), under `precision`."""
    with torch.no_grad(), autocast_context(precision):
        generate()
        profiler = cProfile.Profile()
        profiler.runcall(generate)
    calls = sum(stat[1] for stat in pstats.Stats(profiler).stats.values())
    return make_record("python_calls", calls, "calls per generation", system=system, precision=precision, batch=1,
                       depth=16, decode="excluded", **SETTINGS, **fields)


def varbench_python_calls(width: int, ch: int, precision: str) -> dict:
    """`python_call_record` of varbench's scale loop (`ScaleSampler.scales`: the generation without its decode)."""
    device = torch.device(PRECISIONS[precision])
    model, tokenizer = var_d16(width, ch, device)
    sampler, label = sampling.ScaleSampler(model, tokenizer, **SETTINGS), torch.tensor([207], device=device)
    return python_call_record(lambda: sampler.scales(label, torch.Generator(device).manual_seed(0), None, False, None),
                              "varbench", precision, width=width, tokenizer_ch=ch, device=device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="JSON-lines file to write the records into")
    parser.add_argument("--width", type=int, default=128, help="model width (the counts do not depend on it)")
    parser.add_argument("--ch", type=int, default=32, help="tokenizer base channels (the counts do not depend on it)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = count_varbench(args.width, args.ch, args.precision)
    records.append(varbench_python_calls(args.width, args.ch, args.precision))
    replace_records(args.out, records, lambda r: r.get("system") == "varbench" and
                    r.get("precision") == args.precision)
    for r in records[:-1]:
        print(f"{r['part']:16s} {r['per_unit']:8.1f} ops/unit {r['kernels_per_unit']:8.1f} kernels/unit "
              f"{r['value']:6d} ops/generation")
    print(f"python calls per generation (decode excluded): {records[-1]['value']}")


if __name__ == "__main__":
    main()
