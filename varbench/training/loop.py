"""The AR training loop with VAR's recipe: AdamW (0.9, 0.95) with no-decay groups, lr = tblr * bs / 256,
warm-up then `lin0`, cosine weight decay, grad clip, fp16 with a loss scaler or bf16, gradient accumulation,
label smoothing, DDP / FSDP2, exact resume (under the settings the run started with), SIGTERM / SIGUSR1 (Slurm
pre-emption) handling, a NaN guard (a non-finite loss, or gradient norm without a loss scaler, stops the run).

Shape legend: B batch, L tokens of all scales, V vocabulary.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from varbench.backbones.raster_ar import is_raster
from varbench.data.batches import GlobalBatches, batch_loader
from varbench.data.loading import loader_options
from varbench.data.teacher_forcing import teacher_forcing_inputs
from varbench.eval.likelihood import teacher_forced_nll
from varbench.training import checkpoints, recipe
from varbench.training.fp8 import check_fp8_batch, to_fp8_training
from varbench.training.previews import log_sample_grid
from varbench.utils.auto import resolve_auto
from varbench.utils.dist import DistInfo
from varbench.utils.log import get_logger, progress_bar
from varbench.utils.loggers import open_logger
from varbench.utils.precision import (  # noqa: F401 (autocast: tasks/sample, evaluate read it here)
    autocast,
    autocast_dtype,
    set_deterministic,
    set_tf32,
)
from varbench.utils.records import record

log = get_logger(__name__)


class StopRequested:
    """Context manager: inside it SIGTERM / SIGUSR1 set `signal` (the loop saves a checkpoint at the end of the
    current step and returns); on leaving, however training ended (a NaN stop included), the previous handlers are
    back, so that the next cell of a grid, or the caller, receives the signals again."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name


@dataclass
class Plan:
    """Iteration counts derived from the config and the data set size."""

    max_iters: int
    warmup_iters: float
    iters_per_epoch: int
    peak_lr: float


def make_plan(tcfg: DictConfig, num_items: int) -> Plan:
    """The iterations, warm-up and peak learning rate of training `num_items` items as `tcfg` (train.*) says: its
    steps, else its epochs; its warm-up iterations, else warmup_epochs (default epochs / 50)."""
    per_epoch = math.ceil(num_items / tcfg.batch_size)
    max_iters = tcfg.steps or math.ceil(tcfg.epochs * per_epoch)
    warmup_epochs = tcfg.warmup_epochs if tcfg.warmup_epochs is not None else tcfg.epochs / 50
    warmup = tcfg.warmup_iters if tcfg.get("warmup_iters") is not None else warmup_epochs * per_epoch
    return Plan(max_iters, warmup, per_epoch, recipe.peak_lr(tcfg.base_lr, tcfg.batch_size, tcfg.grad_accum))


def wrap_parallel(model: torch.nn.Module, parallel: str, info: DistInfo, device: torch.device):
    """DDP (or FSDP2 for the billion-parameter depths) when several processes run; the model itself otherwise."""
    if info.world_size == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)
    if parallel != "ddp":
        raise ValueError(f"train.parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    ids = [device.index or 0] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


COMPILE_SCOPES = ("model", "blocks")


# Inductor options of every compiled training step, beside its mode. Inductor's comprehensive padding stretches a
# buffer's rows to a multiple of 128 bytes; M-VAR's in_proj output (4256 channels, 8512 bytes) then has rows 4288
# apart, and each kernel that reads a slice of it at the strides traced eagerly (the conv and SSD custom ops,
# mamba_ssm's gated-norm Triton kernels) is handed a copy first: five copies per block, 3.5 ms of M-VAR-d16's 146 ms
# step under CUDA graphs on one H100 (session 36: 218.8 against 224.1 img/s). VAR's wide rows (multiples of 64
# channels: qkv, AdaLN, FFN, head) are multiples of 128 bytes already, so padding never changed them.
INDUCTOR_OPTIONS = {"comprehensive_padding": False}


def compile_options(mode: str = "default", backend: str = "inductor") -> dict:
    """torch.compile's arguments for the training step: Inductor's `mode` spelled out as its options, with
    INDUCTOR_OPTIONS (torch.compile takes a mode or options, not both); another backend takes neither."""
    if backend != "inductor":
        return {"backend": backend}
    from torch._inductor import list_mode_options
    return {"options": list_mode_options(mode) | INDUCTOR_OPTIONS}


def compile_for_training(net: torch.nn.Module, depth: int, scope: str = "model", mode: str = "default",
                         backend: str = "inductor") -> torch.nn.Module:
    """The training step's network under torch.compile (`compile_options(mode, backend)`); returns what the step
    calls.

    `scope` "model" returns torch.compile(net): one graph of the whole forward, unrolled over the blocks (the fastest
    step measured, session 25). "blocks" compiles each block in place (`nn.Module.compile`: parameter names, and so
    the checkpoints, unchanged) and returns `net`, whose embedding, head and loss run eagerly. The blocks share one
    code object and their parameters are graph inputs, so dynamo traces one block and every other block of the same
    structure reuses its graph; block 0, with no stochastic depth, has its own. The compile then costs two blocks, not
    `depth` of them. On one H100 (session 26): VAR-d16's first step 26.1 s against 69.9 s and its step as fast;
    M-VAR-d16's step 2.6% slower, so "model" stays the default. The blocks stay compiled: a later forward of the
    model (the NLL evaluation of a training run) runs them compiled too.

    Dynamo's recompile limit is raised to cover every block: where a kernel the compiler cannot trace breaks the
    graph inside a block, the code after it may recompile per block, and past the default limit (8) the rest of
    the blocks would run eagerly, silently."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"the compile scope must be one of {list(COMPILE_SCOPES)}, got {scope!r}")
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * depth)
    from varbench.ops.attention.kernel import prepare_model_masks
    prepare_model_masks(net)  # flex BlockMasks built here, not traced into the graph at every step
    options = compile_options(mode, backend)
    if scope == "model":
        return torch.compile(net, **options)
    for block in getattr(net, "module", net).blocks:  # (DDP holds the model as .module)
        block.compile(**options)
    return net


def micro_batch_loss(net, model, tokenizer, x: torch.Tensor, labels: torch.Tensor, device: torch.device,
                     from_ids: bool, amp: torch.dtype | None, label_smoothing: float) -> torch.Tensor:
    """The loss of one micro-batch (x, labels) as the loader gives it, on the host. The labels, and a raster model's
    cached ids, are checked there, before the move: the forward would read them back from the device, two host syncs
    each, every step (ids the tokenizer encodes are valid by construction)."""
    model.check_labels(labels)
    if from_ids and is_raster(model):
        model.check_ids(x, len(labels))
    gt_BL, inputs = teacher_forcing_inputs(model, tokenizer, x.to(device), from_ids)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits_BLV = net(labels.to(device), inputs, inputs_checked=True)
        return F.cross_entropy(logits_BLV.flatten(0, 1), gt_BL.flatten(), label_smoothing=label_smoothing)


def train_ar(model, tokenizer, dataset, cfg: DictConfig, device: torch.device, info: DistInfo, from_ids: bool,
             nll_sets: dict | None = None, spec: dict | None = None) -> dict:
    """Train `model` on `dataset` (images, or cached ids when `from_ids`) for the planned iterations.
    Writes checkpoints under `cfg.run_dir/checkpoints` and records under `cfg.results_dir`; resumes when a
    checkpoint exists; every `train.nll_every` steps records the NLL of each image data set of `nll_sets`
    ({split: dataset}); writes `spec` (varbench.runs.describe_run) into every checkpoint. Returns a summary dict
    (final loss, steps, images/s of this call's steps, the step it resumed from, whether it was interrupted)."""
    tcfg, ckpt_dir = cfg.train, Path(cfg.run_dir) / "checkpoints"
    plan = make_plan(tcfg, len(dataset))
    batches = GlobalBatches(len(dataset), tcfg.batch_size, cfg.seed, info.rank, info.world_size)
    if tcfg.precision == "fp8":  # before the wrappers and the checkpoint: Float8Linear keeps the weights' names
        check_fp8_batch(tcfg.batch_size // info.world_size, model.layout.L, "train.batch_size (per process)", device)
        log.info("FP8 matmuls in %d linear layers of the blocks", len(to_fp8_training(model)))
        if device.type == "cpu":
            log.warning("train.precision=fp8 on a CPU: torch emulates the FP8 matmuls, many times slower than fp32 "
                        "(a check of the numerics, not a way to train)")
    set_tf32(tcfg.tf32)  # (every run sets both ways: a grid job may train several cells in one process)
    set_deterministic(tcfg.deterministic)
    net = wrap_parallel(model, tcfg.parallel, info, device)
    compiled = resolve_auto(tcfg.compile, "train.compile", device)
    compile_scope, compile_mode = (tcfg.compile_scope, tcfg.compile_mode) if compiled else (None, None)
    if compiled:
        net = compile_for_training(net, len(model.blocks), compile_scope, compile_mode)
    graphs = compile_mode == "reduce-overhead"  # each micro-batch a new step of the replayed graphs
    copy_out = graphs and tcfg.grad_accum > 1  # (own_gradients)
    optimizer = torch.optim.AdamW(recipe.param_groups(model), lr=plan.peak_lr, betas=tuple(tcfg.betas),
                                  weight_decay=0.0, fused=device.type == "cuda")
    amp = autocast_dtype(tcfg.precision)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 11, growth_interval=1000, enabled=amp == torch.float16)
    step = resumed_from = checkpoints.resume_training(ckpt_dir, model, optimizer, scaler, cfg, info)
    loader = iter(batch_loader(dataset, batches, step * tcfg.grad_accum, plan.max_iters * tcfg.grad_accum,
                               loader_options(cfg.data, device)))
    results = Path(cfg.results_dir) / "train.jsonl"
    logger = open_logger(cfg, "train", info.is_main, purge_step=step)  # logs the config as hyper-parameters
    progress = progress_bar(desc="train", total=plan.max_iters, initial=step, enabled=info.is_main)
    if info.is_main:
        log.info("training %s parameters from step %d to %d (peak lr %.2e)", f"{model.num_params():,}", step,
                 plan.max_iters, plan.peak_lr)
    model.train()
    loss_value, t0, seen = float("nan"), time.perf_counter(), 0
    with StopRequested() as stop, logger:
        while step < plan.max_iters:
            lr = plan.peak_lr * recipe.lr_factor(step, plan.warmup_iters, plan.max_iters, tcfg.schedule,
                                                 tcfg.warmup_start, tcfg.end_factor)
            wd = recipe.weight_decay_at(step, plan.max_iters, tcfg.weight_decay, tcfg.weight_decay_end)
            recipe.apply_schedule(optimizer, lr, wd)
            loss_value = 0.0
            for micro in range(tcfg.grad_accum):
                x, labels = next(loader)
                if graphs:  # the last micro-batch's graph outputs are consumed: free to overwrite
                    torch.compiler.cudagraph_mark_step_begin()
                loss = micro_batch_loss(net, model, tokenizer, x, labels, device, from_ids, amp, tcfg.label_smoothing)
                scaler.scale(loss / tcfg.grad_accum).backward()
                if copy_out and micro < tcfg.grad_accum - 1:  # before the next replay overwrites them
                    own_gradients(model)
                loss_value += loss.item() / tcfg.grad_accum
                seen += x.shape[0] * info.world_size
            if info.world_size > 1:  # log the global-batch loss, the same number one process would see
                loss_value = _mean_over_ranks(loss_value, device)
            if not math.isfinite(loss_value):
                raise _diverged("training loss", loss_value, step, ckpt_dir)
            grad_norm = _update(model, optimizer, scaler, tcfg.grad_clip, step, ckpt_dir)
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            logger.log_scalars(step, {"train/loss": loss_value, "train/lr": lr, "train/wd": wd,
                                      "train/grad_norm": float(grad_norm)})
            if info.is_main and (step % tcfg.log_every == 0 or step == plan.max_iters):
                rate = seen / (time.perf_counter() - t0)
                log.info("step %d/%d loss %.4f lr %.2e grad_norm %.3f %.1f img/s", step, plan.max_iters, loss_value,
                         lr, float(grad_norm), rate)
                record(results, "train_loss", loss_value, "nats/token", config=cfg, device=device, step=step, lr=lr,
                       grad_norm=float(grad_norm), images_per_s=rate, compiled=compiled, compile_scope=compile_scope,
                       compile_mode=compile_mode, inductor_options=INDUCTOR_OPTIONS if compiled else None,
                       run_dir=str(cfg.run_dir),
                       **weights_identity(spec))
            if logger.sample_every and step % logger.sample_every == 0:
                with autocast(device, tcfg.precision):
                    t0 += log_sample_grid(logger, model, tokenizer, step, device)  # not training time: off the rate
                model.train()
            if tcfg.nll_every and (step % tcfg.nll_every == 0 or step == plan.max_iters):
                _record_nll(model, tokenizer, nll_sets or {}, cfg, device, info, step, weights_identity(spec))
                model.train()
            if step % tcfg.ckpt_every == 0 or step == plan.max_iters or stop.signal:
                checkpoints.save_training(ckpt_dir, step, model, optimizer, scaler, cfg, info, spec)
            if stop.signal:
                break
    progress.close()
    # (images/s: of this call's steps, resumed_from + 1 on)
    return {"steps": step, "max_iters": plan.max_iters, "final_loss": loss_value, "interrupted": stop.signal,
            "images_per_s": seen / max(time.perf_counter() - t0, 1e-9), "compiled": compiled,
            "compile_scope": compile_scope, "compile_mode": compile_mode, "resumed_from": resumed_from}


def own_gradients(model: torch.nn.Module) -> None:
    """Replace every gradient of `model` by a copy of it.

    Under replayed CUDA graphs (train.compile_mode=reduce-overhead) a backward's gradients live in the graphs'
    memory pool, which the next replay overwrites. Into a parameter without a gradient autograd puts that tensor
    itself, uncopied; with two micro-batches per update, the second one's replay overwrote the first one's gradient
    before the accumulation read it (cudagraph trees stopped the run: session 31, one H100, grad_accum=2). Copied
    after every micro-batch but an update's last, the gradients are the training loop's own, and the next
    micro-batch adds into them in place (a copy of all gradients per micro-batch: 1.2 GB read and written at d16).
    A parameter no micro-batch reaches keeps no gradient, as without graphs."""
    for param in model.parameters():
        if param.grad is not None:
            param.grad = param.grad.clone()


def _update(model, optimizer, scaler, grad_clip: float, step: int, ckpt_dir: Path) -> float:
    """The optimizer step on the accumulated gradients (clipped to `grad_clip`, none at 0; VAR's fp16 loss-scale
    cap); returns the gradient norm. A non-finite norm stops training before it reaches the weights."""
    scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf))
    if not scaler.is_enabled() and not math.isfinite(grad_norm):  # fp16's scaler skips such a step itself
        raise _diverged("gradient norm", grad_norm, step, ckpt_dir)
    scaler.step(optimizer)
    scaler.update()
    if scaler.is_enabled() and scaler.get_scale() > 32768.0:
        scaler.update(32768.0)  # VAR caps the fp16 loss scale
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _diverged(what: str, value: float, step: int, ckpt_dir: Path) -> FloatingPointError:
    """The NaN guard's error. The checkpoint of `step` holds the weights that gave `value`: the last good one is the
    newest written before it."""
    good = checkpoints.last_good(ckpt_dir, step)
    where = (f"the last good checkpoint is {good} (the newest written before step {step})" if good is not None
             else f"no checkpoint written before step {step} is kept")
    return FloatingPointError(f"non-finite {what} {value} at step {step}; {where}. Lower the lr, or use bf16, "
                              f"in a new run_dir")


def weights_identity(spec: dict | None) -> dict:
    """The fields naming the tokenizer weights a training record's numbers came from, as its run spec names them (the
    file at `tokenizer.checkpoint` may be replaced later; a run's own random tokenizer has no such path)."""
    return {"tokenizer_sha256": spec["tokenizer"]["sha256"]} if spec else {}


def _record_nll(model, tokenizer, nll_sets: dict, cfg: DictConfig, device, info: DistInfo, step: int,
                identity: dict) -> None:
    """The teacher-forced NLL of each split now, in eval mode (records `nll_during_training`). Every rank runs it: a
    sharded model's forward needs them all; the global RNG is not touched, so a resumed run stays exact."""
    per_rank = max(1, cfg.train.batch_size // info.world_size)
    for split, data in nll_sets.items():
        nll, n = teacher_forced_nll(model, tokenizer, data, device, per_rank, cfg.train.nll_images,
                                    cfg.train.precision)
        if info.is_main:
            record(Path(cfg.results_dir) / "train.jsonl", "nll_during_training", nll, "nats/token", config=cfg,
                   device=device, step=step, split=split, num_samples=n, reference=data.describe(),
                   run_dir=str(cfg.run_dir), **identity)


def _mean_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / torch.distributed.get_world_size()
