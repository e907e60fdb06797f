"""Tests of the VQ-VAE trainer: metrics, loss falls, dead-code restart, exact resume, NaN guard, option checks, task.

All on a tiny tokenizer (16 px images, 3 scales, V = 32) and small synthetic data sets: seconds on 2 CPU cores.

Shape legend: B batch, 3 RGB, H W image side, C latent channels, N search vectors, V vocabulary size, D codes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from varbench.tokenizers import MultiScaleVQVAE, load_official_vqvae
from varbench.tokenizers.losses import PerceptualLoss, gaussian_window, psnr, ssim
from varbench.tokenizers.trainer import STATE, WEIGHTS, StepBatches, train_tokenizer
from varbench.tokenizers.update import restart_dead_codes
from varbench.utils.checkpoint import TEMP_MARK, load_object, save_atomic
from varbench.utils.records import read_records

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, patch_nums=(1, 2, 4))
FAST = dict(progress=False, log_every=1)


def tiny_vae(seed: int = 0) -> MultiScaleVQVAE:
    torch.manual_seed(seed)
    return MultiScaleVQVAE(**TINY, test_mode=False)


def smooth_images(n: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Random smooth colour fields in [-1, 1], (n, 3, side, side)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 4, 4, generator=g)
    return torch.tanh(F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False))


def image_set(n: int = 32, seed: int = 0) -> TensorDataset:
    return TensorDataset(smooth_images(n, seed=seed), torch.zeros(n, dtype=torch.long))


# ----- metrics ------------------------------------------------------------------------------------------------------

def ssim_direct(x_HW: np.ndarray, y_HW: np.ndarray, size=11, sigma=1.5, L=1.0) -> float:
    """SSIM of one channel written out window by window (float64): the independent oracle."""
    w = gaussian_window(size, sigma).numpy()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(x_HW.shape[0] - size + 1):
        for j in range(x_HW.shape[1] - size + 1):
            a, b = x_HW[i:i + size, j:j + size], y_HW[i:i + size, j:j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cov = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and abs(w.sum().item() - 1) < 1e-12
    assert torch.equal(w, w.T) and w.argmax().item() == 5 * 11 + 5


def test_ssim_identical_is_one_and_psnr_infinite():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_matches_window_by_window_oracle():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 2, 13, 14, generator=g)
    y = (x + 0.2 * torch.randn(1, 2, 13, 14, generator=g)).clamp(0, 1)
    want = np.mean([ssim_direct(x[0, c].double().numpy(), y[0, c].double().numpy()) for c in range(2)])
    assert abs(ssim(x, y).item() - want) < 1e-10
    assert 0 < want < 1


def test_ssim_of_constant_images_closed_form():
    # no variance: SSIM = (2ab + c1) / (a^2 + b^2 + c1)
    a, b, c1 = 0.3, 0.6, 0.01 ** 2
    x, y = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
    assert abs(ssim(x, y).item() - (2 * a * b + c1) / (a * a + b * b + c1)) < 1e-6


def test_psnr_known_value_and_ssim_rejects_small_images():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    assert abs(psnr(x, x + 0.1).item() - 20.0) < 1e-9  # MSE 0.01 -> 20 dB
    with pytest.raises(ValueError, match="larger than the images"):
        ssim(x, x)


# ----- training -----------------------------------------------------------------------------------------------------

def recon_mse(vae: MultiScaleVQVAE, imgs: torch.Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(vae.ids_to_img(vae.img_to_ids(imgs)), imgs).item()


def test_short_training_reduces_reconstruction_loss(tmp_path):
    vae, data = tiny_vae(), image_set(64)
    before = recon_mse(vae.eval(), data.tensors[0])
    summary = train_tokenizer(vae, data, device="cpu", out_dir=tmp_path, val_set=image_set(16, seed=1), steps=30,
                              batch_size=8, lr=2e-3, dead_code_every=10, results_path=tmp_path / "r.jsonl", **FAST)
    after = recon_mse(vae.eval(), data.tensors[0])
    # 30 updates only get this architecture to about the mean image (0.34 here) from its random output (0.44)
    assert after < 0.85 * before, (before, after)
    assert summary["psnr"] > 0 and 0 < summary["ssim"] <= 1 and len(summary["usage"]) == 3
    metrics = [json.loads(line)["metric"] for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {"psnr", "ssim", "codebook_usage", "codebook_usage_total", "tokenizer_train_time"} <= set(metrics)
    load_official_vqvae(MultiScaleVQVAE(**TINY), tmp_path / WEIGHTS)  # official key names, strict


def test_step_batches_are_a_function_of_the_step():
    full = list(StepBatches(10, 4, seed=3, start=0, steps=6))
    assert list(StepBatches(10, 4, seed=3, start=4, steps=6)) == full[4:]
    assert sorted(index for _, index in sum(full[:5], [])[:10]) == list(range(10))  # epoch 0 is a permutation
    assert len({seed for seed, _ in sum(full, [])}) == 24  # every item of every update draws its own transform


class RandomlyFlipped(torch.utils.data.Dataset):
    """Images flipped at random, drawing from torch's global RNG as a crop or flip transform does."""

    def __init__(self, images: TensorDataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        x, y = self.images[index]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x) + 0.01 * torch.randn_like(x), y


def test_resume_with_loader_workers_is_bitwise_exact(tmp_path):
    """Session 21: with task.num_workers > 0 the workers' own RNG drew the transforms and restarted on resume (4
    updates vs 2 + 2 differed by 1.3 in the weights); each item's transform is now seeded by (seed, update,
    position)."""
    opts = dict(batch_size=4, lr=1e-3, ckpt_every=2, num_workers=1, **FAST)
    data = RandomlyFlipped(image_set(10))
    train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "a", steps=4, **opts)
    train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "b", steps=2, **opts)
    train_tokenizer(tiny_vae(seed=5), data, device="cpu", out_dir=tmp_path / "b", steps=4, **opts)
    a, b = load_file(tmp_path / "a" / WEIGHTS), load_file(tmp_path / "b" / WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dead_code_restart_revives_unused_codes():
    vae, imgs = tiny_vae(), smooth_images(8)
    q = vae.quantize
    with torch.no_grad():
        q.embedding.weight[16:] = 1e3  # far from every latent: never chosen
    optim = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    vae(imgs)[2].backward()  # records hits (train mode) and creates Adam moments
    optim.step()
    assert not any(((ids >= 16).any().item() for ids in vae.img_to_ids(imgs)))
    dead_D = q.dead_codes(threshold=0.1)
    assert set(range(16, 32)) <= set(dead_D.tolist())
    z_NC = q.search_inputs(vae.encode_latent(imgs)).detach()
    assert restart_dead_codes(vae, imgs, 0.1, optim) == dead_D.numel()
    moved_DC = q.embedding.weight[dead_D].detach()
    dist_DN = torch.cdist(moved_DC, z_NC, compute_mode="donot_use_mm_for_euclid_dist")
    assert dist_DN.min(dim=1).values.max().item() < 1e-6  # each sits on a vector the code search saw
    assert (q.ema_vocab_hit_SV[:, dead_D] > 0).all()  # grace period before the next judgement
    assert (optim.state[q.embedding.weight]["exp_avg"][dead_D] == 0).all()
    used = torch.cat([ids.flatten() for ids in vae.img_to_ids(imgs)])
    assert torch.isin(used, dead_D).any()  # revived codes are chosen again


def test_resume_is_bitwise_exact(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        opts = dict(batch_size=4, lr=1e-3, dead_code_every=2, adv_weight=0.1, adv_start=2, disc_ch=32, disc_layers=2,
                    ckpt_every=3, **FAST)
        data = image_set(10)
        train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "a", steps=6, **opts)
        train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "b", steps=3, **opts)
        summary = train_tokenizer(tiny_vae(seed=5), data, device="cpu", out_dir=tmp_path / "b", steps=6, **opts)
    finally:
        torch.use_deterministic_algorithms(False)
    assert summary["resumed_from"] == 3
    a, b = load_file(tmp_path / "a" / WEIGHTS), load_file(tmp_path / "b" / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = load_object(tmp_path / "a" / STATE), load_object(tmp_path / "b" / STATE)
    assert all(torch.equal(sa["disc"][k], sb["disc"][k]) for k in sa["disc"])
    with pytest.raises(ValueError, match=r"cannot resume .*train_state\.pt.* 1 key\(s\): lr: saved 0\.001, now 0\.002"):
        train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "b", steps=8, **{**opts, "lr": 2e-3})


@pytest.mark.parametrize("weights_left", ["older", "none"])
def test_a_kill_between_the_state_and_the_weights_resumes_on_the_states_weights(tmp_path, weights_left):
    """Session 22's audit: killed after train_state.pt of the last update but before tokenizer.safetensors, the rerun
    had no update left to make, so the older weights file stayed (every cell then trained on it; with none written
    yet, the rerun failed forever). The resume now rewrites the weights from the state."""
    opts = dict(batch_size=4, lr=1e-3, ckpt_every=2, **FAST)
    data = image_set(10)
    train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "a", steps=4, **opts)
    train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "b", steps=2, **opts)
    older = load_file(tmp_path / "b" / WEIGHTS)
    train_tokenizer(tiny_vae(), data, device="cpu", out_dir=tmp_path / "b", steps=4, **opts)
    if weights_left == "older":
        save_atomic(tmp_path / "b" / WEIGHTS, tensors=older)  # update 4's state, update 2's weights
    else:
        (tmp_path / "b" / WEIGHTS).unlink()
    summary = train_tokenizer(tiny_vae(seed=5), data, device="cpu", out_dir=tmp_path / "b", steps=4, **opts)
    a, b = load_file(tmp_path / "a" / WEIGHTS), load_file(tmp_path / "b" / WEIGHTS)
    assert summary["resumed_from"] == 4 and all(torch.equal(a[k], b[k]) for k in a)

def test_a_killed_runs_temporary_files_are_removed_at_start(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{STATE}{TEMP_MARK}{int(child.stdout)}"  # its writer is gone
    stale.write_bytes(b"x" * 1024)
    train_tokenizer(tiny_vae(), image_set(4), device="cpu", out_dir=tmp_path, steps=1, batch_size=2, lr=1e-3, **FAST)
    assert not stale.exists() and {p.name for p in tmp_path.iterdir()} == {STATE, WEIGHTS}


def test_nan_guard_names_step_and_terms_and_keeps_checkpoint(tmp_path):
    good = image_set(8)
    train_tokenizer(tiny_vae(), good, device="cpu", out_dir=tmp_path, steps=4, batch_size=4, lr=1e-3, ckpt_every=2,
                    **FAST)
    bad = TensorDataset(torch.full((8, 3, 16, 16), float("nan")), torch.zeros(8, dtype=torch.long))
    with pytest.raises(FloatingPointError, match=r"update 5: l1=nan.*last good checkpoint: .*update 4"):
        train_tokenizer(tiny_vae(), bad, device="cpu", out_dir=tmp_path, steps=6, batch_size=4, lr=1e-3,
                        ckpt_every=2, **FAST)
    assert load_object(tmp_path / STATE)["step"] == 4
    vae = load_official_vqvae(MultiScaleVQVAE(**TINY), tmp_path / WEIGHTS)
    assert all(torch.isfinite(t).all() for t in vae.state_dict().values())


# ----- options ------------------------------------------------------------------------------------------------------

def test_perceptual_loss_needs_local_weights(tmp_path):
    with pytest.raises(ValueError, match="vgg_weights_path"):
        train_tokenizer(tiny_vae(), image_set(4), device="cpu", out_dir=tmp_path, steps=1, batch_size=2, lr=1e-3,
                        perceptual_weight=1.0, **FAST)


def test_perceptual_loss_from_local_files(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers
    torch.manual_seed(0)
    trunk = make_layers(cfgs["D"])
    save_atomic(tmp_path / "vgg.safetensors", tensors={f"features.{k}": v for k, v in trunk.state_dict().items()})
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    save_atomic(tmp_path / "lpips.safetensors", tensors=heads)
    loss = PerceptualLoss(tmp_path / "vgg.safetensors", tmp_path / "lpips.safetensors")
    x = smooth_images(2, side=32)
    assert loss(x, x).item() == 0 and loss(x, x.flip(-1)).item() > 0
    save_atomic(tmp_path / "bad.safetensors", tensors={"lin0.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="LPIPS VGG heads"):
        PerceptualLoss(tmp_path / "vgg.safetensors", tmp_path / "bad.safetensors")


# ----- task ---------------------------------------------------------------------------------------------------------

def test_task_trains_records_and_chains(tmp_path):
    from varbench.build import build_tokenizer
    from varbench.tasks.train_tokenizer import main
    task = OmegaConf.load(REPO / "varbench/configs/task/train_tokenizer.yaml")
    task.merge_with(dict(steps=2, batch_size=4, eval_batch_size=8, dead_code_every=1, **FAST))
    cfg = OmegaConf.create(dict(seed=0, tokenizer_seed=0, device="cpu", run_dir=str(tmp_path / "run"),
                                results_dir=str(tmp_path / "res"),
                                tokenizer={**TINY, "dropout": 0.0, "beta": 0.25, "quant_conv_ks": 3, "quant_resi": 0.5,
                                           "share_quant_resi": 4, "using_sa": True, "using_mid_sa": True,
                                           "checkpoint": None},
                                data={"_target_": "varbench.data.embedded.EmbeddedShapes", "num_classes": 2,
                                      "size_per_class": 4}, task=task, logger={"name": "none"}))
    summary = main(cfg)
    assert Path(summary["checkpoint"]) == tmp_path / "run" / "tokenizer" / WEIGHTS
    lines = read_records(tmp_path / "res" / "train_tokenizer.jsonl")
    digest = hashlib.sha256(Path(summary["checkpoint"]).read_bytes()).hexdigest()[:12]
    assert {r["tokenizer_id"] for r in lines if r["metric"] in ("psnr", "tokenizer_train_time")} == {digest}
    cfg.tokenizer.checkpoint = summary["checkpoint"]
    build_tokenizer(cfg)  # the main job's next step loads it
    cfg.task.bogus = 1
    with pytest.raises(ValueError, match="unknown train_tokenizer options"):
        main(cfg)
