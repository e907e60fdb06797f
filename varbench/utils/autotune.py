"""Triton autotuning mode, recorded with every measurement (`versions()["triton_autotune"]`).

- `full` (default): the kernel libraries (fla, mamba_ssm) autotune as they ship: on a cold machine every config of
  every kernel is compiled and timed once per shape key (measured: over 3 minutes per fla mixer on an H100).
- `first`: every Triton autotuner takes the first of its configs that compiles and runs here (a config can need
  more shared memory than the GPU has: Triton's autotuner skips it, so must we), without compiling or timing the
  rest. Numerics are the same kernel's; speed can be lower, so speed records say which mode ran.
Set by `autotune=first` in a run's config (or VARBENCH_AUTOTUNE=first in the environment of a script).

Triton can keep an autotuner's timings on disk (its cache folder) and read them back in a later process instead of
tuning: fla asks for this on all its kernels (FLA_CACHE_RESULTS, on by default), and TRITON_CACHE_AUTOTUNING asks
for it on every kernel. Under `first` the timings of all but the first config are infinite, so a `full` run reading
them would take the first config while its records said `full` (the same machine's cache, the same tuning key).
So `first` neither reads nor writes those timings: its autotuners tune in memory only.
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
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:  # no Triton (a CPU machine): nothing autotunes
        return mode
    patched = hasattr(Autotuner._bench, "__wrapped__")
    disk = getattr(Autotuner, "check_disk_cache", None)  # (a Triton before 3.2 keeps no timings on disk)
    if mode == "first" and not patched:
        Autotuner._bench = _first_working(Autotuner._bench)
        Autotuner.run = _forget_tuning_call(Autotuner.run)
        if disk is not None:
            Autotuner.check_disk_cache = _in_memory_only(disk)
    elif mode == "full" and patched:  # a later run of the same process asked for the libraries' own tuning
        Autotuner._bench = Autotuner._bench.__wrapped__
        Autotuner.run = Autotuner.run.__wrapped__
        if hasattr(disk, "__wrapped__"):
            Autotuner.check_disk_cache = disk.__wrapped__
    return mode


def _in_memory_only(check_disk_cache):
    """Wrap Autotuner.check_disk_cache (called only when the autotuner caches its results on disk): tune now, as
    an autotuner that does not cache would, without reading timings from disk or writing this mode's there."""
    def tune_now(self, tuning_key, configs, bench_fn):
        bench_fn()
        return False  # (Triton's meaning: no cached result was used)

    tune_now.__wrapped__ = check_disk_cache
    return tune_now


def _forget_tuning_call(run):
    """Wrap Autotuner.run: once a call ends, drop `_first_working`'s mark of it, which is that call's `nargs`, the
    kernel's arguments. Kept, it held their tensors alive until the autotuner's next tuning: under CUDA graphs
    (train.compile_mode=reduce-overhead) cudagraph trees refused the step ("tensors in the cudagraph pool not tracked
    as outputs", M-VAR-d16, session 32), and outside them it held activation memory."""
    def run_then_forget(self, *args, **kwargs):
        try:
            return run(self, *args, **kwargs)
        finally:
            self.__dict__.pop("_varbench_ran_for", None)

    run_then_forget.__wrapped__ = run
    return run_then_forget


def _first_working(bench):
    """Wrap Autotuner._bench: the configs of one tuning call are tried in order (`self.nargs` is that call's); once
    one ran, the others report an infinite time without being compiled, so the autotuner picks the first that ran."""
    def first_only(self, *args, config, **meta):
        if getattr(self, "_varbench_ran_for", None) is self.nargs:
            return [float("inf")] * 3
        timings = bench(self, *args, config=config, **meta)
        if timings[0] != float("inf"):
            self._varbench_ran_for = self.nargs
        return timings

    first_only.__wrapped__ = bench
    return first_only
