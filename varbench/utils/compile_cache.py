"""Where torch.compile keeps what it compiled (`compile_cache_dir` in a run's config), and how much was there.

Inductor caches its generated graphs and kernels (FX graph cache, AOTAutograd cache, Triton binaries) under
TORCHINDUCTOR_CACHE_DIR, by default one folder per user in the machine's temp dir: a cell on a fresh node compiles
from nothing. M-VAR-d16's compiled first step took 164.6 s on a cold machine and 88.3 s on one whose caches an
earlier call had filled (H100, sessions 25 and 26, results/gpu/h100/README.md). `compile_cache_dir=DIR` (e.g. on the
cluster's shared file system) puts Inductor's and Triton's caches there, so a grid's later cells and jobs on other
nodes reuse what the first compiled. The folder also keeps the Triton autotuners' timings (TRITON_CACHE_AUTOTUNING:
mamba_ssm's kernels, those without a pre-hook; fla keeps its kernels' anyway, Inductor its own), so a later run
reads each kernel's tuned config instead of timing every config again; under `autotune=first` nothing is read or
written there (varbench/utils/autotune.py). Triton keys those timings by the GPU's architecture, not its model (an
H100 and an H200 are both sm_90): share one folder among GPUs of one kind only, or a kernel runs the config another
kind timed fastest. Where the cache lives changes no number a run computes (a grid cell's id leaves the key out),
but it changes how long the first step takes: records of a compiled first step carry `compile_cache_state()`, the
folder, how many files it held before compiling and whether it keeps autotune timings.
"""

from __future__ import annotations

import os
from pathlib import Path

INDUCTOR_ENV, TRITON_ENV, AUTOTUNE_ENV = "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING"


def use_compile_cache(directory: str | os.PathLike | None) -> None:
    """Put Inductor's and Triton's caches, and the Triton autotuners' timings, under `directory` for this process
    and its children (None: torch's and Triton's defaults, or what the environment already says). Both read their
    variable when they next compile; an autotuner reads its own when its kernel's module is imported, which
    varbench does when a model first runs its kernels."""
    if directory is None:
        return
    path = Path(directory).expanduser().resolve()
    try:
        (path / "triton").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"compile_cache_dir = {directory!r}: cannot create {path / 'triton'} ({err.strerror}); give "
                         f"a writable folder, or null for torch's default") from err
    os.environ[INDUCTOR_ENV], os.environ[TRITON_ENV] = str(path), str(path / "triton")
    os.environ[AUTOTUNE_ENV] = "1"


def compile_cache_state() -> dict:
    """The folder Inductor caches in, the number of files in it now (0: a cold compile), and whether Triton's
    autotuners keep their timings on disk (`autotune_timings`)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    folder = cache_dir()
    return {"dir": folder, "files": sum(len(files) for _, _, files in os.walk(folder)),
            "autotune_timings": os.environ.get(AUTOTUNE_ENV) == "1"}
