import pytest
import torch

from varbench.layout import PATCH_NUMS, ScaleLayout


@pytest.mark.parametrize("size,L", [(256, 680), (512, 2240), (1024, 9451)])
def test_published_lengths(size, L):
    assert ScaleLayout.for_resolution(size).L == L


def test_offsets_ids_and_segments():
    layout = ScaleLayout((1, 2, 3))
    assert layout.lengths == (1, 4, 9)
    assert layout.offsets == (0, 1, 5, 14)
    assert layout.scale_ids().tolist() == [0] + [1] * 4 + [2] * 9
    assert layout.segments()[2] == slice(5, 14)
    assert layout.cu_seqlens(2).tolist() == [0, 1, 5, 14, 15, 19, 28]


def test_var256_masks_count_allowed_pairs():
    layout = ScaleLayout(PATCH_NUMS[256])
    # VAR's block-causal mask allows 286,434 of 462,400 pairs; M-VAR's block-diagonal one sum(p^4) = 110,468
    assert int(layout.block_causal_mask().sum()) == 286_434
    assert int(layout.block_diag_mask().sum()) == 110_468


def test_masks_semantics():
    layout = ScaleLayout((1, 2))
    causal, diag = layout.block_causal_mask(), layout.block_diag_mask()
    assert causal[1, 0] and not causal[0, 1] and causal[1, 4]   # later scale sees earlier; whole own scale
    assert diag[1, 4] and not diag[1, 0]
    assert torch.equal(diag & causal, diag)


@pytest.mark.parametrize("bad", [(), (1, 1, 2), (2, 1), (0, 1)])
def test_invalid_schedules_raise(bad):
    with pytest.raises(ValueError):
        ScaleLayout(bad)


def test_last_scale_must_equal_latent_side():
    with pytest.raises(ValueError, match="latent side"):
        ScaleLayout((1, 2, 4), latent_side=8)
    with pytest.raises(ValueError, match="known"):
        ScaleLayout.for_resolution(300)
