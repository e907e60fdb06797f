"""Raster next-token models (RasterAR, AiM's backbone) in the suite's trainer: the single-scale twin of a scale-wise
tokenizer, teacher forcing on the model's own ids (from images or a token cache), a tiny run whose loss falls, exact
resume, task=sample on the trained run, matched parameters, grid=scale_vs_token and task=bench's raster cells."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from grid_helpers import cells, records, run_grid, tail
from omegaconf import OmegaConf
from safetensors.torch import load_file

from varbench.backbones.raster_ar import RasterAR
from varbench.build import build_model, build_raster, build_tokenizer, raster_tokens
from varbench.data.teacher_forcing import teacher_forcing_inputs
from varbench.data.token_cache import TokenCache, write_token_cache
from varbench.eval.flops import model_flops
from varbench.eval.sampling import SamplingPreset, generate_images
from varbench.registry import compose, factory, load_option
from varbench.tokenizers import MultiScaleVQVAE
from varbench.utils.checkpoint import save_atomic
from varbench.utils.records import read_records

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=raster_tiny", "model.depth=1", "model.width=64", "model.num_heads=1", "tokenizer.num_res_blocks=1",
        "tokenizer.vocab_size=64", "data.size_per_class=8", "train.batch_size=8", "train.warmup_iters=2",
        "train.log_every=1", "device=cpu"]


def run(tmp: Path, name: str, task: str, *overrides):
    args = [sys.executable, str(REPO / "run.py"), f"task={task}", f"run_dir={tmp / name}",
            f"results_dir={tmp / name / 'results'}", *TINY, *overrides]
    return subprocess.run(args, cwd=tmp, capture_output=True, text=True, env=dict(os.environ), timeout=600)


def final_weights(run_dir: Path) -> dict:
    return load_file(str(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny raster run (attention) trained 40 steps on the embedded data: its folder."""
    tmp = tmp_path_factory.mktemp("raster")
    out = run(tmp, "run", "train", "mixer=attention", "train.steps=40", "train.base_lr=0.1", "train.ckpt_every=1000")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run"


def single_scale_tokenizer(vocab: int = 32) -> MultiScaleVQVAE:
    """A small single-scale VQ-VAE: 16 px images, a 4x4 latent, 16 tokens."""
    torch.manual_seed(0)
    vae = MultiScaleVQVAE(vocab_size=vocab, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=(4,))
    with torch.no_grad():  # spread the codebook so that tokens are diverse
        vae.quantize.embedding.weight.normal_(0, 0.5)
    return vae.eval()


def tiny_raster(vae: MultiScaleVQVAE, mixer: str = "attention") -> RasterAR:
    return RasterAR(mixer=factory(load_option("mixer", mixer)), depth=1, width=32, num_heads=1,
                    vocab_size=vae.vocab_size, num_classes=4, num_tokens=vae.layout.L, mlp_hidden=16).eval()


# ----- the single-scale tokenizer ------------------------------------------------------------------------------------

def test_single_scale_twin_is_the_same_vqvae_with_one_scale():
    tiny, single = (compose([f"tokenizer={name}"]).tokenizer for name in ("tiny", "tiny_single"))
    assert list(single.patch_nums) == [tiny.patch_nums[-1]]  # the same latent, quantized as one scale
    assert {k: v for k, v in single.items() if k != "patch_nums"} == \
        {k: v for k, v in tiny.items() if k != "patch_nums"}
    a, b = (build_tokenizer(OmegaConf.create({"tokenizer": t}), load=False).state_dict() for t in (tiny, single))
    assert {k: v.shape for k, v in a.items() if k != "quantize.ema_vocab_hit_SV"} == \
        {k: v.shape for k, v in b.items() if k != "quantize.ema_vocab_hit_SV"}
    assert raster_tokens(single) == 64
    with pytest.raises(ValueError, match=r"single-scale tokenizer .*patch_nums=\[1, 2, 3, 4, 6, 8\]"):
        raster_tokens(tiny)


def test_single_scale_encode_is_plain_vq_of_the_latent_and_decode_inverts_it():
    vae = single_scale_tokenizer()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ids_BN = vae.encode(x)
    latent = vae.encode_latent(x)  # one scale: no residual, each position takes its nearest code
    d = torch.cdist(latent.permute(0, 2, 3, 1).reshape(-1, 8), vae.quantize.embedding.weight)
    assert ids_BN.shape == (2, 16) and torch.equal(ids_BN.flatten(), d.argmin(1))
    f_hat = vae.quantize.phi(0)(vae.embed_ids(ids_BN, 0))
    torch.testing.assert_close(vae.decode(ids_BN), vae.fhat_to_img(f_hat))


# ----- teacher forcing ------------------------------------------------------------------------------------------------

def test_a_raster_model_is_taught_on_its_tokenizer_ids_from_images_or_a_cache(tmp_path):
    from varbench.data.embedded import EmbeddedShapes
    vae, x = single_scale_tokenizer(), torch.rand(3, 3, 16, 16) * 2 - 1
    model = tiny_raster(vae)
    gt, inputs = teacher_forcing_inputs(model, vae, x, from_ids=False)
    assert torch.equal(gt, vae.encode(x)) and torch.equal(inputs, gt)
    data = EmbeddedShapes(split="train", image_size=16, size_per_class=2, num_classes=2)  # drawn: no random crop
    write_token_cache(vae, data, tmp_path / "cache", batch_size=4)
    cache = TokenCache(tmp_path / "cache", tokenizer=vae)
    ids, _ = cache[1]
    assert ids.shape == (16,) and torch.equal(ids, vae.encode(data[1][0][None])[0])
    gt, inputs = teacher_forcing_inputs(model, vae, ids[None], from_ids=True)
    assert torch.equal(gt, ids[None]) and torch.equal(inputs, ids[None])
    logits = model.train()(torch.tensor([1]), inputs)  # the loss the trainer takes: CE of model(labels, ids) vs ids
    assert logits.shape == (1, 16, vae.vocab_size)


def test_a_token_cache_of_aims_vq_f16_holds_its_raster_ids(tmp_path):
    from varbench.data.embedded import EmbeddedShapes
    from varbench.tokenizers.vq_f16 import VQF16
    torch.manual_seed(0)
    vq = VQF16(vocab_size=32, embed_dim=4, z_channels=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1).eval()
    data = EmbeddedShapes(split="train", image_size=16, size_per_class=2, num_classes=2)
    write_token_cache(vq, data, tmp_path / "cache", batch_size=3)
    cache = TokenCache(tmp_path / "cache", tokenizer=vq)
    assert cache.patch_nums == (4,) and len(cache) == len(data)
    for i in range(len(data)):
        assert torch.equal(cache[i][0], vq.encode(data[i][0][None])[0]) and cache[i][1] == data[i][1]


def test_teacher_forced_nll_of_a_raster_model_is_its_cross_entropy_on_its_ids():
    from varbench.data.embedded import EmbeddedShapes
    from varbench.eval.likelihood import teacher_forced_nll
    vae = single_scale_tokenizer()
    model = tiny_raster(vae)
    data = EmbeddedShapes(split="val", image_size=16, size_per_class=2, num_classes=2)
    nll, n = teacher_forced_nll(model, vae, data, torch.device("cpu"), batch_size=3, max_images=4)
    x = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        ids = vae.encode(x)
        ce = torch.nn.functional.cross_entropy(model.eval()(labels, ids).flatten(0, 1), ids.flatten())
    assert n == 4 == len(data) and nll == pytest.approx(ce.item(), rel=1e-5)


def test_raster_generation_refuses_scale_wise_sampling_options():
    vae = single_scale_tokenizer()
    model, labels = tiny_raster(vae), torch.tensor([0, 3])
    setting = SamplingPreset(cfg=1.5, top_k=900, top_p=1.0, more_smooth=False)
    images = generate_images(model, vae, labels, setting, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match="a raster model samples with sampler=carry and more_smooth=false only"):
        generate_images(model, vae, labels, setting, None, sampler="prefix_rerun")


# ----- training, resume, sampling -------------------------------------------------------------------------------------

def test_tiny_raster_model_loss_falls_on_embedded_data(trained):
    rows = read_records(trained / "results" / "train.jsonl")
    losses = [r["value"] for r in rows if r["metric"] == "train_loss"]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    (summary,) = [r for r in rows if r["metric"] == "train_summary"]
    with torch.device("meta"):
        model = build_model(OmegaConf.create(summary["config"]))
    assert isinstance(model, RasterAR) and model.num_tokens == 64
    assert summary["params"] == model.num_params() and summary["fwd_flops_per_image"] == model_flops(model)["total"]


def test_task_sample_draws_from_the_trained_raster_run(trained):
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "task=sample", f"run_dir={trained}",
                          f"results_dir={trained / 'results'}", "device=cpu", "task.per_class=1",
                          "task.classes=[0,1]"], cwd=trained.parent, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = read_records(trained / "results" / "sample.jsonl")
    assert rec["images"] == 2 and Path(rec["value"]).is_file() and rec["checkpoint"].endswith("model.safetensors")
    assert rec["decode_mode"] == "eager"  # task.decode_mode: auto decodes eagerly on a CPU


def train_in_process(cfg) -> dict:
    """What task=train does, in this process (seeded alike every time): the summary."""
    from varbench.build import build_dataset
    from varbench.training.loop import train_ar
    from varbench.utils.dist import DistInfo
    torch.manual_seed(cfg.seed)
    tokenizer, model = build_tokenizer(cfg), build_model(cfg)
    torch.manual_seed(cfg.seed)
    return train_ar(model, tokenizer, build_dataset(cfg, "train"), cfg, torch.device("cpu"), DistInfo(), from_ids=False)


def test_raster_resume_is_exact(tmp_path):
    """A run cut after step 3 (its checkpoint then the latest) resumes to the bitwise-same weights at step 6: the
    optimizer, the data order and the RNG of AiM's class dropout all continue."""
    cfg = compose([*TINY, "mixer=mamba2", "train.steps=6", "train.ckpt_every=3", "train.keep_last=5",
                   f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'results'}", "cell_id=test"])
    assert cfg.model.cond_drop_rate > 0
    ckpt = tmp_path / "run" / "checkpoints"
    assert train_in_process(cfg)["steps"] == 6
    straight = final_weights(tmp_path / "run")
    shutil.rmtree(ckpt / "step_00000006")  # the run as it was after step 3
    save_atomic(ckpt / "latest", obj={"step": 3, "folder": "step_00000003"})
    assert train_in_process(cfg)["steps"] == 6
    steps = [r["step"] for r in read_records(tmp_path / "results" / "train.jsonl") if r["metric"] == "train_loss"]
    assert steps == [1, 2, 3, 4, 5, 6, 4, 5, 6]  # it resumed, not restarted
    resumed = final_weights(tmp_path / "run")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


# ----- matched parameters, the grid and the bench ---------------------------------------------------------------------

@pytest.mark.parametrize("mixer", ["attention", "mamba2"])
def test_raster_models_have_mvar_tinys_parameters(mixer):
    with torch.device("meta"):
        mvar = build_model(compose(["mixer=mamba2", "intra=full"]))
        var = build_model(compose(["model.match_params_of=[mamba2,full]"]))
        raster = build_model(compose(["model=raster_tiny", f"mixer={mixer}"]))
    assert isinstance(raster, RasterAR) and raster.num_tokens == 64 and raster.depth == mvar.depth == 4
    assert abs(raster.num_params() - mvar.num_params()) <= raster.depth * 3 * raster.width / 2
    assert abs(var.num_params() - mvar.num_params()) <= var.depth * (2 * var.width + 1) / 2
    cfg = compose(["model=raster_tiny"])
    cfg.model.match_params_of = {"mixer": "mamba2", "intr": "full"}
    with pytest.raises(ValueError, match=r"unknown groups \['intr'\]"):
        build_model(cfg)


def test_a_raster_model_refuses_a_scale_wise_tokenizer():
    with pytest.raises(ValueError, match="single-scale tokenizer"):
        build_raster(compose(["model=raster_tiny", "tokenizer=tiny", "model.match_params_of=null"]))


def test_scale_vs_token_grid_lists_the_four_arms(tmp_path):
    out = run_grid(tmp_path, "+dry_run=true", grid="scale_vs_token")
    assert out.returncode == 0, tail(out)
    got = {(r["overrides"]["model"], r["overrides"]["tokenizer"], r["overrides"]["mixer"], r["overrides"]["intra"])
           for r in cells(out.stdout)}
    raster = [("raster_tiny", "tiny_single", mixer, "none") for mixer in ("attention", "mamba2")]
    assert got == {("tiny", "tiny", "attention", "none"), ("tiny", "tiny", "mamba2", "full"), *raster}


def test_a_raster_cell_of_the_grid_runs_end_to_end(tmp_path):
    tiny = ["model.depth=1", "model.width=64", "model.num_heads=1", "tokenizer.vocab_size=64", "data.num_classes=2",
            "data.size_per_class=4", "train.steps=2", "++task.overrides.train_tokenizer.steps=2",
            "++task.overrides.train_tokenizer.batch_size=4", "++task.overrides.sample.per_class=1",
            "++task.overrides.evaluate.per_class=2", "++task.overrides.evaluate.classifier_steps=2",
            "++task.overrides.evaluate.classifier_batch_size=4",
            "++task.overrides.evaluate.classifier_min_val_accuracy=0.0", "device=cpu", "results_dir=results"]
    # the raster AiM cell alone: the command line wins over the grid's params, and the extra cells are dropped
    only_raster_mamba2 = ["model=raster_tiny", "tokenizer=tiny_single", "mixer=mamba2",
                          "model.match_params_of={model:tiny,mixer:mamba2,intra:full,tokenizer:tiny}",
                          "++task.overrides.evaluate.preset=aim_b", "hydra.sweeper.cells=[]"]
    out = run_grid(tmp_path, *tiny, *only_raster_mamba2, grid="scale_vs_token")
    assert out.returncode == 0, tail(out)
    (row,) = cells(out.stdout)
    assert row["overrides"]["model"] == "raster_tiny" and row["overrides"]["mixer"] == "mamba2"
    (summary,) = records(tmp_path, "train.jsonl", "train_summary")
    assert summary["steps"] == 2 and summary["backends"]["intra"] == "none"
    assert records(tmp_path, "sample.jsonl", "sample_grid") and records(tmp_path, "evaluate.jsonl")
    assert list((tmp_path / "sweep" / row["cid"]).glob("samples_*.png"))


def test_bench_raster_cell_matches_var_parameters_at_256_tokens():
    from varbench.tasks.bench import raster_cell_model, sequence_length
    cfg = compose(["model=var_d16", "task=bench"])
    with torch.device("meta"):
        var = build_model(cfg, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_classes=1000)
        raster = raster_cell_model(cfg, load_option("mixer", "mamba2"), 256)
    assert raster.num_tokens == sequence_length("raster", 256) == 256 and sequence_length("none", 256) == 680
    assert (raster.depth, raster.width, raster.vocab_size) == (16, 1024, 4096)
    assert abs(raster.num_params() - var.num_params()) <= 16 * 3 * 1024 / 2


def test_bench_checks_raster_configs_and_times_a_raster_cell_on_cpu():
    from varbench.eval.timing import sample_cell, train_step_cell
    from varbench.tasks.bench import check_config, plan_stages
    cfg = compose(["model=var_d16", "task=bench", "task.configs=[[mamba2,raster],[attention,none]]"])
    check_config(cfg)
    for bad, match in (("[[none,raster]]", "cannot run in raster order"), ("[[mamba2,rastr]]", "is not")):
        with pytest.raises(ValueError, match=match):
            check_config(compose(["model=var_d16", "task=bench", f"task.configs={bad}"]))
    t = OmegaConf.create({"train_batch": 8, "sample_batches": [1], "rerun_baseline": ["mamba2"],
                          "rerun_resolutions": [256]})
    assert plan_stages(t, "mamba2", 256, raster=True) == [("train", 8, None), ("sample", 1, "carry")]
    vae = single_scale_tokenizer()
    model = tiny_raster(vae, "mamba2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert train_step_cell(model, 2, repeats=1)["median_ms"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it really trained
    timing = sample_cell(model, vae, 2, "carry", repeats=1)
    assert timing["total"]["median_ms"] > 0 and timing["decode"]["median_ms"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mixer", ["attention", "mamba2"])
def test_bench_raster_cell_trains_and_samples_with_cuda_graphs_on_gpu(mixer):
    from varbench.eval.timing import sample_cell, train_step_cell
    from varbench.tasks.bench import build, cell_tokenizer
    cfg = compose(["model=var_d16", "model.depth=2", "task=bench"])
    model, vae = build(cfg, mixer, "raster", 256), cell_tokenizer("raster", 256).cuda()
    assert model.num_tokens == 256 and train_step_cell(model, 2, repeats=1)["median_ms"] > 0
    for graphs in (False, True):
        assert sample_cell(model, vae, 2, "carry", repeats=1, cuda_graphs=graphs)["total"]["median_ms"] > 0
