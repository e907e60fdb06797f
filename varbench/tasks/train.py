"""task=train: train the scale-wise AR model of the config (tokenizer frozen) on images or on a token cache.

Every checkpoint carries the run spec (varbench/runs.py): the architecture and the tokenizer's path and sha256, so
task=sample / task=evaluate / varbench.load rebuild exactly this model from the run directory alone.
`train.init_from=PATH` starts from another model's weights (official or varbench, any mixer; varbench/init_from.py):
what loaded and what the recipe initialised is logged, recorded (results_dir/init_from.jsonl) and kept in the spec."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from varbench.build import build_dataset, build_model, build_tokenizer, resolve_device
from varbench.eval.flops import model_flops
from varbench.init_from import check_tokenizer, init_from
from varbench.runs import describe_run, training_tokenizer_file
from varbench.training import checkpoints
from varbench.training.loop import train_ar, weights_identity
from varbench.utils.dist import init_distributed
from varbench.utils.log import get_logger
from varbench.utils.records import device_name, git_commit, read_records, record
from varbench.utils.run_spec import read_spec

log = get_logger(__name__)


def start_from(cfg: DictConfig, model, tokenizer_file, device, is_main: bool) -> dict | None:
    """Apply `train.init_from` to the freshly built `model` (every process, so all start alike); returns the report
    for the run spec. A run that already has a checkpoint resumes from it instead (resume wins) and keeps the report
    its first start recorded."""
    source = cfg.train.get("init_from")
    if not source:
        return None
    if (folder := checkpoints.latest(Path(cfg.run_dir) / "checkpoints")) is not None:
        log.info(f"[train] resuming from {folder}: resume wins, train.init_from={source} is not applied again")
        return (read_spec(folder) or {}).get("init_from")
    report = init_from(model, source)
    check_tokenizer(report, tokenizer_file)
    log.info("[train] " + report.summary())
    model_tensors = len(report.loaded) + len(report.initialised) + len(report.skipped)
    if report.skipped or len(report.loaded) < model_tensors / 2:  # (session 21: 3 of 58 loaded, said at INFO)
        log.warning("[train] train.init_from=%s: only %d of the model's %d tensors loaded (%d skipped for their "
                    "shape): most of the model starts from the recipe's initialisation", source, len(report.loaded),
                    model_tensors, len(report.skipped))
    if is_main:
        record(Path(cfg.results_dir) / "init_from.jsonl", "init_from_loaded_tensors", len(report.loaded), "tensors",
               config=cfg, device=device, **report.as_dict())
    return report.as_dict()


def check_config(cfg: DictConfig) -> None:
    """Build the model on the meta device (no memory, no weights, milliseconds): an option the mixer, intra variant
    or backbone refuses (`mixer.heads=0`, `+mixer.foo=1`, model.num_classes against data's) is an error before
    anything runs, not at the train step of a main job whose tokenizer has trained by then. A run_dir with a
    checkpoint resumes it: a changed setting that forbids it is refused now too."""
    try:
        with torch.device("meta"):
            build_model(cfg)
    except TypeError as err:  # an option the constructor does not take
        raise ValueError(f"the model of this config cannot be built: {err}") from None
    if (ckpt_dir := checkpoints.of_run(cfg)) is not None:
        checkpoints.check_resumable_from_spec(ckpt_dir, cfg)


def steps_changes(cfg: DictConfig) -> list[dict]:
    """Each resume of this run under another `train.steps` (allowed: RESUMABLE), as {at_step, steps_before,
    steps_after}, the latest checkpoint's list plus this start's. The learning-rate and weight-decay schedules span
    `train.steps`, so from `at_step` on the run follows another schedule than an uninterrupted run of either length:
    the spec and the summary record say so."""
    folder = checkpoints.latest(Path(cfg.run_dir) / "checkpoints")
    if folder is None:
        return []
    saved = read_spec(folder) or {}
    changes = list(saved.get("steps_changes", []))
    before = ((saved.get("config") or {}).get("train") or {}).get("steps")
    at = checkpoints.step_of(folder)
    if before == cfg.train.steps:
        return changes
    if cfg.train.steps is not None and at >= cfg.train.steps:
        log.warning("[train] %s is trained to step %d, past train.steps=%s: nothing trains, and what reads this run "
                    "reads its step-%d weights", cfg.run_dir, at, cfg.train.steps, at)
        return changes
    log.warning("[train] resuming %s at step %d with train.steps=%s (saved: %s): the learning-rate and weight-decay "
                "schedules change from here on; the summary record says so (steps_changes)", folder, at,
                cfg.train.steps, before)
    return [*changes, {"at_step": at, "steps_before": before, "steps_after": cfg.train.steps}]


def trained_by(cfg: DictConfig, device) -> list[dict]:
    """Where this run trained: {from_step, commit, device} of its first start and of each resume under another commit
    or GPU than the one before (allowed: a fix elsewhere, a requeued job on another node). Records name the commit
    and device of their own call only, so a run's later steps may come from other code than its first: it warns, and
    the spec and the summary record carry the list."""
    folder = checkpoints.latest(Path(cfg.run_dir) / "checkpoints")
    saved = list((read_spec(folder) or {}).get("trained_by", [])) if folder is not None else []
    now = {"from_step": checkpoints.step_of(folder) if folder is not None else 0, "commit": git_commit(),
           "device": device_name(device)}
    if saved and (saved[-1]["commit"], saved[-1]["device"]) == (now["commit"], now["device"]):
        return saved
    if saved:
        log.warning("[train] resuming %s at step %d under commit %s on %s; it trained to here under %s on %s: the "
                    "summary record names both (trained_by)", cfg.run_dir, now["from_step"], now["commit"],
                    now["device"], saved[-1]["commit"], saved[-1]["device"])
    return [*saved, now]


def main(cfg: DictConfig) -> dict:
    """Train the AR model of `cfg` (resuming a run_dir), record its losses and summary; return the summary."""
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    torch.manual_seed(cfg.seed)  # every process builds the same weights
    tokenizer = build_tokenizer(cfg).to(device)
    model = build_model(cfg).to(device)
    tokenizer_file = training_tokenizer_file(cfg, tokenizer, write=info.is_main)
    if not cfg.tokenizer.get("checkpoint") and info.is_main:
        log.warning("no tokenizer.checkpoint: training on the codes of a random tokenizer (seeded, kept as %s); "
                    "fine for timing, but task=evaluate measures such a run only when the file is named",
                    tokenizer_file)
    checkpoints.check_same_tokenizer(Path(cfg.run_dir) / "checkpoints", tokenizer_file)
    started_from = start_from(cfg, model, tokenizer_file, device, info.is_main)
    spec = describe_run(cfg, tokenizer_file) if info.is_main else None  # written into every checkpoint
    if spec is not None and started_from is not None:
        spec["init_from"] = started_from
    if spec is not None and (changes := steps_changes(cfg)):
        spec["steps_changes"] = changes
    if spec is not None:
        spec["trained_by"] = trained_by(cfg, device)
    torch.manual_seed(cfg.seed * info.world_size + info.rank)  # then each draws its own dropout / crops (VAR)
    cache = cfg.train.get("token_cache")
    if cache:
        from varbench.data.token_cache import TokenCache, tokenizer_fingerprint
        dataset = TokenCache(cache, fingerprint=tokenizer_fingerprint(tokenizer))
    else:
        dataset = build_dataset(cfg, "train")
    nll_sets = {split: build_dataset(cfg, split) for split in ("val", "train")} if cfg.train.nll_every else {}
    summary = train_ar(model, tokenizer, dataset, cfg, device, info, from_ids=bool(cache), nll_sets=nll_sets,
                       spec=spec)
    summary.update(params=model.num_params(), fwd_flops_per_image=model_flops(model)["total"],
                   peak_mem_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                   checkpoint=str(Path(cfg.run_dir) / "checkpoints"), **weights_identity(spec),
                   backends=model.backends, steps_changes=(spec or {}).get("steps_changes", []),
                   trained_by=(spec or {}).get("trained_by", []))
    if summary["interrupted"]:
        raise SystemExit(f"interrupted by {summary['interrupted']} at step {summary['steps']}; the checkpoint is "
                         f"saved: run the same command (same run_dir) to resume exactly")
    if summary["images_per_s"] == 0:  # resumed at its last step: this call trained nothing, so it measures nothing
        return summary_of_trained_run(cfg, device, summary) if info.is_main else summary
    if info.is_main:
        record(Path(cfg.results_dir) / "train.jsonl", "train_summary", summary["final_loss"], "nats/token", config=cfg,
               device=device, **summary)
    return summary


def summary_of_trained_run(cfg: DictConfig, device, summary: dict) -> dict:
    """A run already trained to its last step: its recorded summary (nothing recorded again). A run stopped after
    its last checkpoint but before its summary record has none: record it now from the last step's `train_loss`
    record (its loss, and the images/s of the process that trained last), saying so (`summary_from`)."""
    path = Path(cfg.results_dir) / "train.jsonl"
    mine = [r for r in (read_records(path) if path.is_file() else [])  # this run's records of its last step
            if (r.get("config") or {}).get("run_dir") == str(cfg.run_dir) and r["metric"] in ("train_loss",
            "train_summary") and r.get("steps", r.get("step")) == summary["steps"]]
    newest = mine[-1] if mine else None  # (records append in time order: one retrained in this run_dir comes last)
    if newest is not None and newest["metric"] == "train_summary":
        log.info("%s is already trained to step %d: nothing recorded", cfg.run_dir, summary["steps"])
        return {**summary, "final_loss": newest["value"], "images_per_s": newest["images_per_s"]}
    if newest is None:
        log.warning("%s is trained to step %d, but %s holds neither its summary nor its last loss: nothing recorded",
                    cfg.run_dir, summary["steps"], path)
        return summary
    recovered = {**summary, "final_loss": newest["value"], "images_per_s": newest["images_per_s"],
                 "compiled": newest.get("compiled"), "summary_from": f"train_loss record of step {summary['steps']} "
                 "(the run stopped after its last checkpoint, before its summary)"}
    log.warning("%s: trained to step %d without a summary record; recording it from its last train_loss record",
                cfg.run_dir, summary["steps"])
    record(path, "train_summary", recovered["final_loss"], "nats/token", config=cfg, device=device, **recovered)
    return recovered

