"""Tables and figures of the study, regenerated from the measurement records (varbench.utils.records) only.

    from varbench.analysis import load_records, main_table, write_table
    df = load_records("results")                     # one row per record, flattened
    write_table(main_table(df), "out", "main_table", "Main results")

`python run.py task=report` writes every table and figure (varbench.tasks.report); analysis/*.py are the
notebooks (jupytext percent format) that tell the same story.
"""

from varbench.analysis.checks import gpu_test_table, parity_table
from varbench.analysis.crossover import crossover_table
from varbench.analysis.figures import (
    crossover_atlas,
    generalisation_gap,
    quality_vs_flops,
    speed_memory_vs_resolution,
    training_curves,
)
from varbench.analysis.floors import floors_table
from varbench.analysis.format import as_text, write_table
from varbench.analysis.goals import bench_goals
from varbench.analysis.guidance import guidance_table
from varbench.analysis.load import latest, load_records, model_label
from varbench.analysis.quality import quality_label
from varbench.analysis.sample_sheet import sample_grids
from varbench.analysis.scale_up import scale_up_table
from varbench.analysis.study import costs_table, parallel_scaling, study_ranking
from varbench.analysis.tables import main_table, mixer_ablation, resolution_scaling
from varbench.analysis.versus import tokenizer_variance, versus_var

__all__ = ["as_text", "bench_goals", "costs_table", "crossover_atlas", "crossover_table", "floors_table",
           "generalisation_gap", "gpu_test_table", "guidance_table", "latest", "load_records", "main_table",
           "mixer_ablation", "model_label", "parallel_scaling", "parity_table", "quality_label",
           "quality_vs_flops", "resolution_scaling", "sample_grids", "scale_up_table",
           "speed_memory_vs_resolution", "study_ranking", "tokenizer_variance", "training_curves",
           "versus_var", "write_table"]
