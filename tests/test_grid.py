"""Grids (configs/grid, varbench/grid.py, the grid sweeper): a grid expands every registered mixer x seeds without
-m, a dry run runs nothing, every grid and cluster option composes, a re-run skips complete cells, and a failing cell
is recorded with its error while the other cells still run. Cells are tiny main pipelines on the embedded data (CPU)."""

from __future__ import annotations

import hashlib
import json

import pytest
from grid_helpers import TINY, cells, records, run_grid, tail
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from varbench import grid
from varbench.registry import CONFIG_ROOT, list_options
from varbench.resolvers import register_resolvers


@pytest.fixture(autouse=True, scope="module")
def _resolvers():
    register_resolvers()  # the grid files read ${varbench.cell_id:}, ... as the varbench command registers them


def _composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_cell_id_hashes_the_composed_config_not_where_it_runs():
    a = grid.cell_id(_composed("mixer=gla", "+task.overrides.x=1", "seed=0"))
    assert a == grid.cell_id(_composed("seed=0", "+task.overrides.x=1", "mixer=gla", "cluster=slurm",
                                       "+dry_run=true", "cluster.profile=example_a100", "results_dir=elsewhere"))
    assert a != grid.cell_id(_composed("mixer=gla", "+task.overrides.x=1", "seed=1")) and len(a) == 12


@pytest.mark.parametrize("key,other", [("compile_scope", "blocks"), ("tf32", "true")])
def test_a_key_added_later_keeps_the_ids_of_cells_composed_before_it_unless_set_to_something_else(key, other):
    # session 25's keys, at the value that does what every cell did before: train.compile_scope=model, train.tf32=false
    cfg = _composed("mixer=gla", "seed=0")
    now = grid.cell_id(cfg)
    with open_dict(cfg):
        del cfg.train[key]  # the config as it was composed before the key existed
    assert key not in cfg.train
    assert grid.cell_id(cfg) == now
    assert grid.cell_id(_composed("mixer=gla", "seed=0", f"train.{key}={other}")) != now


def test_a_kernel_tiling_of_the_same_sum_is_not_part_of_the_cell_id_and_its_neighbour_options_are():
    """mamba2's fit_chunk (TILING_KEYS) runs a step's scan in a smaller chunk, the same sum: a cell done at either
    value is done; chunk_size and d_state, in the same group, still give other ids."""
    fitted = grid.cell_id(_composed("mixer=mamba2", "seed=0"))
    assert fitted == grid.cell_id(_composed("mixer=mamba2", "seed=0", "mixer.fit_chunk=false"))
    assert fitted != grid.cell_id(_composed("mixer=mamba2", "seed=0", "mixer.chunk_size=128"))
    assert fitted != grid.cell_id(_composed("mixer=mamba2", "seed=0", "mixer.d_state=32"))


def test_editing_a_yaml_default_changes_the_cell_id():
    cfg = _composed("mixer=gla", "seed=0")
    before = grid.cell_id(cfg)
    cfg.train.base_lr = cfg.train.base_lr * 2  # what an edit of train/tiny.yaml composes to: no override names it
    assert grid.cell_id(cfg) != before


def test_a_tokenizer_retrained_into_the_same_path_gives_its_cells_new_ids(tmp_path):
    checkpoint = tmp_path / "tokenizer.safetensors"
    checkpoint.write_bytes(b"weights of the first tokenizer")
    cfg = _composed("mixer=gla", "seed=0", f"tokenizer.checkpoint={checkpoint}")
    first = grid.cell_id(cfg)
    assert first == grid.cell_id(cfg)
    checkpoint.write_bytes(b"weights of a retrained tokenizer")  # same path, other content: another tokenizer
    assert grid.cell_id(cfg) != first


def test_each_results_dir_has_its_own_cell_folders(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        a, b = (compose(config_name="config", overrides=["grid=mixers_tiny", f"results_dir={tmp_path / r}"],
                        return_hydra_config=True) for r in ("one", "two"))
    assert a.hydra.sweep.dir != b.hydra.sweep.dir and a.hydra.sweep.dir.startswith("runs/cells/one-")
    assert grid.results_namespace(tmp_path / "one") == grid.results_namespace(str(tmp_path / "x" / ".." / "one"))


def test_mixers_tiny_expands_every_mixer_and_seed_and_dry_run_runs_nothing(tmp_path):
    out = run_grid(tmp_path, "+dry_run=true")  # no -m: the grid sets hydra.mode MULTIRUN
    assert out.returncode == 0, tail(out)
    rows = cells(out.stdout)
    got = [(r["overrides"]["mixer"], r["overrides"]["intra"], r["overrides"]["seed"]) for r in rows]
    expected = {(m, "none", "0") for m in list_options("mixer")} | {(m, "full", "0") for m in ("mamba2", "none")}
    assert sorted(got) == sorted(expected)  # each cell once: the M-VAR cells are extras, not a product
    assert all(r["status"] == "pending" for r in rows) and len({r["cid"] for r in rows}) == len(rows)
    assert "dry run: nothing launched" in out.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()



def test_a_dry_run_checks_every_cell(tmp_path):
    """Session 22's audit: a dry run listed cells with train.batch_size=0 as pending, exit 0."""
    out = run_grid(tmp_path, "+dry_run=true", "train.batch_size=0")
    assert out.returncode != 0 and "12 of 12 cells have an invalid config" in out.stderr
    assert "train.batch_size = 0: expected an integer >= 1" in out.stderr and "Traceback" not in out.stderr

def test_a_dry_run_lists_input_files_not_there_yet_without_refusing_them(tmp_path):
    """An earlier cell or stage may make a file a cell reads: the dry run names it, each cell's start refuses it."""
    out = run_grid(tmp_path, "+dry_run=true", f"train.init_from={tmp_path / 'var_d16.pth'}")
    assert out.returncode == 0, tail(out)
    assert out.stdout.count(f"not there yet (an earlier cell or stage must make it): train.init_from = "
                            f"{tmp_path / 'var_d16.pth'}: no such file or folder") == len(cells(out.stdout)) == 12


def test_cells_run_seed_major_so_a_grid_cut_short_holds_whole_replicates(tmp_path):
    out = run_grid(tmp_path, "+dry_run=true", "seed=2,0,1")
    assert out.returncode == 0, tail(out)
    rows = [(r["overrides"]["seed"], r["overrides"]["mixer"], r["overrides"]["intra"]) for r in cells(out.stdout)]
    seeds = [seed for seed, *_ in rows]
    assert seeds == sorted(seeds, key=int) and set(seeds) == {"0", "1", "2"}
    variants = [[v for seed, *v in rows if seed == s] for s in ("0", "1", "2")]
    assert variants[0] == variants[1] == variants[2]  # the same variants in the YAML's order within every seed


def test_mixers_tiny_cuts_only_its_cells_and_shares_the_main_jobs_tokenizer():
    from varbench.config_schema import step_config
    from varbench.frozen_tokenizer import identity
    here = ("device=cpu", "run_dir=r")  # a fixed run_dir: the cell's reads Hydra's sweep folder, unset when composed
    main, cell = _composed(*here), _composed("grid=mixers_tiny", *here)
    assert (cell.train.steps, cell.train.batch_size) != (main.train.steps, main.train.batch_size)
    assert step_config(cell, "evaluate").task.val_nll_images < step_config(main, "evaluate").task.val_nll_images
    assert step_config(cell, "sample").task.per_class == step_config(main, "sample").task.per_class
    steps = ["train_tokenizer", "tokenize"]
    assert identity(cell, steps) == identity(main, steps)  # the cuts leave the shared tokenizer folder's key alone


@pytest.mark.parametrize("name", list_options("grid"))
def test_every_grid_composes_with_its_cell_run_dir(name):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"grid={name}"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper._target_.endswith("GridSweeper")
    # unresolved: the run_dir is the cell's Hydra output dir, under its results_dir's own folder
    assert cfg.hydra.sweeper.params and OmegaConf.to_container(cfg)["run_dir"] == "${hydra:sweep.dir}/${cell_id}"
    assert cfg.hydra.sweep.dir == f"runs/cells/{grid.results_namespace(cfg.results_dir)}"


def test_a_grid_overrides_groups_and_the_command_line_overrides_the_grid():
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        d16 = compose(config_name="config", overrides=["grid=mixers_d16"])
        bench = compose(config_name="config", overrides=["grid=resolution"])
        mine = compose(config_name="config", overrides=["grid=mixers_d16", "data=embedded", "task.steps=[train]"])
    assert d16.data._target_.endswith("ImageFolderData") and list(d16.task.steps) == ["train", "sample"]
    assert bench.task.name == "bench"
    assert mine.data._target_.endswith("EmbeddedShapes") and list(mine.task.steps) == ["train"]


def test_slurm_cluster_takes_its_resources_from_the_profile():
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        local = compose(config_name="config", overrides=["cluster=slurm"], return_hydra_config=True)
        a100 = compose(config_name="config", overrides=["cluster=slurm", "cluster.profile=example_a100"],
                       return_hydra_config=True)
        here = compose(config_name="config", return_hydra_config=True)
    assert local.hydra.launcher._target_.endswith("SlurmLauncher") and local.hydra.launcher.partition == "debug"
    assert a100.hydra.launcher.gpus_per_node == a100.hydra.launcher.tasks_per_node == 8
    assert a100.hydra.launcher.max_num_timeout > 0 and a100.hydra.launcher.constraint == "a100"
    assert here.hydra.launcher._target_.endswith("BasicLauncher") and here.cluster.name == "local"
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        bad = compose(config_name="config", overrides=["cluster=slurm", "cluster.profile=nowhere"],
                      return_hydra_config=True)
    with pytest.raises(Exception, match="known profiles"):
        _ = bad.hydra.launcher.partition


def test_rerun_skips_complete_cells(tmp_path):
    two = ["mixer=attention,gla", "seed=0", "hydra.sweeper.cells=[]", *TINY]
    first = run_grid(tmp_path, *two)
    assert first.returncode == 0, tail(first)
    rows = cells(first.stdout)
    assert "[varbench.tasks.main][INFO] - step 1/" in first.stdout  # the main job's log line that `again` lacks
    assert len(rows) == 2 and all(grid.is_complete(tmp_path / "results", r["cid"]) for r in rows)
    ids = {r["cid"] for r in rows}
    trained = records(tmp_path, "train.jsonl", "train_summary")
    assert {r["config"]["cell_id"] for r in trained} == ids  # every record names its cell
    assert {r["config"]["run_dir"] for r in trained} == {f"sweep/{c}" for c in ids}  # its Hydra output dir
    for c in ids:
        assert (tmp_path / "sweep" / c / "checkpoints" / "latest").is_file()
        assert len(list((tmp_path / "sweep" / c).glob("samples_*.png"))) == 1
        assert (tmp_path / "sweep" / c / ".hydra" / "main" / "config.yaml").is_file()  # one place for all of a cell
    # one frozen tokenizer for both cells: trained once (its records once), named by the same id in every record
    assert len(records(tmp_path, "train_tokenizer.jsonl", "tokenizer_train_time")) == 1
    assert len(records(tmp_path, "tokenize.jsonl", "tokenize_throughput")) == 1
    ids_of_tokenizer = {r["tokenizer_id"] for n in ("train.jsonl", "sample.jsonl", "evaluate.jsonl")
                        for r in records(tmp_path, n)}
    (shared,) = (tmp_path / "runs" / "tokenizers").glob("*/tokenizer/tokenizer.safetensors")
    assert ids_of_tokenizer == {hashlib.sha256(shared.read_bytes()).hexdigest()[:12]}
    n_lines = {n: len(records(tmp_path, n)) for n in ("train.jsonl", "sample.jsonl", "train_tokenizer.jsonl")}
    again = run_grid(tmp_path, *two)
    assert again.returncode == 0, tail(again)
    assert "launching 0 cells (2 complete, skipped)" in again.stdout and "varbench.tasks.main" not in again.stdout
    assert all(r["status"] == "complete" for r in cells(again.stdout))
    assert {n: len(records(tmp_path, n)) for n in n_lines} == n_lines


@pytest.mark.parametrize("cluster", [["cluster=local"], ["cluster=local_parallel", "cluster.jobs=2"]],
                         ids=["one_after_another", "side_by_side"])
def test_a_failing_cell_is_recorded_and_the_others_run(tmp_path, cluster):
    # mamba2's mamba_ssm backend cannot run on this CPU machine: that cell fails (first), the 'auto' one runs
    out = run_grid(tmp_path, "mixer=mamba2", "mixer.backend=mamba_ssm,auto", "seed=0", "hydra.sweeper.cells=[]",
                   *cluster, *TINY)
    assert out.returncode != 0 and "1 of 2 grid cells failed" in out.stderr, tail(out)
    bad, good = cells(out.stdout)
    assert bad["overrides"]["mixer.backend"] == "mamba_ssm" and good["overrides"]["mixer.backend"] == "auto"
    results = tmp_path / "results"
    assert grid.status(results, bad["cid"]) == "failed" and grid.status(results, good["cid"]) == "complete"
    failure = json.loads((grid.cell_dir(results, bad["cid"]) / "failed.json").read_text())
    assert "mamba_ssm" in failure["error"] and "Traceback" in failure["error"]
    (rec,) = records(tmp_path, "grid.jsonl", "cell_failed")
    assert rec["cell_id"] == bad["cid"] and rec["value"] is True and "mamba_ssm" in rec["error"]
    assert [r["cell_id"] for r in records(tmp_path, "grid.jsonl", "cell_complete")] == [good["cid"]]
