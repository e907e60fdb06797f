"""benchmarks/sample_profile.py (issue 18 goal 2: where an eager generation's time goes): the parts it labels cover
the whole generation once (no range counted twice, none missed), and the GPU's busy time is the union of kernel
intervals. Its GPU-only half (host syncs by call site) runs on the device machine."""

from __future__ import annotations

import json

import pytest
from helpers import benchmark_script

TINY = ["--width", "64", "--ch", "32", "--warmup", "1", "--repeats", "1"]  # a small model, one timed generation


def test_busy_time_is_the_union_of_kernel_intervals():
    busy_ms = benchmark_script("sample_profile").busy_ms
    assert busy_ms([(0, 1000), (500, 1500), (3000, 4000), (3100, 3200)]) == pytest.approx(2.5)  # overlaps once
    assert busy_ms([]) == 0.0


def test_the_labelled_parts_add_up_to_the_whole_generation(tmp_path):
    out = tmp_path / "profile.jsonl"
    benchmark_script("sample_profile").main([str(out), *TINY])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    whole = next(r["value"] for r in records if r["metric"] == "profiled_generation_ms")
    parts = {r["part"]: r["value"] for r in records if r["metric"] == "part_time_ms"}
    assert set(parts) >= {"block.attention", "block.ffn", "block.other", "head", "sample", "next_input", "decode"}
    assert all(v >= 0 for v in parts.values()) and parts["block.attention"] > 0 and parts["decode"] > 0
    assert parts["block.mixer"] == parts["block.intra"] == 0  # VAR's mixer is its attention; it has no intra branch
    # every moment of the generation belongs to exactly one part: nested ranges are counted in the innermost only
    assert sum(parts.values()) == pytest.approx(whole, rel=0.05)


def test_an_mvar_profile_gives_its_mixer_and_intra_branch_parts_of_their_own(tmp_path):
    """--model mvar: M-VAR's Mamba2 steps and intra-scale attention are labelled parts (none called attention), the
    parts still add up to the whole, and the records name the mixer and intra variant."""
    out = tmp_path / "profile.jsonl"
    benchmark_script("sample_profile").main([str(out), "--model", "mvar", *TINY])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    whole = next(r["value"] for r in records if r["metric"] == "profiled_generation_ms")
    parts = {r["part"]: r["value"] for r in records if r["metric"] == "part_time_ms"}
    assert parts["block.mixer"] > 0 and parts["block.intra"] > 0 and parts["block.attention"] == 0
    assert sum(parts.values()) == pytest.approx(whole, rel=0.05)
    assert {(r["mixer"], r["intra"]) for r in records} == {("mamba2", "full")}


def test_kernels_are_summed_by_name_largest_first():
    from types import SimpleNamespace as NS

    def event(name, start, end, device="CUDA"):
        return NS(name=name, device_type=NS(name=device), time_range=NS(elapsed_us=lambda: end - start))
    events = [event("gemm", 0, 3000), event("norm", 3000, 4000), event("gemm", 4000, 6000),
              event("aten::mm", 0, 9000, device="CPU"),  # a host range is not a kernel,
              event("block.ffn", 0, 6000)]  # nor a labelled range's span on the GPU's timeline
    assert benchmark_script("sample_profile").kernel_totals(events) == [{"kernel": "gemm", "gpu_ms": 5.0, "calls": 2},
                                                   {"kernel": "norm", "gpu_ms": 1.0, "calls": 1}]
