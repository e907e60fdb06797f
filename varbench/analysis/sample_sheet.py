"""The sample sheet: every configuration's recorded sample grid on one page (report figure `sample_grids`), drawn
from the records and the PNGs they name, like the other figures (varbench/analysis/figures.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from varbench.analysis.figures import _save
from varbench.analysis.load import latest
from varbench.analysis.quality import study_of

log = logging.getLogger(__name__)


def _grid_path(value: str, source: str) -> Path:
    """A recorded PNG path. A relative one is tried against the folder of the record file (grids copied beside
    their records, fixtures), then against the working directory (task=sample writes the path under its run_dir,
    which is relative to where run.py started, e.g. a grid cell's `runs/cells/...`); the first that exists, else
    the first tried (named as missing)."""
    p = Path(value)
    if p.is_absolute():
        return p
    tried = [Path(source).parent / p, Path.cwd() / p]
    return next((c for c in tried if c.is_file()), tried[0])


def panels(grids: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The sheet's panels from the sample_grid records: per study and model the first seed whose PNG exists, else
    its first seed (a panel naming the missing file), without learning-rate sweeps or studies with no PNG on disk;
    and the seed count per (study, model)."""
    grids = grids.assign(png=[_grid_path(v, s) for v, s in zip(grids["value"], grids["source"])],
                         model=grids["model"].fillna("?"), study=study_of(grids))
    grids = grids[grids.groupby(["study", "model", "seed"], dropna=False)["base_lr"].transform("nunique") <= 1]
    grids = grids.assign(on_disk=grids["png"].map(Path.is_file))
    # a study none of whose PNGs came back (older ones kept records only) would fill the sheet with empty panels
    shown = grids.groupby("study")["on_disk"].transform("any")
    if not shown.all():
        log.warning("sample_grids leaves out studies with no PNG on disk: %s",
                    sorted(set(grids.loc[~shown, "study"])))
    grids = grids[shown]
    seeds = grids.groupby(["study", "model"])["seed"].nunique()
    grids = grids.sort_values(["study", "model", "on_disk", "seed", "cell_id"],
                              ascending=[True, True, False, True, True])
    return grids.drop_duplicates(["study", "model"]), seeds


def sample_grids(df: pd.DataFrame, path, columns: int = 6) -> Path | None:
    """A contact sheet with every configuration of every study (records folder): per study and model, the recorded
    sample_grid PNG of its first seed (the newest record of that run), titled by model, seed count, study and cell.
    A configuration whose PNG is not on disk (not copied back from the machine that sampled it) keeps its panel,
    saying so, so no model silently drops out; a study with no PNG on disk at all is left out, and logged. A
    learning-rate sweep's grids (one model and seed at several `train.base_lr`) are left out: they show rates, not
    configurations, as in the quality tables."""
    from matplotlib.image import imread

    grids = latest(df, "sample_grid")
    if grids.empty:
        log.warning("sample_grids not drawn: no sample_grid records (task=sample writes them)")
        return None
    grids, seeds = panels(grids)
    if grids.empty:
        log.warning("sample_grids not drawn: none of the recorded PNGs exists")
        return None
    missing = grids[~grids["on_disk"]]
    if len(missing):
        log.warning("sample_grids: %d of %d models have no PNG on disk: %s", len(missing), len(grids),
                    list(map(str, missing["png"])))
    cols = min(columns, len(grids))
    rows = math.ceil(len(grids) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.9 * rows), layout="constrained")  # (the suptitle clear of the titles)
    for k, (_, g) in enumerate(grids.iterrows()):
        ax = fig.add_subplot(rows, cols, k + 1)
        if g["on_disk"]:
            ax.imshow(imread(g["png"]))
        else:
            ax.text(0.5, 0.5, f"PNG not on disk:\n{Path(g['png']).name}", ha="center", va="center", fontsize=7,
                    wrap=True, transform=ax.transAxes)
        study = "/".join(Path(g["study"]).parts[-2:])
        where = f"{study}, cell {g['cell_id']}" if pd.notna(g["cell_id"]) else study
        n = seeds.get((g["study"], g["model"]), 0)
        ax.set_title(f"{g['model']} (seed {g['seed']} of {n})\n{where}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"Samples of every configuration ({len(grids)} models of {grids['study'].nunique()} studies; "
                 f"{len(missing)} without a PNG on disk)",
                 fontsize=9)
    return _save(fig, path)
