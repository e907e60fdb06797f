"""The floors table (varbench/analysis/floors.py, issue 19 item 4): per study, real-vs-real and the tokenizer's
reconstructions on each quality metric, beside the study's best configuration and VAR, on the main tokenizer, a
configuration run by two studies counted in each, and a row per tokenizer where configurations read different ones."""

import json

import pandas as pd
import pytest

from varbench.analysis.floors import floors_table
from varbench.analysis.load import load_records


def line(metric: str, value: float, mixer="attention", seed=0, tokenizer="t1", num_samples=1000,
         intra="none") -> dict:
    return {"metric": metric, "value": value, "unit": "fd", "feature_extractor": "varbench-classifier/x",
            "num_samples": num_samples, "preset": "eval", "cfg": 1.5, "mixer": mixer, "intra": intra, "depth": 2,
            "resolution": 32, "seed": seed, "cell_id": f"{mixer}{seed}{tokenizer}", "tokenizer_id": tokenizer,
            "date": "2099-01-01T00:00:00+00:00"}


def write(folder, lines):
    folder.mkdir(parents=True)
    (folder / "evaluate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_each_study_s_floors_sit_beside_its_best_configuration_and_var(tmp_path):
    cells = [line("embedded_fd", v, mixer, seed) for mixer, values in (("attention", (0.5, 0.7)), ("gla", (0.3, 0.1)))
             for seed, v in enumerate(values)]
    floors = [line("embedded_fd_floor", 0.01, mixer, seed, num_samples=800) for mixer, seed in (("attention", 0),
                                                                                                ("gla", 1))]
    recons = [line("embedded_fd_recon", 0.05, "gla", 1, num_samples=800)]
    second = [line("embedded_fd_recon", 0.09, "attention", s, tokenizer="t2", num_samples=800) for s in (2, 3)]
    raster = [line(metric, v, "mamba2", seed, tokenizer="t3", intra="raster", num_samples=n) for seed in (0, 1)
              for metric, v, n in (("embedded_fd", 0.4 + seed, 1000), ("embedded_fd_recon", 0.2, 800))]
    write(tmp_path / "a", cells + floors + recons + second[:1] + raster)  # one record on a second tokenizer: not
    # the main; the raster arm reads a tokenizer of its own (a single-scale twin): its reconstructions get their row
    write(tmp_path / "b", [line("embedded_fd", 0.9, "attention", s) for s in (0, 1)] +
          [line("embedded_fd_floor", 0.02, num_samples=800)])
    table = floors_table(load_records(tmp_path))
    a = table.loc[(str(tmp_path / "a"), "FD (embedded classifier)", "t1")]
    assert a["Real vs real (floor)"] == 0.01 and a["Tokenizer reconstructions"] == 0.05
    assert a["Real images (n)"] == 800 and a["Best configuration"] == "gla-d2"
    assert a["Best (mean over seeds)"] == pytest.approx(0.2) and a["VAR (mean over seeds)"] == pytest.approx(0.6)
    # the configurations' own sample count beside the floor's 800 (session 21: FID-10k read against n = 6400)
    assert a["Configurations measured as"] == "FD (embedded classifier, 1k, cfg 1.5)"
    a3 = table.loc[(str(tmp_path / "a"), "FD (embedded classifier)", "t3")]
    assert a3["Tokenizer reconstructions"] == 0.2 and a3["Best configuration"] == "mamba2+raster-d2"
    assert a3["Best (mean over seeds)"] == pytest.approx(0.9) and pd.isna(a3["VAR (mean over seeds)"])
    b = table.loc[(str(tmp_path / "b"), "FD (embedded classifier)", "t1")]  # VAR in b too: counted in each study
    assert b["Real vs real (floor)"] == 0.02 and b["VAR (mean over seeds)"] == pytest.approx(0.9)


def test_without_floor_records_there_is_no_table(tmp_path):
    write(tmp_path / "a", [line("embedded_fd", 0.5)])
    assert floors_table(load_records(tmp_path)).empty
