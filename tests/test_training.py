"""Training: the loss of a tiny model falls on the embedded data, a SIGTERM'd run saves a checkpoint and exits, and
DDP over 2 CPU processes (gloo) takes the same step as 1 process with the same global batch."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from varbench.build import build_model
from varbench.eval.flops import model_flops
from varbench.training.checkpoints import latest
from varbench.utils.records import read_records

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.depth=1", "model.width=64", "model.num_heads=1", "tokenizer.num_res_blocks=1", "tokenizer.vocab_size=64",
        "data.size_per_class=8", "train.batch_size=8", "train.warmup_iters=2", "train.log_every=1", "device=cpu"]


def run(tmp: Path, name: str, *overrides, env=None, launcher=None):
    args = (launcher or [sys.executable]) + [str(REPO / "run.py"), "task=train", f"run_dir={tmp / name}",
                                             f"results_dir={tmp / name / 'results'}", *TINY, *overrides]
    return subprocess.run(args, cwd=tmp, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def final_weights(run_dir: Path) -> dict:
    (folder,) = sorted((run_dir / "checkpoints").glob("step_*"))[-1:]
    return load_file(str(folder / "model.safetensors"))


def test_loss_falls_on_embedded_data(tmp_path):
    out = run(tmp_path, "fall", "train.steps=60", "train.base_lr=0.1", "train.ckpt_every=1000")
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [r["value"] for r in read_records(tmp_path / "fall" / "results" / "train.jsonl")
              if r["metric"] == "train_loss"]
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    # the summary states the analytic forward FLOPs of the model it trained: its own config rebuilds that model
    (summary,) = [r for r in read_records(tmp_path / "fall" / "results" / "train.jsonl")
                  if r["metric"] == "train_summary"]
    with torch.device("meta"):
        model = build_model(OmegaConf.create(summary["config"]))
    assert summary["params"] == model.num_params() and summary["fwd_flops_per_image"] == model_flops(model)["total"]
    assert summary["peak_mem_bytes"] is None  # a CPU run has no CUDA allocator to ask


def test_sigterm_from_outside_saves_and_says_how_to_resume(tmp_path):
    """A real SIGTERM (what `scontrol requeue` sends) to a running `task=train`: the step ends, a checkpoint is saved,
    the process exits non-zero. (The resumed run's exactness: tests/test_training_resume.py.)"""
    args = [sys.executable, str(REPO / "run.py"), "task=train", f"run_dir={tmp_path / 'run'}",
            f"results_dir={tmp_path / 'results'}", *TINY, "train.steps=100000", "train.ckpt_every=100000"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, deadline = tmp_path / "results" / "train.jsonl", time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 1):  # the loop runs: its handler is installed
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and "interrupted by SIGTERM at step " in output, output[-3000:]
    step = int(output.split("interrupted by SIGTERM at step ")[1].split(";")[0])
    assert latest(tmp_path / "run" / "checkpoints").name == f"step_{step:08d}" and 1 <= step < 100000


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    # label dropout draws from each process's own RNG stream, which one process cannot reproduce: off here
    common = ["train.steps=3", "train.ckpt_every=100", "train.deterministic=true", "train.batch_size=8",
              "model.cond_drop_rate=0.0"]
    one = run(tmp_path, "one", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    two = run(tmp_path, "two", *common, launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    logs = [[r for r in read_records(tmp_path / n / "results" / "train.jsonl") if r["metric"] == "train_loss"]
            for n in ("one", "two")]
    # the same images and the same update give the same global loss and gradient norm at every step (steps 2 and 3
    # see the updated weights); only the all-reduce order differs. Weights are not compared element-wise: Adam's
    # step is ~lr * sign(g), so elements whose gradient is at rounding level may move either way in both runs.
    for one, two in zip(*logs, strict=True):
        assert one["value"] == pytest.approx(two["value"], rel=1e-5, abs=1e-6)
        assert one["grad_norm"] == pytest.approx(two["grad_norm"], rel=1e-4)
    assert len(logs[0]) == 3


def test_ddp_resume_is_exact_on_every_rank(tmp_path):
    """Session 21: a checkpoint kept rank 0's RNG only, and a resumed 2-process run gave every rank rank 0's stream
    (class dropout on): its weights after 4 steps differed from an uninterrupted run's by 4e-5."""
    common = ["train.ckpt_every=2", "train.deterministic=true", "train.batch_size=8", "model.cond_drop_rate=0.5"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29536"]
    for name, steps in (("whole", (4,)), ("resumed", (2, 4))):
        for n in steps:
            out = run(tmp_path, name, *common, f"train.steps={n}", launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
            assert out.returncode == 0, out.stderr[-3000:]
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_resumed_run_refuses_tokenizer_weights_replaced_at_its_path(tmp_path):
    """Session 21: `tokenizer.checkpoint` is a path; a file replaced there between two calls went on training the
    model on other codes, and the later checkpoints' specs named the new weights only."""
    first = run(tmp_path, "own", "train.steps=1", "train.ckpt_every=100")
    assert first.returncode == 0, first.stderr[-3000:]
    tokenizer = tmp_path / "tokenizer.safetensors"
    weights = load_file(str(tmp_path / "own" / "checkpoints" / "tokenizer.safetensors"))
    save_file(weights, str(tokenizer))
    common = [f"tokenizer.checkpoint={tokenizer}", "train.ckpt_every=2"]
    assert run(tmp_path, "run", *common, "train.steps=2").returncode == 0
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, str(tokenizer))
    again = run(tmp_path, "run", *common, "train.steps=4")
    assert again.returncode != 0 and "now holds" in again.stderr and str(tokenizer) in again.stderr


@pytest.mark.slow
def test_fsdp2_two_processes_equal_one_process_and_resume(tmp_path):
    """FSDP2 over 2 CPU processes: the same losses as 1 process; its checkpoint holds whole tensors (gathered), and a
    longer run resumes from it on both ranks (re-sharded) and still tracks the 1-process run."""
    common = ["train.ckpt_every=100", "train.deterministic=true", "train.batch_size=8", "model.cond_drop_rate=0.0"]
    one = run(tmp_path, "one", *common, "train.steps=4")
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534"]
    for steps in (2, 4):  # the second run resumes from the first one's step-2 checkpoint
        two = run(tmp_path, "fsdp", *common, f"train.steps={steps}", "train.parallel=fsdp", launcher=torchrun,
                  env={"OMP_NUM_THREADS": "1"})
        assert two.returncode == 0, two.stderr[-3000:]
    logs = [[r for r in read_records(tmp_path / n / "results" / "train.jsonl") if r["metric"] == "train_loss"]
            for n in ("one", "fsdp")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    for a, b in zip(*logs, strict=True):
        assert a["value"] == pytest.approx(b["value"], rel=1e-5, abs=1e-6)
    assert final_weights(tmp_path / "one").keys() == final_weights(tmp_path / "fsdp").keys()


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_scaling_task_wires_two_processes(tmp_path, parallel):
    """task=scaling on 2 CPU processes (gloo): the trainer's wrapping, one record from rank 0 with both ranks'
    entries."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29535"]
    args = torchrun + [str(REPO / "run.py"), "task=scaling", f"task.parallel={parallel}", "task.batch_per_gpu=2",
                       "task.repeats=1", "model.depth=1", "model.width=64", "model.num_heads=1", "device=cpu",
                       f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'results'}"]
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = read_records(tmp_path / "results" / "scaling.jsonl")
    assert rec["metric"] == "parallel_train_images_per_s" and rec["value"] > 0
    assert rec["world_size"] == 2 and rec["parallel"] == parallel and rec["peak_mem_bytes_per_gpu"] == [None, None]


def test_nll_during_training_is_recorded_for_both_splits_and_leaves_training_unchanged(tmp_path):
    common = ["train.steps=4", "train.ckpt_every=100", "train.deterministic=true"]
    plain = run(tmp_path, "plain", *common)
    traced = run(tmp_path, "traced", *common, "train.nll_every=2", "train.nll_images=6")
    assert plain.returncode == 0 and traced.returncode == 0, traced.stderr[-3000:]
    curve = [r for r in read_records(tmp_path / "traced" / "results" / "train.jsonl")
             if r["metric"] == "nll_during_training"]
    assert sorted((r["step"], r["split"]) for r in curve) == [(2, "train"), (2, "val"), (4, "train"), (4, "val")]
    assert all(r["unit"] == "nats/token" and r["num_samples"] == 6 and 0 < r["value"] < 10 for r in curve)
    assert {r["reference"].split(",")[0] for r in curve} == {"EmbeddedShapes(split=val", "EmbeddedShapes(split=train"}
    # scoring in eval mode between steps changes nothing of the training itself: same weights, same losses
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "traced")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = {name: [r["value"] for r in read_records(tmp_path / name / "results" / "train.jsonl")
                     if r["metric"] == "train_loss"] for name in ("plain", "traced")}
    assert losses["plain"] == losses["traced"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_scaling_on_a_cpu_runs_only_when_asked_by_name():
    from hydra import compose, initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    from varbench.tasks.scaling import main as scaling
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=scaling", "model=mvar_d30"])  # device: auto
    with pytest.raises(SystemExit, match="found no GPU.*device=cpu"):
        scaling(cfg)


def test_train_tf32_sets_cuda_s_fp32_matmul_precision_both_ways_and_leaves_the_cpu_s_alone(tmp_path):
    # VAR trains with TF32 on (--tf32, train/var.yaml); a grid job may train several cells in one process, so a run
    # with it off must turn it off again
    from test_logging import train_tiny
    try:
        train_tiny(tmp_path / "on", "train.tf32=true")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
        assert torch.backends.mkldnn.matmul.fp32_precision == "none"  # the CPU's matmuls: full fp32
        train_tiny(tmp_path / "off", "train.tf32=false")
        assert not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def test_train_deterministic_is_set_both_ways_with_cublas_fixed_workspace(tmp_path, monkeypatch):
    # a grid job may train several cells in one process: a deterministic cell must not leave the next one
    # deterministic; on a GPU cuBLAS refuses deterministic mode without a fixed workspace, so the run names one
    from test_logging import train_tiny
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        train_tiny(tmp_path / "on", "train.deterministic=true")
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        train_tiny(tmp_path / "off", "train.deterministic=false")
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
