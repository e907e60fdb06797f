"""Data layer: the embedded data set, VAR's transform, image folders with bad files, torchvision sets, token cache.

Shape legend: N items, B batch, 3 RGB, H W image side, L tokens of all scales.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_tokenizer
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from varbench.data import (
    EmbeddedShapes,
    ImageFolderData,
    TokenCache,
    TorchvisionData,
    tokenizer_fingerprint,
    var_transform,
    write_token_cache,
)
from varbench.data.token_cache import shard_path
from varbench.data.transforms import mid_size

REPO = Path(__file__).resolve().parents[1]


# ----- EmbeddedShapes ------------------------------------------------------------------------------------------------

def stack(ds, indices=None):
    items = [ds[i] for i in (range(len(ds)) if indices is None else indices)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def test_embedded_is_deterministic_and_splits_differ():
    a, la = stack(EmbeddedShapes("train", 64, size_per_class=2, seed=3))
    b, lb = stack(EmbeddedShapes("train", 64, size_per_class=2, seed=3))
    assert torch.equal(a, b) and torch.equal(la, lb)
    val, _ = stack(EmbeddedShapes("val", 64, size_per_class=2, seed=3))
    other, _ = stack(EmbeddedShapes("train", 64, size_per_class=2, seed=4))
    assert (a - val).abs().mean() > 0.05 and (a - other).abs().mean() > 0.05
    # an item is a function of its index alone (any access order, any worker)
    assert torch.equal(EmbeddedShapes("train", 64, size_per_class=2, seed=3)[7][0], a[7])


def test_embedded_shape_range_and_classes():
    ds = EmbeddedShapes("val", 32, num_classes=12, size_per_class=2)
    x, y = stack(ds)
    assert x.shape == (24, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5
    assert sorted(set(y.tolist())) == list(range(12)) and len(ds.classes) == ds.num_classes == 12
    assert len(EmbeddedShapes("train")) == 5000 and len(EmbeddedShapes("val")) == 500
    for bad in (dict(split="test"), dict(num_classes=13), dict(num_classes=1), dict(size_per_class=0)):
        with pytest.raises(ValueError):
            EmbeddedShapes(**bad)


def test_embedded_classes_separable_from_coarse_scale_but_varied():
    """A linear classifier on 8x8 thumbnails (what the coarse scales see) is far above chance on val, while
    images of one class differ from each other (position, size, rotation, colours, background).
    (A linear probe, not nearest-class-mean: the per-sample background brightness is a large nuisance in raw L2;
    nearest-mean gets ~0.56, 1-nearest-neighbour ~0.87, the linear probe ~0.99.)"""
    train_x, train_y = stack(EmbeddedShapes("train", 64, size_per_class=30))
    val_x, val_y = stack(EmbeddedShapes("val", 64, size_per_class=10))
    train_f, val_f = (F.adaptive_avg_pool2d(x, 8).flatten(1) for x in (train_x, val_x))
    w, b = torch.zeros(3 * 8 * 8, 10, requires_grad=True), torch.zeros(10, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(train_f @ w + b, train_y).backward()
        opt.step()
    accuracy = ((val_f @ w + b).argmax(1) == val_y).float().mean().item()
    assert accuracy > 0.85, accuracy  # chance is 0.1
    for c in range(10):
        x = train_x[train_y == c].flatten(1)
        nearest = torch.cdist(x, x).fill_diagonal_(float("inf")).min(1).values / x.shape[1] ** 0.5
        assert nearest.min() > 0.05, (c, nearest.min())  # RMS difference to the closest same-class image


# ----- VAR transform -------------------------------------------------------------------------------------------------

def random_pil(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_var_transform_resize_crop_and_range():
    assert mid_size(256) == 288 and mid_size(64) == 72
    resize = var_transform(256, "train").transforms[0]
    assert isinstance(resize, T.Resize) and resize.size == 288 and resize.interpolation == T.InterpolationMode.LANCZOS
    img = random_pil(100, 80)
    val = var_transform(32, "val")
    x = val(img)
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1 and torch.equal(x, val(img))
    # the val transform is exactly: shorter side -> round(1.125 * 32) = 36 with PIL LANCZOS, then center crop
    ref = np.asarray(img.resize((45, 36), Image.LANCZOS), np.float32)[2:34, 6:38] / 255 * 2 - 1
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1), atol=1e-6)
    train = var_transform(32, "train")
    torch.manual_seed(0)
    crops = torch.stack([train(img) for _ in range(8)])
    assert crops.shape == (8, 3, 32, 32) and (crops - crops[0]).abs().amax() > 0  # random crops differ
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in train.transforms)  # VAR: no flip by default
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in var_transform(32, "train", hflip=True).transforms)
    assert isinstance(var_transform(32, "train", crop="center").transforms[1], T.CenterCrop)


# ----- ImageFolderData -----------------------------------------------------------------------------------------------

def make_folder(root: Path, split: str, per_class: int = 3) -> None:
    for c, name in enumerate(("cat", "dog")):
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            random_pil(40 + 8 * i, 36, seed=10 * c + i).save(root / split / name / f"{i}.png")
    (root / split / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / split / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_counts_bad_files_instead_of_crashing(tmp_path):
    make_folder(tmp_path, "train")
    ds = ImageFolderData(tmp_path, "train", image_size=32, num_classes=2)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 6  # broken.jpg dropped when indexed
    labels = [ds[i][1] for i in range(len(ds))]
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))
    assert labels == [0, 0, 0, 1, 1, 1]
    report = ds.report()
    assert report["skipped_non_image"] == 1 and report["unreadable"] == 1
    assert any("notes.txt" in e for e in report["examples"]) and any("broken.jpg" in e for e in report["examples"])


def test_image_folder_loads_in_workers(tmp_path):
    make_folder(tmp_path, "val")
    ds = ImageFolderData(tmp_path, "val", image_size=32)
    batches = list(DataLoader(ds, batch_size=6, num_workers=1))
    assert batches[0][0].shape == (6, 3, 32, 32) and batches[0][1].tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*root/train/<class>"):
        ImageFolderData(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderData(tmp_path / "empty")
    make_folder(tmp_path / "data", "train")
    with pytest.raises(ValueError, match="no 'val' folder"):
        ImageFolderData(tmp_path / "data", "val")
    with pytest.raises(ValueError, match="num_classes=1000 but .* has 2 class folders"):
        ImageFolderData(tmp_path / "data", "train", num_classes=1000)
    flat = ImageFolderData(tmp_path / "data" / "train", "val", image_size=16)  # class folders directly under root
    assert flat.num_classes == 2 and len(flat) == 6
    # every record against it says its "val" is the training images (session 21: a held-out NLL of train images)
    assert "split=val (the train images: no train/ or val/)" in flat.describe()
    assert "split=train," in ImageFolderData(tmp_path / "data", "train", image_size=16).describe()


# ----- TorchvisionData -----------------------------------------------------------------------------------------------

def test_torchvision_missing_files_point_to_download(tmp_path):
    with pytest.raises(ValueError, match="download=true"):
        TorchvisionData("CIFAR10", tmp_path, "train", 64)
    with pytest.raises(ValueError, match="unknown torchvision data set"):
        TorchvisionData("ImageNet21k", tmp_path)
    with pytest.raises(ValueError, match="has 10 classes"):
        TorchvisionData("CIFAR10", tmp_path, num_classes=100)


def test_torchvision_wrapper_on_fake_cifar(tmp_path, monkeypatch):
    """A 2-image-per-file CIFAR-10 in the on-disk format (pickled batches); only the md5 check is bypassed."""
    from torchvision.datasets import CIFAR10
    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [3, 7]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / CIFAR10.meta["filename"]).write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: Path(path).is_file())
    train, val = TorchvisionData("CIFAR10", tmp_path, "train", 48), TorchvisionData("CIFAR10", tmp_path, "val", 48)
    assert len(train) == 10 and len(val) == 2 and train.classes[3] == "c3"
    x, y = val[1]
    assert x.shape == (3, 48, 48) and y == 7 and -1 <= x.min() and x.max() <= 1


# ----- token cache ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()  # MultiScaleVQVAE(vocab_size=64, z_channels=8, ch=32, patch_nums=(1, 2, 3, 4)), 64 px


def test_token_cache_round_trip_resume_and_fingerprint(tmp_path, vae):
    ds = EmbeddedShapes("val", 64, size_per_class=2)  # 20 images
    summary = write_token_cache(vae, ds, tmp_path, batch_size=6, shard_size=8)
    assert summary["shards_written"] == 3 and summary["encoded_items"] == 20
    cache = TokenCache(tmp_path, tokenizer=vae)
    imgs, labels = stack(ds)
    expected = torch.cat(vae.img_to_ids(imgs), dim=1)
    assert cache.ids_NL.dtype == torch.int16 and len(cache) == 20
    assert torch.equal(torch.stack([cache[i][0] for i in range(20)]), expected)
    assert [cache[i][1] for i in range(20)] == labels.tolist() and cache[0][0].dtype == torch.int64
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["patch_nums"] == [1, 2, 3, 4] and meta["seq_len"] == 30 and meta["num_items"] == 20
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(vae) and meta["split"] == "val"

    shard_path(tmp_path, 1).unlink()  # an interrupted run: shard 1 missing
    with pytest.raises(ValueError, match="incomplete"):
        TokenCache(tmp_path)
    again = write_token_cache(vae, ds, tmp_path, batch_size=6, shard_size=8)
    assert (again["shards_skipped"], again["shards_written"], again["encoded_items"]) == (2, 1, 8)
    assert torch.equal(TokenCache(tmp_path).ids_NL.long(), expected)

    other = tiny_tokenizer()
    with torch.no_grad():
        other.quantize.embedding.weight.add_(0.01)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(vae)
    with pytest.raises(ValueError, match="made with another tokenizer"):
        TokenCache(tmp_path, tokenizer=other)
    with pytest.raises(ValueError, match="already holds another token cache"):
        write_token_cache(other, ds, tmp_path, shard_size=8)


def test_token_cache_refuses_random_crops(tmp_path, vae):
    make_folder(tmp_path / "img", "train")
    ds = ImageFolderData(tmp_path / "img", "train", image_size=64)
    with pytest.raises(ValueError, match="random transform"):
        write_token_cache(vae, ds, tmp_path / "cache")
    write_token_cache(vae, ds.set_deterministic(), tmp_path / "cache")
    assert len(TokenCache(tmp_path / "cache", tokenizer=vae)) == 6


def test_tokenize_task_records_and_measures(tmp_path, vae):
    from varbench.tasks.tokenize import main
    from varbench.utils.checkpoint import save_atomic
    ckpt = save_atomic(tmp_path / "vae.safetensors", tensors=vae.state_dict())
    task = OmegaConf.load(REPO / "varbench/configs/task/tokenize.yaml")
    task.merge_with(dict(batch_size=4, speedup_batches=2))
    tok = dict(vocab_size=64, z_channels=8, ch=32, patch_nums=[1, 2, 3, 4], ch_mult=[1, 1, 2, 2, 4],
               checkpoint=str(ckpt))
    cfg = OmegaConf.create(dict(seed=0, device="cpu", run_dir=str(tmp_path / "run"), results_dir=str(tmp_path / "res"),
                                tokenizer=tok, data={"_target_": "varbench.data.embedded.EmbeddedShapes",
                                                     "num_classes": 10, "size_per_class": 2}, task=task))
    out = main(cfg)
    assert out["cache_dir"] == str(tmp_path / "run" / "token_cache" / "train") and out["throughput_img_s"] > 0
    assert out["speedup"]["cached_batches_per_s"] > 0 and out["speedup"]["on_the_fly_batches_per_s"] > 0
    lines = [json.loads(s) for s in (tmp_path / "res" / "tokenize.jsonl").read_text().splitlines()]
    assert [x["metric"] for x in lines] == ["tokenize_throughput", "token_cache_speedup"]
    assert lines[0]["unit"] == "img/s" and lines[0]["value"] > 0
    assert len(TokenCache(out["cache_dir"], tokenizer=vae)) == 20
    cfg.tokenizer.checkpoint = None
    with pytest.raises(ValueError, match="tokenizer.checkpoint"):
        main(cfg)
