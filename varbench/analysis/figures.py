"""The figures of the study, drawn from the records only.

Each function writes one PNG and returns its path. When the records a figure needs are missing it writes
nothing, logs which records it looked for, and returns None: a report over a partial results folder still runs.
Figures are built on `matplotlib.figure.Figure` (no pyplot), so nothing here touches the interactive backend of
a notebook and no display is needed.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from varbench.analysis.format import QUALITY_NAMES, SECTION, STD, is_quality, sections
from varbench.analysis.load import latest, model_label, numeric
from varbench.analysis.tables import GFLOPS, STATE, config_frame, speed_wide

log = logging.getLogger(__name__)
HEADLINE = ("FID", "FD", "Class acc.")  # quality_vs_flops panels; IS / precision / recall stay in the tables


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # legends placed outside the axes stay in
    return path


def _axes(n: int, width: float = 4.2, height: float = 3.4):
    """A Figure with n panels in one row."""
    fig = Figure(figsize=(width * n, height))
    return fig, [fig.add_subplot(1, n, k + 1) for k in range(n)]


def _labels(index: pd.MultiIndex) -> list[str]:
    """Model labels ("VAR-d16") of a (mixer, intra, depth, resolution) index."""
    keys = index.to_frame(index=False)
    return [model_label(m, i, d) for m, i, d in zip(keys["mixer"], keys["intra"], keys["depth"])]


def quality_vs_flops(df: pd.DataFrame, path, device=None) -> Path | None:
    """One panel per headline quality column (FID, FD, class accuracy; one per feature extractor / sample count):
    mean +- std over seeds against forward GFLOPs per image."""
    frame = config_frame(df, device)
    labels = [c for c in frame.columns if is_quality(c) and not c.endswith(STD) and c.split(" (")[0] in HEADLINE]
    if GFLOPS not in frame or not labels:
        log.warning("quality_vs_flops not drawn: needs quality records (%s) and records with fwd_flops_per_image "
                    "(task=bench); found quality columns %s, flops %s", ", ".join(QUALITY_NAMES), labels,
                    GFLOPS in frame)
        return None
    panels = [(c, frame[frame[GFLOPS].notna() & frame[c].notna()]) for c in labels]
    for c, pts in panels:
        if pts.empty:
            log.warning("quality_vs_flops: no configuration has both %s and a fwd_flops_per_image record", c)
    panels = [(c, pts) for c, pts in panels if len(pts)]
    if not panels:
        log.warning("quality_vs_flops not drawn: no configuration has both a quality and a FLOPs record")
        return None
    fig, axes = _axes(len(panels))
    for ax, (c, pts) in zip(axes, panels):
        std = pts[c + STD].fillna(0.0) if c + STD in pts else None
        ax.errorbar(pts[GFLOPS], pts[c], yerr=std, fmt="o", capsize=3)
        for x, y, name in zip(pts[GFLOPS], pts[c], _labels(pts.index)):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xlabel="forward GFLOPs / image", ylabel=c, title=c)
        ax.grid(alpha=0.3)
    return _save(fig, path)


TRAIN_AT_BENCH_BATCH = "Train img/s (bench batch)"


def speed_memory_vs_resolution(df: pd.DataFrame, path, device=None) -> Path | None:
    """Train img/s, batch-1 sampling latency and inference state bytes against resolution, a line per model."""
    frame = speed_wide(df, device)
    # the bench trains at a batch per resolution (32 / 8 / 2): one series of its eager steps, largest batch first
    eager = sorted((c for c in frame.columns if re.fullmatch(r"Train img/s \(b\d+\)", c)),
                   key=lambda c: -int(c[len("Train img/s (b"):-1]))
    if eager:
        frame[TRAIN_AT_BENCH_BATCH] = frame[eager].bfill(axis=1).iloc[:, 0]
    wanted = [TRAIN_AT_BENCH_BATCH if eager else None,
              "Latency b1 (ms)" if "Latency b1 (ms)" in frame else None, STATE if STATE in frame else None]
    columns = [c for c in wanted if c is not None]
    if not columns:
        log.warning("speed_memory_vs_resolution not drawn: no train_images_per_s, sample_latency_ms (batch 1) or "
                    "state_bytes_per_image records")
        return None
    fig, axes = _axes(len(columns))
    keys = frame.index.to_frame(index=False).assign(model=_labels(frame.index))
    # one colour per model in every panel, over the models drawn (not the trained-only ones of the same frame)
    colour = model_colours(keys["model"][frame[columns].notna().any(axis=1).to_numpy()])
    for ax, c in zip(axes, columns):
        for model, rows in keys.assign(v=frame[c].to_numpy()).dropna(subset=["v"]).groupby("model"):
            rows = rows.sort_values("resolution")
            ax.plot(rows["resolution"].astype(int), rows["v"], marker="o", label=model, color=colour[model])
        ax.set(xlabel="resolution (px)", ylabel=c, title=c)
        if c in (STATE, TRAIN_AT_BENCH_BATCH):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"timings on {frame.attrs.get('device')}", fontsize=9)
    return _save(fig, path)


def generalisation_gap(df: pd.DataFrame, path, device=None) -> Path | None:
    """Held-out against training NLL (task=evaluate's val_nll and train_nll, mean +- std over seeds), one panel per
    study, with dotted lines of equal gap (val - train): a model that memorises sits on a high one."""
    from varbench.analysis.study import NLL_GAP, TRAIN_NLL, VAL_NLL, study_ranking
    parts = [(key, part if key is None else part.droplevel(SECTION))
             for key, part in sections(study_ranking(df, device)) if NLL_GAP in part]
    if not parts:
        log.warning("generalisation_gap not drawn: needs val_nll and train_nll records (task=evaluate) of 2 or more "
                    "seeds per configuration")
        return None
    colour = model_colours(m for _, part in parts for m in part.index.get_level_values("Model"))
    fig, axes = _axes(len(parts), width=5.0, height=4.4)
    for ax, (key, part) in zip(axes, parts):
        part = part[part[NLL_GAP].notna()]
        for (model, _), row in part.iterrows():
            ax.errorbar(row[TRAIN_NLL], row[VAL_NLL], xerr=row[f"{TRAIN_NLL}{STD}"], yerr=row[f"{VAL_NLL}{STD}"],
                        fmt="o", ms=5, capsize=2, color=colour[model], label=model)
        _iso_gap_lines(ax)
        ax.set(xlabel=TRAIN_NLL, ylabel=VAL_NLL, title=f"{Path(key).name if key else 'study'}: val vs train NLL")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _iso_gap_lines(ax, steps: int = 4) -> None:
    """Dotted lines val = train + gap across the data's own limits, each labelled with its gap."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    lowest, highest = max(y0 - x1, 0.0), y1 - x0
    step = float(f"{(highest - lowest) / steps:.1g}") or 0.1
    gap = math.ceil(lowest / step) * step
    while gap < highest:
        ax.plot([x0, x1], [x0 + gap, x1 + gap], ":", color="grey", lw=0.8)
        x = min(x1, y1 - gap)  # the label where the line leaves the axes (top or right edge)
        ax.annotate(f"gap {gap:.2g}", (x, x + gap), xytext=(-3, -3), textcoords="offset points", fontsize=7,
                    color="grey", ha="right", va="top")
        gap += step
    ax.set(xlim=(x0, x1), ylim=(y0, y1))


def model_colours(models) -> dict:
    """A fixed colour per model label (sorted), so one model looks the same in every panel: tab20's ten dark hues
    first, then their light twins (adjacent tab20 entries are one hue, too alike for neighbouring models)."""
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return {m: colormaps["tab20"](order[i % 20]) for i, m in enumerate(sorted(set(models)))}


def training_curves(df: pd.DataFrame, path) -> Path | None:
    """Training loss against step: one colour per model (configuration), one line per run of it (seeds, cells).
    Where the runs recorded `nll_during_training` (train.nll_every), a second panel: the NLL in eval mode on
    held-out images (solid) and on training images (dashed), whose spread is the generalisation gap as it opens."""
    loss = _runs(latest(df, "train_loss"))
    if loss.empty:
        log.warning("training_curves not drawn: no train_loss records (task=train writes them)")
        return None
    nll = _runs(latest(df, "nll_during_training"))
    colour = model_colours([*loss["model"], *nll["model"]])
    fig, axes = _axes(2 if len(nll) else 1, width=6.0, height=4.5)
    _curves(axes[0], loss, colour, {})
    axes[0].set(xlabel="step", ylabel=f"train loss ({loss['unit'].iloc[0]})", title="training loss")
    if len(nll):
        _curves(axes[1], nll, colour, {"val": "-", "train": "--"})
        axes[1].set(xlabel="step", ylabel="NLL in eval mode (nats/token)",
                    title="held-out (solid) and training (dashed) NLL")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _runs(records: pd.DataFrame) -> pd.DataFrame:
    """Records with a `run` (cell id, else run dir, else records file), numeric `v` and a `model` label."""
    run = records["cell_id"].where(records["cell_id"].notna(), records["run_dir"])
    return records.assign(run=run.fillna(records["source"]), v=numeric(records), model=records["model"].fillna("?"))


def _curves(ax, records: pd.DataFrame, colour: dict, styles: dict) -> None:
    """One line per run and split (its line style from `styles`, solid by default), coloured by model; the legend
    names each model once with its number of runs."""
    for model in colour:
        mine = records[records["model"] == model]
        runs = mine["run"].nunique()
        for j, ((_, split), g) in enumerate(mine.groupby(["run", mine["split"].fillna("")], sort=True)):
            g = g.sort_values("step")
            ax.plot(g["step"], g["v"], styles.get(split, "-"), color=colour[model], alpha=0.8, lw=1.2,
                    label=f"{model} ({runs} run{'s' if runs > 1 else ''})" if j == 0 else None)
    ax.grid(alpha=0.3)


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


def sample_grids(df: pd.DataFrame, path, max_grids: int = 24) -> Path | None:
    """A contact sheet of the recorded sample_grid PNGs (the newest per run), titled by model, seed and cell; with
    more than `max_grids` of them, one per model (its first seed)."""
    from matplotlib.image import imread

    grids = latest(df, "sample_grid")
    if grids.empty:
        log.warning("sample_grids not drawn: no sample_grid records (task=sample writes them)")
        return None
    grids = grids.assign(png=[_grid_path(v, s) for v, s in zip(grids["value"], grids["source"])])
    missing = grids[~grids["png"].map(Path.is_file)]
    if len(missing):
        log.warning("sample_grids: %d recorded PNGs are not on disk: %s", len(missing), list(map(str, missing["png"])))
    grids = grids.drop(missing.index).sort_values(["model", "seed", "cell_id"])
    if len(grids) > max_grids:  # every model before a second seed of any: one grid per model, its first seed
        log.info("sample_grids: %d grids, showing one per model (all are under their records' folders)", len(grids))
        grids = grids.drop_duplicates("model")
    grids = grids.head(max_grids)
    if grids.empty:
        log.warning("sample_grids not drawn: none of the recorded PNGs exists")
        return None
    cols = min(4, len(grids))
    rows = math.ceil(len(grids) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows))
    for k, (_, g) in enumerate(grids.iterrows()):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(imread(g["png"]))
        where = f"cell {g['cell_id']}" if pd.notna(g["cell_id"]) else Path(str(g["source"])).parent.name
        ax.set_title(f"{g['model']} seed {g['seed']}\n{where}, {g.get('sampler', '')}", fontsize=8)
        ax.axis("off")
    return _save(fig, path)
