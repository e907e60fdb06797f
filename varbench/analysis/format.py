"""Table cells as text, and tables written as markdown + LaTeX.

The DataFrames of varbench.analysis.tables hold raw numbers (the recorded values, untouched); only the files get
rounded text. The column name decides the format, so a table never needs a per-table format list.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

# metric -> column name; the feature extractor goes in the label, so the classifier's precision ("embedded_precision")
# and Inception's ("precision") are both "Precision (<extractor>, ...)" columns. Order: the ranking's preference.
QUALITY_NAMES = {"fid": "FID", "embedded_fd": "FD", "inception_score": "IS", "precision": "Precision",
                 "recall": "Recall", "embedded_precision": "Precision", "embedded_recall": "Recall",
                 "kid": "KID", "embedded_kd": "KD", "class_accuracy": "Class acc.", "nn_distance_ratio": "NN ratio"}
HIGHER_BETTER = ("Class acc.", "IS", "Precision", "Recall")  # names of QUALITY_NAMES; the others: lower is better
MISSING = "—"
SECTION = "Study"  # a table whose first index level has this name is written one section per value
PART = "Columns"  # ... or this one: a wide table cut into groups of columns (`by_column_group`)
SHARED = ("Params", "Fwd GFLOPs/img")  # the size columns every group of `by_column_group` keeps
TIMED_ON = "Timed on (autotune)"  # ... and the column saying where a row's timings come from, every speed group
STD = " std"
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def is_quality(column: str) -> bool:
    """A quality column is named "<metric name> (<feature extractor>, ...)", e.g. "FID (Inception, 50k)"."""
    return column.split(" (", 1)[0] in QUALITY_NAMES.values()


def _bytes(v: float) -> str:
    return f"{v / 2 ** 30:.2f} GiB" if v >= 2 ** 30 else f"{v / 2 ** 20:.1f} MiB"


# (test on the column name, format of one number); the first match wins
RULES = (
    (lambda c: c == "Params", lambda v: f"{v / 1e6:.1f}M"),
    (lambda c: "GFLOPs" in c, lambda v: f"{v:.1f}"),
    (lambda c: c.startswith("MFU"), lambda v: f"{v:.1%}"),
    (lambda c: "bytes" in c, _bytes),
    (lambda c: c in ("Seeds", "Checks", "Depth", "Resolution"), lambda v: f"{int(v)}"),
    (lambda c: "rel RMS" in c, lambda v: f"{v:.2e}"),
    (lambda c: "KV cache" in c, lambda v: f"{v:.3f}"),
    (is_quality, lambda v: f"{v:.4g}"),
    # quality values under other names (the floors table): the same significant digits; counts as integers
    (lambda c: c.startswith(("Real vs real", "Tokenizer reconstructions")) or c.endswith("(mean over seeds)"),
     lambda v: f"{v:.4g}"),
    (lambda c: c.endswith("(n)"), lambda v: f"{int(v)}"),
    (lambda c: c.startswith(("Train loss", "Val NLL", "Train NLL", "NLL gap")), lambda v: f"{v:.3f}"),
    (lambda c: c.startswith("Gap to best") or c in ("Speed-up", "Efficiency"), lambda v: f"{v:.2f}"),
    (lambda c: c.startswith(("p vs", "p (")), lambda v: f"{v:.2g}"),
    (lambda c: c.startswith("Max |"), lambda v: f"{v:.2g}"),  # a largest difference: its first digits, not 0.0
    (lambda c: c.startswith(("Difference", "95% CI")), lambda v: f"{v:.3g}"),
    (lambda c: "variance" in c, lambda v: f"{v:.3g}"),
    (lambda c: c.endswith("share"), lambda v: f"{v:.0%}"),
    (lambda c: c in ("Levels", "Values"), lambda v: f"{int(v)}"),
    (lambda c: c == "Measured", lambda v: f"{v:.3g}"),
    (lambda c: c == "Missed by", lambda v: f"{v:.0%}"),
    (lambda c: True, lambda v: f"{v:.1f}"),
)


def format_number(column: str, value) -> str:
    """One cell as text; missing values print as a dash, text passes through."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return MISSING
    if isinstance(value, str):
        return value
    fmt = next(f for test, f in RULES if test(column))
    return fmt(float(value))


def as_text(df: pd.DataFrame) -> pd.DataFrame:
    """The table as strings: index levels become columns and "X" + "X std" merge into "mean ± std"."""
    flat = df.reset_index()
    out = {}
    for col in flat.columns:
        if str(col).endswith(STD) and str(col)[: -len(STD)] in flat.columns:
            continue  # printed beside its mean
        cells = [format_number(str(col), v) for v in flat[col]]
        if f"{col}{STD}" in flat.columns:
            stds = flat[f"{col}{STD}"]
            cells = [c if pd.isna(s) else f"{c} ± {s:.2g}" for c, s in zip(cells, stds)]
        out[str(col)] = cells
    return pd.DataFrame(out)


# characters LaTeX's default fonts lack, as math; a raw < or > would print as an inverted mark in OT1
_TEX_SYMBOLS = {">=": r"$\geq$", "<=": r"$\leq$", "≥": r"$\geq$", "≤": r"$\leq$", "<": r"$<$", ">": r"$>$",
                "±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "µ": r"$\mu$",
                "·": r"$\cdot$", MISSING: "--", "–": "--", "’": "'", "é": r"\'e"}
MAX_COLUMNS = 10  # a LaTeX table wider than this is split into parts that repeat the index columns


def _tex_text(text: str) -> str:
    """Plain text as LaTeX: special characters escaped, symbols as math, the missing-value dash as an en dash.
    A character with no rule here is an error (pdflatex would stop on it, or print it wrong)."""
    out, k = [], 0
    while k < len(text):
        pair = text[k:k + 2]
        if pair in _TEX_SYMBOLS:
            out.append(_TEX_SYMBOLS[pair])
            k += 2
            continue
        ch = text[k]
        if ch in _TEX_SYMBOLS or ch in _TEX:
            out.append(_TEX_SYMBOLS.get(ch) or _TEX[ch])
        elif ord(ch) > 127:
            raise ValueError(f"LaTeX: no rule for the character {ch!r} (U+{ord(ch):04X}) in {text!r}; "
                             "add one to format._TEX_SYMBOLS")
        else:
            out.append(ch)
        k += 1
    return "".join(out)


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """Booktabs tables; cells are escaped here (not by pandas) so that symbols become math. A table of more than
    MAX_COLUMNS columns is split into several, each repeating the index columns and saying which part it is."""
    text = as_text(df)
    text = text.apply(lambda col: col.map(_tex_text))
    text.columns = [_tex_text(c) for c in text.columns]
    keys = min(df.index.nlevels, MAX_COLUMNS - 1) if not isinstance(df.index, pd.RangeIndex) else 0
    values = list(text.columns[keys:])
    width = MAX_COLUMNS - keys
    chunks = [values[i:i + width] for i in range(0, len(values), width)] or [[]]
    parts = []
    for n, chunk in enumerate(chunks):
        part = f" (part {n + 1} of {len(chunks)})" if len(chunks) > 1 else ""
        parts.append(text[[*text.columns[:keys], *chunk]].to_latex(
            index=False, escape=False, caption=_tex_text(caption) + part, label=label + (f":{n + 1}" if part else "")))
    return "\n".join(parts)


def sections(df: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """A table split at its SECTION (or PART) level (one part per study or group of columns, each with only the
    columns it fills), or the whole table as one part (None)."""
    if df.index.nlevels < 2 or df.index.names[0] not in (SECTION, PART):
        return [(None, df)]
    level = df.index.names[0]
    return [(str(key), part.dropna(axis=1, how="all")) for key, part in df.groupby(level=level, sort=False)]


def column_group(column: str) -> str | None:
    """The group of a wide table's column: a quality column's study (its "[study]" suffix) or, named by one study
    only, its evaluation ("FID (Inception, 10k, cfg 1.5)": Inception, 10k, cfg 1.5); training's img/s and MFUs
    "training speed"; memory in bytes "memory"; any other "sampling latency"; none for the columns that go with
    several groups (the size columns, "Seeds", TIMED_ON)."""
    base = column.removesuffix(STD)
    if column in (*SHARED, "Seeds", TIMED_ON):
        return None
    if base.startswith("Train img/s") or "MFU" in base:
        return "training speed"
    if "bytes" in base:
        return "memory"
    if not is_quality(base):
        return "sampling latency"
    name, _, study = base.partition(" [")
    return f"quality, study {study.rstrip(']')}" if study else f"quality, {name.partition(' (')[2].rstrip(')')}"


def by_column_group(df: pd.DataFrame) -> pd.DataFrame:
    """A wide table (one row per configuration, the quality columns of many studies and evaluations, the speed
    columns) as one part per group of columns (`column_group`), under a leading PART level: each part the rows
    with a value in its group, beside the size columns (and the seeds, or where the timings come from); written
    one section each (`sections`), so that no section is mostly empty. The values are the table's, untouched."""
    groups: dict[str, list[str]] = {}
    for column in df.columns:
        if (group := column_group(column)) is not None:
            groups.setdefault(group, []).append(column)
    size = [c for c in SHARED if c in df.columns]
    seeds, timed_on = ([c] if c in df.columns else [] for c in ("Seeds", TIMED_ON))
    parts = {}
    for group, columns in groups.items():
        rows = df[columns].notna().any(axis=1)
        if rows.any():
            parts[group] = df.loc[rows, size + columns + (seeds if group.startswith("quality") else timed_on)]
    if len(parts) < 2:
        return df
    out = pd.concat(parts, names=[PART])
    out = out[[c for c in out.columns if c not in (*seeds, *timed_on)] + seeds + timed_on]  # last in every section
    out.attrs = dict(df.attrs)
    return out


def spread_note(df: pd.DataFrame) -> str:
    """What the caption must say about n and the ± of a table: seeds per row and what the spread is."""
    if not any(str(c).endswith(STD) for c in df.columns):
        return ""
    n = "n per row: the Seeds column" if "Seeds" in df.columns else "n: the seeds of each row"
    return f"Mean ± one standard deviation over seeds ({n})."


def write_table(df: pd.DataFrame, out_dir, name: str, title: str, note: str = "", data: str = "") -> tuple[Path, Path]:
    """`out_dir/name.md` and `out_dir/name.tex` (a section, and a LaTeX table, per part of `sections`); returns both
    paths. The caption says what (`title`), on what data (`data`, and the section's study), n and ± (`spread_note`)
    and how the records were picked (`note`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, tex = out_dir / f"{name}.md", out_dir / f"{name}.tex"
    blocks, tables = [f"# {title}", note], []
    level = df.index.names[0]
    for key, part in sections(df):
        part = part if key is None else part.droplevel(level)
        # a | or a line break inside a cell (an error message) would end the markdown cell
        text = as_text(part).apply(lambda col: col.map(lambda c: c.replace("|", r"\|").replace("\n", " ")))
        blocks += ([] if key is None else [f"## {level}: {key}"]) + [text.to_markdown(index=False)]
        on = f"Data: {data}" if data else ""
        on += (", " if on else "Data: ") + (f"study {key}" if level == SECTION else key) if key is not None else ""
        caption = ". ".join(t.strip(" .") for t in (title, on, spread_note(part), note) if t)
        tables.append(to_latex(part, caption, f"tab:{name}" + ("" if key is None else f":{len(tables)}")))
    md.write_text("\n\n".join(block for block in blocks if block) + "\n")
    tex.write_text("\n".join(tables))
    return md, tex
