"""What the notebooks in analysis/ share: where the records and figures are, and how a table is shown."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from varbench.analysis.format import as_text
from varbench.analysis.load import load_records
from varbench.utils.paths import REPO


def open_records():
    """(records DataFrame, records folder, figures folder) from VARBENCH_RECORDS (default results/, relative to the
    repository) and VARBENCH_FIGURES (default a temporary folder)."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # missing records are logged
    records = Path(os.environ.get("VARBENCH_RECORDS", "results"))
    records = records if records.is_absolute() else REPO / records
    figures = Path(os.environ.get("VARBENCH_FIGURES") or tempfile.mkdtemp(prefix="varbench_figures_"))
    df = load_records(records)
    print(f"{len(df)} records from {df['source'].nunique()} files under {records}")
    return df, records, figures


def show_table(table) -> None:
    """A table as markdown (rounded for reading; the DataFrame keeps the recorded values)."""
    from IPython.display import Markdown, display
    if table.empty:
        print("no records for this table (see the warnings above)")
    else:
        display(Markdown(as_text(table).to_markdown(index=False)))
        print(f"from {table.attrs.get('records')} records; GPU timings on {table.attrs.get('device')}")


def show_figure(path) -> None:
    """A generated PNG, or a note that its records are missing."""
    from IPython.display import Image, display
    if path:
        display(Image(str(path)))
    else:
        print("figure not drawn: its records are missing (see the warnings)")
