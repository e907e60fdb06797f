"""The GPU scripts' plumbing on a CPU (benchmarks/): gpu_study.sh plans every seed's cells, one grid per GPU or one
grid for all, after training and caching the tokenizer; gpu_queues.sh runs one command line per GPU index;
gpu_tests.py records each selected test's outcome; gpu_bench_rest.sh plans commands that compose; import_records.py
stamps a call's records with their machine."""

import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from varbench.analysis import gpu_test_table, load_records
from varbench.registry import CONFIG_ROOT, default_configs, list_options
from varbench.tasks.bench import check_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # `python` is this interpreter


def bash(*args, env=None):
    return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, env={**ENV, **(env or {})},
                          timeout=900)


@pytest.mark.slow  # a 2-step tokenizer and a 5,000-image token cache on 2 CPU cores: ~30 s
def test_gpu_study_plans_every_seed_on_its_gpu_then_all_on_one(tmp_path):
    study = {"STUDY": str(tmp_path / "study"), "TOKENIZER_STEPS": "2", "SEEDS": "0 1 2"}
    # a seed's cells: every registered mixer alone, plus the grid's extra cells
    extra = OmegaConf.load(CONFIG_ROOT / "grid" / "mixers_gpu.yaml").hydra.sweeper.cells
    per_seed = len(list_options("mixer")) + len(extra)
    spread = bash("benchmarks/gpu_study.sh", str(tmp_path / "r2"), "2", "+dry_run=true", env={**study, "GPUS": "0 1"})
    assert spread.returncode == 0, spread.stderr[-2000:]
    for seed in (0, 1, 2):
        log = (tmp_path / "r2" / f"grid_seed{seed}.log").read_text()
        assert f"[grid] {per_seed} cells" in log and log.count(f"seed={seed}") == per_seed
        assert "dry run: nothing launched" in log
    assert (tmp_path / "r2" / "study_tokenizer.safetensors").is_file()  # the frozen tokenizer travels with records
    one = bash("benchmarks/gpu_study.sh", str(tmp_path / "r1"), "2", "+dry_run=true", env={**study, "GPUS": "0"})
    assert one.returncode == 0, one.stderr[-2000:]
    assert f"[grid] {3 * per_seed} cells" in one.stdout  # and the tokenizer was reused: resumed


def test_gpu_queues_runs_one_command_line_per_gpu_under_one_deadline(tmp_path):
    out = bash("benchmarks/gpu_queues.sh", str(tmp_path), 'echo "[bench] on $CUDA_VISIBLE_DEVICES"',
               'echo "[grid] done: on $CUDA_VISIBLE_DEVICES"; sleep 60; echo "[bench] never"', env={"DEADLINE_S": "3"})
    assert out.returncode == 0 and out.stdout.splitlines() == ["[bench] on 0", "[grid] done: on 1"], out
    assert (tmp_path / "queue1.log").read_text().strip() == "[grid] done: on 1"  # stopped at the deadline


def test_gpu_tests_records_each_outcome_and_exits_with_pytests_status(tmp_path):
    (tmp_path / "test_three.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_wrong(): assert 1 == 2\n"
        "@pytest.mark.skip(reason='needs a CUDA device')\n"
        "def test_gpu_only(): pass\n"
        "@pytest.fixture\n"
        "def leaky():\n"
        "    yield\n"
        "    raise RuntimeError('teardown broke')\n"
        "def test_ok_but_teardown_fails(leaky): pass\n")
    out = tmp_path / "tests.jsonl"
    run = subprocess.run([sys.executable, "benchmarks/gpu_tests.py", str(out), "--autotune", "first", "--",
                          str(tmp_path / "test_three.py"), "--rootdir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 1, run.stdout[-2000:]  # a failed test: pytest's status
    outcomes = {r["test"].split("::")[-1]: r for r in map(json.loads, out.read_text().splitlines())}  # the last one
    assert {name: r["value"] for name, r in outcomes.items()} == {
        "test_ok": "passed", "test_wrong": "failed", "test_gpu_only": "skipped", "test_ok_but_teardown_fails": "failed"}
    assert outcomes["test_ok_but_teardown_fails"]["phase"] == "teardown"
    assert "assert 1 == 2" in outcomes["test_wrong"]["message"]
    assert outcomes["test_gpu_only"]["message"] == "needs a CUDA device"
    assert all(r["metric"] == "gpu_test" and r["commit"] and r["versions"]["torch"] for r in outcomes.values())
    table = gpu_test_table(load_records(out))  # what task=report shows of them
    assert table.loc[outcomes["test_wrong"]["test"], "Report"] == "assert 1 == 2"
    assert table.loc[outcomes["test_ok"]["test"], "Report"] == ""
    teardown = table.loc[outcomes["test_ok_but_teardown_fails"]["test"]]  # the newest record of the test
    assert teardown["Outcome"] == "failed" and teardown["Report"] == "RuntimeError: teardown broke"


def test_gpu_bench_rest_plans_commands_that_compose(tmp_path):
    """benchmarks/gpu_bench_rest.sh with DRY=1: every run.py command it would run on the GPU composes (Hydra's
    --cfg job for a task, the grid's dry run for a sweep, with the cells expected) and its test selection exists."""
    commands = []
    for mode in ("queues", "latency", "compiled"):
        out = bash("benchmarks/gpu_bench_rest.sh", mode, str(tmp_path), env={"DRY": "1"})
        assert out.returncode == 0, out.stderr
        commands += [shlex.split(line) for line in out.stdout.splitlines() if line and not line.startswith("#")]
    commands = [argv[2:] if argv[0] == "timeout" else argv for argv in commands]
    grids = {}
    for argv in commands:
        if argv[:2] == ["python", "run.py"]:
            grid = any(a.startswith("grid=") for a in argv)
            check = subprocess.run([sys.executable, *argv[1:], *(["+dry_run=true"] if grid else ["--cfg", "job"])],
                                   cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
            assert check.returncode == 0, (argv, check.stderr[-2000:])
            if grid:
                grids[next(a for a in argv if a.startswith("grid="))] = check.stdout
    assert "[grid] 1 cells" in grids["grid=bench_depths"] and "model=var_d30" in grids["grid=bench_depths"]
    assert "[grid] 12 cells" in grids["grid=resolution"]
    listed = ""
    for tests in [argv for argv in commands if argv[:2] == ["python", "benchmarks/gpu_tests.py"]]:
        listed += subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                  *tests[tests.index("--") + 1:]], cwd=REPO, capture_output=True, text=True, env=ENV,
                                 timeout=300).stdout
    assert "test_cuda_graph_sampling_equals_eager[mamba-none]" in listed
    assert "test_cuda_graph_sampling_equals_eager[none-full]" in listed
    assert "test_fused_correction_equals_the_torch_form_on_the_gpu" in listed
    assert "test_the_compiled_training_step_is_one_graph[mamba2-full]" in listed



def test_gpu_check_s7_plans_commands_that_compose_and_tests_that_exist(tmp_path):
    """benchmarks/gpu_check_s7.sh with DRY=1: its bench commands compose (Hydra's --cfg job) with compiled training,
    graphs by default then eager sampling, and its test selection collects the GPU tests it names."""
    out = bash("benchmarks/gpu_check_s7.sh", str(tmp_path), env={"DRY": "1"})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert all(argv[0] == "timeout" for argv in commands) and sum(int(argv[1]) for argv in commands) <= 540
    commands = [argv[2:] for argv in commands]
    benches = [argv for argv in commands if argv[:3] == ["python", "run.py", "task=bench"]]
    modes = [("task.compile=true" in b, "task.cuda_graphs=false" in b) for b in benches]
    assert modes == [(True, False), (False, True)]
    for argv in benches:
        check = subprocess.run([sys.executable, *argv[1:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                               env=ENV, timeout=300)
        assert check.returncode == 0, (argv, check.stderr[-2000:])
        assert "sample_batches:\n    256:\n    - 1\n    - 64" in check.stdout
    (tests,) = [argv for argv in commands if argv[:2] == ["python", "benchmarks/gpu_tests.py"]]
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *tests[tests.index("--") + 1:]], cwd=REPO, capture_output=True, text=True, env=ENV,
                            timeout=300).stdout
    for name in ("test_ssd_custom_op.py::test_opcheck", "test_fla_custom_ops.py::test_opcheck[gla]",
                 "test_cuda_graph_token_steps_equal_eager", "test_golden_on_the_gpu_with_kernels",
                 "test_on_cuda_the_training_step_on_the_gpu_kernels_is_one_graph[mamba2]"):
        assert name in listed, name


def run_with_stub_python(tmp_path, script: str, cases: str, env: dict | None = None):
    """`bash script tmp_path/out` with a stand-in `python` first on PATH: it echoes its arguments and then runs the
    shell `case "$*" in <cases> esac` (exit codes, printed logs) instead of any real command."""
    (tmp_path / "bin").mkdir(parents=True)
    (tmp_path / "bin" / "python").write_text(f'#!/bin/sh\necho "ran $*"\ncase "$*" in {cases} esac\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    return bash(script, str(tmp_path / "out"), env={"PATH": f"{tmp_path / 'bin'}:{ENV['PATH']}", **(env or {})})


def step_logs(out: Path) -> Path:
    """The step logs and steps.jsonl that `finish_steps` packed into OUT/logs.tar.gz, unpacked beside it. Only the
    archive and the scripts' own records are left in OUT: a device call brings back 8 files at most."""
    assert not list(out.glob("*.log")) and not (out / "steps.jsonl").exists()
    assert len(list(out.iterdir())) <= 8
    with tarfile.open(out / "logs.tar.gz") as archive:
        archive.extractall(out / "logs", filter="data")
    return out / "logs"


def test_gpu_check_s7_records_each_step_and_goes_on_after_a_failure(tmp_path):
    # a stand-in `python`: the compiled bench fails, everything else passes
    out = run_with_stub_python(tmp_path, "benchmarks/gpu_check_s7.sh", "*task.compile=true*) exit 3;;")
    assert out.returncode == 1, out.stderr  # one failed step
    logs = step_logs(tmp_path / "out")
    steps = [json.loads(line) for line in (logs / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["rc"], s["timed_out"]) for s in steps] == [
        ("tests", 0, False), ("bench_compiled", 3, False), ("bench_eager_sampling", 0, False)]
    assert "task.cuda_graphs=false" in (logs / "bench_eager_sampling.log").read_text()


def test_gpu_check_s8_plans_commands_that_compose_and_tests_that_exist(tmp_path):
    """benchmarks/gpu_check_s8.sh with DRY=1: M-VAR-d16's training step eagerly, then compiled, at batch 32 with no
    sampling stage, then VAR-d16's eager sampling (eager decode too) at batch 1 and 64 with no training stage, each
    cell killed by the bench before the step's own timeout; its test selection collects the causal_conv1d custom op's
    GPU tests and the compiled Mamba2 training step. The decode modes step runs only when given seconds."""
    out = bash("benchmarks/gpu_check_s8.sh", str(tmp_path), env={"DRY": "1"})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert all(argv[0] == "timeout" for argv in commands) and sum(int(argv[1]) for argv in commands) <= 540
    benches = [argv for argv in commands if argv[2:5] == ["python", "run.py", "task=bench"]]
    assert [("task.compile=true" in b) for b in benches] == [False, True, False]
    for argv, stage in zip(benches, ["train", "train", "sample"]):
        cell_timeout = next(int(a.split("=")[1]) for a in argv if a.startswith("task.cell_timeout_s="))
        assert cell_timeout < int(argv[1])  # the bench kills a hung cell itself: a record, no orphan on the GPU
        check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                               env=ENV, timeout=300)
        assert check.returncode == 0, (argv, check.stderr[-2000:])
        if stage == "train":
            assert "configs:\n  - - mamba2\n    - full" in check.stdout and "    256: 32\n" in check.stdout
            assert "sample_batches:\n    256: []" in check.stdout
        else:
            assert "configs:\n  - - attention\n    - none" in check.stdout and "train_batch: null" in check.stdout
            assert "sample_batches:\n    256:\n    - 1\n    - 64" in check.stdout
            assert "cuda_graphs: false" in check.stdout and "decode_mode: eager" in check.stdout
    (tests,) = [argv[2:] for argv in commands if argv[2:4] == ["python", "benchmarks/gpu_tests.py"]]
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *tests[tests.index("--") + 1:]], cwd=REPO, capture_output=True, text=True, env=ENV,
                            timeout=300).stdout
    assert not any("benchmarks/decode_modes.py" in argv for argv in commands)
    with_decode = bash("benchmarks/gpu_check_s8.sh", str(tmp_path), env={"DRY": "1", "DECODE_S": "90"})
    assert shlex.split(with_decode.stdout.splitlines()[-1]) == [
        "timeout", "90", "python", "benchmarks/decode_modes.py", f"{tmp_path}/decode_modes.jsonl"]
    for name in ("test_causal_conv_custom_op.py::test_opcheck",
                 "test_the_op_equals_the_float64_reference_in_values_and_gradients",
                 "test_a_mamba2_mixer_on_its_kernels_compiles_into_one_graph_forward_and_backward",
                 "test_a_mamba2_sampling_step_on_its_kernels_compiles_into_one_graph",
                 "test_on_cuda_the_training_step_on_the_gpu_kernels_is_one_graph[mamba2]"):
        assert name in listed, name


def test_gpu_check_s8_records_each_step_counts_graph_breaks_and_goes_on_after_a_failure(tmp_path):
    # a stand-in `python`: the eager bench fails, the compiled one logs two graph breaks as dynamo does
    out = run_with_stub_python(tmp_path, "benchmarks/gpu_check_s8.sh", (
        '*task.compile=true*) echo "V1203 [0/0] [__graph_breaks] Graph break in user code"; '
        'echo "V1203 [3/0] [__graph_breaks] Graph break (user stack suppressed)";; *mamba2,full*) exit 3;;'))
    assert out.returncode == 1, out.stderr  # one failed step
    steps = [json.loads(line) for line in (step_logs(tmp_path / "out") / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["rc"], s["timed_out"]) for s in steps] == [
        ("tests", 0, False), ("bench_eager", 3, False), ("bench_compiled", 0, False), ("sample_var", 0, False)]
    (breaks,) = [json.loads(line) for line in (tmp_path / "out" / "graph_breaks.jsonl").read_text().splitlines()]
    assert breaks["metric"] == "graph_breaks" and breaks["value"] == 2


def test_gpu_crossover_plans_every_default_configuration_once_under_one_protocol(tmp_path):
    """benchmarks/gpu_crossover.sh with DRY=1: its plans (1 and 2: the two device calls; 3: the cells cut to fit)
    bench every default configuration (each registered mixer, M-VAR, none + full) exactly once, each plan's limits
    sum to <= 540 s, and every command passes the bench's check_config under one protocol: fully autotuned, the
    atlas's three resolutions, CUDA-graph sampling, eager fp32 training. A new mixer fails this until a plan holds it.
    Composed in this process (no run.py start per command: the file's tests are the suite's slowest)."""
    planned = []
    for plan in ("1", "2", "3"):
        out = bash("benchmarks/gpu_crossover.sh", str(tmp_path), plan, env={"DRY": "1"})
        assert out.returncode == 0, out.stderr
        commands = [shlex.split(line) for line in out.stdout.splitlines()]
        assert all(argv[0] == "timeout" for argv in commands) and sum(int(argv[1]) for argv in commands) <= 540
        for argv in commands:
            assert argv[2:5] == ["python", "run.py", "task=bench"], argv
            with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
                cfg = compose(config_name="config", overrides=argv[4:])
            check_config(cfg)
            t = cfg.task
            assert (cfg.autotune, list(t.resolutions), t.cuda_graphs, t.compile, t.param_dtype) == (
                "full", [256, 512, 1024], True, False, "fp32")
            planned += [tuple(entry) for entry in t.configs]
    assert sorted(planned) == sorted(default_configs())
    assert bash("benchmarks/gpu_crossover.sh", str(tmp_path), "4", env={"DRY": "1"}).returncode == 2


def test_decode_modes_records_each_mode_and_batch(tmp_path):
    """benchmarks/decode_modes.py on a CPU (a small VQ-VAE, fp32): one record per (mode, batch) naming the mode, its
    latency and its distance from the eager images (zero for eager itself, round-off for channels_last)."""
    out = subprocess.run([sys.executable, "benchmarks/decode_modes.py", str(tmp_path / "d.jsonl"), "--tiny",
                          "--modes", "eager", "channels_last", "--batches", "1", "2", "--repeats", "1"],
                         cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [(r["decode_mode"], r["batch"]) for r in records] == [
        ("eager", 1), ("channels_last", 1), ("eager", 2), ("channels_last", 2)]
    assert all(r["metric"] == "decode_latency_ms" and r["value"] == r["timing"]["median_ms"] > 0 for r in records)
    assert [r["max_abs_diff_vs_eager"] == 0 for r in records] == [True, False, True, False]
    assert all(r["max_abs_diff_vs_eager"] < 1e-5 for r in records)
    assert not any(r["cudnn_benchmark"] for r in records)
    both = subprocess.run([sys.executable, "benchmarks/decode_modes.py", str(tmp_path / "b.jsonl"), "--tiny",
                           "--modes", "eager", "--batches", "1", "--repeats", "1", "--cudnn-benchmark"],
                          cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert both.returncode == 0, both.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [(r["decode_mode"], r["cudnn_benchmark"]) for r in records] == [("eager", False), ("eager", True)]


def test_attention_backends_times_each_variant_against_the_oracle(tmp_path):
    """benchmarks/attention_backends.py on a CPU (a small layout, fp32): one record per (kind, variant), each the
    oracle's attention (output and input gradients within fp32 round-off of the float64 oracle), naming the SDPA
    operators that ran forward and backward, with its forward no longer than forward + backward."""
    out = subprocess.run([sys.executable, "benchmarks/attention_backends.py", str(tmp_path / "a.jsonl"), "--tiny",
                          "--together", "1", "4", "64"], cwd=REPO, capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    variants = ["reference", "sdpa_scales:1:auto", "sdpa_scales:4:auto", "sdpa_scales:64:auto"]
    assert [(r["kind"], r["variant"]) for r in records] == [(k, v) for k in ("block_causal", "block_diag")
                                                            for v in variants]
    for r in records:
        assert r["metric"] == "attention_ms" and r["value"] == r["timing"]["median_ms"] > 0
        assert 0 < r["forward_ms"] and r["backward_ms"] == pytest.approx(r["value"] - r["forward_ms"])
        assert max(r[f"max_abs_diff_{n}"] for n in ("out", "dq", "dk", "dv")) < 1e-5
        assert any(op.endswith("_backward") for op in r["kernels_ran"]) and len(r["kernels_ran"]) >= 2
    causal = {r["variant"]: r["pairs"] for r in records if r["kind"] == "block_causal"}
    assert set(causal.values()) == {1 + 4 * 5 + 9 * 14 + 16 * 30}  # each scale's queries see every coarser token


def test_l2qk_backward_times_autograds_backward_and_the_written_one(tmp_path):
    """benchmarks/l2qk_backward.py on a CPU (small shapes, bf16 autocast): one record per variant, autograd's first,
    the written backward's input gradient within two bf16 ulps of its scale of autograd's."""
    out = subprocess.run([sys.executable, "benchmarks/l2qk_backward.py", str(tmp_path / "l.jsonl"), "--tiny",
                          "--repeats", "2"], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert [(r["metric"], r["variant"]) for r in records] == [("l2qk_ms", "autograd"), ("l2qk_ms", "written")]
    for r in records:
        assert r["value"] == r["timing"]["median_ms"] > 0 and r["forward_ms"] > 0
    assert records[0]["max_abs_diff_grad_vs_autograd"] == 0
    assert 0 <= records[1]["max_abs_diff_grad_vs_autograd"] <= 2 * 2 ** -7 * 4


def test_intra_grad_layout_times_each_cut_and_every_cut_has_the_baselines_gradients(tmp_path):
    """benchmarks/intra_grad_layout.py on a CPU (a small layout): one record per cut of q, k, v, the old `slices`
    first; the new cuts run the same SDPA calls on the same numbers, so their gradients are the baseline's exactly."""
    out = subprocess.run([sys.executable, "benchmarks/intra_grad_layout.py", str(tmp_path / "i.jsonl"), "--tiny"],
                         cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "i.jsonl").read_text().splitlines()]
    assert [(r["metric"], r["way"]) for r in records] == [
        ("intra_step_ms", "slices"), ("intra_step_ms", "split_qkv"), ("intra_step_ms", "split_heads")]
    assert [r["max_abs_diff_grads_vs_slices"] for r in records] == [None, 0.0, 0.0]
    for r in records:
        assert r["value"] == r["timing"]["median_ms"] > 0 and r["top_ops"]
        assert r["inductor_options"] == {"comprehensive_padding": False}


def test_attention_backends_plans_every_kernel_set_on_a_gpu_and_sdpa_s_own_on_a_cpu():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from attention_backends import sdpa_kernels, variants
    assert variants([1, 64], ["auto", "cudnn"], cuda=True) == [
        "flex", "reference", "sdpa_scales:1:auto", "sdpa_scales:64:auto", "sdpa_scales:1:cudnn", "sdpa_scales:64:cudnn"]
    assert variants([64], ["auto", "flash"], cuda=False) == ["reference", "sdpa_scales:64:auto"]
    # a pinned kernel keeps the memory-efficient one behind it, for the masked call of the first scales
    assert sdpa_kernels("flash") == ("flash", "efficient") and sdpa_kernels("efficient") == ("efficient",)
    assert sdpa_kernels("auto") == ()


def test_import_records_stamps_every_record_and_marks_only_eager_batch1_latencies(tmp_path):
    lines = [{"metric": "sample_latency_ms", "value": 300.0, "batch": 1},
             {"metric": "sample_latency_ms", "value": 40.0, "batch": 1, "cuda_graphs": True},
             {"metric": "sample_latency_ms", "value": 450.0, "batch": 64},
             {"metric": "train_images_per_s", "value": 195.0, "batch": 32}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[2:]) + "\n")  # a blank line too

    def run(*extra):
        return subprocess.run([sys.executable, "benchmarks/import_records.py", str(tmp_path / "dest.jsonl"),
                               str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--machine", "kind-x",
                               "--beside", "three queues", *extra], cwd=REPO, capture_output=True, text=True)
    done = run("--disturbed-eager-b1", "control: 314 vs 131 ms")
    assert done.returncode == 0, done.stderr
    records = [json.loads(ln) for ln in (tmp_path / "dest.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k not in ("machine", "beside", "disturbed")} for r in records] == lines
    assert all(r["machine"] == "kind-x" and r["beside"] == "three queues" for r in records)
    assert [r.get("disturbed") for r in records] == ["control: 314 vs 131 ms", None, None, None]
    again = run()  # an existing destination is never overwritten ...
    assert again.returncode != 0 and "--append" in again.stderr and len(
        (tmp_path / "dest.jsonl").read_text().splitlines()) == 4
    assert run("--append").returncode == 0 and len((tmp_path / "dest.jsonl").read_text().splitlines()) == 8


def test_gpu_check_s16_plans_sampling_commands_that_compose_and_tests_that_exist(tmp_path):
    """benchmarks/gpu_check_s16.sh with DRY=1: its limits sum to <= 540 s; VAR-d16's and M-VAR-d16's sampling at
    batch 1 and 64 with CUDA graphs and the graphs decode, then VAR's eager batch 64, compose with no training stage,
    each cell killed by the bench before its step's timeout; the profile and decode-mode scripts get their batches;
    the test selection collects the graphs decode's CUDA test."""
    out = bash("benchmarks/gpu_check_s16.sh", str(tmp_path), env={"DRY": "1"})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert all(argv[0] == "timeout" for argv in commands) and sum(int(argv[1]) for argv in commands) <= 540
    benches = [argv for argv in commands if argv[2:5] == ["python", "run.py", "task=bench"]]
    expected = [("attention", "graphs", "- 1\n    - 64"), ("mamba2", "graphs", "- 1\n    - 64"),
                ("attention", "eager", "- 64")]
    assert len(benches) == len(expected)
    for argv, (mixer, decode, batches) in zip(benches, expected):
        assert int(next(a.split("=")[1] for a in argv if a.startswith("task.cell_timeout_s="))) < int(argv[1])
        check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                               env=ENV, timeout=300)
        assert check.returncode == 0, (argv, check.stderr[-2000:])
        assert f"configs:\n  - - {mixer}" in check.stdout and "train_batch: null" in check.stdout
        assert f"sample_batches:\n    256:\n    {batches}\n" in check.stdout
        assert f"decode_mode: {decode}" in check.stdout
    scripts = [argv[2:4] for argv in commands if argv[3].startswith("benchmarks/")]
    assert ["python", "benchmarks/decode_modes.py"] in scripts
    assert [argv[argv.index("--batch") + 1] for argv in commands if "benchmarks/sample_profile.py" in argv] == [
        "1", "64"]
    (tests,) = [argv[2:] for argv in commands if argv[2:4] == ["python", "benchmarks/gpu_tests.py"]]
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *tests[tests.index("--") + 1:]], cwd=REPO, capture_output=True, text=True, env=ENV,
                            timeout=300).stdout
    assert "test_graphs_decodes_eager_s_images_exactly_and_captures_once_per_shape" in listed
    assert "test_on_cuda_raster_attention_on_each_backend_matches_its_reference_under_bf16_autocast" in listed
    assert "test_cuda_graphs_read_weights_changed_after_capture[mamba2]" in listed
    assert "test_cuda_graph_sampling_equals_eager[mamba2-full]" in listed


def test_gpu_check_s16_runs_the_steps_asked_with_the_decode_mode_asked(tmp_path):
    """STEPS picks gpu_check_s16.sh's steps (in the script's order) and GRAPHS_DECODE the graphed steps' decode; the
    eager step at batch 1 and 64 (the official code's goal, batch 1 host-bound) runs only when asked."""
    out = bash("benchmarks/gpu_check_s16.sh", str(tmp_path),
               env={"DRY": "1", "STEPS": "var_decode_by_16 var_eager_bf16_blocks var_eager var_graphs",
                    "GRAPHS_DECODE": "compiled", "GRAPHS_S": "150"})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert [(argv[1], next(a for a in argv if a.startswith("task.decode_mode="))) for argv in commands] == [
        ("150", "task.decode_mode=compiled"), ("100", "task.decode_mode=eager"), ("100", "task.decode_mode=eager"),
        ("80", "task.decode_mode=eager")]
    assert "task.sample_batches={256:[1,64]}" in commands[1] and "task.cuda_graphs=false" in commands[1]
    assert "task.block_weights=bf16" in commands[2] and "task.block_weights=bf16" not in commands[1]
    assert "task.sample_batches={256:[64]}" in commands[3] and "task.decode_batch=16" in commands[3]
    for argv, composed in ((commands[3], "decode_batch: 16"), (commands[2], "block_weights: bf16")):
        check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True,
                               text=True, env=ENV, timeout=300)
        assert check.returncode == 0 and composed in check.stdout, check.stderr[-2000:]
    default = [shlex.split(line) for line in bash("benchmarks/gpu_check_s16.sh", str(tmp_path),
                                                  env={"DRY": "1"}).stdout.splitlines()]
    eager = [argv for argv in default if "task.cuda_graphs=false" in argv]
    assert eager and not [argv for argv in eager if "task.sample_batches={256:[1,64]}" in argv]  # var_expandable's
    assert not [argv for argv in default if "task.decode_mode=compiled" in argv]


def test_gpu_check_s16_fused_steps_sample_var_and_mvar_with_the_fused_chains_and_graphs(tmp_path):
    """var_fused / mvar_fused (only when asked): VAR-d16's and M-VAR-d16's sampling at batch 1 and 64 with CUDA graphs,
    the decode GRAPHS_DECODE names and task.fused_elementwise=true, composing; the tests step collects the fused
    chains' CUDA test."""
    out = bash("benchmarks/gpu_check_s16.sh", str(tmp_path),
               env={"DRY": "1", "STEPS": "tests var_fused mvar_fused", "GRAPHS_DECODE": "compiled"})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    for argv, mixer in zip(commands[1:], ["attention", "mamba2"], strict=True):
        assert argv[1] == "130" and "task.fused_elementwise=true" in argv and "task.cuda_graphs=true" in argv
        check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                               env=ENV, timeout=300)
        assert check.returncode == 0, (argv, check.stderr[-2000:])
        assert f"configs:\n  - - {mixer}" in check.stdout and "fused_elementwise: true" in check.stdout
        assert "decode_mode: compiled" in check.stdout
        assert "sample_batches:\n    256:\n    - 1\n    - 64\n" in check.stdout
    tests = commands[0][2:]
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *tests[tests.index("--") + 1:]], cwd=REPO, capture_output=True, text=True, env=ENV,
                            timeout=300).stdout
    assert "test_cuda_graphs_capture_the_fused_kernels" in listed
    default = bash("benchmarks/gpu_check_s16.sh", str(tmp_path), env={"DRY": "1"}).stdout
    assert "task.fused_elementwise=true" not in default


def test_gpu_check_s16_gives_the_m_var_sampling_steps_the_mamba2_options_asked(tmp_path):
    """MAMBA2_OPTIONS reaches the mamba2 mixer of mvar_graphs and mvar_fused (composing), never VAR's steps."""
    out = bash("benchmarks/gpu_check_s16.sh", str(tmp_path),
               env={"DRY": "1", "STEPS": "var_fused mvar_graphs mvar_fused", "MAMBA2_OPTIONS": "fit_chunk:true"})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    (var,) = [argv for argv in commands if "task.configs=[[attention,none]]" in argv]
    mvar = [argv for argv in commands if "task.configs=[[mamba2,full]]" in argv]
    assert not any("mixer_options" in word for word in var) and len(mvar) == 2
    for argv in mvar:
        check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                               env=ENV, timeout=300)
        assert check.returncode == 0, check.stderr[-2000:]
        assert "configs:\n  - - mamba2" in check.stdout and "mamba2:\n      fit_chunk: true" in check.stdout


def test_gpu_check_s16_train_times_var_on_flex_then_on_sdpa_scales_in_one_call(tmp_path):
    """benchmarks/gpu_check_s16_train.sh with DRY=1: its limits sum to <= 540 s; VAR-d16's compiled training at batch
    32, no sampling stage, first on the default attention backend, then with attention's backend sdpa_scales (a
    mixer option: the records get their own configuration label), each composing, each cell killed by the bench
    before its step's timeout; the test selection collects sdpa_scales' CUDA test."""
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path), env={"DRY": "1"})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert all(argv[0] == "timeout" for argv in commands) and sum(int(argv[1]) for argv in commands) <= 540
    benches = [argv for argv in commands if argv[2:5] == ["python", "run.py", "task=bench"]]
    assert len(benches) == 2
    for argv, backend in zip(benches, ["auto", "sdpa_scales"]):
        assert int(next(a.split("=")[1] for a in argv if a.startswith("task.cell_timeout_s="))) < int(argv[1])
        check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                               env=ENV, timeout=300)
        assert check.returncode == 0, (argv, check.stderr[-2000:])
        assert "configs:\n  - - attention\n    - none" in check.stdout and "    256: 32\n" in check.stdout
        assert "sample_batches:\n    256: []" in check.stdout and "compile: true" in check.stdout
        options = OmegaConf.create(check.stdout).task.get("mixer_options") or {}
        assert (options.get("attention") or {}).get("backend", "auto") == backend
    (tests,) = [argv[2:] for argv in commands if argv[2:4] == ["python", "benchmarks/gpu_tests.py"]]
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *tests[tests.index("--") + 1:]], cwd=REPO, capture_output=True, text=True, env=ENV,
                            timeout=300).stdout
    assert "test_on_cuda_a_module_on_sdpa_scales_matches_its_reference_under_bf16_autocast" in listed
    assert all("task.compile_mode=default" in argv for argv in benches)


def test_gpu_check_s16_train_runs_the_steps_asked_in_the_compile_mode_asked(tmp_path):
    """STEPS picks gpu_check_s16_train.sh's steps, COMPILE_MODE reaches task.compile_mode, COMPILE_SCOPE
    task.compile_scope, COMPILE_CACHE_DIR compile_cache_dir and FP8 / FP8_RECIPE task.fp8 / task.fp8_recipe,
    which compose."""
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path),
               env={"DRY": "1", "STEPS": "train_flex", "COMPILE_MODE": "max-autotune-no-cudagraphs",
                    "COMPILE_SCOPE": "blocks", "COMPILE_CACHE_DIR": "/tmp/inductor_cold", "FP8": "true",
                    "FP8_RECIPE": "rowwise"})
    assert out.returncode == 0, out.stderr
    (argv,) = [shlex.split(line) for line in out.stdout.splitlines()]
    assert argv[2:5] == ["python", "run.py", "task=bench"] and "task.mixer_options" not in " ".join(argv)
    check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert check.returncode == 0 and "compile_mode: max-autotune-no-cudagraphs" in check.stdout, check.stderr[-2000:]
    assert "compile_scope: blocks" in check.stdout and "compile_cache_dir: /tmp/inductor_cold" in check.stdout
    assert "fp8: true" in check.stdout and "fp8_recipe: rowwise" in check.stdout


def test_gpu_check_s16_train_times_m_var_with_its_intra_attention_on_sdpa_scales_when_asked(tmp_path):
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path), env={"DRY": "1", "STEPS": "train_mvar_sdpa_scales"})
    assert out.returncode == 0, out.stderr
    (argv,) = [shlex.split(line) for line in out.stdout.splitlines()]
    check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert check.returncode == 0 and "backend: sdpa_scales" in check.stdout and "- mamba2" in check.stdout, (
        check.stdout[-2000:], check.stderr[-2000:])


def test_gpu_check_s16_train_times_m_var_on_torch_varlen_with_the_mamba2_options_asked(tmp_path):
    """train_mvar_varlen: M-VAR's intra attention on torch's varlen kernel; MAMBA2_OPTIONS reaches its mamba2
    mixer, and the two compose."""
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path),
               env={"DRY": "1", "STEPS": "train_mvar_varlen", "MAMBA2_OPTIONS": "chunk_size:128"})
    assert out.returncode == 0, out.stderr
    (argv,) = [shlex.split(line) for line in out.stdout.splitlines()]
    check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    assert "full:\n      backend: torch_varlen" in check.stdout, check.stdout[-2000:]
    assert "mamba2:\n      chunk_size: 128" in check.stdout, check.stdout[-2000:]


def test_gpu_check_s16_train_gives_the_sdpa_scales_steps_the_options_asked(tmp_path):
    """SDPA_OPTIONS reaches the attention mixer's and intra=full's sdpa_scales options, which compose."""
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path),
               env={"DRY": "1", "STEPS": "train_sdpa_scales train_mvar_sdpa_scales",
                    "SDPA_OPTIONS": "sdpa_kernels:[flash,efficient],together_below:128"})
    assert out.returncode == 0, out.stderr
    for line, group in zip(out.stdout.splitlines(), ("mixer", "intra")):
        argv = shlex.split(line)
        check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                               env=ENV, timeout=300)
        assert check.returncode == 0, check.stderr[-2000:]
        name = "attention" if group == "mixer" else "full"
        options = "\n      ".join(("backend: sdpa_scales", "sdpa_kernels:", "- flash", "- efficient",
                                    "together_below: 128"))
        assert f"{group}_options:\n    {name}:\n      {options}" in check.stdout, check.stdout[-3000:]


def test_gpu_check_s16_train_times_the_attention_variants_alone_when_asked(tmp_path):
    """attention: benchmarks/attention_backends.py at its defaults (VAR-d16's shapes, every variant), under the
    step's limit; not in the default steps."""
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path), env={"DRY": "1", "STEPS": "attention"})
    assert out.returncode == 0, out.stderr
    (argv,) = [shlex.split(line) for line in out.stdout.splitlines()]
    assert argv == ["timeout", "120", "python", "benchmarks/attention_backends.py", f"{tmp_path}/attention.jsonl"]
    default = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path), env={"DRY": "1"})
    assert "attention_backends" not in default.stdout


def test_gpu_check_s16_train_times_m_var_compiled_when_asked_and_counts_its_graph_breaks(tmp_path):
    """train_mvar: M-VAR-d16 ([mamba2, full]) compiled training at batch 32, composing; its graph breaks are counted
    from its log, and nothing is counted for a step that did not run (CALL_END left no time for it)."""
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path), env={"DRY": "1", "STEPS": "train_mvar"})
    (argv,) = [shlex.split(line) for line in out.stdout.splitlines()]
    check = subprocess.run([sys.executable, *argv[3:], "--cfg", "job"], cwd=REPO, capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    assert "configs:\n  - - mamba2\n    - full" in check.stdout and "compile: true" in check.stdout
    assert "    256: 32\n" in check.stdout and "sample_batches:\n    256: []" in check.stdout
    two_breaks = "*mamba2*) echo '[__graph_breaks] Graph break in user code'; echo '[__graph_breaks] Graph break';;"
    ran = run_with_stub_python(tmp_path / "ran", "benchmarks/gpu_check_s16_train.sh", two_breaks,
                               {"STEPS": "train_mvar"})
    assert ran.returncode == 0 and json.loads((tmp_path / "ran" / "out" / "graph_breaks.jsonl").read_text()) == {
        "metric": "graph_breaks", "value": 2, "unit": "count", "log": "train_mvar.log"}
    cut = run_with_stub_python(tmp_path / "cut", "benchmarks/gpu_check_s16_train.sh", two_breaks,
                               {"STEPS": "train_mvar", "CALL_END": str(int(time.time()))})
    assert cut.returncode == 1 and not (tmp_path / "cut" / "out" / "graph_breaks.jsonl").exists()


def test_steps_share_the_calls_end_cut_their_limits_and_skip_what_cannot_start(tmp_path):
    """CALL_END: scripts chained in one device call share its limit (session 23 chained gpu_check_s16_train.sh with
    an M-VAR bench by hand). A step's limit is cut to the time left, and its bench cell's timeout to 15 s under it
    (the bench then records the cell's error before the step's `timeout` kills it); a step with too little left is
    not started, and it is recorded and counted as failed."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text('#!/bin/sh\ncase "$*" in *sdpa_scales*) ;; *) sleep 3;; esac\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    env = {"PATH": f"{tmp_path / 'bin'}:{ENV['PATH']}", "MIN_STEP_S": "5", "STEPS": "train_flex train_sdpa_scales"}
    dry = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path / "dry"),
               env={**env, "DRY": "1", "CALL_END": str(int(time.time()) + 100)})
    limits = [int(line.split()[1]) for line in dry.stdout.splitlines()]
    assert limits in ([100, 100], [99, 99])  # (a second may tick)
    assert all(f"task.cell_timeout_s={limits[0] - 15}" in line.split() for line in dry.stdout.splitlines())  # < 140
    out = bash("benchmarks/gpu_check_s16_train.sh", str(tmp_path / "out"),
               env={**env, "CALL_END": str(int(time.time()) + 7)})  # train_flex sleeps 3 s: under 5 s are left
    assert out.returncode == 1 and "step train_sdpa_scales not started" in out.stderr, out.stderr
    steps = [json.loads(line) for line in (step_logs(tmp_path / "out") / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["rc"]) for s in steps] == [("train_flex", 0), ("train_sdpa_scales", None)]
    assert steps[0]["limit_s"] <= 7 and steps[1]["skipped"].endswith("s left before CALL_END")


def test_gpu_prep_makes_what_the_calls_carry_with_the_committed_tokenizer_and_sums(tmp_path):
    """benchmarks/gpu_prep.sh (a new checkout holds none of the git-ignored carry): every wheel of ../shared/wheels
    (py/ included) in .whl/ with Hydra's joblib launcher and joblib (PyPI; cluster=local_parallel, the study's grids,
    failed at start-up without them in session 20), py/'s and torchao's (PyPI) in .whl_fp8/; staging A holds
    Inception shard 1 and the committed raster tokenizer (its committed sum), B shard 2; .stage/SHA256SUMS verifies
    them; a second run keeps what exists."""
    out = bash("benchmarks/gpu_prep.sh", env={"DEST": str(tmp_path), "PY": sys.executable})
    assert out.returncode == 0, out.stderr
    wheels = REPO.parent / "shared" / "wheels"
    made_here = sorted(p.name for p in (tmp_path / ".whl").iterdir())
    joblib = [n for n in made_here if n.startswith(("hydra_joblib_launcher-1.2.", "joblib-"))]
    assert len(joblib) == 2 and all(n.endswith("-py3-none-any.whl") for n in joblib)
    assert [n for n in made_here if n not in joblib] == sorted(
        p.name for p in [*wheels.glob("*.whl"), *wheels.glob("py/*.whl")])
    fp8 = sorted(p.name for p in (tmp_path / ".whl_fp8").iterdir())  # VAR's FP8 training: no kernel wheel, torchao
    assert [n for n in fp8 if not n.startswith("torchao-0.15.")] == sorted(p.name for p in wheels.glob("py/*.whl"))
    assert len(fp8) == len(list(wheels.glob("py/*.whl"))) + 1
    assert sorted(p.name for p in (tmp_path / ".stage" / "a").iterdir()) == [
        "inception.part1of2.safetensors", "proc_single.safetensors"]
    assert [p.name for p in (tmp_path / ".stage" / "b").iterdir()] == ["inception.part2of2.safetensors"]
    committed = (REPO / "results/gpu/h200/study19/tokenizers/SHA256SUMS").read_text()
    sums = (tmp_path / ".stage" / "SHA256SUMS").read_text()
    (tokenizer,) = [line.split()[0] for line in sums.splitlines() if line.endswith("a/proc_single.safetensors")]
    assert f"{tokenizer}  proc_single.safetensors" in committed
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / ".stage", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    shard = tmp_path / ".stage" / "b" / "inception.part2of2.safetensors"
    made = shard.stat().st_mtime_ns
    again = bash("benchmarks/gpu_prep.sh", env={"DEST": str(tmp_path), "PY": sys.executable})
    assert again.returncode == 0 and shard.stat().st_mtime_ns == made
    assert (tmp_path / ".stage" / "SHA256SUMS").read_text() == sums


def test_gpu_setup_installs_a_carried_wheel_set_whole_once_and_keeps_it_when_none_is_carried(tmp_path):
    """benchmarks/gpu_setup.sh (sourced on the machine; here with stand-ins for python3 and nvidia-smi): a carried set
    is installed in one pip call, not again while it is the installed one, and replaces an installed set that
    differs (session 20: pip's --target left the joblib launcher out when added to an installed set); a call that
    carries no wheels keeps the installed set."""
    bin_dir, site, wheels = tmp_path / "bin", tmp_path / "site", tmp_path / "tree" / ".whl"
    bin_dir.mkdir()
    wheels.mkdir(parents=True)
    (bin_dir / "python3").write_text('#!/bin/bash\necho "$*" >> "$CALLS"\n'  # pip's --target folder, as pip makes it
                                     'for a; do [ "$prev" = --target ] && mkdir -p "$a"; prev=$a; done\n')
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    calls = tmp_path / "calls.txt"

    def setup() -> list[str]:
        calls.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SITE": str(site), "CALLS": str(calls)}
        out = subprocess.run(["bash", "-c", f". {REPO}/benchmarks/gpu_setup.sh && echo $PYTHONPATH"],
                             cwd=tmp_path / "tree", capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0 and out.stdout.startswith(f"{site}:"), out.stderr
        return [c for c in calls.read_text().splitlines() if "pip install" in c]

    (wheels / "a-1-py3-none-any.whl").write_text("")
    (installs,) = setup()
    assert installs.endswith(".whl/a-1-py3-none-any.whl") and f"--target {site}" in installs
    (site / "a").mkdir()  # what that install put there
    assert setup() == []  # the same set: installed already
    (wheels / "b-1-py3-none-any.whl").write_text("")
    (installs,) = setup()  # another set: the whole set, into a fresh folder
    assert "a-1-py3-none-any.whl" in installs and "b-1-py3-none-any.whl" in installs and not (site / "a").exists()
    for wheel in wheels.iterdir():
        wheel.unlink()
    wheels.rmdir()
    assert setup() == [] and site.is_dir()  # nothing carried: the installed set stays


def test_narrow_conv_records_each_layout_and_width(tmp_path):
    """benchmarks/narrow_conv.py on a CPU (small shapes, fp32): a conv record per (layout, output channels)."""
    out = subprocess.run([sys.executable, "benchmarks/narrow_conv.py", str(tmp_path / "n.jsonl"), "--tiny",
                          "--channels", "3", "8", "16"], cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "n.jsonl").read_text().splitlines()]
    assert [(r["metric"], r["layout"], r["out_channels"]) for r in records] == [
        ("conv_latency_ms", layout, c) for layout in ("channels_last", "contiguous") for c in (3, 8, 16)]
    assert all(r["value"] > 0 for r in records)
