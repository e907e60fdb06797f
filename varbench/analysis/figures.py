"""The figures of the study, drawn from the records only.

Each function writes one PNG and a vector PDF beside it (same name), and returns the PNG's path. When the records
a figure needs are missing it writes nothing, logs which records it looked for, and returns None: a report over a
partial results folder still runs. Colours are Okabe-Ito's colour-blind-safe palette, each model with its marker.
Figures are built on `matplotlib.figure.Figure` (no pyplot), so nothing here touches the interactive backend of
a notebook and no display is needed.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter, NullLocator

from varbench.analysis import crossover
from varbench.analysis.format import QUALITY_NAMES, SECTION, STD, is_quality, sections
from varbench.analysis.load import latest, model_label, numeric
from varbench.analysis.tables import GFLOPS, STATE, config_frame, speed_wide

log = logging.getLogger(__name__)
# quality_vs_flops's metric: the first of these any record has (one panel per column of it: sample count, study);
# the others, IS, precision and recall stay in the tables
HEADLINE = ("FID", "FD", "Class acc.")


def _save(fig: Figure, path) -> Path:
    """The PNG at `path` and a vector PDF beside it (for a paper)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure made with its own layout keeps it
        fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")  # legends placed outside the axes stay in
    # no creation date: a regenerated report changes a PDF only when its figure changes
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight", metadata={"CreationDate": None})
    return path


def _axes(n: int, width: float = 4.2, height: float = 3.4, columns: int = 3):
    """A Figure with n panels, at most `columns` in a row (wider is unreadable on a page)."""
    cols = min(n, columns)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    return fig, [fig.add_subplot(rows, cols, k + 1) for k in range(n)]


def _labels(index: pd.MultiIndex) -> list[str]:
    """Model labels ("VAR-d16") of a (mixer, intra, depth, resolution) index."""
    keys = index.to_frame(index=False)
    return [model_label(m, i, d) for m, i, d in zip(keys["mixer"], keys["intra"], keys["depth"])]


def quality_vs_flops(df: pd.DataFrame, path, device=None) -> Path | None:
    """One panel per column of the headline quality metric (Inception FID where recorded, else the classifier's FD,
    else class accuracy; a column per sample count, guidance scale and study): mean +- std over seeds against forward
    GFLOPs per image."""
    frame = config_frame(df, device)
    labels = [c for c in frame.columns if is_quality(c) and not c.endswith(STD) and c.split(" (")[0] in HEADLINE]
    labels = [c for c in labels if c.split(" (")[0] == min((c.split(" (")[0] for c in labels), key=HEADLINE.index)]
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
    models = [m for _, pts in panels for m in _labels(pts.index)]
    colour, marker = model_colours(models), model_markers(models)
    for ax, (c, pts) in zip(axes, panels):
        std = pts[c + STD].fillna(0.0) if c + STD in pts else pd.Series(0.0, index=pts.index)
        for (x, y, err), name in zip(zip(pts[GFLOPS], pts[c], std), _labels(pts.index)):
            ax.errorbar(x, y, yerr=err, fmt=marker[name], color=colour[name], capsize=3, label=name)
        ax.set(xlabel="forward GFLOPs / image", ylabel=c.split(" (")[0])
        ax.set_title(c, fontsize=8)
        ax.grid(alpha=0.3)
    _legend_outside(axes[-1], axes)  # a legend, not point labels: labels of nearby points overlap
    return _save(fig, path)


def _legend_outside(ax, of=None) -> None:
    """The legend of the axes `of` (default: `ax` alone; one entry per label) to the right of `ax`, where it cannot
    cover data."""
    unique = {}
    for source in of if of is not None else [ax]:
        handles, labels = source.get_legend_handles_labels()
        unique |= {label: handle for label, handle in zip(labels, handles) if label not in unique}
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, ncol=1 + len(unique) // 25)


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
    drawn = keys["model"][frame[columns].notna().any(axis=1).to_numpy()]
    colour, marker = model_colours(drawn), model_markers(drawn)
    for ax, c in zip(axes, columns):
        for model, rows in keys.assign(v=frame[c].to_numpy()).dropna(subset=["v"]).groupby("model"):
            rows = rows.sort_values("resolution")
            ax.plot(rows["resolution"].astype(int), rows["v"], marker=marker[model], label=model,
                    color=colour[model])
        ax.set(xlabel="resolution (px)", ylabel=c, title=c)
        if c in (STATE, TRAIN_AT_BENCH_BATCH):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    _legend_outside(axes[-1])
    fig.suptitle(f"timings on {frame.attrs.get('device')}", fontsize=9)
    return _save(fig, path)


def crossover_atlas(df: pd.DataFrame, path, device=None) -> Path | None:
    """The crossover atlas (varbench.analysis.crossover): one panel per cost, the advantage over attention (log
    scale; above 1 the configuration is ahead) against resolution, a line per configuration under its table
    protocol. Only comparable points are drawn; a line breaks at an unknown resolution instead of bridging it."""
    long, measured = crossover.crossover_long(df, device), [crossover.WIN, crossover.LOSS]
    known = long[long["status"].isin(measured)]
    if known.empty:
        log.warning("crossover_atlas not drawn: no configuration is comparable with attention (same depth, one "
                    "fully autotuned protocol) at any of %s px", crossover.RESOLUTIONS)
        return None
    costs = [f.column for f in crossover.FAMILIES if f.column in set(known["cost"])]
    fig, axes = _axes(len(costs), width=3.6, height=3.4)
    colour, marker = model_colours(known["model"]), model_markers(known["model"])
    for ax, cost in zip(axes, costs):
        for model, g in long[(long["cost"] == cost) & long["model"].isin(known["model"])].groupby("model"):
            y = g["advantage"].where(g["status"].isin(measured)).astype(float)  # NaN: the line breaks there
            ax.plot(g["resolution"], y, marker=marker[model], color=colour[model], label=model)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        _resolution_axis(ax, crossover.RESOLUTIONS)
        ax.set(ylabel="advantage over attention (x)", title=cost)
    _legend_outside(axes[-1])
    fig.suptitle("above 1: ahead of attention (same depth; one protocol per line, named in crossover_atlas.md)",
                 fontsize=9)
    return _save(fig, path)


def _resolution_axis(ax, resolutions) -> None:
    """Resolutions on a log-2 x axis with their own ticks; a log y axis in plain numbers (minor ticks labelled
    only where there is room: a span under a decade)."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(resolutions, [str(r) for r in resolutions])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(resolutions[0] / 1.25, resolutions[-1] * 1.25)
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if high / low < 10 else NullFormatter())
    ax.set(xlabel="resolution (px)")
    ax.grid(alpha=0.3)

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
    models = [m for _, part in parts for m in part.index.get_level_values("Model")]
    colour, marker = model_colours(models), model_markers(models)
    fig, axes = _axes(len(parts), width=5.0, height=4.4)
    for ax, (key, part) in zip(axes, parts):
        part = part[part[NLL_GAP].notna()]
        for (model, _), row in part.iterrows():
            ax.errorbar(row[TRAIN_NLL], row[VAL_NLL], xerr=row[f"{TRAIN_NLL}{STD}"], yerr=row[f"{VAL_NLL}{STD}"],
                        fmt=marker[model], ms=5, capsize=2, color=colour[model], label=model)
        _iso_gap_lines(ax)
        ax.set(xlabel=TRAIN_NLL, ylabel=VAL_NLL, title=f"{Path(key).name if key else 'study'}: val vs train NLL")
        ax.grid(alpha=0.3)
        _legend_outside(ax)
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


# Okabe & Ito's colour-blind-safe palette (its yellow last: weakest on white); beyond 8 models the colours repeat
# with another marker
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def model_colours(models) -> dict:
    """A fixed Okabe-Ito colour per model label (sorted), so one model looks the same in every panel."""
    return {m: OKABE_ITO[i % len(OKABE_ITO)] for i, m in enumerate(sorted(set(models)))}


def model_markers(models) -> dict:
    """A marker per model label (sorted): the colours repeat every 8 models, the (colour, marker) pair does not."""
    return {m: MARKERS[(i // len(OKABE_ITO)) % len(MARKERS)] for i, m in enumerate(sorted(set(models)))}


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
    _legend_outside(axes[-1])
    return _save(fig, path)


def _runs(records: pd.DataFrame) -> pd.DataFrame:
    """Records with a `run` (cell id, else run dir, else records file), numeric `v` and a `model` label."""
    run = records["cell_id"].where(records["cell_id"].notna(), records["run_dir"])
    return records.assign(run=run.fillna(records["source"]), v=numeric(records), model=records["model"].fillna("?"))


def _curves(ax, records: pd.DataFrame, colour: dict, styles: dict) -> None:
    """One line per run and split (its line style from `styles`, solid by default), coloured by model; the legend
    names each model once with its number of runs."""
    marker = model_markers(colour)
    for model in colour:
        mine = records[records["model"] == model]
        runs = mine["run"].nunique()
        for j, ((_, split), g) in enumerate(mine.groupby(["run", mine["split"].fillna("")], sort=True)):
            g = g.sort_values("step")
            ax.plot(g["step"], g["v"], styles.get(split, "-"), color=colour[model], alpha=0.8, lw=1.2,
                    marker=marker[model], markevery=max(1, len(g) // 6), ms=3,
                    label=f"{model} ({runs} run{'s' if runs > 1 else ''})" if j == 0 else None)
    ax.grid(alpha=0.3)
