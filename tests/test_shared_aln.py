"""VAR's shared AdaLN (`model.shared_aln`) and the VAR-d36-s recipe (`model=var_d36`). Parity with the official code
is tests/test_golden.py's (set B_saln); here: the published model's size and layout, the sampler's path, the init,
the converter and the parameter groups."""

import copy

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from hydra import compose, initialize_config_dir

from varbench.backbones.convert import load_official, scale_ar_from_official_args, varbench_to_official
from varbench.backbones.sampling import cfg_ramp
from varbench.backbones.scale_ar import ScaleAR
from varbench.build import build_model, image_size
from varbench.eval.flops import model_flops
from varbench.registry import CONFIG_ROOT, factory, load_option

D36_PARAMS = 2_353_893_904  # the official VAR-d36-s (var_mvar_facts.md 2.1)
PN_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def compose_with(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def d36():
    cfg = compose_with("model=var_d36", "data=imagenet")
    with torch.device("meta"):  # 2.35B parameters: counted, never allocated
        return cfg, build_model(cfg)


def test_var_d36_recipe_builds_the_official_d36s(d36):
    cfg, model = d36
    assert model.num_params() == D36_PARAMS
    assert model.layout.patch_nums == PN_512 and model.layout.L == 2240 and image_size(cfg) == 512
    assert (model.width, model.num_heads, len(model.blocks)) == (2304, 36, 36)
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.15) and model.blocks[0].drop_path.drop_prob == 0
    assert cfg.model.init.init_adaln_gamma == 5e-6
    t = cfg.train
    assert (t.batch_size, t.epochs, t.base_lr, t.end_factor, t.weight_decay_end) == (768, 350, 8e-5, 0.01, 0.08)


def test_var_d36_official_key_layout(d36):
    """The official d36-s state dict: one shared_ada_lin, an ada_gss per block, no per-block ada_lin."""
    official = varbench_to_official(d36[1])
    C = 2304
    assert tuple(official["shared_ada_lin.1.weight"].shape) == (6 * C, C)
    assert tuple(official["shared_ada_lin.1.bias"].shape) == (6 * C,)
    assert all(tuple(official[f"blocks.{i}.ada_gss"].shape) == (1, 1, 6, C) for i in range(36))
    assert [k for k in official if "ada_lin" in k] == ["shared_ada_lin.1.weight", "shared_ada_lin.1.bias",
                                                       "head_nm.ada_lin.1.weight", "head_nm.ada_lin.1.bias"]
    assert len(official) == 14 + 36 * 12 and tuple(official["pos_1LC"].shape) == (1, 2240, C)


def test_shared_adaln_flops_count_one_projection(d36):
    assert model_flops(d36[1])["adaln"] == 2 * 2304 * 6 * 2304


@pytest.mark.parametrize("mixer,intra", [("attention", "none"), ("attention", "full"), ("mamba2", "full")])
def test_shared_aln_sampling_reproduces_teacher_forcing(mixer, intra):
    """Generation reads the shared projection scale by scale as the forward does (VAR's sampler): the logits of the
    carried state equal the teacher-forced ones, with and without guidance; with 2 or 3 branches per block."""
    vae = tiny_tokenizer()
    model = tiny_model(mixer, intra, vae=vae, shared_aln=True).double()
    assert model.blocks[0].ada_gss.shape == (1, 1, 3 * model.blocks[0].num_branches, 64)
    torch.manual_seed(1)
    ids = vae.img_to_ids(torch.rand(2, 3, 64, 64) * 2 - 1)
    vae = copy.deepcopy(vae).double()
    x_BLCv = vae.ids_to_var_input(ids)
    labels = torch.tensor([3, 7])
    cond, uncond = model(labels, x_BLCv), model(torch.full_like(labels, model.num_classes), x_BLCv)
    K = model.layout.num_scales
    for cfg in (0.0, 2.0):
        expected = torch.cat([(1 + cfg_ramp(cfg, k, K)) * cond[:, s] - cfg_ramp(cfg, k, K) * uncond[:, s]
                              for k, s in enumerate(model.layout.segments())], 1)
        out = model.generate(vae, labels, cfg=cfg, forced_ids=ids, return_logits=True)
        torch.testing.assert_close(torch.cat(out.logits, 1), expected, atol=1e-9, rtol=1e-9)


def test_every_block_offsets_the_shared_projection():
    """ada_gss matters per block: changing one block's offset changes the logits."""
    model = tiny_model("attention", shared_aln=True)
    labels, x = torch.tensor([1, 2]), torch.randn(2, 29, 8)
    before = model(labels, x)
    with torch.no_grad():
        model.blocks[1].ada_gss.add_(0.1)
    assert (model(labels, x) - before).abs().max() > 1e-3


def test_shared_aln_init_follows_var():
    """VAR's init_weights: ada_gss (randn / sqrt(C)) gate rows x init_adaln_gamma, scale and shift rows x init_adaln;
    the shared projection is a plain Linear (trunc-normal std sqrt(1 / 3C), zero bias), not rescaled."""
    torch.manual_seed(0)
    C = 64
    model = ScaleAR(mixer=factory(load_option("mixer", "attention")), depth=3, width=C, num_heads=1, vocab_size=16,
                    latent_dim=8, patch_nums=(1, 2), shared_aln=True, init=dict(init_adaln_gamma=1e-5))
    for block in model.blocks:
        gss = block.ada_gss * C ** 0.5   # back to unit normal
        assert gss[:, :, :2].abs().max() < 5e-5
        assert 0.4 < gss[:, :, 2:].std() / 0.5 < 1.1
        assert not hasattr(block, "ada_lin")
    lin = model.shared_ada_lin[-1]
    assert lin.bias.abs().max() == 0 and abs(lin.weight.std().item() / (1 / 3 / C) ** 0.5 - 1) < 0.05


def test_shared_aln_block_refuses_a_plain_condition():
    block = tiny_model("attention", shared_aln=True).blocks[0]
    with pytest.raises(ValueError, match=r"SharedAdaLin output \(B, 1, 6, 64\)"):
        block.modulation(torch.randn(1, 64))


def test_shared_aln_checkpoints_round_trip_strictly():
    """Official names out, strict load back in; a shared checkpoint does not load into a per-block model."""
    model = tiny_model("attention", shared_aln=True)
    official = varbench_to_official(model)
    again = load_official(tiny_model("attention", shared_aln=True), official)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(Exception, match="ada_gss|shared_ada_lin"):
        load_official(tiny_model("attention"), official)


def test_official_args_with_shared_aln():
    args = dict(depth=2, embed_dim=64, num_heads=2, shared_aln=True, patch_nums=[1, 2])
    assert scale_ar_from_official_args("var", args, 16, 8).shared_ada_lin is not None
    with pytest.raises(ValueError, match="M-VAR"):
        scale_ar_from_official_args("mvar", {**args, "attn_l2_norm": False}, 16, 8)
    with pytest.raises(ValueError, match="M-VAR with shared_aln"):  # no official layout to export to either
        varbench_to_official(tiny_model("mamba2", "full", shared_aln=True))


def test_ada_gss_never_decays_and_the_shared_projection_does():
    from varbench.training.recipe import param_groups
    model = tiny_model("attention", shared_aln=True)
    no_decay = {id(p) for p in param_groups(model)[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert {"blocks.0.ada_gss", "blocks.1.ada_gss", "shared_ada_lin.1.bias"} <= names
    assert "shared_ada_lin.1.weight" not in names


def test_shared_aln_is_a_command_line_option():
    cfg = compose_with("model.shared_aln=true")
    assert build_model(cfg).shared_ada_lin is not None and build_model(compose_with()).shared_ada_lin is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_shared_aln_cuda_graph_sampling_equals_eager(autocast):
    """The shared projection is part of each captured scale: replayed graphs give the eager logits (fp32 and bf16)."""
    vae = tiny_tokenizer()
    model = tiny_model("attention", vae=vae, shared_aln=True).cuda()
    torch.manual_seed(1)
    ids = [t.cuda() for t in vae.img_to_ids(torch.rand(2, 3, 64, 64) * 2 - 1)]
    vae, labels = vae.cuda(), torch.tensor([3, 7], device="cuda")
    with torch.autocast("cuda", dtype=autocast or torch.float32, enabled=autocast is not None):
        runs = [model.generate(vae, labels, cfg=2.0, forced_ids=ids, return_logits=True, cuda_graphs=graphs)
                for graphs in (True, False)]
    tol = {} if autocast is None else dict(atol=1e-2, rtol=1e-2)  # bf16: one ulp of the logits, as test_backbone
    torch.testing.assert_close(torch.cat(runs[0].logits, 1), torch.cat(runs[1].logits, 1), **tol)
