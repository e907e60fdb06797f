"""autotune=first: the first config that runs is taken, the rest are neither compiled nor timed (Triton stand-in:
the wrapper only sees Autotuner._bench's contract, so no GPU or Triton is needed)."""

import math

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
