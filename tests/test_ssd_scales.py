"""benchmarks/ssd_scales.py (issue 18 goal 2, M-VAR sampling): the chunk it fits to a scale, and that a one-chunk SSD
scan from a carried state gives the same outputs and final state with the configured chunk as with the fitted one
(the reference scan on a CPU; the kernels' comparison is recorded by the script on a GPU)."""

from __future__ import annotations

import json

from helpers import benchmark_script


def test_the_fitted_chunk_is_the_next_power_of_two_of_the_scale_within_16_and_the_configured_chunk():
    fitted = benchmark_script("ssd_scales").fitted_chunk
    assert [fitted(p * p, 256) for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)] == [
        16, 16, 16, 16, 32, 64, 64, 128, 256, 256]
    assert fitted(169, 128) == 128 and fitted(300, 256) == 256  # never above the configured chunk


def test_a_one_chunk_scan_from_a_carried_state_is_the_same_with_the_fitted_chunk(tmp_path):
    out = tmp_path / "ssd.jsonl"
    benchmark_script("ssd_scales").main([str(out), "--tiny"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["tokens"], r["chunk_kind"]) for r in records} == {
        (t, kind) for t in (1, 4, 25) for kind in ("configured", "fitted")}
    fitted = [r for r in records if r["chunk_kind"] == "fitted"]
    assert [r["chunk_size"] for r in fitted] == [16, 16, 32]
    assert all(r["bitwise_equal"] and r["value"] > 0 for r in fitted)
