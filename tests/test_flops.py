"""Analytic FLOPs against torch.utils.flop_counter on the reference path."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from helpers import tiny_model
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
    layout, C, H = model.layout, model.width, model.num_heads
    x = torch.randn(2, layout.L - 1, model.latent_dim)
    measured = counted(lambda: model(torch.tensor([1, 2]), x)) // 2
    analytic = model_flops(model)
    masked_pairs = layout.L ** 2 - int(layout.block_causal_mask().sum())
    hidden = masked_pairs * 2 * 2 * C   # q.k and p.v over every head: 2 matmuls x 2 FLOPs x head_dim x heads
    if intra == "full":
        hidden += (layout.L ** 2 - int(layout.block_diag_mask().sum())) * 2 * 2 * C
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
