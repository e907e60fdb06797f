"""record(): one JSON line per measurement with its provenance (commit, device, versions, host load, date)."""

import os

from varbench.utils import records


def test_a_record_carries_its_provenance_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("VARBENCH_COMMIT", "abc123+copy")  # the stamp of a copied tree wins over git
    records.git_commit.cache_clear()
    try:
        line = records.record(tmp_path / "r" / "m.jsonl", "latency_ms", 1.5, "ms", config={"a": 1}, device="cpu",
                              batch=4)
    finally:
        records.git_commit.cache_clear()
    (back,) = records.read_records(tmp_path / "r")
    assert back == line
    assert (back["metric"], back["value"], back["unit"], back["batch"], back["config"]) == ("latency_ms", 1.5, "ms", 4,
                                                                                             {"a": 1})
    assert back["commit"] == "abc123+copy" and back["device"].startswith("cpu (")
    assert back["versions"]["torch"] and back["date"].endswith("+00:00")
    assert back["host"]["cpus"] == os.cpu_count() and 0 <= back["host"]["loadavg_1m"] < 10 * os.cpu_count()
