"""The project classifier: a small CNN trained on the run's data set, the feature space of the project metrics.

It gives (a) features for `embedded_fd` (the Frechet distance in this classifier's feature space -- never called
FID: it is not Inception) and (b) the class accuracy of generated samples (the fraction classified as the class
they were asked for). Trained in well under a minute on 2 CPU cores at 64 px, saved as safetensors with its
architecture, data fingerprint and val accuracy in the file's metadata. It is also registered with torch-fidelity
as the feature extractor "varbench-classifier" (weights from `feature_extractor_weights_path`), so KID and
precision/recall can be computed in its feature space too.

Shape legend: B batch, H W image side, D feature width (4 x width), K classes.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from varbench.utils.hashing import settings_digest
from varbench.utils.log import get_logger, progress_bar

log = get_logger(__name__)
FIDELITY_NAME = "varbench-classifier"


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: the same function in train and eval mode, whatever the batch holds
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """Four strided conv blocks (side / 16), global average pool -> features (B, D), linear head -> logits (B, K).

    Args:
        num_classes (int): K.
        image_size (int): the side it is trained on; inputs of another side are refused by `check_input`.
        width (int): channels of the first block (then 2x, 4x, 4x). Default: 32 (D = 128).
    """

    def __init__(self, num_classes: int, image_size: int, width: int = 32):
        super().__init__()
        self.num_classes, self.image_size, self.width = int(num_classes), int(image_size), int(width)
        w = self.width
        self.body = nn.Sequential(conv_block(3, w, 2), conv_block(w, 2 * w, 2), conv_block(2 * w, 4 * w, 2),
                                  conv_block(4 * w, 4 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, num_classes)

    def check_input(self, x_B3HW: torch.Tensor) -> None:
        if x_B3HW.ndim != 4 or x_B3HW.shape[1] != 3 or tuple(x_B3HW.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(f"classifier trained on (B, 3, {self.image_size}, {self.image_size}) images, "
                             f"got {tuple(x_B3HW.shape)}")

    def forward(self, x_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> (features (B, D), logits (B, K))."""
        self.check_input(x_B3HW)
        f_BD = self.body(x_B3HW)
        return f_BD, self.head(f_BD)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "image_size": self.image_size, "width": self.width}


# ----- training ----------------------------------------------------------------------------------------------------
def fingerprint(dataset, **hparams) -> str:
    """12 hex digits that name a classifier: the training data (`describe()`) and the training settings."""
    return settings_digest({"data": dataset.describe(), **hparams}, digits=12)


def batches_forever(dataset, batch_size: int, seed: int):
    """Shuffled batches, epoch after epoch (a fixed torch generator: the same run gives the same classifier)."""
    if len(dataset) < batch_size:  # drop_last would yield nothing and this loop would never end
        raise ValueError(f"the classifier's training set has {len(dataset)} items, fewer than one batch of "
                         f"{batch_size}: lower task.classifier_batch_size or use more data")
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)


def train_classifier(train_set, num_classes: int, image_size: int, steps: int = 200, batch_size: int = 32,
                     lr: float = 3e-3, width: int = 32, seed: int = 0, device="cpu") -> Classifier:
    """AdamW with warm-up and a cosine schedule, random horizontal flips (the class of a shape does not depend on
    its orientation). Items of `train_set` are (image (3, H, W) in [-1, 1], label)."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = Classifier(num_classes, image_size, width).to(device).train()
    flips = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up over 10% of the steps, then cosine to zero
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    data = batches_forever(train_set, batch_size, seed)
    for _ in progress_bar(range(steps), desc="classifier"):
        x_B3HW, y_B = (t.to(device) for t in next(data))
        flip_B = (torch.rand(x_B3HW.shape[0], generator=flips) < 0.5).to(device)
        x_B3HW = torch.where(flip_B[:, None, None, None], x_B3HW.flip(-1), x_B3HW)
        loss = F.cross_entropy(model(x_B3HW)[1], y_B)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def classify(model: Classifier, images_N3HW: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), logits (N, K)) of images in [-1, 1], on the model's device; CPU tensors out."""
    device = next(model.parameters()).device
    outs = [model(x.to(device)) for x in images_N3HW.split(batch_size)]
    return torch.cat([f.cpu() for f, _ in outs]), torch.cat([lg.cpu() for _, lg in outs])


@torch.no_grad()
def classify_dataset(model: Classifier, dataset, batch_size: int = 256) -> tuple[torch.Tensor, ...]:
    """(features (N, D), logits (N, K), labels (N,)) of a data set of (image in [-1, 1], label) items."""
    loader = progress_bar(DataLoader(dataset, batch_size=batch_size), desc="features", unit="batch")
    parts = [(*classify(model, x, batch_size), y) for x, y in loader]
    return tuple(torch.cat(p) for p in zip(*parts))


def accuracy(logits_NK: torch.Tensor, labels_N) -> float:
    """Fraction of rows whose argmax is the given label."""
    labels_N = torch.as_tensor(labels_N, device=logits_NK.device)
    return float((logits_NK.argmax(-1) == labels_N).float().mean())


# ----- files -------------------------------------------------------------------------------------------------------
def save_classifier(model: Classifier, path, **metadata) -> Path:
    """safetensors with the architecture (and anything in `metadata`, e.g. val accuracy) in the header, written by
    save_atomic (a temporary file and a rename; the umask's mode)."""
    from varbench.utils.checkpoint import save_atomic
    meta = {"config": json.dumps(model.config()), **{k: json.dumps(v) for k, v in metadata.items()}}
    return save_atomic(path, tensors=model.state_dict(), metadata=meta)


def load_classifier(path, device="cpu") -> tuple[Classifier, dict]:
    """(classifier in eval mode, metadata dict) from a file written by `save_classifier`."""
    from safetensors import safe_open

    from varbench.utils.checkpoint import load_strict, read_state_dict
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    if "config" not in meta:
        raise ValueError(f"{path} is not a varbench classifier (no 'config' in its safetensors metadata)")
    model = Classifier(**meta.pop("config"))
    load_strict(model, read_state_dict(path), f"classifier {path}")
    return model.to(device).eval(), meta


def cached_classifier(train_set, val_set, cache_dir, device="cpu", **hparams) -> tuple[Classifier, dict, Path]:
    """The classifier of `train_set` and these hparams: loaded from `cache_dir/<fingerprint>.safetensors` when
    present, else trained, checked on `val_set` and saved there. Returns (model, metadata, path). Cells of a grid
    that run at once share one: the first trains it under a file lock, the others wait and load it."""
    fp = fingerprint(train_set, **hparams)
    path = Path(cache_dir) / f"{fp}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.is_file():
            model, meta = load_classifier(path, device)
            log.info("project classifier %s (val accuracy %.3f)", path, meta.get("val_accuracy", float("nan")))
            return model, meta, path
        log.info("training the project classifier %s (%d steps)", path, hparams.get("steps", 200))
        start = time.perf_counter()
        model = train_classifier(train_set, device=device, **hparams)
        seconds = time.perf_counter() - start
        _, logits_NK, labels_N = classify_dataset(model, val_set)
        val_acc = accuracy(logits_NK, labels_N)
        meta = {"fingerprint": fp, "train_data": train_set.describe(), "val_data": val_set.describe(),
                "val_accuracy": val_acc, "train_seconds": seconds, "hparams": hparams}
        save_classifier(model, path, **meta)
    log.info("project classifier trained in %.1f s: val accuracy %.3f", seconds, val_acc)
    return model, meta, path


# ----- torch-fidelity --------------------------------------------------------------------------------------------
def fidelity_extractor_class():
    """The torch-fidelity FeatureExtractorBase subclass around a saved classifier (built lazily: importing this
    module must not need torch-fidelity)."""
    from torch_fidelity import FeatureExtractorBase

    class ClassifierExtractor(FeatureExtractorBase):
        """uint8 (B, 3, H, W) -> ('features' (B, D), 'logits' (B, K)) of a classifier saved by save_classifier."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"{FIDELITY_NAME} needs feature_extractor_weights_path (a classifier .safetensors)")
            self.net = load_classifier(feature_extractor_weights_path)[0]

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 64, 64, dtype=torch.uint8)

        def forward(self, x_B3HW):
            f_BD, logits_BK = self.net(x_B3HW.float() / 127.5 - 1)
            out = {"features": f_BD.double(), "logits": logits_BK.double()}
            return tuple(out[k] for k in self.features_list)

    return ClassifierExtractor


def register_with_fidelity() -> str:
    """Register the classifier extractor with torch-fidelity once per process; returns its name."""
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    if FIDELITY_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(FIDELITY_NAME, fidelity_extractor_class())
    return FIDELITY_NAME
