"""Build the API reference (HTML, from the docstrings) with pdoc: `python docs/api.py OUT_DIR`, then open
OUT_DIR/index.html. Every module of the package gets a page, also those a package's `__all__` does not list (pdoc's
own walk skips them); a module that fails to import is an error, not a page left out."""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path


def api_modules() -> list[str]:
    """The names of `varbench` and every module below it (`python -m` entry points left out)."""
    import varbench

    def fail(name: str) -> None:
        raise ImportError(f"{name} cannot be imported: the API reference would lack it")

    found = pkgutil.walk_packages(varbench.__path__, "varbench.", onerror=fail)
    return ["varbench", *sorted(m.name for m in found if not m.name.endswith(".__main__"))]


def build(out: Path) -> None:
    """Write one HTML page per module under `out` (varbench/layout.html, ...), plus index.html and search.js."""
    from pdoc import doc, render
    modules = {name: doc.Module.from_name(name) for name in api_modules()}
    for module in modules.values():
        page = out / f"{module.fullname.replace('.', '/')}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(render.html_module(module, modules))
    (out / "index.html").write_text(render.html_index(modules))
    (out / "search.js").write_text(render.search_index(modules))


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("api"))
