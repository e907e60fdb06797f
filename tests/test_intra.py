"""The intra-scale contract for every registered intra variant (varbench/configs/intra/*.yaml except `none`)."""

import pytest
import torch

from varbench.registry import build, list_options

VARIANTS = [n for n in list_options("intra") if n != "none"]
DIM, HEADS = 64, 2


def make(name):
    return build("intra", name, dim=DIM, num_heads=HEADS, layer_idx=0).double().eval()


def test_none_means_no_branch():
    assert "none" in list_options("intra")
    with pytest.raises(ValueError, match="absence of a component"):  # never None: nothing to build
        build("intra", "none", dim=DIM, num_heads=HEADS)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("k", [0, 2, 3])
def test_only_the_perturbed_scale_changes(name, k, tiny_layout):
    intra = make(name)
    x_BLC = torch.randn(2, tiny_layout.L, DIM, dtype=torch.float64)
    x2_BLC = x_BLC.clone()
    s = tiny_layout.slice(k)
    x2_BLC[:, s] += torch.randn_like(x2_BLC[:, s])
    y1, y2 = intra(x_BLC, tiny_layout), intra(x2_BLC, tiny_layout)
    for j in range(tiny_layout.num_scales):
        sj = tiny_layout.slice(j)
        assert torch.equal(y1[:, sj], y2[:, sj]) == (j != k), f"scale {j}"


@pytest.mark.parametrize("name", VARIANTS)
def test_step_equals_forward(name, tiny_layout):
    intra = make(name)
    x_BLC = torch.randn(2, tiny_layout.L, DIM, dtype=torch.float64)
    y_BLC = intra(x_BLC, tiny_layout)
    steps = [intra.step(x_BlC, tiny_layout, k) for k, x_BlC in enumerate(tiny_layout.split(x_BLC))]
    torch.testing.assert_close(torch.cat(steps, 1), y_BLC, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", VARIANTS)
def test_flops_positive(name, tiny_layout):
    assert make(name).flops(tiny_layout, 2) == 2 * make(name).flops(tiny_layout, 1) > 0


def test_local_window_is_narrower_than_full(tiny_layout):
    full = tiny_layout.block_diag_mask()
    local = tiny_layout.window_mask(0)
    assert torch.equal(local, torch.eye(tiny_layout.L, dtype=torch.bool))
    assert torch.equal(tiny_layout.window_mask(3), full)   # a window wider than every scale is the full scale
