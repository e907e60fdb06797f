"""results/README.md cites only numbers that a generated table shows: every measurement it quotes (a number with
a decimal point, or one followed by a unit: ms, img/s, %, nats) appears in a table under results/report/, rounded
the way the README writes it. Ratios ("1.42x") are computed from quoted numbers and are not checked; a number that is
no measurement is written without a decimal point and unit, or as a range of the set-up ("500 steps")."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "results" / "README.md"
TABLES = sorted(p for p in (REPO / "results" / "report").glob("*.md") if p.name != "README.md")
NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# (not inside a word: a commit such as 6e74c48 is no number)
TABLE_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?!\w)")
# a number not inside a word, a path, a version or an identifier; its unit, if any, right after it
QUOTED = re.compile(rf"(?<![\w.`/#~+-])({NUMBER})(?![\w.]*\d)(?![A-Za-z])(?:\s?(ms|img/s|%|nats))?")
UNITS = {"ms", "img/s", "%", "nats"}


def quoted_numbers(text: str) -> list[tuple[int, str, str | None]]:
    """(line, number as written, unit) of every measurement the text quotes (see the module docstring)."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        for m in QUOTED.finditer(line):
            value, unit = m.group(1).replace(",", ""), m.group(2)
            if "." in value or unit in UNITS:
                out.append((number, value, unit))
    return out


def table_values() -> list[Decimal]:
    return [Decimal(m.group()) for p in TABLES for m in TABLE_NUMBER.finditer(p.read_text())]


def shown(value: str, unit: str | None, values: list[Decimal]) -> bool:
    """Whether a table value, rounded half-up to the README's decimals, is `value` (a percentage: also as a
    fraction, e.g. MFU 33.6% against 0.336)."""
    places = Decimal(1).scaleb(-len(value.partition(".")[2]))
    target = Decimal(value)
    scales = (Decimal(1), Decimal(100)) if unit == "%" else (Decimal(1),)
    return any((v * s).quantize(places, ROUND_HALF_UP) == target for v in values for s in scales)


def test_the_quote_finder_reads_units_thousands_and_skips_ratios_and_names():
    text = "VAR 1,120 ms and 7.7 img/s, 1.42x faster, MFU 33.6%, VAR-d16, 1.28M images, commit `9b2df86`"
    assert quoted_numbers(text) == [(1, "1120", "ms"), (1, "7.7", "img/s"), (1, "33.6", "%")]
    assert shown("33.6", "%", [Decimal("0.3361")]) and shown("81", "img/s", [Decimal("80.5")])
    assert not shown("6.0", None, [Decimal("10.38")])


def test_every_number_quoted_in_results_readme_appears_in_a_generated_table():
    values = table_values()
    missing = [f"line {n}: {v} {u or ''}" for n, v, u in quoted_numbers(README.read_text()) if not shown(v, u, values)]
    assert not missing, ("results/README.md quotes numbers no table under results/report/ shows (regenerate the "
                         "report, or say the number awaits re-measurement):\n" + "\n".join(missing))
