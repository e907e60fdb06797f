"""varbench.analysis.stats: Holm, bootstrap intervals, Welch tests against the reference, variance components."""

import numpy as np
import pandas as pd
import pytest

from varbench.analysis import stats


def test_holm_matches_hand_computed_adjustment():
    # sorted: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02 0.03 0.06 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_leaves_nan_out_of_the_family_and_caps_at_one():
    adjusted = stats.holm([0.5, np.nan, 0.2])
    np.testing.assert_allclose(adjusted, [0.5, np.nan, 0.4])
    np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])


def test_holm_rejects_a_value_outside_0_1():
    with pytest.raises(ValueError, match="1.5"):
        stats.holm([0.1, 1.5])


def test_welch_p_matches_scipy():
    from scipy.stats import ttest_ind
    a, b = [1.0, 1.2, 0.9, 1.4], [0.5, 0.7, 0.65]
    assert stats.welch_p(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert np.isnan(stats.welch_p([1.0], b))


def test_bootstrap_interval_covers_the_true_difference_on_synthetic_data():
    rng = np.random.default_rng(123)
    a, b = rng.normal(1.0, 0.5, 8), rng.normal(0.3, 0.5, 8)
    diff, lo, hi = stats.bootstrap_diff(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert lo < 0.7 < hi and lo < diff < hi
    # the same interval as scipy's percentile bootstrap (a different resampler: agreement to Monte-Carlo error)
    from scipy.stats import bootstrap
    ref = bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), method="percentile",
                    n_resamples=10_000, random_state=1).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)


def test_bootstrap_interval_has_close_to_nominal_coverage():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):
        a, b = rng.normal(0.2, 1.0, 20), rng.normal(0.0, 1.0, 20)
        _, lo, hi = stats.bootstrap_diff(a, b, n_resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += lo < 0.2 < hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_is_reproducible_and_needs_two_values_per_side():
    a, b = [1.0, 2.0, 3.0], [0.0, 1.0, 1.5]
    assert stats.bootstrap_diff(a, b) == stats.bootstrap_diff(a, b)
    diff, lo, hi = stats.bootstrap_diff([1.0], b)
    assert diff == pytest.approx(1.0 - np.mean(b)) and np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="n_resamples=10"):
        stats.bootstrap_diff(a, b, n_resamples=10)


def test_against_reference_compares_with_the_reference_not_the_best_row_and_holm_corrects():
    seeds = range(5)
    rows = [("var", s, 10.0 + 0.1 * s, 3.0 + 0.01 * s) for s in seeds]
    rows += [("good", s, 5.0 + 0.1 * s, 2.9 + 0.01 * s) for s in seeds]  # the best row
    rows += [("same", s, 10.0 + 0.1 * s + (0.05 if s % 2 else -0.05), 3.0 + 0.01 * s) for s in seeds]
    per_seed = pd.DataFrame(rows, columns=["config", "seed", "FID", "NLL"]).set_index(["config", "seed"])
    out = stats.against_reference(per_seed, ["FID", "NLL"], lambda key: "var")
    assert set(out["config"]) == {"good", "same"}  # the reference is not compared with itself
    good = out[(out["config"] == "good") & (out["Metric"] == "FID")].iloc[0]
    assert good["Difference"] == pytest.approx(-5.0) and good["CI low"] <= -5.0 <= good["CI high"]
    assert good["Seeds"] == 5 and good["Ref. seeds"] == 5
    np.testing.assert_allclose(out["p (Holm)"], stats.holm(out["p (Welch t)"]))
    assert good["Significant"] == "yes"
    assert out[(out["config"] == "same") & (out["Metric"] == "FID")]["Significant"].iloc[0] == "no"


def test_variance_components_match_a_hand_computed_anova():
    # config a: tokenizer t1 = 1,2,3 and t2 = 4,5,6 -> MS_tok = 13.5, MS_seed = 1, n0 = 3 -> tokenizer 12.5 / 3
    # config b: tokenizer t1 = 0,2 and t2 = 1,3 -> SS_b = 1, SS_w = 4, n0 = 2 -> tokenizer max(0, (1 - 2) / 2) = 0
    values = pd.DataFrame({"config": ["a"] * 6 + ["b"] * 4,
                           "tokenizer": ["t1"] * 3 + ["t2"] * 3 + ["t1", "t1", "t2", "t2"],
                           "value": [1, 2, 3, 4, 5, 6, 0, 2, 1, 3]})
    out = stats.variance_components(values).set_index("Group")
    assert out.loc["a", "Tokenizer variance"] == pytest.approx(12.5 / 3)
    assert out.loc["a", "Seed variance"] == pytest.approx(1.0)
    assert out.loc["a", "Tokenizer share"] == pytest.approx((12.5 / 3) / (12.5 / 3 + 1))
    assert out.loc["b", "Tokenizer variance"] == 0.0 and out.loc["b", "Seed variance"] == pytest.approx(2.0)
    assert list(out[stats.LEVEL_MEANS][["a", "b"]]) == ["t1 2 (3); t2 5 (3)", "t1 1 (2); t2 2 (2)"]  # level: mean (n)
    # pooled: SS_b 14.5 / df 2, SS_w 8 / df 6, n0 = (3 * 1 + 2 * 1) / 2 = 2.5
    assert out.loc["pooled", "Seed variance"] == pytest.approx(8 / 6)
    assert out.loc["pooled", "Tokenizer variance"] == pytest.approx((14.5 / 2 - 8 / 6) / 2.5)
    from scipy.stats import f_oneway
    assert out.loc["a", "p (F, no tokenizer effect)"] == pytest.approx(f_oneway([1, 2, 3], [4, 5, 6]).pvalue)


def test_variance_components_skip_a_configuration_with_one_tokenizer():
    values = pd.DataFrame({"config": ["a"] * 3, "tokenizer": ["t1"] * 3, "value": [1.0, 2.0, 3.0]})
    assert stats.variance_components(values).empty
