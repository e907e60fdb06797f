"""varbench.analysis.versus: every configuration against VAR (Holm over the study) and the tokenizer's variance."""

import json

import numpy as np
import pytest

from varbench.analysis import stats
from varbench.analysis.load import load_records
from varbench.analysis.versus import tokenizer_variance, versus_var

FD = "FD (embedded classifier, 500)"


def _rec(metric, value, mixer, intra, seed, tokenizer="tok-a", **extra):
    return {"metric": metric, "value": value, "unit": "fd", "mixer": mixer, "intra": intra, "depth": 6,
            "resolution": 32, "seed": seed, "cell_id": f"{mixer}-{intra}-{seed}-{tokenizer}",
            "feature_extractor": "varbench-classifier/x", "num_samples": 500, "preset": "eval",
            "tokenizer_id": tokenizer, "date": "2099-01-01T00:00:00+00:00", "synthetic": True, **extra}


def _study(tmp_path, lines):
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return load_records(tmp_path)


# per configuration: FD per seed, val NLL per seed; "best" is far better than VAR, "twin" is VAR within noise
VALUES = {("attention", "none"): ([0.30, 0.31, 0.29, 0.30, 0.32], [3.00, 3.01, 3.02, 3.00, 2.99]),
          ("mamba2", "full"): ([0.20, 0.21, 0.19], [2.90, 2.91, 2.89]),
          ("gla", "none"): ([0.31, 0.29, 0.30], [3.01, 2.99, 3.00])}


def _lines():
    return [_rec(metric, v, m, i, seed, unit=unit) for (m, i), (fd, nll) in VALUES.items()
            for metric, vals, unit in (("embedded_fd", fd, "fd"), ("val_nll", nll, "nats/token"))
            for seed, v in enumerate(vals)]


def test_versus_var_compares_every_configuration_with_var_and_holm_corrects_the_family(tmp_path):
    table = versus_var(_study(tmp_path, _lines()))
    assert set(table.index.get_level_values("Model")) == {"M-VAR-d6", "gla-d6"}  # never VAR against itself
    assert set(table.index.get_level_values("Metric")) == {FD, "Val NLL (nats/token)"}
    row = table.loc[(FD, "M-VAR-d6", 32)]
    var_fd, mvar_fd = VALUES[("attention", "none")][0], VALUES[("mamba2", "full")][0]
    assert row["Difference (config - VAR)"] == pytest.approx(np.mean(mvar_fd) - np.mean(var_fd))
    assert row["95% CI low"] < row["Difference (config - VAR)"] < row["95% CI high"] < 0
    assert row["Seeds (config / VAR)"] == "3 / 5"
    assert row["p (Welch t)"] == pytest.approx(stats.welch_p(mvar_fd, var_fd))
    np.testing.assert_allclose(table["p (Holm)"], stats.holm(table["p (Welch t)"]))  # one family of 4 tests
    assert row["Significant"] == "yes"
    assert table.loc[(FD, "gla-d6", 32), "Significant"] == "no"


def test_tokenizer_variance_uses_the_second_tokenizer_and_the_ranking_uses_the_main_one(tmp_path):
    second = [_rec("embedded_fd", v + 0.05, m, i, seed, tokenizer="tok-b")  # VAR and M-VAR on a second tokenizer
              for (m, i), (fd, _) in VALUES.items() if m != "gla" for seed, v in enumerate(fd[:3])]
    df = _study(tmp_path, _lines() + second)
    table = tokenizer_variance(df)
    fd_part = table.xs(FD, level="Metric")
    assert set(fd_part.index) == {"VAR-d6", "M-VAR-d6", "pooled"}
    var_values = [*VALUES[("attention", "none")][0], *(v + 0.05 for v in VALUES[("attention", "none")][0][:3])]
    expected = stats.variance_components(_frame(var_values, ["tok-a"] * 5 + ["tok-b"] * 3)).iloc[0]
    assert fd_part.loc["VAR-d6", "Tokenizer variance"] == pytest.approx(expected["Tokenizer variance"])
    assert fd_part.loc["VAR-d6", "Tokenizer variance"] > 0
    # the comparison with VAR stays on the main tokenizer (the one most records use): M-VAR's mean is tok-a's
    row = versus_var(df).loc[(FD, "M-VAR-d6", 32)]
    assert row["Difference (config - VAR)"] == pytest.approx(np.mean(VALUES[("mamba2", "full")][0])
                                                             - np.mean(VALUES[("attention", "none")][0]))


def _frame(values, tokenizers):
    import pandas as pd
    return pd.DataFrame({"config": "VAR", "tokenizer": tokenizers, "value": values})


def test_a_tokenizer_per_cell_is_no_second_tokenizer_and_drops_no_seed(tmp_path):
    from varbench.analysis.quality import quality_long
    lines = [{**r, "tokenizer_id": f"runs/cells/{r['cell_id']}/tokenizer.safetensors"} for r in _lines()]
    df = _study(tmp_path, lines)  # a grid that trains one tokenizer per cell (each path used by one cell)
    assert tokenizer_variance(df).empty
    long = quality_long(df)
    assert len(long) == sum(len(fd) for fd, _ in VALUES.values())  # every seed of every configuration kept
    assert versus_var(df).loc[(FD, "M-VAR-d6", 32), "Seeds (config / VAR)"] == "3 / 5"
