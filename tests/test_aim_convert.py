"""Official AiM checkpoints and LlamaGen's VQ-f16: key layout against the golden state dicts (set C), the Hugging
Face file layout (`mamba.` + `vqvae.`, one name of the tied head), strict loading with clear errors, tokenizer
encode/decode."""

import json

import pytest
import torch
from conftest import SHARED
from safetensors.torch import load_file, save_file

from varbench.backbones.raster_convert import (
    load_official_aim,
    official_to_varbench,
    raster_ar_from_official_config,
    varbench_to_official,
)
from varbench.tokenizers.vq_f16 import VQF16, load_official_vq_f16, vq_f16_from_official_config

GOLDEN_C = SHARED / "golden" / "aim_setC"


@pytest.fixture(scope="module")
def golden():
    assert (GOLDEN_C / "config.json").is_file(), f"golden set C not found at {GOLDEN_C}"
    config = json.loads((GOLDEN_C / "config.json").read_text())
    return config, load_file(str(GOLDEN_C / "aim_state_dict.safetensors")), \
        load_file(str(GOLDEN_C / "tokenizer_state_dict.safetensors"))


def test_key_layout_equals_the_official_state_dict(golden):
    config, official, _ = golden
    model = raster_ar_from_official_config(config["mamba_config"])
    ours = varbench_to_official(model)
    assert set(ours) == set(official)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}


def test_per_block_adaln_keys():
    """AiM-B's layout (adaLN per block, no group table), which set C (adaLN-group) does not cover."""
    model = raster_ar_from_official_config(dict(d_model=64, n_layer=2, vocab_size=16, num_classes=3, num_tokens=4,
                                                ssm_cfg={"layer": "Mamba2", "d_state": 8, "headdim": 16}))
    keys = set(varbench_to_official(model))
    assert {"backbone.layers.1.adaLN_modulation.1.weight", "backbone.layers.1.adaLN_modulation.1.bias"} <= keys
    assert not any("scale_shift_table" in k or "adaln_group" in k for k in keys)
    assert official_to_varbench(varbench_to_official(model)).keys() == model.state_dict().keys()


def test_hugging_face_layout_loads_with_its_tokenizer(golden, tmp_path):
    """An `AiM` module file: the AR model under `mamba.` with only `lm_head.weight` for the tied matrix, the
    tokenizer under `vqvae.`."""
    config, official, vq_sd = golden
    hf = {f"mamba.{k}": v for k, v in official.items() if k != "backbone.embeddings.word_embeddings.weight"}
    hf.update({f"vqvae.{k}": v for k, v in vq_sd.items()})
    save_file(hf, str(tmp_path / "model.safetensors"))
    model = raster_ar_from_official_config(config["mamba_config"])
    vq = load_official_aim(model, str(tmp_path / "model.safetensors"))
    assert torch.equal(model.word_embed.weight, official["lm_head.weight"])
    load_official_vq_f16(vq_f16_from_official_config(config["vq"]), vq)


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.pop("backbone.norm_f.weight"), "missing keys.*norm_f"),
    (lambda sd: sd.update({"backbone.layers.9.norm.weight": torch.ones(256)}), "unexpected keys.*blocks.9.norm"),
    (lambda sd: sd.update({"lm_head.weight": sd["lm_head.weight"] + 1}), "lm_head.weight differs"),
    (lambda sd: sd.update({"head.bias": torch.zeros(3)}), "unexpected key 'head.bias'"),
])
def test_bad_checkpoints_fail_clearly(golden, edit, match):
    config, official, _ = golden
    sd = dict(official)
    edit(sd)
    with pytest.raises(ValueError, match=match):
        load_official_aim(raster_ar_from_official_config(config["mamba_config"]), sd)


def test_unsupported_official_configs_are_refused():
    with pytest.raises(ValueError, match="Mamba2"):
        raster_ar_from_official_config({"ssm_cfg": {"layer": "Mamba1"}})
    with pytest.raises(ValueError, match="attn_layer_idx"):
        raster_ar_from_official_config({"attn_layer_idx": [3]})


def test_vq_f16_loads_llamagen_pt_and_refuses_missing_keys(golden, tmp_path):
    config, _, vq_sd = golden
    torch.save({"model": vq_sd}, tmp_path / "vq_f16.pt")  # LlamaGen's checkpoint layout
    vq = load_official_vq_f16(vq_f16_from_official_config(config["vq"]), tmp_path / "vq_f16.pt")
    assert torch.equal(vq.quantize.embedding.weight, vq_sd["quantize.embedding.weight"])
    broken = {k: v for k, v in vq_sd.items() if k != "quant_conv.bias"}
    with pytest.raises(ValueError, match="missing keys.*quant_conv.bias"):
        load_official_vq_f16(vq_f16_from_official_config(config["vq"]), broken)
    with pytest.raises(ValueError, match="unknown VQ-f16 config fields"):
        vq_f16_from_official_config({**config["vq"], "codebook_l2": True})


def test_vq_f16_encode_decode_shapes_and_codebook():
    vq = VQF16(vocab_size=64, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32).eval()
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        ids = vq.encode(images)
        assert ids.shape == (2, 16) and 0 <= ids.min() and ids.max() < 64
        codes = vq.quant(ids)
        assert codes.shape == (2, 8, 4, 4)
        torch.testing.assert_close(codes.norm(dim=1), torch.ones(2, 4, 4))  # l2-normalised codes
        assert vq.decode(ids).shape == (2, 3, 8, 8)
        # the chosen code is the nearest of the normalised codebook to the normalised latent
        z = torch.nn.functional.normalize(vq.pre_quant(images), dim=1).permute(0, 2, 3, 1).reshape(-1, 8)
        assert torch.equal(ids.flatten(), torch.cdist(z, vq.quantize.codebook()).argmin(1))


def test_vq_f16_bad_input():
    vq = VQF16(vocab_size=64, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32)
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        vq.decode(torch.full((1, 16), 64))
    with pytest.raises(ValueError, match="square"):
        vq.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="multiples of 2"):
        vq.encode(torch.zeros(1, 3, 7, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_golden_on_the_gpu_with_kernels(golden):
    """Set C on the GPU with the kernels 'auto' picks (mamba_ssm when installed), fp32 with TF32 off as the golden was
    made (run with TRITON_F32_DEFAULT=ieee), within the README's 1e-4; eager and CUDA-graph sampling paths."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    config, official, _ = golden
    model = raster_ar_from_official_config(config["mamba_config"], cond_drop_rate=0.0)
    load_official_aim(model, official)
    model = model.cuda().eval()
    print("mixer backend:", model.blocks[0].mixer.backend_on("cuda"))
    io = {k: v.cuda() for k, v in load_file(str(GOLDEN_C / "aim_io.safetensors")).items()}
    label_B = io["cond"][:, 0]
    with torch.no_grad():
        torch.testing.assert_close(model(label_B, io["code"]), io["logits_train"], atol=1e-4, rtol=0)
    for graphs in (False, True):
        for cfg, name in ((1.0, "logits_steps_cond"), (config["cfg_scale"], "logits_steps_guided")):
            out = model.generate(label_B, cfg=cfg, forced_ids=io["code"], return_logits=True,
                                 sample_positions="official", cuda_graphs=graphs)
            torch.testing.assert_close(out.logits, io[name], atol=1e-4, rtol=0)
