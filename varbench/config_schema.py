"""The valid range of every numeric knob of the configs, checked once before a task runs (the rule types:
varbench/utils/config_rules.py).

A config value outside its range (`train.grad_accum=0`, `model.depth=0`, `train.batch_size=0`, `model.width=abc`)
is a `ConfigError` naming the key, the value and the valid range, raised before any file is written (the
`varbench` command checks while Hydra resolves the run folder; `varbench.tasks.run_task` checks again for callers
that compose configs themselves). Keys not listed here are not checked (a mixer's own fields are checked by its
constructor); a mandatory value left `???` that the task's steps read (the data set's root and classes, the
tokenizer's file) is an error too (`_unset`).

The rules are per config group (`train`, `model`, `tokenizer`, `data`, `logger`, `cluster`) and per task
(`task.<field>` by `task.name`); for the main job (`task=main`) every step's own task config is checked as it will
run (`step_config`).
A key at the top of the config that is neither config.yaml's own, nor a config group's, nor one of EXTRA_TOP (the
study grids' `study` node, checked by STUDY) is a misspelling: an error.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf, open_dict

from varbench.data.loading import MAX_PREFETCH, MAX_WORKERS
from varbench.layout import PATCH_NUMS
from varbench.registry import CONFIG_ROOT, flag_keys, group_keys, list_options, load_option, task_keys
from varbench.tokenizers.fast_decode import AUTO, DECODE_MODES
from varbench.training.fp8 import FP8_RECIPES
from varbench.utils.config_rules import (
    AUTO_FLAG,
    FLAG,
    Choice,
    Either,
    Items,
    Number,
    count,
    fraction,
    non_negative,
    positive,
)


class ConfigError(ValueError):
    """One or more config values outside their valid range; the message lists each as `key = value: expected ...`."""


# fp8: training with FP8 matmuls in the blocks (varbench/training/fp8.py); sampling or scoring under it (the tasks'
# precision defaults to the training's) runs bf16 autocast: no FP8 matmul outside training
PRECISION = Choice(("fp32", "bf16", "fp16", "fp8"))
SAMPLER = Choice(("carry", "prefix_rerun"))
BLOCK_WEIGHTS = Choice(("auto", "fp32", "bf16"))  # a sampling task's block weights (TrainedRun.hold_block_weights)
DECODE_MODE = Choice((*DECODE_MODES, AUTO))  # the tokenizer decode (varbench/tokenizers/fast_decode.py)
BETAS = Items(fraction(open_high=True), length=2)

TOP = {
    "seed": count(0), "tokenizer_seed": count(0),
    "autotune": Choice(("full", "first")),
    "progress": Choice(("auto", True, False)),
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")  # Inductor's modes varbench runs
TRAIN = {
    "batch_size": count(), "grad_accum": count(),
    "steps": count(null="train for `train.epochs` instead"), "epochs": positive(),
    "warmup_epochs": non_negative(null="epochs / 50"), "warmup_iters": count(0, null="from warmup_epochs"),
    "warmup_start": fraction(), "base_lr": positive(),
    "schedule": Choice(("lin0", "lin", "lin00", "cos", "exp")), "end_factor": fraction(),
    "weight_decay": non_negative(), "weight_decay_end": non_negative(null="constant"), "betas": BETAS,
    "grad_clip": non_negative(), "label_smoothing": fraction(open_high=True), "precision": PRECISION,
    "compile": AUTO_FLAG, "compile_scope": Choice(("model", "blocks")), "compile_mode": Choice(COMPILE_MODES),
    "parallel": Choice(("ddp", "fsdp")),
    "deterministic": FLAG, "tf32": FLAG,
    "log_every": count(), "nll_every": count(0), "nll_images": count(), "ckpt_every": count(), "keep_last": count(),
}
MODEL = {
    "num_classes": count(null="the data set's"), "depth": count(), "width": count(null="64 * depth"),
    "num_heads": count(null="depth"), "mlp_ratio": positive(),
    "drop_path_rate": fraction(open_high=True, null="0.1 * depth / 24"), "norm_eps": positive(),
    "cond_drop_rate": fraction(), "init.init_adaln": non_negative(), "init.init_adaln_gamma": non_negative(),
    "init.init_head": non_negative(), "init.init_std": Number(),
}
TOKENIZER = {
    "vocab_size": count(2), "z_channels": count(), "ch": count(), "ch_mult": Items(count()),
    "num_res_blocks": count(), "dropout": fraction(open_high=True), "beta": non_negative(),
    "quant_conv_ks": count(), "quant_resi": Number(low=-1, high=1), "share_quant_resi": count(0),
    "patch_nums": Items(count(), increasing=True), "using_sa": FLAG, "using_mid_sa": FLAG,
}
DATA = {"num_classes": count(), "size_per_class": count(null="the data set's default"), "seed": count(0),
        "num_workers": Either((Choice(("auto",)), Number(integer=True, low=0, high=MAX_WORKERS))),
        "prefetch_factor": Number(integer=True, low=1, high=MAX_PREFETCH)}
TASKS = {
    "train_tokenizer": {
        "steps": count(), "batch_size": count(), "lr": positive(), "betas": BETAS, "weight_decay": non_negative(),
        "warmup_steps": count(0), "l1_weight": non_negative(), "l2_weight": non_negative(),
        "vq_weight": non_negative(), "perceptual_weight": non_negative(), "adv_weight": non_negative(),
        "adv_start": count(0), "disc_ch": count(), "disc_layers": count(), "dead_code_threshold": non_negative(),
        "dead_code_every": count(), "amp": Choice((None, "bf16", "fp16")), "log_every": count(),
        "ckpt_every": count(), "eval_every": count(0), "eval_batch_size": count(), "num_workers": count(0),
    },
    "tokenize": {"split": Choice(("train", "val")), "batch_size": count(), "shard_size": count(),
                 "speedup_batches": count(0)},
    "sample": {"classes": Items(count(0), null="the first 10 classes"), "per_class": count(), "cfg": non_negative(),
               "top_k": count(0), "top_p": Number(low=0, high=1, open_low=True), "more_smooth": FLAG,
               "sampler": SAMPLER, "cuda_graphs": AUTO_FLAG, "decode_mode": DECODE_MODE, "precision": PRECISION,
               "block_weights": BLOCK_WEIGHTS},
    "evaluate": {
        "suite": Choice(("auto", "project", "adm")), "num_classes": count(null="every class of the model"),
        "per_class": count(null="50 for adm, 20 for project"), "batch_size": count(),
        "preset": Choice(("eval", "vis", "aim_b", "aim")),  # aim_*: raster models (varbench/eval/sampling.py)
        "sampler": SAMPLER, "cuda_graphs": AUTO_FLAG, "decode_mode": DECODE_MODE, "precision": PRECISION,
        "block_weights": BLOCK_WEIGHTS, "cfg": non_negative(null="the preset's guidance"),
        "memorisation_train_images": count(0),
        "val_nll_images": count(0), "train_nll_images": count(0), "fidelity_batch_size": count(),
        "classifier_steps": count(), "classifier_batch_size": count(), "classifier_width": count(),
        "classifier_seed": count(0), "classifier_min_val_accuracy": fraction(), "classifier_metrics": FLAG,
        "floor_images": Either((Number(integer=True, low=0, high=0), count(2, null="as many as samples"))),
    },
    "edit": {"samples": count(), "mode": Choice(("inpaint", "outpaint")), "label": count(0, null="unconditional"),
             "cfg": non_negative(), "top_k": count(0), "top_p": Number(low=0, high=1, open_low=True),
             "more_smooth": FLAG, "sampler": SAMPLER, "precision": PRECISION,
             "block_weights": BLOCK_WEIGHTS},
    "bench": {"resolutions": Items(count()), "repeats": count(), "compile": FLAG, "cuda_graphs": AUTO_FLAG,
              "compile_mode": Choice(COMPILE_MODES),
              "compile_scope": Choice(("model", "blocks")), "fp8": FLAG, "fp8_recipe": Choice(FP8_RECIPES),
              "decode_mode": DECODE_MODE, "decode_batch": count(null="the whole batch in one decode call"),
              "fused_elementwise": FLAG, "block_weights": Choice(("fp32", "bf16")),
              "param_dtype": Choice(("fp32", "bf16")), "profile_steps": count(0), "isolate_cells": FLAG,
              "cell_timeout_s": positive(null="no time limit"), "rerun_resolutions": Items(count()),
              "allow_failed_cells": FLAG},
    "costs": {"depths": Items(count()), "resolutions": Items(count())},
    "main": {"guidance_scales": Items(non_negative(), increasing=True, null="the evaluate step's own scale only"),
             "guidance_seeds": Items(count(0))},
    "scaling": {"parallel": Choice(("ddp", "fsdp")), "batch_per_gpu": count(), "repeats": count()},
}
LOGGER = {"name": Choice(("tensorboard", "wandb", "none")), "sample_every": count(0),
          "mode": Choice(("offline", "online", "disabled"))}
CLUSTER = {"jobs": count()}  # cluster=local_parallel's processes
# top-level keys that neither config.yaml nor a config group defines
EXTRA_TOP = {"study": "the study grids' arm and learning rates (varbench/configs/grid/study_base.yaml)",
             "dry_run": "+dry_run=true: a grid prints its cells and runs none", "hydra": "Hydra's own settings"}
STUDY = {"arm": "the cell's arm, the key of its learning rate (`train.base_lr: ${study.lr.${study.arm}}`)",
         "lr": "a learning rate per arm name, each a number > 0"}
GROUPS = {"": TOP, "train": TRAIN, "model": MODEL, "tokenizer": TOKENIZER, "data": DATA, "logger": LOGGER,
          "cluster": CLUSTER}


def check_pairs(configs, also: tuple[str, ...] = ()) -> None:
    """Each entry of a `task.configs` (task=bench, task=costs) is [mixer, intra] of registered ones, or [mixer, x]
    for x in `also` (bench's raster entries)."""
    mixers, intras = list_options("mixer"), list_options("intra") + list(also)
    for entry in configs or []:
        if isinstance(entry, str) or len(entry) != 2 or entry[0] not in mixers or entry[1] not in intras:
            alternatives = "".join(f" or [mixer, {x}]" for x in also)
            raise ValueError(f"task.configs: {entry!r} is not [mixer, intra]{alternatives}; mixers: {mixers}, "
                             f"intra: {intras}")


def check_resolutions(resolutions) -> None:
    """Each of a `task.resolutions` (task=bench, task=costs) has VAR's scale schedule."""
    for res in resolutions:
        if res not in PATCH_NUMS:
            raise ValueError(f"task.resolutions: {res} px has no scale schedule; valid: {sorted(PATCH_NUMS)}")


def step_config(cfg: DictConfig, step: str) -> DictConfig:
    """The main job's config for one step: `task` replaced by the step's own task config (varbench/configs/task/
    <step>.yaml) updated by `task.overrides.<step>`."""
    step_cfg = cfg.copy()
    with open_dict(step_cfg):
        step_cfg.task = OmegaConf.merge(load_option("task", step), cfg.task.overrides.get(step) or {})
    return step_cfg


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` listing every value of `cfg` outside its valid range (for the main job, of every step
    too); return None when all are valid."""
    problems = _unknown_keys(cfg) + _problems(cfg) + _unset(cfg)
    if cfg.task.name == "main":
        tasks = set(list_options("task")) - {"main"}
        unknown = sorted(set(cfg.task.get("overrides") or {}) - tasks)  # (a step not run may keep its overrides: a
        if unknown:                                                      # preset's, such as debug=true's)
            problems.append(f"task.overrides has {unknown}, which are not tasks; valid: {sorted(tasks)}")
        if not cfg.task.steps:
            problems.append(f"task.steps = []: expected a non-empty list of tasks; valid: {sorted(tasks)}")
        steps = [s for s in cfg.task.steps if s in set(list_options("task")) - {"main"}]
        if len(steps) < len(cfg.task.steps):
            problems.append(f"task.steps = {list(cfg.task.steps)}: expected tasks other than main; valid: "
                            f"{sorted(set(list_options('task')) - {'main'})}")
        for step in steps:
            step_task = step_config(cfg, step).task
            problems += [_unknown(f"task.overrides.{step}.{key}", key, task_keys(step), f"task={step} has no such key")
                         for key in step_task if key not in task_keys(step)]
            problems += [f"{p} (step {step})" for p in _problems(step_config(cfg, step)) if p.startswith("task.")]
        if cfg.task.get("guidance_scales") and "evaluate" not in cfg.task.steps:
            problems.append(f"task.guidance_scales = {list(cfg.task.guidance_scales)}: task.steps "
                            f"{list(cfg.task.steps)} has no evaluate step to run again at those scales")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(dict.fromkeys(problems)))


@lru_cache(maxsize=1)
def top_level_keys() -> tuple[str, ...]:
    """The keys a composed config may have at its top: config.yaml's own, each config group its defaults list
    names, and EXTRA_TOP."""
    root = OmegaConf.load(CONFIG_ROOT / "config.yaml")
    groups = [next(iter(entry)) for entry in root.defaults if isinstance(entry, DictConfig)]
    return tuple(sorted({*root.keys(), *groups, *EXTRA_TOP} - {"defaults"}))


CHECKED_GROUPS = ("train", "model", "tokenizer", "data", "task", "logger")  # (mixer, intra: their constructors check)


def _unknown(full_key: str, key: str, known, why: str) -> str:
    """The message for an unknown key, with the nearest known ones."""
    near = difflib.get_close_matches(key, sorted(known), n=3)
    prefix = full_key[: -len(key)]
    return (f"{full_key}: unknown key ({why}, so nothing reads it)"
            + (f"; did you mean {', '.join(prefix + k for k in near)}?" if near else ""))


def _unknown_keys(cfg: DictConfig) -> list[str]:
    """Misspelt top-level keys, keys of a config group that no shipped file sets (a `+train.stepz=5` would be ignored
    silently), and what is wrong in the `study` node."""
    known = top_level_keys()
    out = [f"{key}: unknown top-level key; valid: {list(known)}" for key in cfg if key not in known]
    for group in CHECKED_GROUPS:
        node = cfg.get(group)
        known = task_keys(cfg.task.name) if group == "task" else group_keys(group)
        why = f"task={cfg.task.name} has no such key" if group == "task" else "no shipped config sets it"
        out += [_unknown(f"{group}.{key}", key, known, why) for key in (node or {}) if key not in known]
    for group in ("mixer", "intra"):  # (an option with a class: its constructor refuses what it does not take)
        node = cfg.get(group)
        if isinstance(node, DictConfig) and node.get("_target_") is None:
            out += [f"{group}.{key}: {group}=none takes no options" for key in node if key != "_target_"]
    study = cfg.get("study")
    if study is None:
        return out
    if not isinstance(study, DictConfig):
        return out + [f"study = {study!r}: expected a mapping with the keys {sorted(STUDY)}"]
    out += [f"study.{key}: unknown key; valid: {sorted(STUDY)}" for key in study if key not in STUDY]
    lr = study.get("lr")
    if lr is not None and not isinstance(lr, DictConfig):
        out.append(f"study.lr = {lr!r}: expected {STUDY['lr']}")
    for arm, value in (lr.items() if isinstance(lr, DictConfig) else ()):
        if not positive().accepts(value):
            out.append(f"study.lr.{arm} = {value!r}: expected {positive().describe()}")
    return out


def _problems(cfg: DictConfig) -> list[str]:
    rules = {f"{group}.{key}": FLAG for group in CHECKED_GROUPS for key in flag_keys(group)}
    rules |= {f"{group}.{key}" if group else key: rule for group, table in GROUPS.items()
              for key, rule in table.items()}
    rules |= {f"task.{key}": rule for key, rule in TASKS.get(cfg.task.name, {}).items()}
    problems = []
    for key, rule in rules.items():
        if _is_set(cfg, key) and not rule.accepts(value := OmegaConf.select(cfg, key)):
            problems.append(f"{key} = {value!r}: expected {rule.describe()}")
    return problems + _relations(cfg)


def _unset(cfg: DictConfig) -> list[str]:
    """The mandatory values (`???`) the task's steps read, left unset: named before anything runs (a Slurm array would
    otherwise fail every cell at its first read, after queueing). The data set's for a step that reads images; the
    tokenizer's file for one that reads codes without training the tokenizer first."""
    steps = set(cfg.task.steps) if cfg.task.name == "main" else {cfg.task.name}
    needed = ["data.root", "data.num_classes"] if steps & {"train", "train_tokenizer", "tokenize"} else []
    if steps & {"train", "tokenize"} and "train_tokenizer" not in steps:
        needed.append("tokenizer.checkpoint")
    return [f"{key} = ???: a mandatory value task={cfg.task.name} reads; set {key}=..." for key in needed
            if _is_missing(cfg, key)]


def _is_missing(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent)
    return isinstance(node, DictConfig) and leaf in node.keys() and OmegaConf.is_missing(node, leaf)  # (not `in node`:
    # a `???` value is not `in` its node)


def _is_set(cfg: DictConfig, key: str) -> bool:
    """Whether `key` exists with a value (a `???` left for the task to report counts as not set)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node and not OmegaConf.is_missing(node, leaf)


def _relations(cfg: DictConfig) -> list[str]:
    """Checks across keys."""
    out = []
    width, heads = OmegaConf.select(cfg, "model.width"), OmegaConf.select(cfg, "model.num_heads")
    if isinstance(width, int) and isinstance(heads, int) and heads > 0 and width % heads:
        out.append(f"model.width = {width} is not a multiple of model.num_heads = {heads}")
    target, size = OmegaConf.select(cfg, "data._target_"), OmegaConf.select(cfg, "data.size_per_class")
    if size is not None and target is not None and not str(target).endswith("EmbeddedShapes"):
        out.append(f"data.size_per_class = {size}: sizes the embedded data set only, not {target} (debug=true sets "
                   f"it: its smoke run is a run on data=embedded)")
    device = OmegaConf.select(cfg, "device")
    if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        out.append(f"device = {device!r}: expected auto, cpu, cuda or cuda:<index>")
    ks = OmegaConf.select(cfg, "tokenizer.quant_conv_ks")
    if isinstance(ks, int) and ks % 2 == 0:
        out.append(f"tokenizer.quant_conv_ks = {ks}: expected an odd integer (the convolution keeps the size)")
    return out
