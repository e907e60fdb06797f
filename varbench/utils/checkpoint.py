"""Safe reading of weight files: safetensors, or torch pickles restricted to tensors (weights_only=True)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """A flat str -> Tensor mapping from a dict, a `.safetensors` file or a `.pth`/`.pt` file.

    A pickle holding anything but tensors and plain containers is refused (torch.load with weights_only=True).
    A wrapped checkpoint ({"model": {...}} or VAR's {"trainer": {"var_wo_ddp": {...}}}) must be unwrapped by the caller.
    """
    if isinstance(source, dict):
        sd = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                raise ValueError(f"{path} is not a plain tensor checkpoint (refused to unpickle arbitrary objects): "
                                 f"{str(err).splitlines()[0]}") from err
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"a state dict maps names to tensors; these entries are not tensors: {bad[:10]}")
    return sd


def load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) with an error that names every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(sd)) if sd[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise ValueError(f"{what} does not match the model:\n  missing keys: {missing}\n  unexpected keys: {extra}\n"
                         f"  shape mismatches: {shapes}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
