"""Triton autotuning mode, recorded with every measurement (`versions()["triton_autotune"]`).

- `full` (default): the kernel libraries (fla, mamba_ssm) autotune as they ship: on a cold machine every config of
  every kernel is compiled and timed once per shape key (measured: over 3 minutes per fla mixer on an H100).
- `first`: every Triton autotuner takes the first config that survives its own pruning, without compiling or timing
  the others. Numerics are the same kernel's; speed can be lower, so speed records say which mode ran.
Set by `autotune=first` in a run's config (or VARBENCH_AUTOTUNE=first in the environment of a script).
"""

from __future__ import annotations

import os

ENV = "VARBENCH_AUTOTUNE"
MODES = ("full", "first")


def autotune_mode() -> str:
    """The mode in force in this process."""
    return os.environ.get(ENV, "full")


def apply_autotune_mode(mode: str | None = None) -> str:
    """Put `mode` (default: the environment's) in force for every Triton autotuner of this process; return it."""
    mode = mode or autotune_mode()
    if mode not in MODES:
        raise ValueError(f"unknown autotune mode {mode!r}; valid modes: {list(MODES)}")
    os.environ[ENV] = mode  # child processes (DDP workers, data loaders) inherit it
    if mode == "first":
        try:
            from triton.runtime.autotuner import Autotuner
        except ImportError:  # no Triton (a CPU machine): nothing autotunes
            return mode
        if not getattr(Autotuner.prune_configs, "_varbench_first", False):
            prune = Autotuner.prune_configs

            def first_only(self, kwargs, *args, **kw):
                return prune(self, kwargs, *args, **kw)[:1]

            first_only._varbench_first = True
            Autotuner.prune_configs = first_only
    return mode
