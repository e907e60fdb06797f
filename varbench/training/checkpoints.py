"""Training checkpoints: weights as safetensors, the rest (optimizer, scaler, RNG, data position, the run's config) as
a weights_only-loadable torch file; each written atomically, a `latest` pointer flipped last, keep-last-N.

A checkpoint folder `step_<N>` is complete when all of FILES are in it (each is renamed into place whole, the state
last). Retention never removes the checkpoint `latest` points to, nor a complete checkpoint while keeping an
incomplete one (a folder a killed run left half-written). `save_training` / `resume_training` write and restore a
training run's whole state (the AR loop's, varbench/training/loop.py), FSDP2 shards and every rank's RNG included."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from varbench.utils.checkpoint import load_object, load_strict, read_state_dict, remove_stale_temps, save_atomic
from varbench.utils.dist import DistInfo
from varbench.utils.hashing import file_sha256
from varbench.utils.log import get_logger
from varbench.utils.resume import TILING_KEYS, refuse_changed_config
from varbench.utils.run_spec import read_spec, write_spec

log = get_logger(__name__)

FILES = ("model.safetensors", "state.pt")  # written in this order; all present = complete
# the config groups that decide what training computes; compared on resume, except the keys of RESUMABLE
COMPARED = ("seed", "model", "mixer", "intra", "tokenizer", "data", "train")
RESUMABLE = ("train.steps", "train.log_every", "train.nll_every", "train.nll_images", "train.ckpt_every",
             "train.keep_last", "data.num_workers", "data.prefetch_factor",  # the loader's: same batches (data/batches)
             *TILING_KEYS)


def rng_state() -> dict:
    """This process's random state: torch's CPU generator and, where CUDA is, every device's."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    """Restore a `rng_state()` (its CUDA part only where CUDA is)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: Path, step: int, tensors: dict, state: dict, keep: int = 3, meta: dict | None = None) -> Path:
    """Write checkpoint `step_<N>` (the model's whole `tensors`, the training `state` and the run spec `meta`, see
    varbench.utils.run_spec) and point `latest` at it; then keep `keep` checkpoints (see `prune`)."""
    check_keep_last(keep)
    folder = Path(ckpt_dir) / f"step_{step:08d}"
    try:
        save_atomic(folder / "model.safetensors", tensors=tensors)
        save_atomic(folder / "state.pt", obj=state)
        if meta is not None:
            write_spec(folder, meta)
    except BaseException:
        if folder != _pointed(ckpt_dir):  # a full disk: no model-sized half checkpoint stays behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    save_atomic(Path(ckpt_dir) / "latest", obj={"step": step, "folder": folder.name})
    prune(ckpt_dir, keep)
    return folder


def check_keep_last(keep) -> None:
    """A clear error for a `train.keep_last` that is not an integer >= 1."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"train.keep_last must be an integer >= 1 (the checkpoints kept, the newest included), "
                         f"got {keep!r}")


def step_of(folder: Path) -> int:
    """The step of a `step_<N>` checkpoint folder."""
    return int(folder.name.removeprefix("step_"))


def step_of_weights(weights) -> int | None:
    """The training step of a checkpoint's model.safetensors (from its `step_<N>` folder); None for a file kept
    elsewhere."""
    folder = Path(weights).parent.name
    return int(folder.removeprefix("step_")) if folder.startswith("step_") and folder[5:].isdigit() else None


def step_folders(ckpt_dir: Path) -> list[Path]:
    """The `step_<N>` folders of `ckpt_dir` (anything else there is not a checkpoint and is left alone)."""
    return [f for f in Path(ckpt_dir).glob("step_*") if f.is_dir() and f.name.removeprefix("step_").isdigit()]


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint folder holds every file of FILES (a killed save leaves it without some)."""
    return all((folder / name).is_file() for name in FILES)


def prune(ckpt_dir: Path, keep: int) -> list[Path]:
    """Keep the checkpoint `latest` points to and the newest `keep - 1` complete ones below its step; remove every
    other `step_*` folder (incomplete ones, and those past `latest` that a run killed before flipping the pointer
    left: the resumed run writes them again). Returns the removed folders."""
    check_keep_last(keep)
    current = latest(ckpt_dir)
    if current is None:
        return []
    folders = step_folders(ckpt_dir)
    older = sorted((f for f in folders if step_of(f) < step_of(current) and is_complete(f)), key=step_of)
    kept = {current, *(older[-(keep - 1):] if keep > 1 else [])}
    removed = [f for f in folders if f not in kept]
    for folder in removed:
        shutil.rmtree(folder)
    return removed


def latest(ckpt_dir: Path) -> Path | None:
    """The checkpoint folder `latest` points to (None when there is no pointer)."""
    folder = _pointed(ckpt_dir)
    if folder is not None and not is_complete(folder):
        raise ValueError(f"{Path(ckpt_dir) / 'latest'} points to {folder}, which lacks some of {list(FILES)}: the "
                         f"checkpoints were changed by hand; restore the folder or remove the pointer")
    return folder


def _pointed(ckpt_dir: Path) -> Path | None:
    pointer = Path(ckpt_dir) / "latest"
    return Path(ckpt_dir) / load_object(pointer)["folder"] if pointer.is_file() else None


def last_good(ckpt_dir: Path, bad_step: int) -> Path | None:
    """The newest complete checkpoint written before step `bad_step`, whose weights gave a finite loss (the one at
    `bad_step` holds the weights that gave the non-finite one)."""
    folders = [f for f in step_folders(ckpt_dir) if is_complete(f) and step_of(f) < bad_step]
    return max(folders, key=step_of, default=None)


def run_config(cfg: DictConfig) -> dict:
    """The resolved groups of `cfg` that decide what training computes (stored in every checkpoint's state)."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in COMPARED if key in cfg}


def check_resumable(state: dict, cfg: DictConfig, folder: Path) -> None:
    """Refuse to resume checkpoint `folder` under a config that differs from its own outside RESUMABLE."""
    if "config" not in state:
        raise ValueError(f"cannot resume {folder}: its state records no config (written by an older varbench), so "
                         f"a changed setting could not be detected; start a new run_dir")
    refuse_changed_config(state["config"], run_config(cfg), RESUMABLE, folder)


def of_run(cfg: DictConfig) -> Path | None:
    """The checkpoints folder of `cfg`'s run_dir; None where run_dir is not known yet (a config composed outside its
    Hydra job, such as a grid cell's in a dry run)."""
    run_dir = OmegaConf.select(cfg, "run_dir", throw_on_resolution_failure=False)
    return Path(run_dir) / "checkpoints" if run_dir else None


def check_resumable_from_spec(ckpt_dir: Path, cfg: DictConfig) -> None:
    """`check_resumable` against the latest checkpoint's run spec (a small JSON file, not the optimizer state), for
    a config check before anything runs: a main job whose data set changed trained a new shared tokenizer for
    minutes, then its train step refused to resume and blamed the tokenizer. Not compared here: the seed (the spec
    has none) and what an earlier step of the main job sets (the tokenizer's file, the token cache); the resume
    compares them all."""
    folder = latest(ckpt_dir)
    saved = (read_spec(folder) or {}).get("config") if folder is not None else None
    if saved is not None:
        now = {group: values for group, values in run_config(cfg).items() if group in saved}
        refuse_changed_config(saved, now, (*RESUMABLE, "tokenizer.checkpoint", "train.token_cache"), folder)


def check_same_tokenizer(ckpt_dir: Path, tokenizer_file) -> None:
    """Refuse to resume when the tokenizer weights at `tokenizer_file` are not those the latest checkpoint's run spec
    names: `tokenizer.checkpoint` is a path, and the file there may have been replaced since (the model would go on
    training on other codes, and its records would name the new weights only)."""
    folder = latest(ckpt_dir)
    saved = ((read_spec(folder) or {}).get("tokenizer") or {}).get("sha256") if folder is not None else None
    if saved is not None and saved != (now := file_sha256(tokenizer_file)):
        raise ValueError(f"cannot resume {folder}: it trained with tokenizer weights of sha256 {saved}, but "
                         f"tokenizer.checkpoint={tokenizer_file} now holds {now}; restore that file, or start a new "
                         f"run_dir")


def read(folder: Path) -> tuple[dict, dict]:
    """The model tensors and the training state of checkpoint `folder`."""
    return read_state_dict(folder / "model.safetensors"), load_object(folder / "state.pt")


def _is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 holds the parameters as shards (DTensors)."""
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def save_training(ckpt_dir, step, model, optimizer, scaler, cfg: DictConfig, info: DistInfo,
                  spec: dict | None = None) -> None:
    """Checkpoint `step` of a training run: the whole weights (gathered from FSDP2 shards), the optimizer, the loss
    scaler, every rank's RNG and the run config (`save`), written by rank 0; every rank returns after it."""
    if _is_sharded(model):  # gather whole tensors: a collective (every rank calls it), rank 0 receives them
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        tensors, optim = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
    else:
        tensors, optim = model.state_dict(), optimizer.state_dict()
    # each rank draws its own dropout and class dropout (tasks/train.py seeds seed * W + rank): keep every rank's RNG
    rngs = [rng_state()]
    if info.world_size > 1:
        rngs = [None] * info.world_size
        torch.distributed.all_gather_object(rngs, rng_state())
    if info.is_main:
        state = {"step": step, "optimizer": optim, "scaler": scaler.state_dict(), "rng": rngs[0], "rng_per_rank": rngs,
                 "config": run_config(cfg)}
        save(ckpt_dir, step, tensors, state, cfg.train.keep_last, meta=spec)
    if info.world_size > 1:
        torch.distributed.barrier()


def resume_training(ckpt_dir: Path, model, optimizer, scaler, cfg: DictConfig, info: DistInfo) -> int:
    """The step to start from: 0 in a fresh run dir, else that of the checkpoint `latest` names, restored into the
    model, optimizer, scaler and RNG. First checks keep_last (before training, not at the first save) and removes
    the temporary files a killed run left (as large as the model)."""
    check_keep_last(cfg.train.keep_last)
    if info.is_main:
        remove_stale_temps(ckpt_dir)
    if (folder := latest(ckpt_dir)) is None:
        return 0
    state = _restore(folder, model, optimizer, cfg)
    scaler.load_state_dict(state["scaler"])
    per_rank = state.get("rng_per_rank") or [state["rng"]]  # (checkpoints before session 21: rank 0's only)
    if len(per_rank) != info.world_size:
        log.warning("resuming %s with %d processes, written by %d: the ranks' random streams (dropout, class "
                    "dropout) are not those of an uninterrupted run; every rank takes rank 0's", folder,
                    info.world_size, len(per_rank))
    set_rng_state(per_rank[info.rank] if len(per_rank) == info.world_size else per_rank[0])
    return state["step"]


def _restore(folder, model, optimizer, cfg: DictConfig) -> dict:
    """Load checkpoint `folder` into the model and optimizer (whole tensors; FSDP2 re-shards them on every rank),
    after checking that it was trained under the settings of `cfg` (RESUMABLE may differ)."""
    tensors, state = read(folder)
    check_resumable(state, cfg, folder)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        set_state_dict(model, optimizer, model_state_dict=tensors, optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
    else:
        load_strict(model, tensors, f"checkpoint {folder}")
        optimizer.load_state_dict(state["optimizer"])
    return state


