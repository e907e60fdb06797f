"""Config values are checked before a task runs: a value outside its range is an error naming the key, the value and
the valid range, raised before any file is written; runs live where the user says (one folder per command, stable,
no stray folders), the default records go outside the repository's results/; `debug=true` is a smoke preset."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from varbench.config_schema import ConfigError, validate
from varbench.registry import CONFIG_ROOT, list_options
from varbench.resolvers import register_resolvers
from varbench.tasks import run_task

REPO = Path(__file__).resolve().parents[1]
GROUPS = ["mixer", "intra", "model", "tokenizer", "data", "train", "task"]


def compose_with(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


# what a user gives on the command line where a shipped config leaves `???` (the data's path, the tokenizer's file)
MANDATORY = {"data.root": "/data", "data.num_classes": 10, "tokenizer.checkpoint": "/tokenizer.safetensors"}


def given(cfg):
    """`cfg` with MANDATORY's values set where it leaves them `???`."""
    for key, value in MANDATORY.items():
        group, _, leaf = key.partition(".")
        if leaf in cfg[group].keys() and OmegaConf.is_missing(cfg[group], leaf):
            cfg[group][leaf] = value
    return cfg


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in list_options(g)])
def test_every_shipped_option_passes_the_checks(group, name):
    validate(given(compose_with(f"{group}={name}")))


@pytest.mark.parametrize("name", list_options("grid"))
def test_every_grid_passes_the_checks(name):
    validate(given(compose_with(f"grid={name}")))


@pytest.mark.parametrize("overrides,missing", [
    (["grid=mixers_d16"], ["data.root"]),  # session 21: 12 Slurm cells queued, each failed at its first read
    (["task=train", "model=mvar_d16"], ["data.root", "tokenizer.checkpoint"]),
    (["task=train", "data=folder"], ["data.root", "data.num_classes"]),
    (["task=main", "data=folder", "tokenizer=var"], ["data.root", "data.num_classes"]),  # main trains its tokenizer
])
def test_a_mandatory_value_the_task_reads_is_named_before_it_runs(overrides, missing):
    with pytest.raises(ConfigError) as err:
        validate(compose_with(*overrides))
    named = [line.split(" = ???")[0].strip() for line in str(err.value).splitlines() if " = ???" in line]
    assert named == missing, str(err.value)
    validate(compose_with("task=costs", "model=var_d16"))  # a task that reads neither: no error


@pytest.mark.parametrize("override,message", [
    ("train.grad_accum=0", "train.grad_accum = 0: expected an integer >= 1"),
    ("train.steps=0", "train.steps = 0: expected an integer >= 1, or null (train for `train.epochs` instead)"),
    ("model.depth=0", "model.depth = 0: expected an integer >= 1"),
    ("train.ckpt_every=0", "train.ckpt_every = 0: expected an integer >= 1"),
    ("train.log_every=0", "train.log_every = 0: expected an integer >= 1"),
    ("train.batch_size=0", "train.batch_size = 0: expected an integer >= 1"),
    ("model.width=abc", "model.width = 'abc': expected an integer >= 1, or null (64 * depth)"),
    ("model.width=2.5", "model.width = 2.5: expected an integer"),
    ("train.base_lr=0", "train.base_lr = 0: expected a number > 0"),
    ("train.weight_decay=-0.1", "train.weight_decay = -0.1: expected a number >= 0"),
    ("train.label_smoothing=1.0", "train.label_smoothing = 1.0: expected a number in [0, 1)"),
    ("model.cond_drop_rate=1.5", "model.cond_drop_rate = 1.5: expected a number in [0, 1]"),
    ("train.betas=[0.9]", "train.betas = [0.9]: expected 2 items"),
    ("train.precision=int8", "train.precision = 'int8': expected one of ['fp32', 'bf16', 'fp16', 'fp8']"),
    ("train.keep_last=-1", "train.keep_last = -1: expected an integer >= 1"),
    ("train.compile=1", "train.compile = 1: expected one of [True, False, 'auto']"),
    ("tokenizer.vocab_size=1", "tokenizer.vocab_size = 1: expected an integer >= 2"),
    ("tokenizer.patch_nums=[1,3,2]", "tokenizer.patch_nums = [1, 3, 2]: expected a non-empty list of items"),
    ("data.size_per_class=0", "data.size_per_class = 0: expected an integer >= 1"),
    ("seed=-1", "seed = -1: expected an integer >= 0"),
    ("model.num_heads=3", "model.width = 128 is not a multiple of model.num_heads = 3"),
    # session 22's audit: nan and inf passed every range (nan compares False both ways), then failed mid-run
    ("train.base_lr=nan", "train.base_lr = nan: expected a number > 0"),
    ("train.grad_clip=inf", "train.grad_clip = inf: expected a number >= 0"),
    ("model.mlp_ratio=nan", "model.mlp_ratio = nan: expected a number > 0"),
])
def test_a_value_out_of_range_names_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_with(override))
    assert message in str(err.value)


@pytest.mark.parametrize("overrides,message", [
    (["task=train_tokenizer", "task.ckpt_every=0"], "task.ckpt_every = 0: expected an integer >= 1"),
    (["task=sample", "task.top_p=0"], "task.top_p = 0: expected a number in (0, 1]"),
    (["task=evaluate", "task.classifier_min_val_accuracy=2"], "task.classifier_min_val_accuracy = 2"),
    (["task=tokenize", "task.batch_size=0"], "task.batch_size = 0: expected an integer >= 1"),
    (["++task.overrides.train_tokenizer.batch_size=0"],  # the main job checks each step as it will run
     "task.batch_size = 0: expected an integer >= 1 (step train_tokenizer)"),
    (["++task.overrides.sampel.per_class=2"], "task.overrides has ['sampel'], which are not tasks"),
    (["task.steps=[]"], "task.steps = []: expected a non-empty list of tasks"),
    (["task.steps=[train,sampel]"], "task.steps = ['train', 'sampel']: expected tasks other than main"),
    # session 21: these ran, recording a negative guidance or failing only after every sample was drawn
    (["task=edit", "task.top_k=-5"], "task.top_k = -5: expected an integer >= 0"),
    (["task=edit", "task.top_p=5.0"], "task.top_p = 5.0: expected a number in (0, 1]"),
    (["task=edit", "task.cfg=-2.0"], "task.cfg = -2.0: expected a number >= 0"),
    (["task=edit", "task.mode=outpant"], "task.mode = 'outpant'"),
    (["task=evaluate", "task.floor_images=1"], "task.floor_images = 1"),
    (["task=evaluate", "task.floor_images=abc"], "task.floor_images = 'abc'"),
    (["device=gpu"], "device = 'gpu': expected auto, cpu, cuda or cuda:<index>"),
    (["cluster=local_parallel", "cluster.jobs=0"], "cluster.jobs = 0: expected an integer >= 1"),
    (["data=cifar10", "debug=smoke"], "data.size_per_class = 16: sizes the embedded data set only"),
    # session 22's audit: a switch no rule named took any string, which counted as true (the model changed)
    (["model.shared_aln=maybe"], "model.shared_aln = 'maybe': expected one of [True, False]"),
    (["task=evaluate", "task.inception_fid=maybe"], "task.inception_fid = 'maybe': expected one of [True, False]"),
    (["tokenizer.using_sa=1"], "tokenizer.using_sa = 1: expected one of [True, False]"),
    # ... and these were ignored: a key of another task, of a step's overrides, of mixer=none
    (["+task.per_class=3"], "task.per_class: unknown key (task=main has no such key"),
    (["+task.overrides.sample.per_clas=3"], "task.overrides.sample.per_clas: unknown key (task=sample has no such key, "
                                            "so nothing reads it); did you mean task.overrides.sample.per_class?"),
    (["intra=none", "+intra.window=3"], "intra.window: intra=none takes no options"),
    (["mixer=none", "+mixer.heads=4"], "mixer.heads: mixer=none takes no options"),
])
def test_task_values_are_checked_by_task_and_by_main_step(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_with(*overrides))
    assert message in str(err.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose_with("train.grad_accum=0", "model.depth=0"))
    assert "train.grad_accum = 0" in str(err.value) and "model.depth = 0" in str(err.value)


def test_the_study_node_of_the_study_grids_is_accepted_and_checked():
    validate(compose_with("grid=study_main", "study.arm=gla-none", "study.lr.gla-none=8.0e-3"))
    for override, message in [("study.lr.gla-none=-1", "study.lr.gla-none = -1: expected a number > 0"),
                              ("+study.arms=x", "study.arms: unknown key; valid: ['arm', 'lr']")]:
        with pytest.raises(ConfigError) as err:
            validate(compose_with("grid=study_main", override))
        assert message in str(err.value)


@pytest.mark.parametrize("override,key", [("+sed=1", "sed"), ("+studdy.arm=x", "studdy"),
                                          ("+tokenizer_dri=/tmp", "tokenizer_dri")])
def test_a_misspelt_top_level_key_is_an_error(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: unknown top-level key; valid: \[.*'seed'"):
        validate(compose_with(override))


def test_steps_null_means_epochs():
    validate(compose_with("train.steps=null", "train.epochs=2"))  # no error: the plan counts epochs


@pytest.mark.parametrize("override,message", [
    ("task.resolutions=[100]", "task.resolutions: 100 px has no scale schedule"),
    ("task.configs=[attention,none]", "task.configs: 'attention' is not [mixer, intra]; mixers:"),
    ("task.configs=[[foo,none]]", "task.configs: ['foo', 'none'] is not [mixer, intra]; mixers:"),
])
def test_costs_config_errors_raise_before_anything_runs(tmp_path, override, message):
    """Session 22's audit: task=costs failed inside the task (KeyError: 100; too many values to unpack)."""
    cfg = compose_with("task=costs", override, f"results_dir={tmp_path / 'res'}", f"run_dir={tmp_path / 'run'}")
    with pytest.raises(ValueError) as err:
        run_task(cfg)
    assert message in str(err.value) and not any(tmp_path.iterdir())


@pytest.mark.parametrize("override,message", [
    ("task.configs=[[mamba3,none]]", "task.configs: ['mamba3', 'none'] is not [mixer, intra]"),
    ("task.resolutions=[300]", "task.resolutions: 300 px has no scale schedule"),
    ("task.mixer_options={mamba2:{fusd:true}}", "task.mixer_options.mamba2: unknown fields ['fusd']"),
    ("task.rerun_baseline=[mamba3]", "unknown mixer 'mamba3'"),
    ("task.train_batch={256:0}", "task.train_batch / task.sample_batches at 256 px: 0 is not an integer >= 1"),
])
def test_bench_config_errors_raise_before_anything_runs(tmp_path, override, message):
    """A typo in a bench config used to become bench_error records with exit code 0; now run_task raises (on a CPU
    machine too, before the GPU check) and writes nothing."""
    cfg = compose_with("task=bench", override, f"results_dir={tmp_path / 'res'}", f"run_dir={tmp_path / 'run'}")
    with pytest.raises(ValueError) as err:
        run_task(cfg)
    assert message in str(err.value) and not any(tmp_path.iterdir())


@pytest.mark.parametrize("allow", [False, True])
def test_bench_exits_non_zero_when_a_cell_recorded_an_error(tmp_path, monkeypatch, allow):
    """Cells that recorded bench_error (an OOM is a result) make the task raise after the last cell, unless
    task.allow_failed_cells."""
    import varbench.tasks.bench as bench
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "matmul_peak_tflops", lambda: 1.0)
    monkeypatch.setattr(bench, "record", lambda *args, **kwargs: None)  # records read the GPU's name
    monkeypatch.setattr(bench, "run_cell", lambda cfg, out, mixer, intra, res, cell: int(mixer == "gla"))
    cfg = compose_with("task=bench", "task.configs=[[attention,none],[gla,none]]", "task.isolate_cells=false",
                       f"task.allow_failed_cells={str(allow).lower()}", f"results_dir={tmp_path}", "cell_id=t",
                       f"run_dir={tmp_path / 'run'}")
    if allow:
        assert run_task(cfg)["failed_cells"] == ["gla+none 256px"]
    else:
        with pytest.raises(bench.BenchCellsFailed, match=r"1 bench cells recorded errors \(\['gla\+none 256px'\]\)"):
            run_task(cfg)


@pytest.fixture
def hydra_resolved():
    """Compose as the command does (Hydra's own config set, the resolvers registered); reset afterwards."""
    register_resolvers()

    def resolve(*overrides):
        cfg = compose_with(*overrides, hydra=True)
        HydraConfig.instance().set_config(cfg)
        return cfg
    yield resolve
    HydraConfig.instance().cfg = None


def test_run_dir_is_hydras_folder_named_by_the_command(hydra_resolved):
    """The same command names the same folder (so it resumes), whatever the order of its overrides; another command
    another folder; Hydra's output folder is the run dir; records default outside the repository's results/."""
    cfg = hydra_resolved("mixer=gla", "seed=1")  # values resolve against the Hydra config set last: read them now
    run_dir = cfg.run_dir
    assert run_dir == f"runs/main/{cfg.cell_id}" == cfg.hydra.run.dir  # the cell id hashes the composed config
    assert cfg.results_dir == "runs/results" and cfg.hydra.output_subdir == ".hydra/main"
    assert hydra_resolved("seed=1", "mixer=gla").run_dir == run_dir
    assert hydra_resolved("mixer=gla", "seed=2").run_dir != run_dir
    assert hydra_resolved("task=train").run_dir.startswith("runs/train/")


def test_hydra_run_dir_refuses_an_invalid_config(hydra_resolved):
    cfg = hydra_resolved("train.grad_accum=0")
    with pytest.raises(Exception, match=r"train.grad_accum = 0: expected an integer >= 1"):
        OmegaConf.select(cfg, "hydra.run.dir")


def test_debug_preset_is_a_small_main_job_recording_in_its_run(hydra_resolved):
    cfg = hydra_resolved("debug=smoke")
    assert cfg.task.name == "main" and cfg.train.steps <= 50 and cfg.data.size_per_class <= 20
    assert cfg.task.overrides.train_tokenizer.steps <= 50 and cfg.results_dir == f"{cfg.run_dir}/results"
    validate(cfg)


def run_cli(cwd: Path, *overrides) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "run.py"), *overrides], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_command_refuses_a_bad_value_before_writing_anything(tmp_path):
    out = run_cli(tmp_path, "task=train", "train.grad_accum=0", "train.steps=2", "data.size_per_class=2",
                  "debug=true", f"run_dir={tmp_path / 'run'}")
    assert out.returncode != 0 and "train.grad_accum = 0: expected an integer >= 1" in out.stderr
    assert not any(tmp_path.iterdir())  # no run folder, no .hydra, no records, no runs/
    # the message names the bad key alone, not the Hydra key whose resolution ran the check (hydra.run.dir)
    assert "full_key" not in out.stderr and "hydra.run.dir" not in out.stderr


def test_a_run_lives_in_its_run_dir_only(tmp_path):
    """run_dir=<elsewhere>: Hydra's .hydra and log go there too, nothing appears under the working folder's runs/."""
    (tmp_path / "cwd").mkdir()
    out = run_cli(tmp_path / "cwd", "task=costs", "model=var_d16", "task.depths=[16]", "task.resolutions=[256]",
                  "task.configs=[[attention,none]]", f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert not any((tmp_path / "cwd").iterdir())
    assert (tmp_path / "run" / ".hydra" / "costs" / "config.yaml").is_file() and (tmp_path / "res").is_dir()


def test_hydra_run_dir_is_the_run_dir_checked_first_and_holding_the_run(tmp_path):
    """Session 23's left-alone item: `hydra.run.dir=X` moved Hydra's folder alone (checkpoints and records follow
    `run_dir`) and skipped the config check that runs before the folder is made. It now means `run_dir=X`."""
    (tmp_path / "cwd").mkdir()
    run = f"hydra.run.dir={tmp_path / 'run'}"
    bad = run_cli(tmp_path / "cwd", "task=train", "train.grad_accum=0", "debug=true", run)
    assert bad.returncode != 0 and "train.grad_accum = 0: expected an integer >= 1" in bad.stderr
    assert not any(tmp_path.glob("*/*")) and not (tmp_path / "run").exists()
    good = run_cli(tmp_path / "cwd", "task=costs", "model=var_d16", "task.depths=[16]", "task.resolutions=[256]",
                   "task.configs=[[attention,none]]", run, f"results_dir={tmp_path / 'res'}", "--cfg", "job",
                   "--resolve")
    assert good.returncode == 0, good.stderr[-2000:]
    assert f"run_dir: {tmp_path / 'run'}" in good.stdout
    # beside run_dir=, Hydra's folder stays apart, still made only once the config passed its check
    both = run_cli(tmp_path / "cwd", "task=train", "train.grad_accum=0", "debug=true", run, f"run_dir={tmp_path / 'r'}")
    assert both.returncode != 0 and "train.grad_accum = 0: expected an integer >= 1" in both.stderr
    assert not any(tmp_path.glob("*/*")) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("code,errors,process_records", [(0, 0, 0), (3, 1, 0), (1, 1, 1), (None, 1, 1)])
def test_an_isolated_cell_counts_as_failed_when_it_recorded_errors_or_died(monkeypatch, code, errors,
                                                                          process_records):
    """Exit code 3 (CELL_RECORDED_ERRORS): the cell recorded its own bench_error records; another non-zero code or a
    timeout (None): the process died, recorded here."""
    import varbench.tasks.bench as bench
    assert bench.CELL_RECORDED_ERRORS == 3
    recorded = []
    monkeypatch.setattr(bench, "run_in_fresh_process", lambda *args, timeout: code)
    monkeypatch.setattr(bench, "record", lambda out, metric, *args, **kwargs: recorded.append(kwargs["stage"]))
    plain = OmegaConf.create({"task": {"cell_timeout_s": 5}})
    assert bench.isolated_cell(plain, "out.jsonl", "gla", "none", 256, {"mixer": "gla"}) == errors
    assert recorded == ["process"] * process_records


def test_an_isolated_cell_cut_by_a_sigterm_around_the_bench_is_recorded_before_the_bench_stops(monkeypatch):
    """The device call's step limit (timeout's SIGTERM) before task.cell_timeout_s: the cut cell is a bench_error
    record naming the signal, then the bench stops (Stopped goes on up)."""
    import varbench.tasks.bench as bench
    from varbench.utils.processes import Stopped
    recorded = []

    def stopped(*args, timeout):
        raise Stopped("SIGTERM")

    monkeypatch.setattr(bench, "run_in_fresh_process", stopped)
    monkeypatch.setattr(bench, "record", lambda out, metric, *args, **kwargs: recorded.append((metric, kwargs)))
    plain = OmegaConf.create({"task": {"cell_timeout_s": 170}})
    with pytest.raises(Stopped):
        bench.isolated_cell(plain, "out.jsonl", "mamba2", "full", 256, {"mixer": "mamba2"})
    ((metric, fields),) = recorded
    assert metric == "bench_error" and fields["stage"] == "process" and fields["mixer"] == "mamba2"
    assert "SIGTERM" in fields["error"] and "task.cell_timeout_s = 170 s" in fields["error"]


@pytest.mark.parametrize("override,message", [
    ("+train.stepz=5", "train.stepz: unknown key .*; did you mean train.steps?"),
    ("+data.image_size=64", "data.image_size: unknown key"),  # the tokenizer decides the image size
    ("+task.per_clas=2", "task.per_clas: unknown key")])
def test_a_key_no_config_sets_is_an_error_not_ignored(override, message):
    """Session 21: following Hydra's "use +key" hint for a misspelt key ran with the key ignored."""
    with pytest.raises(ConfigError, match=message):
        validate(compose_with(override))


def test_debug_false_runs_as_if_the_flag_were_absent(tmp_path):
    """Session 22's audit: the documented flag's off form crashed in Hydra (the command rewrote it to debug=null)."""
    out = run_cli(tmp_path, "debug=false", "task=costs", "model=var_d16", "task.depths=[16]", "task.resolutions=[256]",
                  "task.configs=[[attention,none]]", f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "res").is_dir()


@pytest.mark.parametrize("overrides", [["debug=smoke", "task.steps=[train_tokenizer,tokenize]"],
                                       ["debug=smoke", "task=tokenize", "tokenizer.checkpoint=/x.safetensors"],
                                       ["debug=smoke", "task=train_tokenizer"]])
def test_the_debug_preset_runs_a_subset_of_steps_or_one_task(overrides):
    """Session 22's audit: under debug=true no subset of the main job's steps passed the check (the preset's
    overrides of the other steps were an error), and task=tokenize / train_tokenizer refused the preset's
    `task.overrides`; a task run alone now takes its own overrides from it."""
    from varbench.tasks import alone
    cfg = compose_with(*overrides)
    validate(alone(cfg))
    if cfg.task.name == "train_tokenizer":
        from varbench.tasks.train_tokenizer import task_options
        assert task_options(alone(cfg))["steps"] == 30  # debug's overrides.train_tokenizer
    if cfg.task.name == "tokenize":
        task = alone(cfg).task
        assert task.batch_size == 32 and "overrides" not in task  # debug's overrides.tokenize



@pytest.mark.parametrize("overrides,message", [
    (["mixer=gla", "+mixer.foo=1"], "cannot be built: GLAMixer.__init__() got an unexpected keyword argument 'foo'"),
    (["mixer=gla", "mixer.heads=0"], "GLA: set `heads`"),
    (["model.num_classes=5"], "model.num_classes=5 (the recipe's) contradicts data.num_classes=10"),
])
def test_the_model_is_built_on_the_meta_device_before_anything_runs(overrides, message):
    """Session 22's audit: what the mixer or the backbone refuses surfaced at the train step, after the main job's
    tokenizer had trained, under a traceback."""
    from varbench.tasks import check_config
    for task in (["task=train"], []):  # alone, and as the main job's train step
        with pytest.raises(ValueError) as err:
            check_config(compose_with(*task, *overrides))
        assert message in str(err.value)


@pytest.mark.parametrize("overrides,key", [
    (["task=train", "tokenizer.checkpoint=/nowhere/tok.safetensors"], "tokenizer.checkpoint"),
    (["task.steps=[train,evaluate]", "tokenizer.checkpoint=/nowhere/tok.safetensors"], "tokenizer.checkpoint"),
    (["task=train", "train.token_cache=/nowhere/cache"], "train.token_cache"),
    (["task=train", "train.init_from=/nowhere/var_d16.pth"], "train.init_from"),
    (["task=report", "results_dir=/nowhere/results"], "task.records"),
])
def test_a_missing_input_file_is_named_before_anything_runs(tmp_path, overrides, key):
    """Session 22's audit: a misspelt tokenizer / token cache / init_from path failed at the train step (after the
    main job's earlier steps ran), task=report's at its first read. A grid's dry run only prints them: an earlier
    cell or stage may make them."""
    from varbench.tasks import check_config
    cfg = compose_with(*overrides, f"run_dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert f"{key} = /nowhere/" in str(err.value) and "no such file or folder" in str(err.value)
    check_config(cfg, inputs=False)


def test_a_resumed_run_does_not_need_its_init_from_file(tmp_path):
    """A run with a checkpoint resumes from it and ignores `train.init_from` (varbench/tasks/train.py)."""
    import torch

    from varbench.tasks import check_config
    from varbench.training import checkpoints
    checkpoints.save(tmp_path / "run" / "checkpoints", 2, {"w": torch.zeros(3)}, {"step": 2})
    cfg = compose_with("task=train", "train.init_from=/nowhere/var_d16.pth", f"run_dir={tmp_path / 'run'}")
    check_config(cfg)
