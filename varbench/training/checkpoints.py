"""Training checkpoints: weights as safetensors, the rest (optimizer, scaler, RNG, data position) as a
weights_only-loadable torch file; each written atomically, a `latest` pointer flipped last, keep-last-N."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from varbench.utils.checkpoint import load_object, read_state_dict, save_atomic
from varbench.utils.run_spec import write_spec


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: Path, step: int, tensors: dict, state: dict, keep: int = 3, meta: dict | None = None) -> Path:
    """Write checkpoint `step_<N>` (the model's whole `tensors`, the training `state` and the run spec `meta`, see
    varbench.utils.run_spec) and point `latest` at it; remove all but the newest `keep`."""
    folder = Path(ckpt_dir) / f"step_{step:08d}"
    save_atomic(folder / "model.safetensors", tensors=tensors)
    save_atomic(folder / "state.pt", obj=state)
    if meta is not None:
        write_spec(folder, meta)
    save_atomic(Path(ckpt_dir) / "latest", obj={"step": step, "folder": folder.name})
    for old in sorted(Path(ckpt_dir).glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    return folder


def latest(ckpt_dir: Path) -> Path | None:
    pointer = Path(ckpt_dir) / "latest"
    return Path(ckpt_dir) / load_object(pointer)["folder"] if pointer.is_file() else None


def read(folder: Path) -> tuple[dict, dict]:
    """The model tensors and the training state of checkpoint `folder`."""
    return read_state_dict(folder / "model.safetensors"), load_object(folder / "state.pt")
