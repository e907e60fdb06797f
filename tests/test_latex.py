"""The report's LaTeX tables compile with pdflatex, stay <= MAX_COLUMNS wide and escape what LaTeX cannot print.

pdflatex is part of CI's install (.ci/run: texlive-latex-base + texlive-latex-recommended); without it these tests
FAIL (never skip): a table that does not compile is what they exist to catch."""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from varbench.analysis.format import MAX_COLUMNS, to_latex, write_table
from varbench.analysis.load import load_records
from varbench.tasks.report import TABLES, _note

ROOT = Path(__file__).resolve().parent.parent
RECORDS = [ROOT / "tests/fixtures/records", ROOT / "results/gpu/h200/study_s6a", ROOT / "results/gpu/h200/study_s6b"]


def _pdflatex() -> str:
    path = shutil.which("pdflatex")
    assert path, ("pdflatex not found: install texlive-latex-base texlive-latex-recommended "
                  "(apt-get install -y --no-install-recommends ..., as .ci/run does)")
    return path


def _compile(tex_files: list[Path], work: Path) -> subprocess.CompletedProcess:
    body = "\n".join(f"\\input{{{f.resolve().as_posix()}}}\n\\clearpage" for f in tex_files)
    doc = work / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
                   f"\\begin{{document}}\n{body}\n\\end{{document}}\n")
    return subprocess.run([_pdflatex(), "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=work,
                          capture_output=True, text=True, timeout=120)


def _columns(tex: str) -> list[int]:
    return [len(spec) for spec in re.findall(r"\\begin\{tabular\}\{([lrc]+)\}", tex)]


def test_every_report_table_compiles_with_pdflatex_and_is_at_most_max_columns_wide(tmp_path):
    df = pd.concat([load_records(p) for p in RECORDS], ignore_index=True)
    written = []
    for name, (make, title, _) in TABLES.items():
        table = make(df, None)
        if not table.empty:
            written.append(write_table(table, tmp_path, name, title, _note(table), data="test records")[1])
    assert {"versus_var.tex", "study_ranking.tex", "bench_goals.tex"} <= {p.name for p in written}
    for tex in written:
        widths = _columns(tex.read_text())
        assert widths and max(widths) <= MAX_COLUMNS, (tex.name, widths)
    result = _compile(written, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_a_broken_table_fails_to_compile(tmp_path):
    bad = tmp_path / "bad.tex"
    bad.write_text("\\begin{tabular}{ll}\na & b_c \\\\\n\\end{tabular}\n")  # a raw underscore
    assert _compile([bad], tmp_path).returncode != 0


def test_symbols_and_underscores_are_escaped_and_captions_say_n_and_spread(tmp_path):
    df = pd.DataFrame({"Goal": ["MFU_total >= 0.5", "ratio ≤ 1.2"], "FD (x, 1k)": [0.5, 0.25],
                       "FD (x, 1k) std": [0.01, 0.02], "Seeds": [3, 5]}).set_index("Goal")
    tex = write_table(df, tmp_path, "t", "Symbols_test", note="", data="records under r_1")[1].read_text()
    assert r"MFU\_total $\geq$ 0.5" in tex and r"ratio $\leq$ 1.2" in tex and r"0.5 $\pm$ 0.01" in tex
    assert "Symbols\\_test" in tex and "r\\_1" in tex and "standard deviation over seeds" in tex
    assert ">=" not in tex and "≤" not in tex and "±" not in tex


def test_a_wide_table_is_split_into_parts_repeating_the_index():
    wide = pd.DataFrame({f"c{k}": [1.0, 2.0] for k in range(23)}, index=pd.Index(["a", "b"], name="Model"))
    tex = to_latex(wide, "Wide", "tab:wide")
    assert _columns(tex) == [10, 10, 6]  # Model + 9, Model + 9, Model + 5
    assert "(part 3 of 3)" in tex and tex.count("Model") == 3


def test_a_character_without_a_rule_is_an_error():
    with pytest.raises(ValueError, match="U\\+2603"):
        to_latex(pd.DataFrame({"x": ["snow ☃"]}), "c", "tab:x")
