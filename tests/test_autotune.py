"""autotune=first: the first config that runs is taken, the rest are neither compiled nor timed (Triton stand-in:
the wrapper only sees Autotuner._bench's contract, so no GPU or Triton is needed)."""

import math
from pathlib import Path

import pytest

from varbench.utils.autotune import _first_working, apply_autotune_mode


class FakeTuner:
    """What Autotuner._bench reads from `self`: `nargs`, a new dict per tuning call."""

    nargs: dict = {}


def test_first_working_config_wins_and_the_rest_are_skipped():
    ran = []

    def bench(self, *args, config, **meta):  # Triton's _bench: inf when a config cannot run (shared memory)
        ran.append(config)
        return [math.inf] * 3 if config == "too_big" else [1.0, 1.0, 1.0]

    tuner, wrapped = FakeTuner(), _first_working(bench)
    tuner.nargs = {"call": 1}
    timings = {c: wrapped(tuner, config=c) for c in ("too_big", "fits", "faster")}
    assert ran == ["too_big", "fits"]
    assert min(timings, key=lambda c: timings[c][0]) == "fits"
    tuner.nargs = {"call": 2}  # the next tuning call (another shape key) tries again from the first config
    wrapped(tuner, config="too_big")
    wrapped(tuner, config="fits")
    assert ran == ["too_big", "fits", "too_big", "fits"]


def test_first_keeps_no_argument_of_a_tuning_call_once_it_ends():
    """The mark of the call being tuned is its `nargs`: kept after the call, it held the kernel's tensors alive
    (session 32: cudagraph trees refused M-VAR-d16's step, "tensors in the cudagraph pool not tracked as outputs")."""
    import gc
    import weakref

    import torch

    from varbench.utils.autotune import _forget_tuning_call
    bench = _first_working(lambda self, *args, config, **meta: [1.0, 1.0, 1.0])

    def run(self, x):  # Triton's Autotuner.run: nargs for the call, the configs timed, nargs dropped
        self.nargs = {"x": x}
        timings = {c: bench(self, x, config=c) for c in ("a", "b")}
        self.nargs = None
        return min(timings, key=lambda c: timings[c][0])

    tuner, x = FakeTuner(), torch.empty(4)
    alive = weakref.ref(x)
    assert _forget_tuning_call(run)(tuner, x) == "a"
    del x
    gc.collect()
    assert alive() is None


def test_first_neither_reads_nor_writes_the_timings_triton_keeps_on_disk(tmp_path, monkeypatch):
    """fla caches every kernel's autotune timings on disk (FLA_CACHE_RESULTS): under `first` those are infinite
    for all but the first config, so a later `full` run on the same cache would take the first config while
    recording `full`. Under `first` Autotuner.check_disk_cache tunes now and touches no file; `full` gets Triton's
    own back."""
    pytest.importorskip("triton", reason="needs Triton installed (no GPU needed)")
    from triton.runtime.autotuner import Autotuner
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    original = Autotuner.check_disk_cache
    tuned = []
    try:
        apply_autotune_mode("first")
        used_cache = Autotuner.check_disk_cache(FakeTuner(), ("T", 64), ["cfg"], lambda: tuned.append(1))
        assert (used_cache, tuned, list(tmp_path.iterdir())) == (False, [1], [])
    finally:
        apply_autotune_mode("full")
    assert Autotuner.check_disk_cache is original and not hasattr(Autotuner._bench, "__wrapped__")
    assert not hasattr(Autotuner.run, "__wrapped__")


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid modes: \['full', 'first'\]"):
        apply_autotune_mode("fastest")


def _autotuner_patched() -> None:
    from triton.runtime.autotuner import Autotuner
    if not hasattr(Autotuner._bench, "__wrapped__"):
        raise SystemExit(3)


def test_a_fresh_process_runs_under_the_parents_mode(monkeypatch):
    """task=bench times each cell in a spawned process: `autotune=first` must hold there too (session 3's cells
    tuned every config while their records said "first")."""
    pytest.importorskip("triton", reason="needs Triton installed (no GPU needed)")
    from varbench.utils.processes import run_in_fresh_process
    monkeypatch.setenv("VARBENCH_AUTOTUNE", "full")
    try:
        apply_autotune_mode("first")
        assert run_in_fresh_process(_autotuner_patched) == 0
    finally:
        apply_autotune_mode("full")


AUTOTUNE_GLA = """
import sys, torch
from pathlib import Path
from varbench.layout import ScaleLayout
from varbench.registry import build
from varbench.utils.autotune import apply_autotune_mode
apply_autotune_mode(sys.argv[1])
layout = ScaleLayout((1, 2, 4, 8, 16))
mixer = build("mixer", "gla", dim=128, num_heads=2).cuda()
with torch.autocast("cuda", dtype=torch.bfloat16):
    mixer(torch.randn(2, layout.L, 128, device="cuda"), layout).float().sum().backward()
torch.cuda.synchronize()
print(mixer.backend_ran, len(list(Path(sys.argv[2]).rglob("*.autotune.json"))))
"""


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="fla's kernels need CUDA")
def test_on_cuda_first_leaves_no_autotune_timings_on_disk_and_full_keeps_them(tmp_path):
    """fla's kernels cache their autotune timings on disk: a `first` run writes none (a `full` run on the same
    cache would read its untuned choice), a `full` run writes them."""
    import os
    import subprocess
    import sys
    pytest.importorskip("fla", reason="needs fla")
    counts = {}
    for mode in ("first", "full"):
        cache = tmp_path / mode
        env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
        out = subprocess.run([sys.executable, "-c", AUTOTUNE_GLA, mode, str(cache)], capture_output=True,
                             text=True, env=env, timeout=600, cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, out.stderr[-3000:]
        backend, count = out.stdout.split()[-2:]
        assert backend == "fla", backend
        counts[mode] = int(count)
    assert counts["first"] == 0 and counts["full"] > 0, counts
