"""Where the checkout is: the repository root, the folder above the `varbench` package. Records cite its git commit
(utils/records.py) and the notebooks read results/ relative to it (analysis/notebook.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
