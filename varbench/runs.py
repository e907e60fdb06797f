"""A run is self-describing: rebuild a trained model and its tokenizer from a run directory or a checkpoint.

task=train writes a run spec into every checkpoint folder (the file: varbench/utils/run_spec.py): the resolved
config groups the model was built from and the identity (path, sha256) of the tokenizer weights it was trained
with. `load_run` rebuilds both from it; task=sample, task=evaluate and `varbench.load` all go through it.

The rules (issue 15):
- The run decides. Config keys the user did not set are taken from the run. A key the user set (on the command
  line) to a value that contradicts the run is an error naming both values. Free to differ: kernel choices
  (`backend`, `mode`, `fused`, `chunk_size`, `fit_chunk`: how a mixer computes, not what), training-only knobs
  (drop path, class dropout, init), the `train` group, and the data set's location and sizes (not its kind or its
  classes).
- The tokenizer is the run's: a `tokenizer.checkpoint` the user gives must have the sha256 the run recorded.
- Nothing is built with random weights. A checkpoint without a spec (written before specs existed) is refused
  unless the caller asks by name for the command line's architecture (`task.architecture_from_command_line=true`),
  and then `tokenizer.checkpoint` is required.
- An official checkpoint (VAR, M-VAR, AiM: recognised by its keys, varbench/official.py) carries no spec: it is built
  from the command line's recipe (`model=var_d16`, ...) and its `tokenizer.checkpoint` (required), and loaded
  strictly through the official converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from varbench import official
from varbench.backbones.raster_ar import is_raster
from varbench.build import build_model, build_tokenizer
from varbench.registry import CONFIG_ROOT
from varbench.tokenizers import load_official_vqvae
from varbench.training import checkpoints
from varbench.utils.checkpoint import load_strict, read_state_dict, save_atomic
from varbench.utils.hashing import file_sha256
from varbench.utils.precision import autocast_dtype, hold_linear_weights_in
from varbench.utils.run_spec import FORMAT, read_spec, relative_if_inside, tokenizer_path

SPEC_GROUPS = ("model", "mixer", "intra", "tokenizer", "data", "train")
KERNEL_KEYS = frozenset({"backend", "mode", "fused", "chunk_size", "fit_chunk"})
FREE_KEYS = ("model.drop_path_rate", "model.cond_drop_rate", "model.init", "tokenizer.checkpoint", "train")
DATA_IDENTITY = ("data._target_", "data.num_classes", "data.name")
RUN_TOKENIZER = "tokenizer.safetensors"  # under run_dir/checkpoints: the seeded random tokenizer of a run without one
ABSENT = "<absent>"


def describe_run(cfg: DictConfig, tokenizer_file) -> dict:
    """The run spec of a training run of `cfg` whose tokenizer weights are `tokenizer_file`."""
    config = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in SPEC_GROUPS}
    config["tokenizer"]["checkpoint"] = None  # the identity below names the weights
    step_folder = Path(cfg.run_dir) / "checkpoints" / "step"  # every step folder is a sibling: one relative path
    return {"format": FORMAT, "config": config,
            "tokenizer": {"path": relative_if_inside(tokenizer_file, cfg.run_dir, step_folder),
                          "sha256": file_sha256(tokenizer_file)}}


def training_tokenizer_file(cfg: DictConfig, tokenizer, write: bool = True) -> Path:
    """The file holding the weights `tokenizer` trains with: `tokenizer.checkpoint`, or for a run without one (its
    tokenizer is random, seeded by `seed`) a copy kept in the run, `run_dir/checkpoints/tokenizer.safetensors`; a
    resumed run loads that copy, so its tokenizer never changes. Only the main process (`write`) writes it."""
    if cfg.tokenizer.get("checkpoint"):
        return Path(cfg.tokenizer.checkpoint)
    path = Path(cfg.run_dir) / "checkpoints" / RUN_TOKENIZER
    if path.is_file():
        load_official_vqvae(tokenizer, path)
    elif write:
        save_atomic(path, tensors=tokenizer.state_dict())
    return path


def find_checkpoint(source) -> Path:
    """The model weights of `source`: a model.safetensors file, a checkpoint folder, a `checkpoints` folder (its
    `latest`, or that pointer file itself) or a run directory (the latest of its `checkpoints`)."""
    path = Path(source)
    if path.name == "latest" and path.is_file() and (folder := checkpoints.latest(path.parent)) is not None:
        return folder / "model.safetensors"  # the pointer file, not weights
    if path.is_file():
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    for ckpt_dir in (path, path / "checkpoints"):
        if (folder := checkpoints.latest(ckpt_dir)) is not None:
            return folder / "model.safetensors"
    raise ValueError(f"no checkpoint at {path}: expected a run directory (the run_dir of task=train or task=main, "
                     f"e.g. runs/main/<id>), a checkpoint folder, varbench's model.safetensors, or an official VAR / "
                     f"M-VAR / AiM weights file (.pth, .safetensors)")


def command_line_keys() -> list[str] | None:
    """The config keys the user set on the command line of this Hydra job (a group choice such as `mixer=gla` sets
    `mixer`; a global recipe such as `model=var_d16` sets every key and group it names), or None outside a job."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    return [key for o in overrides for key in keys_set_by(o.key_or_group, o.value())]


def keys_set_by(key: str, value) -> list[str]:
    """Config keys an override `key=value` sets: the key, or for an option of a `@package _global_` group (a recipe)
    the top-level keys of its file and the groups its defaults list overrides."""
    path = CONFIG_ROOT / key / f"{value}.yaml"
    if not isinstance(value, str) or not path.is_file() or "@package _global_" not in path.read_text()[:200]:
        return [key]
    option = OmegaConf.load(path)
    groups = [k.removeprefix("override").strip().strip("/").replace("/", ".")
              for entry in option.get("defaults", []) if isinstance(entry, DictConfig) for k in entry]
    return [k for k in option if k != "defaults"] + groups


def is_checked(key: str) -> bool:
    """Whether `key` (dotted, under a spec group) must agree with the run."""
    if key.startswith("data."):
        return key in DATA_IDENTITY
    if any(key == free or key.startswith(free + ".") for free in FREE_KEYS):
        return False
    return key.rsplit(".", 1)[-1] not in KERNEL_KEYS


def flat(node, prefix: str) -> dict:
    """{dotted key: value} of the leaves of a plain dict (lists are leaves)."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}.{key}").items()}


def run_config(spec: dict, cfg: DictConfig | None = None, user_keys: list[str] | None = None) -> DictConfig:
    """The config to rebuild the run with: `cfg` (None: the run's groups alone) with the spec groups taken from the
    run, except the free keys the user set.

    `user_keys` are the keys set on the command line (None: a config given whole in Python, every key of it counts
    as set). A checked key (`is_checked`) set by name, or the identity of a chosen group option (its `_target_`, or
    every field of a group without one: a `model` recipe, a `tokenizer`), must agree with the run, else ValueError
    naming both values. A free key takes the user's value only when set by name (`mixer.backend=reference`);
    choosing the run's own option (`mixer=gla`) keeps the run's fields (its `heads`, its `backend`)."""
    run = OmegaConf.create(spec["config"])
    if cfg is None:
        return run
    mine = {k: v for g in SPEC_GROUPS if g in cfg
            for k, v in flat(OmegaConf.to_container(cfg[g], resolve=True), g).items()}
    theirs = {k: v for g in SPEC_GROUPS for k, v in flat(spec["config"][g], g).items()}
    for side in (mine, theirs):  # the class count built: null (and a spec older than the key) means the data's
        if side.get("model.num_classes") is None and "data.num_classes" in side:
            side["model.num_classes"] = side["data.num_classes"]

    def compared(key: str) -> bool:  # set by name, or the identity of a chosen group option
        if user_keys is None:
            return True
        for u in user_keys:
            if key == u or key.startswith(u + "."):
                target = f"{u}._target_"
                return "." in u or target not in {**mine, **theirs} or key == target
        return False

    def set_by_name(key: str) -> bool:
        return user_keys is None or any(key == u or key.startswith(u + ".") for u in user_keys if "." in u)

    conflicts = [f"{k}: the run has {theirs.get(k, ABSENT)!r}, the command line {mine.get(k, ABSENT)!r}"
                 for k in {**theirs, **mine} if is_checked(k) and compared(k)
                 and mine.get(k, ABSENT) != theirs.get(k, ABSENT)]
    if conflicts:
        raise ValueError("the command line contradicts the run it evaluates (leave these keys out to use the run's "
                         "values):\n  " + "\n  ".join(conflicts[:20]))
    merged = cfg.copy()
    with open_dict(merged):
        for group in SPEC_GROUPS:
            merged[group] = run[group]
        for k, value in mine.items():
            if value != "???" and set_by_name(k):  # a free key the user set (checked ones agree)
                OmegaConf.update(merged, k, value, merge=False)
    return merged


@dataclass
class TrainedRun:
    """A trained model and its tokenizer, rebuilt from a checkpoint, with what identifies them."""

    model: nn.Module              # a ScaleAR, or a RasterAR (model=aim_*)
    tokenizer: nn.Module          # its MultiScaleVQVAE, or VQF16
    config: DictConfig            # the spec groups the two were built from (with the caller's other keys)
    checkpoint: Path              # the weight file loaded
    checkpoint_sha256: str
    tokenizer_file: Path
    tokenizer_sha256: str
    run_spec: bool                # False: a checkpoint without a spec, built from the command line
    official: str | None = None   # 'var' | 'mvar' | 'aim': an official checkpoint, loaded through its converter
    random_tokenizer: bool = False  # the run's own seeded random tokenizer (trained without tokenizer.checkpoint)
    block_weights: str = "fp32"   # the dtype the blocks' Linear weights are held in (`hold_block_weights`)

    def identity(self) -> dict:
        """Record fields naming the weights: paths and sha256 of the checkpoint and of the tokenizer, and the
        checkpoint's format (varbench, or official_<kind>); and the kernels the model's branches ran (`backends`)."""
        return {"checkpoint": str(self.checkpoint), "checkpoint_sha256": self.checkpoint_sha256,
                "backends": self.model.backends,
                "tokenizer_checkpoint": str(self.tokenizer_file), "tokenizer_sha256": self.tokenizer_sha256,
                "run_spec": self.run_spec, "random_tokenizer": self.random_tokenizer,
                "checkpoint_format": f"official_{self.official}" if self.official else "varbench",
                "block_weights": self.block_weights}

    def hold_block_weights(self, value: str, precision: str) -> str:
        """For a sampling task: hold the blocks' Linear weights in bf16 (`value` bf16, or auto where that reads the
        same values: a scale model under bf16 autocast) or leave them fp32 (fp32; auto otherwise). Returns which.

        Under autocast each fp32 weight is cast to bf16 at its matmul and the copy cached, so the weights and their
        copies are both alive through the scale loop: VAR-d16's batch-1 peak was 2.31 GiB against the official
        sampler's 1.77 (session 25), and 1.19 GiB with the weights held in bf16 (session 26). The matmuls read the
        same values: the guided and teacher-forced logits are bit-equal on the CPU and on every mixer's GPU kernels
        (tests/test_samplers.py). Not for AiM's raster model (not checked), nor without bf16 autocast (task.precision
        fp32 or fp16)."""
        fits = autocast_dtype(precision) == torch.bfloat16 and not is_raster(self.model)
        held = ("bf16" if fits else "fp32") if value == "auto" else value
        if held == "bf16" and not fits:
            what = "AiM's raster model" if is_raster(self.model) else f"task.precision={precision}"
            raise ValueError(f"task.block_weights=bf16 holds a scale model's block weights for bf16 autocast, but this "
                             f"is {what}: use auto or fp32")
        if held == "bf16":
            hold_linear_weights_in(self.model.blocks, torch.bfloat16)
        self.block_weights = held
        return held

    def weights_key(self) -> dict:
        """What a drawn image depends on of the weights: both sha256 and the kernels that ran (see `keyed_file`)."""
        return {"checkpoint_sha256": self.checkpoint_sha256, "tokenizer_sha256": self.tokenizer_sha256,
                "backends": self.model.backends}

    def refuse_random_tokenizer(self, cfg: DictConfig, user_keys: list[str] | None) -> None:
        """For a measurement: refuse a run whose tokenizer is its own seeded random one (task=train without
        tokenizer.checkpoint) unless the command line names that file as tokenizer.checkpoint."""
        named = cfg.tokenizer.get("checkpoint") and (user_keys is None or "tokenizer.checkpoint" in user_keys)
        if self.random_tokenizer and not named:
            raise ValueError(f"{self.checkpoint} was trained on a random tokenizer's codes ({self.tokenizer_file}: "
                             f"the run had no tokenizer.checkpoint), so its quality would measure that; train with "
                             f"tokenizer.checkpoint=<a trained tokenizer>, or measure it anyway by naming the file: "
                             f"tokenizer.checkpoint={self.tokenizer_file}")



def load_run(source, cfg: DictConfig | None = None, user_keys: list[str] | None = None, device="cpu",
             architecture_from_command_line: bool = False) -> TrainedRun:
    """Rebuild the model and tokenizer of a checkpoint (see the module docstring for the rules).

    Args:
        source: a run directory, a checkpoints folder, a checkpoint folder or a model.safetensors file.
        cfg (DictConfig, Optional): the caller's config (a task's); None: the run's config alone.
        user_keys (list, Optional): keys the user set (`command_line_keys()`); None: every key of `cfg`.
        device: where the model and tokenizer go (both in eval mode).
        architecture_from_command_line (bool): for a checkpoint without a spec only: build the architecture of
            `cfg` and the tokenizer of its `tokenizer.checkpoint`. Default: False (such a checkpoint is refused).
    """
    weights = find_checkpoint(source)
    spec = read_spec(weights.parent)
    state = read_state_dict(weights)
    kind = None if spec is not None else official.official_kind(state)
    if spec is not None:
        config = run_config(spec, cfg, user_keys)
        tokenizer_file, tokenizer_sha256 = checked_tokenizer_file(spec, weights.parent,
                                                                  config.tokenizer.get("checkpoint"))
        random_tokenizer = tokenizer_path(weights.parent, spec).resolve() == (weights.parent.parent /
                                                                              RUN_TOKENIZER).resolve()
    else:
        config, tokenizer_file = (official_config(weights, kind, cfg) if kind else
                                  without_spec(weights, cfg, architecture_from_command_line))
        tokenizer_sha256, random_tokenizer = file_sha256(tokenizer_file), False
    with open_dict(config):
        config.tokenizer.checkpoint = str(tokenizer_file)
    model, tokenizer = build_model(config), build_tokenizer(config)
    if kind:
        official.load_official_weights(model, state, kind, str(weights))
        if kind == "aim":
            official.check_aim_tokenizer(state, tokenizer, tokenizer_file)
    else:
        load_strict(model, state, f"checkpoint {weights}")
    return TrainedRun(model=model.to(device).eval(), tokenizer=tokenizer.to(device).eval(),
                      config=config, checkpoint=weights, checkpoint_sha256=file_sha256(weights),
                      tokenizer_file=tokenizer_file, tokenizer_sha256=tokenizer_sha256,
                      run_spec=spec is not None, official=kind, random_tokenizer=random_tokenizer)


def load_for_task(cfg: DictConfig, device) -> TrainedRun:
    """The run a task (sample, evaluate) works on: `task.checkpoint` (a model.safetensors or a checkpoint folder) or
    the latest checkpoint under `run_dir`, rebuilt from its spec with the command line checked against it."""
    return load_run(cfg.task.get("checkpoint") or cfg.run_dir, cfg, command_line_keys(), device,
                    architecture_from_command_line=bool(cfg.task.get("architecture_from_command_line")))


def checked_tokenizer_file(spec: dict, folder: Path, given) -> tuple[Path, str]:
    """The tokenizer file to load, `given` (the user's) or the recorded one, and its sha256, which must be the
    recorded one."""
    recorded, want = tokenizer_path(folder, spec), spec["tokenizer"]["sha256"]
    path = Path(given) if given else recorded
    if not path.is_file():
        raise ValueError(f"the run's tokenizer {path} is missing: point tokenizer.checkpoint at a copy of it "
                         f"(sha256 {want})")
    if (sha := file_sha256(path)) != want:
        raise ValueError(f"tokenizer {path} has sha256 {sha}, but the run was trained with {recorded} "
                         f"(sha256 {want}): give the run's tokenizer")
    return path, sha


def without_spec(weights: Path, cfg: DictConfig | None, from_command_line: bool) -> tuple[DictConfig, Path]:
    """The config and tokenizer of a checkpoint that has no spec: the caller's, when asked for by name."""
    if cfg is None or not from_command_line:
        raise ValueError(f"{weights} is not a recognised official VAR / M-VAR / AiM checkpoint (its keys match "
                         f"none of their layouts) and has no run spec beside it (run_spec.json; varbench checkpoints "
                         f"written before specs existed), so its architecture and tokenizer are unknown: retrain, or "
                         f"state them on the command line and set task.architecture_from_command_line=true")
    if not cfg.tokenizer.get("checkpoint"):
        raise ValueError(f"{weights.parent} has no run spec: with task.architecture_from_command_line=true set "
                         f"tokenizer.checkpoint to the tokenizer the model was trained with (never a random one)")
    return cfg.copy(), Path(cfg.tokenizer.checkpoint)


def official_config(weights: Path, kind: str, cfg: DictConfig | None) -> tuple[DictConfig, Path]:
    """The config and tokenizer of an official checkpoint: the caller's recipe and `tokenizer.checkpoint`."""
    example = (f"python run.py task=sample {official.RECIPES[kind].split('|')[0]} task.checkpoint={weights} "
               f"tokenizer.checkpoint=<{'vq_f16.pt' if kind == 'aim' else 'vae_ch160v4096z32.pth'}>")
    if cfg is None:
        raise ValueError(f"{weights} is an official {official.KINDS[kind]} checkpoint: it holds no architecture, so "
                         f"name its recipe and tokenizer, e.g. {example}")
    if not cfg.tokenizer.get("checkpoint"):
        raise ValueError(f"{weights} is an official {official.KINDS[kind]} checkpoint: set tokenizer.checkpoint to "
                         f"the official tokenizer it was trained with, e.g. {example}")
    return cfg.copy(), Path(cfg.tokenizer.checkpoint)


def load(source, device="cpu"):
    """`model, tokenizer = varbench.load(run_dir_or_checkpoint)`: the trained model and its tokenizer, in eval
    mode on `device`, rebuilt from the run spec of the checkpoint (a run directory means its latest checkpoint).
    Then `model.generate(tokenizer, labels, cfg=1.5, top_k=900, top_p=0.96).images` samples images in [0, 1]."""
    run = load_run(source, device=device)
    return run.model, run.tokenizer
