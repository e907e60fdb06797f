"""task=bench: one fixed protocol for every configuration, stated in every record.

bf16 autocast, warm-up then CUDA-event timing, median of repeats. Per (mixer, intra) configuration at the depth
of `model` and each resolution of `task.resolutions`:
- training step (forward + backward + AdamW) at `task.train_batch` (per resolution): images/s, tokens/s, MFU
  against a bf16 matmul peak measured in the same run (FLOPs: analytic, 3x forward, varbench.eval.flops); eager,
  or under torch.compile with `task.compile` (recorded as `compiled`);
- sampling (CFG on, VAR's eval preset) at each of `task.sample_batches` (per resolution): latency with and
  without the tokenizer decode, images/s, peak memory; with the carried state and, for `task.rerun_baseline`,
  the prefix re-run; eager, or with each scale's blocks and head replayed as a CUDA graph with `task.cuda_graphs`
  (recorded as `cuda_graphs`); the tokenizer decodes in `task.decode_mode` (eager NCHW, channels_last, compiled;
  recorded as `decode_mode`);
- inference state bytes (analytic, checked against real states by the tests).
A configuration `[mixer, raster]` is the raster next-token model (AiM's backbone) with that mixer, at the parameters
of VAR-dN (`raster_cell_model`): next-token vs next-scale cost side by side (256 vs 680 tokens at 256 px).
Models and tokenizers have random weights (speed and memory do not depend on their values): the config says so by
name (`task.random_weights: true`, the only value accepted) and every record carries `random_weights: true`.
Every record of a cell carries `config` (`cell_config`): the model recipe and the mixer and intra configs it built,
YAML defaults included, beside the overrides it names (`mixer_options`, `intra_options`).
A failing cell (out of memory, a kernel refusing a shape) is recorded with its error and the rest goes on; each
cell runs in a fresh process (`task.isolate_cells`), so even a CUDA error that poisons its context ends it alone,
and a cell that hangs (or compiles for longer than `task.cell_timeout_s`) prints its stacks and is killed; a bench
stopped by SIGTERM (a limit around it) records the cell it cut before it exits. After
the last cell the task raises (a non-zero exit) if any cell recorded an error, unless `task.allow_failed_cells`.
A config error (an unknown mixer, a resolution without a batch size) is raised by `check_config` before anything
runs, never recorded as a result.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from varbench.backbones.raster_ar import RasterAR, is_raster, raster_mixers
from varbench.backbones.scale_ar import ScaleAR
from varbench.build import build_model, matched_mlp_hidden
from varbench.config_schema import check_pairs, check_resolutions
from varbench.eval.flops import decoder_flops, model_flops
from varbench.eval.timing import matmul_peak_tflops, sample_cell, speed_mode
from varbench.layout import PATCH_NUMS
from varbench.registry import VAR, default_configs, list_options, load_option
from varbench.tokenizers import MultiScaleVQVAE
from varbench.tokenizers.fast_decode import resolve_decode_mode
from varbench.training.bench_stage import measure_train
from varbench.utils.auto import resolve_auto
from varbench.utils.log import get_logger
from varbench.utils.precision import hold_linear_weights_in
from varbench.utils.processes import Stopped, run_in_fresh_process, stop_on_sigterm
from varbench.utils.records import record

log = get_logger(__name__)
PROTOCOL = "bf16 autocast; CUDA events; median of repeats after warm-up; CFG doubled batch; analytic FLOPs"
CELL_RECORDED_ERRORS = 3  # exit code of an isolated cell that recorded bench_error records itself
RASTER = "raster"  # in task.configs, [mixer, raster]: the raster next-token model (AiM's backbone) with that mixer


class BenchCellsFailed(RuntimeError):
    """Some cells recorded errors (their `bench_error` records say which and why)."""


def build(cfg: DictConfig, mixer: str, intra: str, res: int) -> ScaleAR | RasterAR:
    """The model of `cfg.model` with this mixer / intra (each YAML merged with `task.mixer_options[mixer]` /
    `task.intra_options[intra]`), VAR's ImageNet shapes at `res` (1000 classes); with intra `raster` the raster model
    of `raster_cell_model`."""
    mixer_cfg = component_config(cfg, "mixer", mixer)
    if intra == RASTER:
        return raster_cell_model(cfg, mixer_cfg, res).cuda()
    return build_model(cfg, mixer_cfg, component_config(cfg, "intra", intra), PATCH_NUMS[res], num_classes=1000).cuda()


def component_config(cfg: DictConfig, group: str, name: str) -> DictConfig:
    """What a cell builds its mixer or intra variant (`group`) from: the option's YAML merged with its
    `task.mixer_options` / `task.intra_options` (`options_of`)."""
    return OmegaConf.merge(load_option(group, name), options_of(cfg, group, name))


def cell_config(cfg: DictConfig, mixer: str, intra: str) -> dict:
    """The config every record of a cell carries: `cfg.model` and the mixer and intra configs it builds (kernel keys
    included, so a changed YAML default stays visible in records made before and after it); a raster cell has no
    intra."""
    parts = {"model": cfg.model, "mixer": component_config(cfg, "mixer", mixer)}
    if intra != RASTER:
        parts["intra"] = component_config(cfg, "intra", intra)
    return {group: OmegaConf.to_container(node, resolve=True) for group, node in parts.items()}


def raster_cell_model(cfg: DictConfig, mixer_cfg: DictConfig, res: int) -> RasterAR:
    """The raster next-token counterpart of `cfg.model` (VAR-dN) at `res`: the same depth, width, heads, vocabulary
    and classes, (res / 16)^2 tokens (the single-scale twin of VAR's tokenizer: 256 at 256 px, against 680 scale
    tokens), and the parameters of the scale-wise model with attention and no intra (VAR-dN itself): its gated MLP
    makes up the difference (`matched_mlp_hidden`), so the cells differ in order and mixer, not in size."""
    from varbench.registry import factory
    with torch.device("meta"):  # counting only
        var = build_model(cfg, load_option("mixer", VAR[0]), load_option("intra", VAR[1]), PATCH_NUMS[res],
                          num_classes=1000)
    kwargs = dict(mixer=factory(mixer_cfg), depth=var.depth, width=var.width, num_heads=var.num_heads,
                  vocab_size=var.vocab_size, num_classes=1000, num_tokens=PATCH_NUMS[res][-1] ** 2)
    return RasterAR(**kwargs, mlp_hidden=matched_mlp_hidden(kwargs, var.num_params()))


def cell_tokenizer(intra: str, res: int) -> MultiScaleVQVAE:
    """VAR's VQ-VAE at `res` (random weights), single-scale for a raster cell (its decode costs the same)."""
    patch_nums = PATCH_NUMS[res][-1:] if intra == RASTER else PATCH_NUMS[res]
    return MultiScaleVQVAE(patch_nums=patch_nums).eval()


def sequence_length(intra: str, res: int) -> int:
    """Tokens per image of a cell: every scale's (680 at 256 px), or the raster tokens (256)."""
    return PATCH_NUMS[res][-1] ** 2 if intra == RASTER else sum(p * p for p in PATCH_NUMS[res])


def options_of(cfg: DictConfig, group: str, name: str) -> dict:
    """The overrides `task.mixer_options` / `task.intra_options` (`group` "mixer" / "intra") give this mixer or intra
    variant ({} for none); an unknown field is an error."""
    options = dict((cfg.task.get(f"{group}_options") or {}).get(name) or {})
    fields = load_option(group, name)
    if unknown := sorted(set(options) - set(fields)):
        raise ValueError(f"task.{group}_options.{name}: unknown fields {unknown}; "
                         f"valid: {sorted(k for k in fields if not k.startswith('_'))}")
    return options


def at_resolution(value, res: int):
    """A bench setting given once (`32`) or per resolution (`{256: 32, 1024: 2}`)."""
    if isinstance(value, (dict, DictConfig)):
        if res not in value:
            raise ValueError(f"no value for {res} px in {dict(value)}: give one per resolution of task.resolutions")
        return value[res]
    return value


def check_config(cfg: DictConfig) -> None:
    """Raise ValueError for a bench config that cannot run as asked: an unregistered mixer or intra variant in
    `task.configs` (or a raster entry whose mixer cannot step one token) or `task.rerun_baseline`, an unknown field
    in `task.mixer_options` / `task.intra_options`, a resolution without VAR's scales or without a batch size."""
    t = cfg.task
    mixers = list_options("mixer")
    check_pairs(t.configs, also=(RASTER,))
    for entry in t.configs or []:
        if entry[1] == RASTER and entry[0] not in raster_mixers():
            raise ValueError(f"task.configs: {list(entry)}: mixer {entry[0]!r} cannot run in raster order; mixers "
                             f"that can: {raster_mixers()}")
    for mixer in list(t.get("mixer_options") or {}) + list(t.rerun_baseline or []):
        if mixer not in mixers:
            raise ValueError(f"task.mixer_options / task.rerun_baseline: unknown mixer {mixer!r}; mixers: {mixers}")
        options_of(cfg, "mixer", mixer)
    for intra in t.get("intra_options") or {}:
        options_of(cfg, "intra", intra)  # (an unknown intra variant: load_option names the valid ones)
    resolve_decode_mode(t.get("decode_mode"), "task.decode_mode", "cuda")
    check_resolutions(t.resolutions)
    for res in t.resolutions:
        for batch in [at_resolution(t.train_batch, res)] + list(at_resolution(t.sample_batches, res)):
            if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
                raise ValueError(f"task.train_batch / task.sample_batches at {res} px: {batch!r} is not an integer "
                                 ">= 1 (train_batch may be null: no training stage)")


def main(cfg: DictConfig) -> dict:
    """Time every configuration under the protocol (module docstring) and append the records to
    results_dir/bench.jsonl; return where, the matmul peak and the failed cells."""
    t = cfg.task
    if t.get("random_weights") is not True:
        raise ValueError(f"task.random_weights={t.get('random_weights')!r}: task=bench times models with random "
                         f"weights (speed and memory do not depend on them) and has no trained-model mode; set "
                         f"task.random_weights=true (task=sample / task=evaluate use trained runs)")
    if not torch.cuda.is_available():
        raise SystemExit("task=bench measures GPU speed: run it on a GPU machine")
    out = Path(cfg.results_dir) / "bench.jsonl"
    peak = matmul_peak_tflops()
    common = dict(protocol=PROTOCOL, matmul_peak_tflops=peak, depth=cfg.model.depth, profile_steps=t.profile_steps,
                  random_weights=True)
    record(out, "matmul_peak", peak, "TFLOP/s", config=None, **common)
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # what a child process can read alone
    failed = []
    with stop_on_sigterm():
        for res in t.resolutions:
            for mixer, intra in t.configs or default_configs():
                if time_cell(plain, out, mixer, intra, res, common):
                    failed.append(f"{mixer}+{intra} {res}px")
    if failed and not t.allow_failed_cells:
        raise BenchCellsFailed(f"{len(failed)} bench cells recorded errors ({failed}): see the bench_error records in "
                               f"{out}; task.allow_failed_cells=true exits 0 after failed cells")
    return {"records": str(out), "matmul_peak_tflops": peak, "failed_cells": failed}


def time_cell(plain, out, mixer: str, intra: str, res: int, common: dict) -> int:
    """Measure one (configuration, resolution) cell, in a fresh process unless `task.isolate_cells` is false; the
    number of errors it recorded."""
    cell = dict(mixer=mixer, intra=intra, resolution=res, L=sequence_length(intra, res),
                config=cell_config(plain, mixer, intra), **common)
    if options := options_of(plain, "mixer", mixer):
        cell["mixer_options"] = options
    if intra != RASTER and (options := options_of(plain, "intra", intra)):
        cell["intra_options"] = options
    if not plain.task.isolate_cells:
        return run_cell(plain, out, mixer, intra, res, cell)
    # a fresh process per cell: a CUDA error that poisons the context (a device-side assert) ends this cell only,
    # and each cell starts from an empty allocator
    return isolated_cell(plain, out, mixer, intra, res, cell)


def isolated_cell(plain, out, mixer, intra, res, cell) -> int:
    """run_cell in a fresh process; the number of errors recorded (a process that died is recorded here)."""
    t = plain.task
    try:
        code = run_in_fresh_process(cell_process, plain, out, mixer, intra, res, cell, timeout=t.cell_timeout_s)
    except Stopped as stop:  # a limit around the bench (the device call's step) came before task.cell_timeout_s
        record(out, "bench_error", 0, "", error=f"the bench got {stop} while this cell ran (before "
               f"task.cell_timeout_s = {t.cell_timeout_s} s): the cell was killed and the bench stopped",
               stage="process", **cell)
        raise
    if code == 0:
        return 0
    if code != CELL_RECORDED_ERRORS:
        error = (f"still running after task.cell_timeout_s = {t.cell_timeout_s} s: killed (its stacks are in "
                 "the log)" if code is None else f"the cell's process exited with code {code}")
        record(out, "bench_error", 0, "", error=error, stage="process", **cell)
    return 1


def cell_process(*args) -> None:
    """The body of an isolated cell: its exit code says whether it recorded errors (CELL_RECORDED_ERRORS)."""
    if run_cell(*args):
        sys.exit(CELL_RECORDED_ERRORS)


def plan_stages(t, mixer: str, res: int, raster: bool = False) -> list[tuple[str, int, str | None]]:
    """A cell's measurements in order, as (stage, batch, sampler): the training step (unless `task.train_batch` is
    null at this resolution: a sampling-only run), then each sampling batch with the carried state, and with the
    prefix re-run too for the mixers and resolutions of `task.rerun_baseline` / `task.rerun_resolutions` (scale-wise
    cells only: a `raster` cell has no prefix re-run sampler)."""
    rerun = not raster and mixer in t.rerun_baseline and res in t.rerun_resolutions
    samplers = ["carry", "prefix_rerun"] if rerun else ["carry"]
    train_batch = at_resolution(t.train_batch, res)
    stages = [] if train_batch is None else [("train", train_batch, None)]
    return stages + [("sample", b, s) for b in at_resolution(t.sample_batches, res) for s in samplers]


def run_cell(cfg, out, mixer, intra, res, cell) -> int:
    """Build the model of one (configuration, resolution) and measure each stage; return the number of errors it
    recorded (out of memory, a kernel refusing a shape: results, the other stages go on)."""
    t = cfg.task
    vae = cell_tokenizer(intra, res).cuda()
    cell = {**cell, "decode_flops_per_image": decoder_flops(vae)}
    try:
        model = build(cfg, mixer, intra, res)
    except (RuntimeError, ValueError) as err:
        record(out, "bench_error", 0, "", error=str(err)[:300], stage="build", **cell)
        return 1
    flops = model_flops(model)
    cell |= dict(backend=model.mixer_backend, params=model.num_params(), fwd_flops_per_image=flops["total"],
                 flops_by_component=flops)
    record(out, "state_bytes_per_image", model.state_bytes(1), "bytes",
           dtype="bf16 (recurrent states fp32)", **cell)
    errors, decode_mode = 0, resolve_decode_mode(t.decode_mode, "task.decode_mode", "cuda")
    for stage, batch, sampler in plan_stages(t, mixer, res, raster=intra == RASTER):
        try:
            measure(out, model, vae, stage, batch, sampler, t.repeats, cell, compiled=bool(t.compile),
                    cuda_graphs=resolve_auto(t.cuda_graphs, "task.cuda_graphs", "cuda"),  # bench runs on CUDA only
                    param_dtype=t.param_dtype, decode_mode=decode_mode, decode_batch=t.decode_batch,
                    fused_elementwise=fused_for(t, model), compile_mode=t.compile_mode,
                    compile_scope=t.compile_scope, fp8_recipe=t.fp8_recipe if t.fp8 else None,
                    block_weights=t.block_weights)
        except (RuntimeError, ValueError, AssertionError) as err:  # OOM or a kernel refusing a shape: a result
            record(out, "bench_error", 0, "", error=str(err)[:300], stage=stage, batch=batch, sampler=sampler, **cell)
            errors += 1
            torch.cuda.empty_cache()
    del model, vae
    gc.collect()
    torch.cuda.empty_cache()
    return errors


def fused_for(t: DictConfig, model) -> bool:
    """task.fused_elementwise for this model: a RasterAR has no fused chains, so its records say false (logged)."""
    if t.fused_elementwise and is_raster(model):
        log.warning("task.fused_elementwise: a raster model has no fused chains; it samples unfused")
    return bool(t.fused_elementwise) and not is_raster(model)


def measure(out, model, vae, stage, batch, sampler, repeats, cell, compiled=False, cuda_graphs=False,
            param_dtype="fp32", decode_mode="eager", decode_batch=None, fused_elementwise=False,
            compile_mode="default", compile_scope="model", fp8_recipe=None, block_weights="fp32") -> None:
    """Time one stage of a cell ("train" or "sample") and append its record to `out`. `fp8_recipe`: the training
    stage's FP8 matmuls scaled so (varbench/training/fp8.py), or None for VAR's bf16 ones."""
    if stage == "train":
        measure_train(out, model, batch, repeats, cell, compiled, param_dtype, compile_mode, compile_scope,
                      fp8_recipe)
    else:
        measure_sample(out, model, vae, batch, sampler, repeats, cell, cuda_graphs, decode_mode, decode_batch,
                       fused_elementwise, block_weights)


def measure_sample(out, model, vae, batch, sampler, repeats, cell, cuda_graphs, decode_mode, decode_batch,
                   fused_elementwise=False, block_weights="fp32") -> None:
    if block_weights not in ("fp32", "bf16"):
        raise ValueError(f"task.block_weights must be 'fp32' or 'bf16', got {block_weights!r}")
    # bf16: the blocks' Linear weights held in the dtype the bench's autocast casts them to, as a sampling-only process
    # may hold them (the same values at every matmul; no fp32 copy, no cached cast). The sampling stages come after
    # the training stage, which never sees them.
    if block_weights == "bf16":
        hold_linear_weights_in(model.blocks, torch.bfloat16)
    r = sample_cell(model, vae, batch, sampler, repeats, cuda_graphs, decode_mode, decode_batch, fused_elementwise)
    total, decode = r["total"]["median_ms"], r["decode"]["median_ms"]
    record(out, "sample_latency_ms", total, "ms", batch=batch, sampler=sampler, **speed_mode(False, cuda_graphs),
           decode_mode=decode_mode, decode_batch=decode_batch, fused_elementwise=fused_elementwise,
           block_weights=block_weights, decode_ms=decode, latency_wo_decode_ms=total - decode,
           images_per_s=batch / (total * 1e-3), images_per_s_wo_decode=batch / ((total - decode) * 1e-3),
           peak_mem_bytes=r["total"]["peak_mem_bytes"], peak_reserved_bytes=r["total"]["peak_reserved_bytes"],
           timing=r, **cell)
    log.info(f"{cell['mixer']}+{cell['intra']} {cell['resolution']}px sample b{batch} {sampler}"
          f"{' graphs' if cuda_graphs else ''}: {total:.1f} ms (decode {decode:.1f} ms, {decode_mode})")
