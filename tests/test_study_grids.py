"""The issue-19 study grids (varbench/configs/grid/study_*.yaml): VAR's 10-scale schedule, every arm, the seeds the
issue asks for, a learning-rate sweep (4 points), and arms at matched training FLOPs within 3% of VAR's budget."""

from collections import Counter
from itertools import product
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import varbench.grid  # noqa: F401  (registers the resolvers the grids use)
from varbench.analysis.budget import TOLERANCE, budget_flops, spread, train_flops_per_image
from varbench.build import build_dataset
from varbench.registry import CONFIG_ROOT, list_options

ARMS = {(m, "none") for m in list_options("mixer")} | {("mamba2", "full"), ("none", "full"), ("attention", "local")}
STUDY_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks/gpu_study19.sh"
FIVE_SEEDS = {("attention", "none"), ("mamba2", "full"), ("mamba2", "none")}  # + two linear mixers


def _compose(grid, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=[f"grid={grid}", *overrides], return_hydra_config=True)


def _cells(grid) -> list[dict]:
    """Every cell of a grid as {key: value} (the params product, then each extra cell's product), as the sweeper
    expands them (comma-separated values are sweeps)."""
    sweeper = OmegaConf.to_container(_compose(grid).hydra.sweeper, resolve=False)
    params = {k: str(v) for k, v in sweeper["params"].items()}
    out = []
    for variant in [params] + [{**params, **{k: str(v) for k, v in c.items()}} for c in sweeper["cells"]]:
        if variant["mixer"].startswith("${"):
            variant["mixer"] = ",".join(list_options("mixer"))
        keys = list(variant)
        for values in product(*(variant[k].split(",") for k in keys)):
            out.append(dict(zip(keys, values)))
    return out


@pytest.mark.parametrize("grid", ["study_lr", "study_main", "study_flops", "study_tokenizer", "study_cifar"])
def test_every_study_grid_has_var_s_ten_scale_schedule(grid):
    cfg = _compose(grid)
    assert list(cfg.tokenizer.patch_nums) == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    assert sum(p * p for p in cfg.tokenizer.patch_nums) == 680
    # no image seen more than ~3 times: draws / images
    assert cfg.train.steps * cfg.train.batch_size / (cfg.data.size_per_class * cfg.data.num_classes) <= 3.0


def test_main_grid_has_every_arm_with_five_or_three_seeds_and_its_own_learning_rate():
    cells = _cells("study_main")
    seeds = Counter((c["mixer"], c["intra"]) for c in cells)
    assert set(seeds) == ARMS
    five = {arm for arm, n in seeds.items() if n >= 5}
    linear = five - FIVE_SEEDS
    assert FIVE_SEEDS <= five and len(linear) == 2 and all(n >= 3 for n in seeds.values())
    assert all(c["study.arm"] == f"{c['mixer']}-{c['intra']}" for c in cells)  # the key of its learning rate
    cfg = _compose("study_main", "mixer=gla", "study.arm=gla-none", "study.lr.gla-none=8.0e-3")
    assert cfg.train.base_lr == 8.0e-3


def test_lr_grid_sweeps_four_learning_rates_on_one_seed_for_every_arm_and_doubles_beyond_an_edge():
    cells = _cells("study_lr")
    four = {"4.0e-3", "8.0e-3", "1.6e-2", "3.2e-2"}
    points = {}
    for c in cells:
        points.setdefault((c["mixer"], c["intra"], c.get("mixer.backend")), []).append(c["train.base_lr"])
    assert {(m, i) for m, i, backend in points if backend is None} == ARMS
    assert all(four <= set(lrs) for lrs in points.values())
    # the extensions: doublings above the edge, in order, none repeated
    beyond = [lrs for lrs in points.values() if len(lrs) > 4]
    doublings = ["6.4e-2", "1.28e-1", "2.56e-1"]
    assert beyond and all(len(set(lrs)) == len(lrs) for lrs in beyond)
    assert all(sorted(set(lrs) - four, key=float) == doublings[:len(lrs) - 4] for lrs in beyond)
    assert any(len(lrs) == 7 for lrs in beyond)
    assert {c["seed"] for c in cells} == {"0"}


def test_cifar_grid_has_the_five_seed_arms_and_none_full_on_three_seeds_at_their_procedural_rates():
    main = Counter(c["study.arm"] for c in _cells("study_main"))
    cells = _cells("study_cifar")
    seeds = Counter(c["study.arm"] for c in cells)
    assert set(seeds) == {arm for arm, n in main.items() if n == 5} | {"none-full"}
    assert set(seeds.values()) == {3} and len(cells) == 18
    assert all(c["study.arm"] == f"{c['mixer']}-{c['intra']}" for c in cells)
    # the five-seed linear mixers train on the plain-PyTorch path, as in study_main (fla #640)
    backend = {c["study.arm"]: c.get("mixer.backend") for c in _cells("study_main")}
    assert all(c.get("mixer.backend") == backend[c["study.arm"]] for c in cells)
    cfg = _compose("study_cifar", "mixer=retnet", "study.arm=retnet-none", "study.lr.retnet-none=3.2e-2")
    assert cfg.train.base_lr == 3.2e-2


def test_cifar_cells_build_their_image_folder_data_with_the_study_script_s_overrides(tmp_path):
    """The CIFAR grid, given the data overrides gpu_study19.sh passes, builds CIFAR's image folders with no key of the
    procedural data left behind (session 16: study_base's size_per_class reached ImageFolderData, and all 18 cells
    failed)."""
    line = next(x for x in STUDY_SCRIPT.read_text().splitlines() if x.startswith("CIFAR="))
    overrides = line.split('"')[1].replace("$S", str(tmp_path)).split()
    for split in ("train", "val"):
        for c in range(10):
            (tmp_path / f"cifar10_jpg/{split}/class{c}").mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / f"cifar10_jpg/{split}/class{c}/0.jpg")
    cfg = _compose("study_cifar", "mixer=retnet", "study.arm=retnet-none", *overrides,
                   f"data.index_dir={tmp_path}")  # (not the run dir: no Hydra run here, whatever an earlier test left)
    train = build_dataset(cfg, "train")
    assert len(train) == 10 and train[0][0].shape == (3, 64, 64)  # the study's 64 px, from CIFAR's 32


def test_raster_grids_train_aim_s_backbone_with_mamba2_and_attention_at_m_var_s_parameter_count():
    """Issue 19's raster arms (grid=study_raster, 3 seeds; grid=study_raster_lr, 6 rates on seed 0): AiM's backbone
    with Mamba2 (AiM) and attention (LlamaGen-style) reading 256 tokens of the single-scale twin of the study
    tokenizer, each at the study M-VAR's parameter count, evaluated with AiM-B's sampler at the study's fixed scale."""
    import torch

    from varbench.build import build_model
    cells = _cells("study_raster")
    assert Counter(c["study.arm"] for c in cells) == {"mamba2-raster": 3, "attention-raster": 3}
    assert all(c["model"] == "raster_study" and c["tokenizer"] == "tiny_single_study" for c in cells)
    assert all(c["study.arm"] == f"{c['mixer']}-raster" for c in cells)  # the arm best_lr names (analysis.load)

    def params(*overrides):
        with torch.device("meta"):
            return build_model(_compose("study_raster", *overrides), num_classes=10).num_params()
    m_var = params("model=tiny_study", "tokenizer=tiny_study", "mixer=mamba2", "intra=full")
    for mixer in ("mamba2", "attention"):
        cfg = _compose("study_raster", "model=raster_study", "tokenizer=tiny_single_study", f"mixer={mixer}",
                       f"study.arm={mixer}-raster")
        assert list(cfg.tokenizer.patch_nums) == [16] and cfg.train.base_lr == 4.0e-3
        raster = params("model=raster_study", "tokenizer=tiny_single_study", f"mixer={mixer}")
        assert abs(raster - m_var) / m_var < 1e-3, (mixer, raster, m_var)
    cfg = _compose("study_raster")
    assert (cfg.task.overrides.evaluate.preset, cfg.task.overrides.evaluate.cfg) == ("aim_b", 1.5)
    assert list(cfg.task.guidance_scales) == [2.0, 3.0]
    sweep = _cells("study_raster_lr")
    rates = ("4.0e-3", "8.0e-3", "1.6e-2", "3.2e-2", "6.4e-2", "1.28e-1")  # study_lr's 4 and its 2 doublings
    assert {(c["study.arm"], c["train.base_lr"]) for c in sweep} == {
        (arm, lr) for arm in ("mamba2-raster", "attention-raster") for lr in rates}
    assert {c["seed"] for c in sweep} == {"0"} and _compose("study_raster_lr").task.guidance_scales is None


def test_flops_grid_arms_train_within_three_percent_of_var_s_budget():
    cells = [c for c in _cells("study_flops") if c["seed"] == "0"]
    assert {(c["mixer"], c["intra"]) for c in cells} == ARMS
    cfg = _compose("study_flops")  # the arm's model is built from its registry entries: one composition serves all
    per_image = {arm: train_flops_per_image(cfg, *arm) for arm in ARMS}
    batch = cfg.train.batch_size * cfg.train.grad_accum
    budgets = {(c["mixer"], c["intra"]): int(c.get("train.steps", cfg.train.steps)) * batch
               * per_image[(c["mixer"], c["intra"])] for c in cells}
    assert budgets[("attention", "none")] == budget_flops(cfg, cfg.train.steps)  # VAR's steps set the budget
    assert spread(budgets) <= TOLERANCE, budgets
    # matched parameters alone would not do it: at equal steps the arms differ by more than the tolerance
    assert spread(per_image) > TOLERANCE


def test_best_lr_picks_the_lowest_held_out_nll_per_arm_and_prints_the_grid_overrides(tmp_path):
    import json

    from varbench.analysis.best_lr import best_learning_rates, overrides
    from varbench.analysis.load import load_records
    nll = {("gla", "none"): {2e-3: 3.1, 4e-3: 3.0, 8e-3: 2.9}, ("mamba2", "full"): {2e-3: 3.0, 4e-3: 2.8, 8e-3: 3.3}}
    lines = [{"metric": "val_nll", "value": v, "unit": "nats/token", "mixer": m, "intra": i, "depth": 6,
              "resolution": 64, "seed": 0, "cell_id": f"{m}{i}{lr}", "date": "2099-01-01T00:00:00+00:00",
              "config": {"train": {"base_lr": lr}}} for (m, i), points in nll.items() for lr, v in points.items()]
    (tmp_path / "lr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    best = best_learning_rates(load_records(tmp_path))
    assert best.loc["gla-none", "best_lr"] == 8e-3 and best.loc["mamba2-full", "best_lr"] == 4e-3
    assert best.loc["gla-none", "at_edge"] and not best.loc["mamba2-full", "at_edge"]  # gla's may lie beyond 8e-3
    assert overrides(best) == "study.lr.gla-none=8.0e-03 study.lr.mamba2-full=4.0e-03"
    cfg = _compose("study_main", "mixer=gla", "study.arm=gla-none", *overrides(best).split())
    assert cfg.train.base_lr == 8e-3  # the printed overrides are valid for the grid


def test_best_lr_reads_a_sweep_split_over_folders_and_refuses_an_edge_when_asked(tmp_path, capsys):
    import json

    from varbench.analysis.best_lr import main
    nll = {2e-3: 3.1, 4e-3: 3.0, 8e-3: 2.9, 1.6e-2: 3.2}  # the earlier session had the first three points
    for folder, points in (("imported", (2e-3, 4e-3, 8e-3)), ("this_call", (1.6e-2,))):
        (tmp_path / folder).mkdir()
        lines = [{"metric": "val_nll", "value": nll[lr], "unit": "nats/token", "mixer": "gla", "intra": "none",
                  "depth": 6, "resolution": 64, "seed": 0, "cell_id": f"gla{lr}", "date": "2099-01-01T00:00:00+00:00",
                  "config": {"train": {"base_lr": lr}}} for lr in points]
        (tmp_path / folder / "evaluate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main([str(tmp_path / "imported"), "--located"]) == 2  # 8e-3 is the edge of the first three
    assert capsys.readouterr().out == ""
    assert main([str(tmp_path / "imported"), str(tmp_path / "this_call"), "--located"]) == 0
    assert capsys.readouterr().out.strip() == "study.lr.gla-none=8.0e-03"
    # a second arm whose cells all failed has no line: asked for both arms, the sweep is incomplete
    assert main([str(tmp_path / "imported"), str(tmp_path / "this_call"), "--located", "--arms", "2"]) == 3
    out = capsys.readouterr()
    assert out.out == "" and "the records hold 1 of the 2 arms (gla-none)" in out.err


def test_grids_writing_one_records_folder_share_its_sample_count_and_the_cut_ones_are_fid_5k():
    """A study is one records folder: study_tokenizer's cells go into study_main's (benchmarks/gpu_study19.sh), so
    both evaluate FID-10k; study_flops and study_cifar, cut for the budget, evaluate FID-5k in folders of their own."""
    per_class = {g: _compose(g).task.overrides.evaluate.per_class
                 for g in ("study_main", "study_tokenizer", "study_flops", "study_cifar")}
    assert per_class == {"study_main": 1000, "study_tokenizer": 1000, "study_flops": 500, "study_cifar": 500}


def test_study_flops_sweeps_guidance_on_seed_0_and_no_other_study_grid_does():
    """Issue 19 item 2: guidance 1.0 and 3.0 beside the preset's 1.5, on one seed of every arm, in the matched-FLOPs
    cells' own processes (varbench/tasks/main.py guidance_sweep)."""
    scales = {g: _compose(g).task.get("guidance_scales")
              for g in ("study_lr", "study_main", "study_tokenizer", "study_flops", "study_cifar")}
    assert scales == {"study_lr": None, "study_main": None, "study_tokenizer": None, "study_flops": [1.0, 3.0],
                      "study_cifar": None}
    assert _compose("study_flops").task.get("guidance_seeds", [0]) == [0]
