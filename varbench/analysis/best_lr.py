"""Each arm's learning rate from the learning-rate sweep (grid=study_lr): the base_lr with the lowest held-out NLL
(`val_nll`, the criterion fixed before the sweep ran; one seed per point), as the `study.lr.<arm>` overrides that
the study grids read (varbench/configs/grid/study_base.yaml).

    python -m varbench.analysis.best_lr RESULTS/lr       # prints: study.lr.gla-none=8.0e-03 study.lr....

An arm whose best point is the largest or smallest one swept has no located optimum (`at_edge`): its loss may fall
further beyond the sweep. It is named on stderr, so that the sweep is extended before the rate is used as "its best".
"""

from __future__ import annotations

import logging
import sys

import pandas as pd

from varbench.analysis.load import latest, load_records, numeric

log = logging.getLogger(__name__)


def base_lr(config) -> float | None:
    """train.base_lr of a record's resolved config (None when the record has no config)."""
    return ((config or {}).get("train") or {}).get("base_lr")


def best_learning_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per arm (mixer, intra): the swept base_lr values with their val NLL, the best one, and whether it lies at the
    sweep's edge. An arm with a point missing (a failed cell) is reported with the points it has and logged, never
    silently filled."""
    nll = latest(df, "val_nll")
    if nll.empty:
        raise ValueError("best_learning_rates: no val_nll records (task=evaluate writes them) in these records")
    nll = nll.assign(base_lr=[base_lr(c) for c in nll["config"]], value=numeric(nll))
    if nll["base_lr"].isna().any():
        raise ValueError(f"best_learning_rates: {int(nll['base_lr'].isna().sum())} val_nll records carry no "
                         "config.train.base_lr; cannot tell the sweep's points apart")
    rows = []
    for (mixer, intra), g in nll.groupby(["mixer", "intra"], sort=True):
        points = g.groupby("base_lr")["value"].mean()
        if len(points) < 3:
            log.warning("best_learning_rates: %s-%s has %d of 3 points: %s", mixer, intra, len(points), dict(points))
        best = float(points.idxmin())
        rows.append({"arm": f"{mixer}-{intra}", "points": dict(points), "best_lr": best, "val_nll": float(points.min()),
                     "at_edge": len(points) >= 2 and best in (points.index.min(), points.index.max())})
    return pd.DataFrame(rows).set_index("arm")


def overrides(best: pd.DataFrame) -> str:
    """The command-line overrides that train each arm at its best learning rate."""
    return " ".join(f"study.lr.{arm}={lr:.1e}" for arm, lr in best["best_lr"].items())


if __name__ == "__main__":
    best = best_learning_rates(load_records(sys.argv[1]))
    for arm, row in best[best["at_edge"]].iterrows():
        print(f"best_lr: {arm}'s best base_lr {row['best_lr']:.1e} is at the sweep's edge "
              f"({', '.join(f'{lr:.1e}: {v:.4f}' for lr, v in sorted(row['points'].items()))}): extend the sweep",
              file=sys.stderr)
    print(overrides(best))
