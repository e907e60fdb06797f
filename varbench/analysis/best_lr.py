"""Each arm's learning rate from the learning-rate sweep (grid=study_lr): the base_lr with the lowest held-out NLL
(`val_nll`, the criterion fixed before the sweep ran; one seed per point), as the `study.lr.<arm>` overrides that
the study grids read (varbench/configs/grid/study_base.yaml).

    python -m varbench.analysis.best_lr RESULTS/lr [MORE/lr ...] [--located] [--arms N]
    # prints: study.lr.gla-none=8.0e-03 study.lr....

Several folders are one sweep read together (the records imported from earlier sessions and the cells a GPU call
has just run). An arm whose best point is the largest or smallest one swept has no located optimum (`at_edge`): its
loss may fall further beyond the sweep. It is named on stderr, so that the sweep is extended before the rate is used
as "its best"; with `--located` such an arm is an error (exit status 2, nothing printed), which a script that goes
on to the main grid relies on. With `--arms N` records that hold fewer than N arms are an error too (exit status 3):
an arm whose sweep cells all failed has no line here, and a grid given the others' rates alone would train it at
study_base's placeholder rate, as if that were its best.
"""

from __future__ import annotations

import argparse
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
    """The command-line overrides that train each arm at its best learning rate, at two significant digits (a
    swept 1.28e-1 trains at 1.3e-1, as its records' base_lr says). The string is part of every study_main cell's id,
    so its format stays as it is for the study's life: another would orphan the cells already run."""
    return " ".join(f"study.lr.{arm}={lr:.1e}" for arm, lr in best["best_lr"].items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="each arm's best base_lr from grid=study_lr's records")
    parser.add_argument("records", nargs="+", help="folders (or .jsonl files) of the sweep's records, read together")
    parser.add_argument("--located", action="store_true", help="fail when an arm's best rate is at the sweep's edge")
    parser.add_argument("--arms", type=int, help="fail unless the records hold this many arms (every arm swept)")
    args = parser.parse_args(argv)
    best = best_learning_rates(pd.concat([load_records(p) for p in args.records], ignore_index=True))
    for arm, row in best[best["at_edge"]].iterrows():
        print(f"best_lr: {arm}'s best base_lr {row['best_lr']:.1e} is at the sweep's edge "
              f"({', '.join(f'{lr:.1e}: {v:.4f}' for lr, v in sorted(row['points'].items()))}): extend the sweep",
              file=sys.stderr)
    if args.located and best["at_edge"].any():
        return 2
    if args.arms is not None and len(best) != args.arms:
        print(f"best_lr: the records hold {len(best)} of the {args.arms} arms ({', '.join(best.index)}): the sweep "
              "is incomplete (a missing arm's cells failed or never ran)", file=sys.stderr)
        return 3
    print(overrides(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
