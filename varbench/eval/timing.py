"""The fixed speed / memory protocol: warm-up, CUDA-event timing, median of repeats, peak memory, a matmul peak
measured in the same run (the denominator of MFU), the fields that say how and where a speed was measured, the
timed training step (forward + backward + AdamW on synthetic inputs) that task=bench and task=scaling share, and the
timed sampling stage of task=bench."""

from __future__ import annotations

import os
import statistics
import time
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from varbench.backbones.raster_ar import RasterAR
    from varbench.backbones.scale_ar import ScaleAR


def machine(device=None) -> str:
    """Where a speed was measured, as the analysis tables show it: the accelerators this process sees and the CPU
    cores it may use (data loading and Python overhead depend on them), e.g. "1x NVIDIA H200, 16 CPUs".
    `benchmarks/import_records.py` replaces it with the lent machine's kind (e.g. nvidia-h200-x4) when it imports."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if device.type != "cuda":
        return f"no accelerator, {cpus} CPUs"
    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(device)}, {cpus} CPUs"


def speed_mode(compiled: bool, cuda_graphs: bool, device=None) -> dict:
    """The fields every speed record carries (issue 18 item 5): `compiled` (torch.compile), `cuda_graphs` (replayed
    graphs), `autotune` (the Triton autotuning mode, varbench/utils/autotune.py) and `machine`."""
    from varbench.utils.autotune import autotune_mode
    return {"compiled": bool(compiled), "cuda_graphs": bool(cuda_graphs), "autotune": autotune_mode(),
            "machine": machine(device)}


def first_call_s(fn: Callable[[], object]) -> float:
    """Wall seconds of `fn`'s first call, until the device is done: for a compiled step, what compiling it costs
    (dynamo, Inductor, Triton autotuning) plus one step."""
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# torch.compile's own phases, by dynamo's `compile_times` names (most nest; these two do not): the trace with the
# forward graph's compile, and the backward graph's compile, which runs at the first backward
COMPILE_PHASES = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")


def compile_seconds() -> dict[str, float]:
    """Seconds this process has spent so far in each of torch.compile's `COMPILE_PHASES` it has entered."""
    from torch._dynamo.utils import compile_times
    names, values = compile_times(repr="csv", aggregate=True)
    spent = dict(zip(names, values))
    return {name: float(spent[name]) for name in COMPILE_PHASES if name in spent}


def time_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> dict:
    """Median / min / max wall time of `fn` in milliseconds (CUDA events on a GPU, perf_counter on a CPU), and the
    peak GPU memory allocated and reserved during the timed calls. Replayed CUDA graphs write into their private
    pool without allocating, so for them only the reserved peak counts their memory."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats,
            "peak_mem_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None}


def matmul_peak_tflops(dtype=torch.bfloat16, n: int = 8192, device="cuda") -> float:
    """Dense matmul throughput measured on `device` now (TFLOP/s): the MFU denominator of the same run."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_ms(lambda: a @ b, warmup=5, repeats=20)["median_ms"]
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def top_ops(fn: Callable[[], object], steps: int = 3, limit: int | None = 15) -> list[dict]:
    """The operators holding the most time over `steps` calls of `fn` (torch.profiler, self time: on the GPU its
    kernels' time, on a CPU the CPU time), most first: name, calls per step, ms per step, share of the total. With a
    `limit`, a last row holds all the other operators together (its name says how many); with None every operator
    has its row. Either way the rows sum to the step's busy time: against the step's wall time, what the GPU spent
    idle. Where an MFU falls short, this says which kernels hold the time; call it after a warm-up."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    # operators only: an operator's self device time is the time of the kernels it launched, so the kernels' own
    # events (also listed on a GPU) would count every kernel twice
    ops = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU]
    events = sorted(ops, key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    def row(name: str, group: list) -> dict:
        busy = sum(getattr(e, key) for e in group)
        return {"op": name, "calls_per_step": sum(e.count for e in group) / steps, "ms_per_step": busy / steps / 1e3,
                "share": busy / total}
    listed = events if limit is None else events[:limit]
    top, rest = [row(e.key, [e]) for e in listed], events[len(listed):]
    return top + ([row(f"(the other {len(rest)} operators)", rest)] if rest else [])


def train_step_cell(model: ScaleAR | RasterAR, batch: int, repeats: int, net: torch.nn.Module | None = None,
                    profile_steps: int = 0, graph_steps: bool = False) -> dict:
    """Time forward + backward + AdamW at `batch` on synthetic inputs; `net` is the model's parallel wrapper, if any.
    The first step's wall time is `first_step_s` (a compiled `net` compiles in it; `compile_phases_s`: how much of
    it torch.compile's own phases took, `COMPILE_PHASES`); two more warm up, then `repeats` are timed. With
    `profile_steps`, also every operator's time over that many more steps (`top_ops`, all of them: `ops_listed`
    says so), so that a record says what holds each millisecond of the step.
    `graph_steps`: `net` replays CUDA graphs (torch.compile's reduce-overhead), so each step tells it that a new
    step begins (the graphs' outputs of the last step are free to overwrite).
    The training stage of task=bench and the per-GPU step of task=scaling: one protocol for both."""
    from varbench.backbones.raster_ar import is_raster  # here: importing timing stays free of model code
    net = model if net is None else net  # a compiled module has no truth value (it forwards len())
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    model.check_labels(labels)  # once: the timed steps skip it, as training does (its device reads sync the host)
    gt = torch.randint(0, model.vocab_size, (batch, model.layout.L), device=device)
    # a raster model reads its ids (teacher forcing behind the class token); a scale-wise one the code maps
    x = gt if is_raster(model) else torch.randn(batch, model.layout.L - 1, model.latent_dim, device=device)

    def step():
        if graph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(net(labels, x, inputs_checked=True).flatten(0, 1), gt.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    before = compile_seconds()
    first_step_s = first_call_s(step)  # a compiled step compiles here: the record's compile time (plus one step)
    # of it, torch.compile's own phases; the rest: the kernel libraries' Triton autotuning, Inductor's kernel
    # benchmarks, the step itself
    phases = {name: seconds - before.get(name, 0.0) for name, seconds in compile_seconds().items()
              if seconds > before.get(name, 0.0)}
    timing = ({"first_step_s": first_step_s} | ({"compile_phases_s": phases} if phases else {})
              | time_ms(step, warmup=2, repeats=repeats))
    return timing | ({"top_ops": top_ops(step, profile_steps, limit=None), "ops_listed": "all"}
                     if profile_steps else {})


def sample_cell(model: ScaleAR | RasterAR, vae, batch: int, sampler: str, repeats: int,
                cuda_graphs: bool = False, decode_mode: str = "eager", decode_batch: int | None = None,
                fused_elementwise: bool = False) -> dict:
    """Sampling latency (with the decode) and the decode alone; with `cuda_graphs`, the warm-up call captures the
    graphs (not timed) and they are dropped afterwards, so that the next cell's memory is its own. `sampler` names
    the sampler (`varbench.eval.samplers`: "carry", or "prefix_rerun", the released M-VAR baseline); the tokenizer
    decodes in `decode_mode` (`varbench.tokenizers.fast_decode`; "compiled" compiles in the untimed warm-up), at
    most `decode_batch` images per call (None: the whole batch); with `fused_elementwise` a ScaleAR's blocks run
    their element-wise chains, and the tokenizer its bicubic upsampling, as fused kernels
    (`ScaleAR.set_fused_elementwise`, `MultiScaleVQVAE.set_fused_elementwise`; they compile in the warm-up).
    The sampling stage of task=bench, beside its training stage (`train_step_cell`)."""
    from varbench.backbones.raster_ar import is_raster  # here: importing timing stays free of model code
    from varbench.eval.samplers import make_sampler
    device = next(model.parameters()).device
    vae.set_decode_mode(decode_mode)
    vae.set_decode_batch(decode_batch)
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    model.eval()
    if is_raster(model):  # one token at a time: its generate keeps its own CUDA graphs
        def draw(labels_B):
            return model.generate(labels_B, cfg=1.5, top_k=900, top_p=0.96, tokenizer=vae, cuda_graphs=cuda_graphs)
        release = model.drop_cuda_graphs
    else:
        draw = make_sampler(sampler, model, vae, cfg=1.5, top_k=900, top_p=0.96, cuda_graphs=cuda_graphs)
        release = draw.drop_cuda_graphs

    def sample():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return draw(labels)

    fusing = (model, vae) if fused_elementwise else ()
    for module in fusing:
        module.set_fused_elementwise(True)
    try:
        total = time_ms(sample, warmup=1, repeats=repeats)
    finally:  # the next stage (and an error's record) sees the models unfused and the graphs' memory freed
        for module in fusing:
            module.set_fused_elementwise(False)
        release()
    side = vae.patch_nums[-1]
    f_hat = torch.randn(batch, vae.Cvae, side, side, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        decode = time_ms(lambda: vae.fhat_to_img(f_hat), warmup=1, repeats=repeats)
    return {"total": total, "decode": decode}
