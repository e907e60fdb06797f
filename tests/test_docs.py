"""The API reference builds: pdoc renders a page for every varbench module from its docstrings (docs/api.py), and no
module fails to import or goes missing on the way."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

import varbench

REPO = Path(__file__).resolve().parents[1]


def load_docs_script():
    spec = importlib.util.spec_from_file_location("api_docs", REPO / "docs" / "api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # pdoc imports and renders ~80 modules: ~15-20 s of CPU
def test_the_api_reference_has_a_page_for_every_module_and_no_import_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_docs_script().build(tmp_path)
    from_pdoc = [str(w.message)[:500] for w in caught if "pdoc" in w.filename]
    assert not from_pdoc, from_pdoc  # e.g. "Error importing varbench.x": a module the reference would lack
    package = Path(varbench.__file__).parent
    modules = {".".join(("varbench", *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
               for p in package.rglob("*.py") if p.name != "__main__.py"}
    pages = {p.relative_to(tmp_path).with_suffix("").as_posix().replace("/", ".") for p in tmp_path.rglob("*.html")}
    assert modules <= pages, f"modules without a page: {sorted(modules - pages)}"
    assert "ScaleLayout" in (tmp_path / "varbench" / "layout.html").read_text()  # docstrings rendered, not just names
