"""Experiment loggers (`logger=tensorboard|wandb|none`, varbench/configs/logger): scalars, hyper-parameters and
sample grids of a run, for a person to look at. The measurements themselves are the JSON records (utils/records.py);
a logger only shows them.

A phase of a run (a task: train_tokenizer, train, sample) opens its own logger with `open_logger(cfg, phase)`, which
logs the resolved config (flattened, `train.batch_size`) as hyper-parameters first:
- tensorboard: event files under `run_dir/tb/<phase>` (`tensorboard --logdir <run_dir>/tb` shows each phase as a run);
- wandb: one W&B run per phase, in the group of the job's `cell_id`, its files under `run_dir/wandb`; `mode: offline`
  (the default) needs no account or network (`wandb sync <run_dir>/wandb/offline-run-*` uploads it later);
- none: nothing.
Only rank 0 of a multi-process run logs (`is_main=False` gives the do-nothing logger).

Shape legend: N images, 3 RGB, H W image side.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from varbench.utils.resume import flatten

LOGGERS = ("tensorboard", "wandb", "none")


class ExperimentLogger:
    """The interface, and the logger that logs nothing (`logger=none`, ranks other than 0). A context manager that
    closes itself. `sample_every`: every how many training steps the trainer logs a sample grid (0: never)."""

    sample_every = 0

    def log_scalars(self, step: int, scalars: dict) -> None:
        """Each `{tag: number}` at training step `step`."""

    def log_hparams(self, hparams: dict) -> None:
        """Hyper-parameters `{dotted key: value}` of the run (values: numbers, strings, booleans; others as text)."""

    def log_images(self, tag: str, images_N3HW: torch.Tensor, step: int, nrow: int | None = None) -> None:
        """Images in [0, 1] as one grid of `nrow` images per row (default: a square grid) at step `step`."""

    def close(self) -> None:
        """Flush and release the files (and the W&B run)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tile(images_N3HW: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """One (3, H', W') float image in [0, 1]: the images in rows of `nrow`, 2 white pixels between them."""
    from torchvision.utils import make_grid
    if images_N3HW.ndim != 4 or images_N3HW.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got {tuple(images_N3HW.shape)}")
    nrow = nrow or math.ceil(math.sqrt(images_N3HW.shape[0]))
    return make_grid(images_N3HW.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)


def plain_value(value):
    """A value TensorBoard's hparams and W&B's config both take: numbers, strings and booleans as they are, None as
    "null", anything else (lists) as its text."""
    if value is None:
        return "null"
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardLogger(ExperimentLogger):
    """Event files under `log_dir` (torch's SummaryWriter); hparams go into the same event file as the scalars."""

    def __init__(self, log_dir, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step or None)

    def log_scalars(self, step: int, scalars: dict) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)

    def log_hparams(self, hparams: dict) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries
        for summary in hparams_summaries({k: plain_value(v) for k, v in hparams.items()}, {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def log_images(self, tag: str, images_N3HW: torch.Tensor, step: int, nrow: int | None = None) -> None:
        self.writer.add_image(tag, tile(images_N3HW, nrow), step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(ExperimentLogger):
    """One W&B run (`wandb.init(**init)`: project, mode, dir, name, group, job_type, ...)."""

    def __init__(self, **init):
        try:
            import wandb
        except ImportError:
            raise ImportError("logger=wandb needs the wandb package: pip install 'varbench[wandb]' (or "
                              "logger=tensorboard | none)") from None
        self.wandb = wandb
        Path(init["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(**init)

    def log_scalars(self, step: int, scalars: dict) -> None:
        self.run.log({tag: float(value) for tag, value in scalars.items()}, step=step)

    def log_hparams(self, hparams: dict) -> None:
        self.run.config.update({k: plain_value(v) for k, v in hparams.items()}, allow_val_change=True)

    def log_images(self, tag: str, images_N3HW: torch.Tensor, step: int, nrow: int | None = None) -> None:
        grid_HW3 = tile(images_N3HW, nrow).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        self.run.log({tag: self.wandb.Image(grid_HW3)}, step=step)

    def close(self) -> None:
        self.run.finish()


def config_hparams(cfg: DictConfig) -> dict:
    """The resolved config as flat `{dotted key: value}` (the `hydra` node left out)."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    tree.pop("hydra", None)
    return flatten(tree)


def open_logger(cfg: DictConfig, phase: str, is_main: bool = True, purge_step: int | None = None) -> ExperimentLogger:
    """The logger `cfg.logger` names, for `phase` (a task name) of the run in `cfg.run_dir`, with the config logged
    as hyper-parameters. `purge_step`: a resumed phase's first step (TensorBoard drops what a killed run logged
    after it). Ranks other than 0 (`is_main=False`) get a logger that logs nothing but has the same `sample_every`
    (every rank samples: a sharded model's forward needs them all)."""
    options = cfg.get("logger")
    name = options.get("name") if options is not None else None
    if name not in LOGGERS:
        raise ValueError(f"logger.name must be one of {list(LOGGERS)} (logger=<name>, varbench/configs/logger), "
                         f"got {name!r}")
    if name == "none":
        return ExperimentLogger()
    run_dir = Path(cfg.run_dir)
    if not is_main:
        logger = ExperimentLogger()
    elif name == "tensorboard":
        logger = TensorBoardLogger(run_dir / "tb" / phase, purge_step)
    else:
        cell = cfg.get("cell_id") or run_dir.name
        logger = WandbLogger(project=options.project, entity=options.get("entity"), mode=options.mode,
                             dir=str(run_dir), name=f"{cell}/{phase}", group=str(cell), job_type=phase,
                             tags=list(options.get("tags") or []))
    logger.sample_every = int(options.get("sample_every") or 0)
    logger.log_hparams(config_hparams(cfg))
    return logger
