"""record(): one JSON line per measurement with its provenance (commit, device, versions, host load, date)."""

import json
import logging
import os
from pathlib import Path

import pytest

from varbench.utils import records
from varbench.utils.paths import REPO


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


def test_a_record_names_the_cuda_allocator_settings_its_memory_peaks_depend_on(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert not set(records.ALLOCATOR_SETTINGS) & set(records.record(tmp_path / "a.jsonl", "m", 1, "u")["versions"])
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    line = records.record(tmp_path / "b.jsonl", "peak_mem", 1, "bytes")
    assert line["versions"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_non_finite_values_are_written_as_null_in_strict_json(tmp_path):
    path = tmp_path / "m.jsonl"
    records.record(path, "train_summary", float("nan"), "nats", device="cpu", speeds=[1.0, float("inf")])
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} written"))
    assert back["value"] is None and back["speeds"] == [1.0, None]


def test_an_append_after_a_cut_line_starts_on_a_fresh_line_and_the_cut_is_reported(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    records.record(path, "a", 1.0, "x", device="cpu")
    with open(path, "a") as f:
        f.write('{"metric": "b", "val')  # a line cut short by a full disk
    records.record(path, "c", 3.0, "x", device="cpu")
    good, bad = records.read_jsonl(path)
    assert [r["metric"] for r in good] == ["a", "c"]
    assert [(b.file, b.line) for b in bad] == [(str(path), 2)]
    with caplog.at_level(logging.WARNING):
        assert [r["metric"] for r in records.read_records(path)] == ["a", "c"]
    assert f"{path}:2" in caplog.text


def test_replace_records_swaps_only_the_matching_records(tmp_path):
    path = tmp_path / "m.jsonl"
    for metric, cell in (("cost", 1), ("cost", 2), ("other", 1)):
        records.record(path, metric, 0.0, "x", device="cpu", cell=cell)
    new = records.make_record("cost", 5.0, "x", device="cpu", cell=1)
    assert records.replace_records(path, [new], lambda r: r["metric"] == "cost" and r["cell"] == 1) == 1
    back = [(r["metric"], r["cell"], r["value"]) for r in records.read_records(path)]
    assert sorted(back) == [("cost", 1, 5.0), ("cost", 2, 0.0), ("other", 1, 0.0)]


def test_the_repository_root_is_the_checkout_above_the_package():
    # records cite this folder's git commit and the notebooks read results/ under it: the checkout these tests are in
    assert REPO == Path(__file__).resolve().parents[1] and (REPO / "varbench" / "__init__.py").is_file()
