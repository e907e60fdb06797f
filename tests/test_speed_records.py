"""Every speed record says how and where it was measured (issue 18 item 5): compiled, cuda_graphs, autotune mode and
machine (a string, as the analysis tables show it), on task=bench's training and sampling records (measured here on a
CPU)."""

import os

import pytest
from helpers import tiny_model, tiny_tokenizer

from varbench.eval.flops import model_flops
from varbench.eval.timing import machine, speed_mode
from varbench.tasks.bench import measure
from varbench.utils.autotune import ENV
from varbench.utils.records import read_records

MODE_KEYS = {"compiled", "cuda_graphs", "autotune", "machine"}


def test_speed_mode_names_how_and_where(monkeypatch):
    monkeypatch.setenv(ENV, "first")
    mode = speed_mode(compiled=True, cuda_graphs=False, device="cpu")
    assert mode == {"compiled": True, "cuda_graphs": False, "autotune": "first",
                    "machine": f"no accelerator, {len(os.sched_getaffinity(0))} CPUs"}


@pytest.mark.parametrize("stage,sampler", [("train", None), ("sample", "carry")])
def test_bench_records_carry_the_speed_mode(stage, sampler, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "first")
    model, vae = tiny_model("attention"), tiny_tokenizer()
    cell = dict(mixer="attention", intra="none", depth=model.depth, resolution=32, L=model.layout.L, profile_steps=0,
                matmul_peak_tflops=1e-3, fwd_flops_per_image=model_flops(model)["total"])
    measure(tmp_path / "bench.jsonl", model, vae, stage, 2, sampler, 1, cell)
    (rec,) = read_records(tmp_path / "bench.jsonl")
    assert MODE_KEYS <= set(rec) and rec["compiled"] is False and rec["cuda_graphs"] is False
    assert rec["autotune"] == "first" and rec["machine"] == machine("cpu")
