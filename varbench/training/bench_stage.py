"""task=bench's training stage: the training step (`varbench.eval.timing.train_step_cell`) under the bench's
numerics and compile options (weights in bf16, FP8 matmuls, torch.compile's scope and Inductor mode), timed and
recorded as `train_images_per_s` with MFU. It compiles and converts the model as training does (`compile_for_training`,
FP8), so it lives in the training layer; task=bench (varbench/tasks/bench.py) calls it for each cell."""

from __future__ import annotations

import copy

import torch

from varbench.eval.flops import train_flops
from varbench.eval.timing import speed_mode, train_step_cell
from varbench.training.fp8 import check_fp8_batch, to_fp8_training
from varbench.training.loop import INDUCTOR_OPTIONS, compile_for_training
from varbench.utils.compile_cache import compile_cache_state
from varbench.utils.log import get_logger
from varbench.utils.records import record

log = get_logger(__name__)

# the training stage's weights: fp32 is VAR's recipe (fp32 master weights under bf16 autocast); bf16 is a deviation
PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure_train(out, model, batch, repeats, cell, compiled, param_dtype, compile_mode="default",
                  compile_scope="model", fp8_recipe=None) -> None:
    """Time `model`'s training step at `batch` as the options say and append its record to `out` (`cell`: the
    fields every record of the cell carries, and the matmul peak and FLOPs its MFU needs)."""
    if param_dtype not in PARAM_DTYPES:
        raise ValueError(f"task.param_dtype must be one of {list(PARAM_DTYPES)}, got {param_dtype!r}")
    # bf16 weights and FP8 matmuls train a copy, so that the sampling stages time the model as it was built (blocks
    # compiled in place are not copied: sampling calls their `step`, which the compile leaves eager)
    fp8 = fp8_recipe is not None
    model = model if param_dtype == "fp32" and not fp8 else copy.deepcopy(model).to(PARAM_DTYPES[param_dtype])
    if fp8:
        check_fp8_batch(batch, model.layout.L, "task.train_batch", next(model.parameters()).device)
    fp8_linears = len(to_fp8_training(model, fp8_recipe)) if fp8 else 0
    # Inductor's mode: "max-autotune-no-cudagraphs" benchmarks kernel configs (flex attention's, the GEMMs') while
    # compiling, so the first step takes longer (its record's first_step_s); "reduce-overhead" replays the compiled
    # forward and backward as CUDA graphs, where Inductor does not skip them (counted: cudagraph_skips)
    net = compile_for_training(model, len(model.blocks), compile_scope, compile_mode) if compiled else None
    cache = compile_cache_state() if compiled else None  # before the first step compiles: warm or cold
    graphs = compiled and compile_mode == "reduce-overhead"
    skips_before = cudagraph_skips()
    # no operator profile of replayed graphs: their kernels run under no operator, so it would list almost nothing
    r = train_step_cell(model, batch, repeats, net, profile_steps=0 if graphs else cell["profile_steps"],
                        graph_steps=graphs)
    skips = cudagraph_skips() - skips_before if graphs else None
    ips = batch / (r["median_ms"] * 1e-3)
    mfu = train_flops(cell["fwd_flops_per_image"]) * ips / (cell["matmul_peak_tflops"] * 1e12)
    record(out, "train_images_per_s", ips, "img/s", batch=batch, tokens_per_s=ips * cell["L"], mfu=mfu,
           param_dtype=param_dtype, compile_mode=compile_mode if compiled else None,
           compile_scope=compile_scope if compiled else None, inductor_options=INDUCTOR_OPTIONS if compiled else None,
           compile_cache=cache, fp8=fp8, fp8_recipe=fp8_recipe,
           fp8_linears=fp8_linears, cudagraph_skips=skips, timing=r,
           **speed_mode(compiled, cuda_graphs=graphs and skips == 0), **cell)
    log.info(f"{cell['mixer']}+{cell['intra']} {cell['resolution']}px train b{batch}"
          f"{' compiled' if compiled else ''}{' bf16 weights' if param_dtype == 'bf16' else ''}: {ips:.1f} img/s "
          f"MFU {mfu:.1%}, first step {r['first_step_s']:.1f} s; "
          f"top ops: {[(o['op'], round(o['share'], 3)) for o in r.get('top_ops', [])[:3]]}")


def cudagraph_skips() -> int:
    """How many compiled graphs Inductor has so far run without the CUDA graphs their mode asked for (each skip is
    logged with its reason; on a CPU every graph is such a skip)."""
    from torch._dynamo.utils import counters
    return counters["inductor"]["cudagraph_skips"]
