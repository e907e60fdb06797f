"""The study's statistics, fixed before looking at the results (issue 19, item 5).

- Every configuration is compared with VAR (attention, no intra mixer: the fixed reference of the study, never the
  best row picked after the fact) at the same depth and resolution, on each headline metric (the quality column the
  study ranks by, FID where Inception FID was recorded, and the held-out NLL).
- Test: Welch's two-sided t-test on the per-seed values. The family is every (configuration, metric) comparison of
  one table; its p-values are Holm-corrected (step-down, controls the family-wise error rate at `ALPHA`).
- Effect size: the difference of means (configuration - VAR) with a percentile bootstrap 95% interval, resampling
  seeds with replacement within each side, `N_RESAMPLES` resamples from a generator seeded with `BOOTSTRAP_SEED`.
- Tokenizer: where a configuration was trained on >= 2 tokenizers, a one-way random-effects ANOVA (tokenizer as the
  random factor, seeds within it) splits the variance into a tokenizer and a seed component.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ALPHA = 0.05
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are left out of the family and stay NaN).

    The i-th smallest of m p-values becomes max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return out
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p[valid].tolist()}")
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test between two samples (NaN with fewer than 2 values on either side)."""
    from scipy.stats import ttest_ind

    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def bootstrap_diff(a, b, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                   level: float = LEVEL) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its percentile bootstrap interval at `level` (seeds resampled with replacement within
    each sample, independently). With fewer than 2 values on either side the interval is (NaN, NaN)."""
    if n_resamples < 100:
        raise ValueError(f"bootstrap_diff: n_resamples={n_resamples}; use >= 100 for a {level:.0%} interval")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_diff: level={level} must lie in (0, 1)")
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    mean_a = a[rng.integers(0, len(a), (n_resamples, len(a)))].mean(axis=1)
    mean_b = b[rng.integers(0, len(b), (n_resamples, len(b)))].mean(axis=1)
    lo, hi = np.quantile(mean_a - mean_b, [(1 - level) / 2, (1 + level) / 2])
    return diff, float(lo), float(hi)


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[np.isfinite(v)]


def against_reference(per_seed: pd.DataFrame, metrics: list[str], reference) -> pd.DataFrame:
    """Each configuration of `per_seed` against `reference` on each metric.

    Args:
        per_seed: one row per (configuration..., seed), one column per metric; the index's last level is the seed.
        metrics: the columns to compare (each one comparison per configuration).
        reference: function configuration-key -> the reference's key for it (None: no reference for that key).

    Returns:
        One row per (configuration..., metric): seeds on each side, the difference of means with its bootstrap
        interval, Welch's p and the Holm-adjusted p over every row of the returned table (the family).
    """
    keys = per_seed.index.droplevel(-1).unique()
    rows = []
    for key in keys:
        ref = reference(key)
        if ref is None or ref == key or ref not in keys:
            continue
        for metric in metrics:
            mine, theirs = per_seed.loc[key, metric], per_seed.loc[ref, metric]
            diff, lo, hi = bootstrap_diff(mine, theirs)
            rows.append({**dict(zip(per_seed.index.names[:-1], key if isinstance(key, tuple) else (key,))),
                         "Metric": metric, "Seeds": len(_finite(mine)), "Ref. seeds": len(_finite(theirs)),
                         "Difference": diff, "CI low": lo, "CI high": hi, "p (Welch t)": welch_p(mine, theirs)})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p (Holm)"] = holm(out["p (Welch t)"])
    out["Significant"] = np.where(out["p (Holm)"].isna(), "n/a", np.where(out["p (Holm)"] < ALPHA, "yes", "no"))
    return out


LEVEL_MEANS = "Mean per tokenizer (values)"


def variance_components(values: pd.DataFrame, group: str = "config", factor: str = "tokenizer",
                        value: str = "value") -> pd.DataFrame:
    """The tokenizer's share of the variance: a one-way random-effects ANOVA of `value` on `factor` within each
    `group` (a configuration trained on >= 2 tokenizers, seeds within each), and pooled over those groups.

    Per group with k levels and N values: MS_factor = SS_between / (k - 1), MS_seed = SS_within / (N - k),
    n0 = (N - sum n_i^2 / N) / (k - 1) (the mean level size, unbalanced-corrected); the factor's component is
    max(0, (MS_factor - MS_seed) / n0) and the seed's is MS_seed. The pooled row adds the sums of squares and
    degrees of freedom of the groups (configuration means differ; only within-configuration variation counts) and
    uses the (k - 1)-weighted mean n0. Groups with fewer than 2 levels or no within-level replicate are left out.

    Returns: one row per group and a "pooled" row: levels, values, both components, the factor's share, the
    F-test p-value of "no factor effect", and (groups only) each level's mean with its number of values, so that a
    reader sees which way each level moves the configuration.
    """
    from scipy.stats import f as f_dist

    rows, total = [], {"ss_b": 0.0, "df_b": 0, "ss_w": 0.0, "df_w": 0, "n0_w": 0.0, "levels": 0, "n": 0}
    for name, g in values.dropna(subset=[value]).groupby(group, sort=True):
        sizes = g.groupby(factor)[value].size()
        k, n = len(sizes), int(sizes.sum())
        if k < 2 or n <= k:
            continue
        means = g.groupby(factor)[value].transform("mean")
        ss_b = float(((means - g[value].mean()) ** 2).sum())
        ss_w = float(((g[value] - means) ** 2).sum())
        n0 = (n - float((sizes ** 2).sum()) / n) / (k - 1)
        level_means = g.groupby(factor)[value].mean()
        rows.append({**_components(name, k, n, ss_b, k - 1, ss_w, n - k, n0, f_dist),
                     LEVEL_MEANS: "; ".join(f"{lvl} {m:.4g} ({sizes[lvl]})" for lvl, m in level_means.items())})
        for key, v in (("ss_b", ss_b), ("df_b", k - 1), ("ss_w", ss_w), ("df_w", n - k), ("n0_w", n0 * (k - 1)),
                       ("levels", k), ("n", n)):
            total[key] += v
    if rows:
        t = total
        rows.append(_components("pooled", t["levels"], t["n"], t["ss_b"], t["df_b"], t["ss_w"], t["df_w"],
                                t["n0_w"] / t["df_b"], f_dist))
    return pd.DataFrame(rows)


def _components(name, k, n, ss_b, df_b, ss_w, df_w, n0, f_dist) -> dict:
    ms_b, ms_w = ss_b / df_b, ss_w / df_w
    factor = max(0.0, (ms_b - ms_w) / n0)
    p = float(f_dist.sf(ms_b / ms_w, df_b, df_w)) if ms_w > 0 else float("nan")
    total = factor + ms_w
    return {"Group": name, "Levels": k, "Values": n, "Tokenizer variance": factor, "Seed variance": ms_w,
            "Tokenizer share": factor / total if total > 0 else float("nan"), "p (F, no tokenizer effect)": p}
