"""Safe reading and strict loading of weight files: safetensors, or torch pickles restricted to tensors.

Nothing here unpickles arbitrary objects: `.pth` files go through `torch.load(weights_only=True)`, which refuses
any pickle holding more than tensors and plain containers, and never runs its code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """A flat str -> Tensor mapping from a mapping, a `.safetensors` file or a `.pth`/`.pt` file (onto the CPU)."""
    if isinstance(source, Mapping):
        sd, origin = source, "state dict"
    else:
        path, origin = Path(source), str(source)
        if not path.is_file():
            raise ValueError(f"checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
                cause = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(f"refusing to load {path}: it is not a plain tensor checkpoint (torch.load with "
                                 f"weights_only=True failed, e.g. it pickles arbitrary Python objects). "
                                 f"Cause: {cause}") from e
    check_flat_tensor_mapping(sd, origin)
    return dict(sd)


def check_flat_tensor_mapping(sd, origin: str) -> None:
    """Raise ValueError unless `sd` is a mapping of str -> Tensor (no nesting, no other objects)."""
    if not isinstance(sd, Mapping):
        raise ValueError(f"{origin}: expected a flat mapping of str -> Tensor, got {type(sd).__name__}")
    bad = [(k, type(v).__name__) for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        nested = any(isinstance(sd[k], Mapping) for k, _ in bad if isinstance(k, str))
        hint = " (a nested checkpoint? pass its state dict, e.g. ckpt['model'])" if nested else ""
        raise ValueError(f"{origin}: expected a flat mapping of str -> Tensor; offending entries: {bad[:10]}{hint}")


def compare_keys(model_sd: Mapping, sd: Mapping) -> list[str]:
    """Human-readable problems between a model's state dict and a checkpoint (empty when they match)."""
    missing = sorted(set(model_sd) - set(sd))
    unexpected = sorted(set(sd) - set(model_sd))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
              for k in model_sd if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {shapes}")
    return problems


def load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True), converting floating tensors to the module's dtypes, with an error that
    names every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    problems = compare_keys(own, sd)
    if problems:
        raise ValueError(f"{what} does not match the model: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}, strict=True)


def save_atomic(path, *, tensors: Mapping[str, torch.Tensor] | None = None, obj=None) -> Path:
    """Write a file so that a reader (or a run killed mid-write) never sees half of it: write to a temporary
    file in the same folder, fsync, then rename over the target. `tensors` go to safetensors (weights);
    `obj` goes through torch.save and must be loadable with weights_only=True (optimizer/scheduler/RNG state)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tensors is not None:
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    else:
        torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_object(path):
    """torch.load of a training-state file, restricted to tensors and plain containers."""
    return torch.load(path, map_location="cpu", weights_only=True)
