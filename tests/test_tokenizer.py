"""Tests of varbench.tokenizers: golden parity with the official VAR VQVAE, key layout, input validation.

Max |error| met against golden set A (torch 2.14.1 CPU, 2 threads): f_BChw 0.0, recon 0.0, fhat_cumulative 0.0,
x_BLCv_wo_first_l 0.0, ids_to_fhats 0.0, next_scale_input loop 0.0 (bitwise equal); token ids all equal.
The tolerances below are the golden README's suggestions (float32 noise across kernels/thread counts).

Shape legend: B batch, C latent channels, h w latent side, l tokens of one scale, L tokens of all scales.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from varbench.tokenizers import MultiScaleVQVAE, load_official_vqvae, vqvae_from_official_args
from varbench.tokenizers.phi import phi_indices

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO.parent / "shared/golden/setA"
KEYS_TSV = REPO.parent / "shared/compat/var_vqvae_keys.tsv"


class NotATensor:
    """A custom object that a safe checkpoint loader must refuse to unpickle."""

    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.fixture(scope="module")
def golden_dir() -> Path:
    # Missing golden data is a failure, never a skip: parity is the point of this module.
    assert GOLDEN_DIR.is_dir(), f"golden data not found at {GOLDEN_DIR}"
    return GOLDEN_DIR


@pytest.fixture(scope="module")
def golden(golden_dir):
    """(model loaded with the golden weights, golden io tensors as float32 / int64)."""
    cfg = json.loads((golden_dir / "config.json").read_text())
    model = vqvae_from_official_args(cfg["tokenizer"]["args"])
    sd = {k: v.float() if v.is_floating_point() else v
          for k, v in load_file(str(golden_dir / "tokenizer_state_dict.safetensors")).items()}
    load_official_vqvae(model, sd)
    io = {k: v.float() if v.is_floating_point() else v
          for k, v in load_file(str(golden_dir / "tokenizer_io.safetensors")).items()}
    return model, io


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def golden_ids(io, model) -> list[torch.Tensor]:
    return [io[f"idx_Bl.{k}"] for k in range(len(model.patch_nums))]


# ----- golden parity --------------------------------------------------------------------------------------------------

def test_golden_data_present(golden_dir):
    for name in ("config.json", "tokenizer_state_dict.safetensors", "tokenizer_io.safetensors"):
        assert (golden_dir / name).is_file(), f"missing golden file {golden_dir / name}"


def test_golden_latent_and_ids(golden):
    model, io = golden
    f_BChw = model.encode_latent(io["images"])
    err = max_err(f_BChw, io["f_BChw"])
    print(f"f_BChw max err {err:.3g}")
    assert err <= 3e-5
    ids = model.img_to_ids(io["images"])
    assert len(ids) == len(model.patch_nums)
    for k, ids_Bl in enumerate(ids):
        assert ids_Bl.dtype == torch.int64
        assert torch.equal(ids_Bl, io[f"idx_Bl.{k}"]), f"token ids differ at scale {k}"


def test_golden_fhats(golden):
    model, io = golden
    fhats = torch.stack(model.latent_to_fhats(io["f_BChw"]))
    err = max_err(fhats, io["fhat_cumulative"])
    err_ids = max_err(torch.stack(model.ids_to_fhats(golden_ids(io, model))), io["fhat_cumulative"])
    print(f"fhat_cumulative max err {err:.3g}, from ids {err_ids:.3g}")
    assert err <= 1e-5 and err_ids <= 1e-5


def test_golden_var_input(golden):
    model, io = golden
    x_BLC = model.ids_to_var_input(golden_ids(io, model))
    err = max_err(x_BLC, io["x_BLCv_wo_first_l"])
    # The same input from one concatenated (B, L) id tensor.
    err_cat = max_err(model.ids_to_var_input(torch.cat(golden_ids(io, model), 1)), io["x_BLCv_wo_first_l"])
    print(f"x_BLCv_wo_first_l max err {err:.3g} (concatenated ids {err_cat:.3g})")
    assert err <= 1e-5 and err_cat <= 1e-5


def test_golden_recon(golden):
    model, io = golden
    recon = model.ids_to_img(golden_ids(io, model))
    err = max_err(recon, io["recon"])
    print(f"recon max err {err:.3g}")
    assert err <= 3e-5
    assert recon.min() >= -1 and recon.max() <= 1


def test_golden_incremental_sampling_update(golden):
    """The scale-by-scale update used by samplers reproduces the teacher-forcing input and the final f_hat."""
    model, io = golden
    ids = golden_ids(io, model)
    f_hat = model.empty_fhat(ids[0].shape[0])
    pieces = []
    for k, ids_Bl in enumerate(ids):
        f_hat, next_BCpp = model.next_scale_input(k, f_hat, model.embed_ids(ids_Bl, k))
        if k < len(ids) - 1:
            pieces.append(next_BCpp.flatten(2).transpose(1, 2))
        else:
            assert next_BCpp is None
    err_x = max_err(torch.cat(pieces, 1), io["x_BLCv_wo_first_l"])
    err_f = max_err(f_hat, io["fhat_cumulative"][-1])
    print(f"incremental: x max err {err_x:.3g}, final f_hat max err {err_f:.3g}")
    assert err_x <= 1e-5 and err_f <= 1e-5


# ----- layout of the full-size model ----------------------------------------------------------------------------------

def test_full_size_key_layout_matches_official():
    with torch.device("meta"):
        model = MultiScaleVQVAE()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    sd = model.state_dict()
    rows = [line.rstrip("\n").split("\t") for line in KEYS_TSV.read_text().splitlines()[1:]]
    assert len(rows) == 324
    assert list(sd) == [r[0] for r in rows]  # same keys, and in the official registration order
    for key, shape, numel, dtype, kind in rows:
        t = sd[key]
        assert "x".join(map(str, t.shape)) == shape, key
        assert t.numel() == int(numel) and str(t.dtype) == f"torch.{dtype}", key
        assert (key in params) == (kind == "param") and (key in buffers) == (kind == "buffer"), key
    assert sum(p.numel() for p in model.parameters()) == 108_948_355
    assert model.image_size == 256 and model.quantize.phi_index == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_test_mode_freezes():
    model = MultiScaleVQVAE(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2), patch_nums=(1, 2))
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("num_scales, expected", [(10, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]), (6, [0, 0, 1, 2, 3, 3])])
def test_phi_index_per_scale(num_scales, expected):
    assert phi_indices(num_scales, 4) == expected


# ----- bad input ------------------------------------------------------------------------------------------------------

def tiny_model(**kw) -> MultiScaleVQVAE:
    args = dict(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 3))
    return MultiScaleVQVAE(**{**args, **kw})


def test_bad_images_rejected():
    model = tiny_model()  # latent side 3, downsample 2 -> 6 px images
    with pytest.raises(ValueError, match="6x6"):
        model.img_to_ids(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        model.encode_latent(torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match="image batch"):
        model.encode_latent(torch.zeros(3, 6, 6))


def test_bad_ids_rejected():
    model = tiny_model()
    good = [torch.zeros(2, n, dtype=torch.long) for n in (1, 4, 9)]
    assert model.ids_to_var_input(good).shape == (2, 13, 8)
    with pytest.raises(ValueError, match="list of 3"):
        model.ids_to_fhats(good[:2])
    with pytest.raises(ValueError, match="scale 1"):
        model.ids_to_var_input([good[0], torch.zeros(2, 5, dtype=torch.long), good[2]])
    with pytest.raises(ValueError, match="integer"):
        model.ids_to_img([g.float() for g in good])
    with pytest.raises(ValueError, match="scale 2"):
        model.embed_ids(good[1], 2)


def test_state_dict_mismatch_names_both_keys():
    model = tiny_model()
    sd = dict(model.state_dict())
    sd.pop("quant_conv.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="quant_conv.bias") as info:
        load_official_vqvae(model, sd)
    assert "extra.weight" in str(info.value) and "missing" in str(info.value) and "unexpected" in str(info.value)
    sd = dict(model.state_dict())
    sd["quant_conv.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_official_vqvae(model, sd)


def test_pth_roundtrip_and_pickle_refused(tmp_path):
    src, dst = tiny_model(), tiny_model()
    torch.nn.init.normal_(src.quant_conv.weight)
    torch.save(src.state_dict(), tmp_path / "ok.pth")
    load_official_vqvae(dst, tmp_path / "ok.pth")
    assert torch.equal(dst.quant_conv.weight, src.quant_conv.weight)
    torch.save({"quant_conv.weight": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to load"):
        load_official_vqvae(dst, tmp_path / "evil.pth")
    torch.save({"model": src.state_dict()}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match="flat mapping"):
        load_official_vqvae(dst, tmp_path / "nested.pth")


def test_official_args_validation():
    with pytest.raises(ValueError, match="unknown"):
        vqvae_from_official_args({"v_patch_nums": [1, 2], "not_an_arg": 1})


# ----- training forward -----------------------------------------------------------------------------------------------

def test_training_forward_straight_through():
    torch.manual_seed(0)
    model = tiny_model(test_mode=False).train()
    img = torch.randn(2, 3, 6, 6)
    recon, usages, vq_loss = model(img, ret_usages=True)
    assert recon.shape == img.shape and len(usages) == 3 and vq_loss.ndim == 0
    (recon.square().mean() + vq_loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    assert model.quantize.embedding.weight.grad.abs().sum() > 0  # codebook trained by the MSE(f_hat, f) term
    # Official quirk: the record counter advances per scale, so only scale 0 copies its hits (2 positions);
    # scales 1 and 2 already blend 0.1 of theirs (8 and 18 positions) into a zero EMA.
    assert model.quantize.ema_vocab_hit_SV.sum(1).tolist() == pytest.approx([2.0, 0.8, 1.8])
