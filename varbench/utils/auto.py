"""`auto` for the speed switches that only pay on a GPU (`train.compile`, `task.cuda_graphs`): on where the device is
CUDA, off elsewhere. An explicit true or false is kept as given (true on CPU is allowed where the switch works there,
as compile does; CUDA graphs on CPU stay an error of the sampler, never a silent eager run). Records store the
resolved bool, so each says which ran."""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_auto(value, key: str, device: torch.device | str) -> bool:
    """`value` of config key `key` (true, false or "auto") as a bool for `device`."""
    if value == AUTO:
        return torch.device(device).type == "cuda"
    if isinstance(value, bool):
        return value
    raise ValueError(f"{key} must be true, false or {AUTO!r}, got {value!r}")
