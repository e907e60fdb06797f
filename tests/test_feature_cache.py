"""Features every evaluation of a data set computes alike are computed once and shared (varbench/eval/feature_cache.py):
the floor / recon rows' features depend on the extractor, the data, the count, the tokenizer's weights and its decode
mode, and a change in any of them computes them anew."""

from types import SimpleNamespace

import pytest
import torch
from helpers import Images
from torch import nn

from varbench.eval.feature_cache import cached_tensors
from varbench.eval.references import floor_features


class Tokenizer(nn.Module):
    """Reconstructs x as gain * x: its weights (gain) change its reconstructions."""

    def __init__(self, gain: float):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))
        self.latent_decoder = SimpleNamespace(mode="eager")

    def img_to_ids(self, x):
        return x

    def ids_to_img(self, ids):
        return ids * self.gain.detach()


def test_the_floor_s_features_are_computed_once_per_tokenizer_and_decode_mode(tmp_path):
    calls = []

    def features(x_B3HW):
        calls.append(len(x_B3HW))
        return x_B3HW.mean(dim=(2, 3))

    def floor(tokenizer):
        return floor_features(Images(0, 6), tokenizer, features, 6, 4, torch.device("cpu"), tmp_path, "mean-colour v1")

    real, recon = floor(Tokenizer(0.5))
    assert calls and torch.allclose(recon, 0.5 * real)
    calls.clear()
    again = floor(Tokenizer(0.5))  # another cell, same tokenizer weights: loaded, nothing computed
    assert not calls and torch.equal(again[0], real) and torch.equal(again[1], recon)
    _, other = floor(Tokenizer(0.25))  # other weights: computed anew
    assert calls and torch.allclose(other, 0.25 * real)
    calls.clear()
    compiled = Tokenizer(0.5)
    compiled.latent_decoder.mode = "compiled"  # other kernels round differently: not the eager cells' features
    floor(compiled)
    assert calls
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_a_cache_key_with_an_unknown_part_is_refused(tmp_path):
    with pytest.raises(ValueError, match="every part of the cache key"):
        cached_tensors(tmp_path, {"extractor": None, "data": "Images(n=6)"}, lambda: {"x": torch.zeros(1)})
