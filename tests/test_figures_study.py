"""Figures for a paper: every configuration on the sample sheet, a PDF beside each PNG, a colour-blind-safe palette."""

import json
import logging
import shutil
from pathlib import Path

from varbench.analysis import figures, sample_sheet
from varbench.analysis.load import load_records

GRID_PNG = next((Path(__file__).parent / "fixtures/records/grids").glob("*.png"))


def _sheet_records(tmp_path, models: int, missing: int):
    lines = []
    for k in range(models):
        png = f"grids/m{k}.png"
        if k >= missing:
            (tmp_path / "grids").mkdir(exist_ok=True)
            shutil.copy(GRID_PNG, tmp_path / png)
        for seed in (0, 1):
            lines.append({"metric": "sample_grid", "value": png, "unit": "png", "mixer": f"mixer{k:02d}",
                          "intra": "none", "depth": 6, "resolution": 64, "seed": seed, "cell_id": f"c{k}s{seed}",
                          "sampler": "carry", "date": "2099-01-01T00:00:00+00:00"})
    (tmp_path / "sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return load_records(tmp_path)


def test_sample_sheet_shows_every_configuration_even_without_its_png(tmp_path, monkeypatch, caplog):
    drawn = []
    real_save = sample_sheet._save
    monkeypatch.setattr(sample_sheet, "_save", lambda fig, path: drawn.append(fig) or real_save(fig, path))
    df = _sheet_records(tmp_path, models=26, missing=2)  # more models than the old 24-panel cap
    with caplog.at_level(logging.WARNING):
        path = sample_sheet.sample_grids(df, tmp_path / "out" / "sheet.png")
    assert path.is_file() and path.with_suffix(".pdf").is_file()
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 26 and all("seed 0 of 2" in t for t in titles)  # one panel per model, its first seed
    assert "2 of 26 models have no PNG" in caplog.text
    assert sum("PNG not on disk" in t.get_text() for ax in fig.axes for t in ax.texts) == 2


def test_sample_sheet_has_a_panel_per_study_and_model_and_leaves_a_learning_rate_sweep_out(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(sample_sheet, "_save", lambda fig, path: drawn.append(fig) or path)
    shutil.copy(GRID_PNG, tmp_path / "grid.png")
    line = {"metric": "sample_grid", "value": "../grid.png", "unit": "png", "mixer": "attention", "intra": "none",
            "depth": 6, "resolution": 64, "seed": 0, "sampler": "carry", "date": "2099-01-01T00:00:00+00:00"}
    studies = {"study_a": [{**line, "cell_id": "a"}], "study_b": [{**line, "cell_id": "b", "resolution": 32}],
               "sweep": [{**line, "cell_id": f"lr{k}", "config": {"train": {"base_lr": lr}}}
                         for k, lr in enumerate((4e-3, 8e-3))]}
    for study, lines in studies.items():
        (tmp_path / study).mkdir()
        (tmp_path / study / "sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    sample_sheet.sample_grids(load_records(tmp_path), tmp_path / "sheet.png")
    (fig,) = drawn
    titles = sorted(ax.get_title() for ax in fig.axes)  # VAR-d6 twice: one panel per study, none for the sweep
    assert len(titles) == 2 and "study_a, cell a" in titles[0] and "study_b, cell b" in titles[1]


def test_colours_are_okabe_ito_and_colour_marker_pairs_tell_models_apart():
    models = [f"model{k}" for k in range(12)]
    colour, marker = figures.model_colours(models), figures.model_markers(models)
    assert set(colour.values()) <= set(figures.OKABE_ITO)
    assert len({(colour[m], marker[m]) for m in models}) == len(models)


def test_a_figure_saved_twice_gives_the_same_pdf_bytes(tmp_path):
    """No creation date in the PDF: regenerating the report changes a committed PDF only when its figure changes."""
    import time

    from matplotlib.figure import Figure
    pdfs = []
    for k in range(2):
        time.sleep(1.1 * k)  # a creation date (to the second) would differ
        fig = Figure()
        fig.add_subplot().plot([0, 1], [1, 0])
        pdfs.append(figures._save(fig, tmp_path / str(k) / "f.png").with_suffix(".pdf").read_bytes())
    assert pdfs[0] == pdfs[1]
