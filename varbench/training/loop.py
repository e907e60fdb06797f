"""The AR training loop with VAR's recipe: AdamW (0.9, 0.95) with no-decay groups, lr = tblr * bs / 256,
warm-up then `lin0`, cosine weight decay, grad clip, fp16 with a loss scaler or bf16, gradient accumulation,
label smoothing, DDP / FSDP2, exact resume, SIGTERM / SIGUSR1 (Slurm pre-emption) handling, a NaN guard.

Shape legend: B batch, L tokens of all scales, V vocabulary.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from varbench.training import checkpoints, recipe
from varbench.training.batches import GlobalBatches, collate
from varbench.training.teacher_forcing import teacher_forcing_inputs
from varbench.utils.checkpoint import load_strict
from varbench.utils.dist import DistInfo
from varbench.utils.records import record


class StopRequested:
    """Set by SIGTERM / SIGUSR1: the loop saves a checkpoint at the end of the current step and returns."""

    def __init__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        """Give the signals back to their previous handlers once training is over."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class Plan:
    """Iteration counts derived from the config and the data set size."""

    max_iters: int
    warmup_iters: float
    iters_per_epoch: int
    peak_lr: float


def make_plan(tcfg: DictConfig, num_items: int) -> Plan:
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


def compile_for_training(net: torch.nn.Module, depth: int, **options) -> torch.nn.Module:
    """torch.compile(net, **options), with dynamo's recompile limit raised to cover every block. The blocks'
    stochastic-depth rates differ, and each is a constant to the compiler: where a kernel the compiler cannot trace
    breaks the graph inside a block, every block recompiles the code that resumes after it, and past the default
    limit (8) the rest of the blocks would run eagerly, silently."""
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * depth)
    return torch.compile(net, **options)


def autocast_dtype(precision: str):
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ValueError(f"precision must be one of {list(table)}, got {precision!r}")
    return table[precision]


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` (fp32: a disabled one) on `device`."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_ar(model, tokenizer, dataset, cfg: DictConfig, device: torch.device, info: DistInfo, from_ids: bool,
             nll_sets: dict | None = None, spec: dict | None = None) -> dict:
    """Train `model` on `dataset` (images, or cached ids when `from_ids`) for the planned iterations.
    Writes checkpoints under `cfg.run_dir/checkpoints` and records under `cfg.results_dir`; resumes when a
    checkpoint exists; every `train.nll_every` steps records the NLL of each image data set of `nll_sets`
    ({split: dataset}); writes `spec` (varbench.runs.describe_run) into every checkpoint. Returns a summary dict
    (final loss, steps, images/s, whether it was interrupted)."""
    tcfg, ckpt_dir = cfg.train, Path(cfg.run_dir) / "checkpoints"
    plan = make_plan(tcfg, len(dataset))
    batches = GlobalBatches(len(dataset), tcfg.batch_size, cfg.seed, info.rank, info.world_size)
    net = wrap_parallel(model, tcfg.parallel, info, device)
    if tcfg.compile:
        net = compile_for_training(net, len(model.blocks))
    optimizer = torch.optim.AdamW(recipe.param_groups(model), lr=plan.peak_lr, betas=tuple(tcfg.betas),
                                  weight_decay=0.0, fused=device.type == "cuda")
    amp = autocast_dtype(tcfg.precision)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 11, growth_interval=1000, enabled=amp == torch.float16)
    step = 0
    if (folder := checkpoints.latest(ckpt_dir)) is not None:
        state = _restore(folder, model, optimizer)
        scaler.load_state_dict(state["scaler"])
        checkpoints.set_rng_state(state["rng"])
        step = state["step"]
    stop, results = StopRequested(), Path(cfg.results_dir) / "train.jsonl"
    signal_at = int(os.environ.get("VARBENCH_SIGNAL_AT_STEP", "-1"))  # tests deliver a real SIGTERM here
    writer = _tensorboard(cfg, info)
    progress = _progress(info, step, plan.max_iters)
    model.train()
    loss_value, t0, seen = float("nan"), time.perf_counter(), 0
    while step < plan.max_iters:
        lr = plan.peak_lr * recipe.lr_factor(step, plan.warmup_iters, plan.max_iters, tcfg.schedule,
                                             tcfg.warmup_start, tcfg.end_factor)
        wd = recipe.weight_decay_at(step, plan.max_iters, tcfg.weight_decay, tcfg.weight_decay_end)
        recipe.apply_schedule(optimizer, lr, wd)
        loss_value = 0.0
        for micro in range(tcfg.grad_accum):
            index = step * tcfg.grad_accum + micro
            x, labels = collate(dataset, batches.indices(index // batches.per_epoch, index % batches.per_epoch))
            gt_BL, inputs = teacher_forcing_inputs(model, tokenizer, x.to(device), from_ids)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits_BLV = net(labels.to(device), inputs)
                loss = F.cross_entropy(logits_BLV.flatten(0, 1), gt_BL.flatten(), label_smoothing=tcfg.label_smoothing)
            scaler.scale(loss / tcfg.grad_accum).backward()
            loss_value += loss.item() / tcfg.grad_accum
            seen += x.shape[0] * info.world_size
        if info.world_size > 1:  # log the global-batch loss, the same number one process would see
            loss_value = _mean_over_ranks(loss_value, device)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite training loss {loss_value} at step {step}; the last good checkpoint "
                                     f"is {checkpoints.latest(ckpt_dir)} (lower the lr, or use bf16)")
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                   tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf)
        scaler.step(optimizer)
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() > 32768.0:
            scaler.update(32768.0)  # VAR caps the fp16 loss scale
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if writer is not None:
            for name, value in (("loss", loss_value), ("lr", lr), ("wd", wd), ("grad_norm", float(grad_norm))):
                writer.add_scalar(f"train/{name}", value, step)
        if info.is_main and (step % tcfg.log_every == 0 or step == plan.max_iters):
            rate = seen / (time.perf_counter() - t0)
            record(results, "train_loss", loss_value, "nats/token", config=cfg, device=device, step=step, lr=lr,
                   grad_norm=float(grad_norm), images_per_s=rate, run_dir=str(cfg.run_dir))
        if tcfg.nll_every and (step % tcfg.nll_every == 0 or step == plan.max_iters):
            _record_nll(model, tokenizer, nll_sets or {}, cfg, device, info, step)
            model.train()
        if step == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step % tcfg.ckpt_every == 0 or step == plan.max_iters or stop.signal:
            _save(ckpt_dir, step, model, optimizer, scaler, tcfg.keep_last, info, spec)
        if stop.signal:
            break
    progress.close()
    stop.restore()
    return {"steps": step, "max_iters": plan.max_iters, "final_loss": loss_value, "interrupted": stop.signal,
            "images_per_s": seen / max(time.perf_counter() - t0, 1e-9)}


def _record_nll(model, tokenizer, nll_sets: dict, cfg: DictConfig, device, info: DistInfo, step: int) -> None:
    """The teacher-forced NLL of each split now, in eval mode (records `nll_during_training`). Every rank runs it: a
    sharded model's forward needs them all; the global RNG is not touched, so a resumed run stays exact."""
    from varbench.eval.likelihood import teacher_forced_nll  # here: likelihood imports this module's autocast
    per_rank = max(1, cfg.train.batch_size // info.world_size)
    for split, data in nll_sets.items():
        nll, n = teacher_forced_nll(model, tokenizer, data, device, per_rank, cfg.train.nll_images,
                                    cfg.train.precision)
        if info.is_main:
            record(Path(cfg.results_dir) / "train.jsonl", "nll_during_training", nll, "nats/token", config=cfg,
                   device=device, step=step, split=split, num_samples=n, reference=data.describe(),
                   run_dir=str(cfg.run_dir))


def _mean_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / torch.distributed.get_world_size()


def _is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 holds the parameters as shards (DTensors)."""
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def _save(ckpt_dir, step, model, optimizer, scaler, keep, info: DistInfo, spec: dict | None = None) -> None:
    if _is_sharded(model):  # gather whole tensors: a collective (every rank calls it), rank 0 receives them
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        tensors, optim = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
    else:
        tensors, optim = model.state_dict(), optimizer.state_dict()
    if info.is_main:
        state = {"step": step, "optimizer": optim, "scaler": scaler.state_dict(), "rng": checkpoints.rng_state()}
        checkpoints.save(ckpt_dir, step, tensors, state, keep, meta=spec)
    if info.world_size > 1:
        torch.distributed.barrier()


def _restore(folder, model, optimizer) -> dict:
    """Load checkpoint `folder` into the model and optimizer (whole tensors; FSDP2 re-shards them on every rank)."""
    tensors, state = checkpoints.read(folder)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        set_state_dict(model, optimizer, model_state_dict=tensors, optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
    else:
        load_strict(model, tensors, f"checkpoint {folder}")
        optimizer.load_state_dict(state["optimizer"])
    return state


def _tensorboard(cfg, info: DistInfo):
    if not info.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(Path(cfg.run_dir) / "tb"))


def _progress(info: DistInfo, start: int, total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, disable=not info.is_main, desc="train", dynamic_ncols=True)
