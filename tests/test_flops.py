"""Analytic FLOPs against torch.utils.flop_counter on the reference path."""

import pytest
import torch
from helpers import tiny_model
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from varbench.eval.flops import model_flops


def counted(fn) -> int:
    # the math backend decomposes SDPA into matmuls the counter sees (CPU's fused kernel is invisible to it)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("intra", ["none", "full"])
def test_attention_model_flops_match_the_counter(intra):
    """The counter sees SDPA compute every (query, key) pair; the analytic count keeps only the pairs the mask
    allows. Add the masked pairs back and the two must agree exactly for the whole model."""
    model = tiny_model("attention", intra)
    layout, C = model.layout, model.width
    x = torch.randn(2, layout.L - 1, model.latent_dim)
    measured = counted(lambda: model(torch.tensor([1, 2]), x)) // 2
    analytic = model_flops(model)
    masked_pairs = layout.L ** 2 - int(layout.block_causal_mask().sum())
    hidden = masked_pairs * 2 * 2 * C   # q.k and p.v over every head: 2 matmuls x 2 FLOPs x head_dim x heads
    if intra == "full":
        hidden += (layout.L ** 2 - int(layout.block_diag_mask().sum())) * 2 * 2 * C
    assert measured == analytic["total"] + len(model.blocks) * hidden


@pytest.mark.parametrize("intra", ["none", "full"])
def test_a_model_without_an_inter_scale_mixer_is_counted_exactly(intra):
    """mixer=none: nothing for the mixer and an AdaLN one branch smaller; the counter agrees (once the intra
    branch's masked pairs, which SDPA computes anyway, are added back)."""
    model = tiny_model("none", intra)
    layout, C = model.layout, model.width
    measured = counted(lambda: model(torch.tensor([1, 2]), torch.randn(2, layout.L - 1, model.latent_dim))) // 2
    analytic = model_flops(model)
    assert analytic["mixer"] == 0 and all(block.num_branches == 1 + (intra == "full") for block in model.blocks)
    hidden = (layout.L ** 2 - int(layout.block_diag_mask().sum())) * 2 * 2 * C if intra == "full" else 0
    assert measured == analytic["total"] + len(model.blocks) * hidden


@pytest.mark.parametrize("mixer", ["mamba2", "gla"])
def test_non_mixer_components_match_the_counter(mixer):
    """Whatever the mixer, everything around it (embedding, AdaLN, FFN, head) is counted exactly."""
    model = tiny_model(mixer)
    x = torch.randn(1, model.layout.L - 1, model.latent_dim)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.tensor([1]), x)
    per_module = counter.get_flop_counts()
    mixers = sum(sum(per_module.get(f"ScaleAR.blocks.{i}.mixer", {}).values()) for i in range(len(model.blocks)))
    analytic = model_flops(model)
    assert counter.get_total_flops() - mixers == analytic["total"] - analytic["mixer"]


def test_costs_task_records_each_configurations_params_flops_and_state(tmp_path):
    """task=costs (CPU, meta device): one analytic_cost record per (depth, resolution, configuration), holding what
    the model built for it states; VAR-d16 at 256 px has its published parameter count."""
    from hydra import compose, initialize_config_dir

    from varbench.build import build_model
    from varbench.layout import PATCH_NUMS
    from varbench.registry import CONFIG_ROOT, load_option
    from varbench.tasks import run_task
    from varbench.utils.records import read_records
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=costs", "model=var_d16", "task.depths=[16]", "task.resolutions=[256,512]",
            "task.configs=[[attention,none],[mamba2,full]]", f"results_dir={tmp_path}"])
    assert run_task(cfg)["cells"] == 4
    records = {(r["mixer"], r["intra"], r["resolution"]): r for r in read_records(tmp_path / "costs.jsonl")}
    assert records[("attention", "none", 256)]["params"] == 310_283_520
    for (mixer, intra, res), rec in records.items():
        with torch.device("meta"):
            model = build_model(cfg, load_option("mixer", mixer), load_option("intra", intra), PATCH_NUMS[res],
                                num_classes=1000)
        assert rec["value"] == model_flops(model)["total"] and rec["params"] == model.num_params()
        assert rec["state_bytes_per_image"] == sum(b.mixer.state_bytes(model.layout, 1) for b in model.blocks)
    again = run_task(cfg)  # a re-run replaces its own records: the report never counts a cell twice
    assert again["cells"] == again["replaced"] == 4 and len(read_records(tmp_path / "costs.jsonl")) == 4
