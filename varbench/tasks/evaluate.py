"""task=evaluate: sample per_class images per class with an evaluation preset, then compute the quality metrics.

Suites (task.suite, see varbench/configs/task/evaluate.yaml):
- project: the feature space of the project classifier (varbench/eval/classifier.py), against the val split:
  embedded_fd (Frechet distance), class_accuracy (fraction of samples classified as their asked class),
  classifier_score (the Inception-Score formula on the classifier's logits), embedded_kd / embedded_precision /
  embedded_recall (torch-fidelity with the classifier registered as a feature extractor), and the classifier's own
  val accuracy. None of these is an FID: the feature extractor is not Inception.
- adm: the papers' protocol on ImageNet: FID against the mu/sigma of ADM's reference batch, precision / recall
  against its 10k reference images (the FID Inception, varbench/eval/inception.py; no Inception Score: the offline
  weights have no classification layer).
`task.inception_fid=true` adds Inception fid / kid / precision / recall against the val split to the project suite
(natural images such as CIFAR-10). Every suite also records its floor and tokenizer rows (varbench/eval/
references.py): `<fd metric>_floor` (real images of another split) and `<fd metric>_recon` (the tokenizer's
reconstructions of them), `task.floor_images` of them (null: as many as the samples; 0: none). Those features and
the memorisation check's training-image features are the same for every run of a data set and tokenizer: they are
computed once into `task.feature_cache` (varbench/eval/feature_cache.py) and shared by a grid's cells.

The classifier: `task.classifier` when set, else trained on the run's train split and cached at
`task.classifier_cache/<fingerprint>.safetensors` (default `${results_dir}/classifiers/`); the fingerprint covers
the data set's describe() line and the training settings, so another data set or setting trains another one.

Both suites also record `val_nll` and `train_nll` (varbench/eval/likelihood.py): the model's teacher-forced
cross-entropy on `task.val_nll_images` held-out images of the val split and on `task.train_nll_images` images of the
train split (0: skipped); their difference is the generalisation gap.

Memorisation (varbench/eval/memorisation.py): `nn_distance_ratio`, the median distance of the samples to their
nearest training image over that of the val images, against `task.memorisation_train_images` training images (a
fixed subset; 0: skipped), in the classifier's feature space and, with `task.inception_fid`, in Inception's (~1: new
images; << 1: copies). Its records name the feature_extractor and carry the medians and `copy_fraction`.

Guidance: `task.cfg=<scale>` samples with that guidance instead of the preset's (a trained run at another guidance,
without retraining); the scale is part of the samples' key and every record's `cfg` field (the preset's when unset).

The model, its tokenizer and the config groups they and the data set come from are the run's (varbench/runs.py):
`python run.py task=evaluate run_dir=<the training run>` needs nothing else. Samples live under
`task.out_dir/<key>`, the key a hash of everything they depend on (varbench/eval/sampling.py): a rerun resumes, a
retrained model never reuses them.

Every metric is one JSON line in `${results_dir}/evaluate.jsonl` with fields feature_extractor, reference,
num_samples, preset, cfg (the guidance scale sampled with), sampler, suite, samples (the npz), checkpoint and
tokenizer_checkpoint with their sha256.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from varbench.build import build_dataset, image_size, resolve_device
from varbench.eval import classifier as clf
from varbench.eval.inception import check_weights_path
from varbench.eval.likelihood import teacher_forced_nll
from varbench.eval.memorisation import memorisation_rows
from varbench.eval.metrics import feature_statistics, fidelity_metrics, frechet_distance, load_adm_npz
from varbench.eval.references import floor_and_recon_rows, floor_features, inception_rows
from varbench.eval.sampling import is_raster, resolve_preset, sample_for_eval, with_guidance
from varbench.runs import command_line_keys, load_for_task
from varbench.tokenizers.fast_decode import resolve_decode_mode
from varbench.training.loop import autocast
from varbench.utils.auto import resolve_auto
from varbench.utils.hashing import file_sha256
from varbench.utils.records import record

DEFAULT_PER_CLASS = {"adm": 50, "project": 20}


class UInt8Images(Dataset):
    """Images of a (image in [-1, 1], label) data set as torch-fidelity wants them: uint8 (3, H, W)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0].add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class PartSeconds(dict):
    """Wall seconds per part of an evaluation, recorded as `evaluate_seconds` (session 12 saw the GPU stand idle
    for most of a study cell's evaluation: these say which part holds it)."""

    @contextmanager
    def __call__(self, part: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[part] = self.get(part, 0.0) + time.perf_counter() - start


def check_config(cfg: DictConfig) -> None:
    """The files an evaluation reads only after drawing every sample, checked before the first one is drawn: the
    reference batch (`task.adm_reference`, which task.suite=adm needs), the project classifier (`task.classifier`),
    the Inception weights (`task.inception_weights`) and the data's root (`data.root`, of an image-folder data set:
    the NLL, floor and classifier rows read it)."""
    t = cfg.task
    if t.get("adm_reference") and not Path(t.adm_reference).is_file():
        raise FileNotFoundError(f"task.adm_reference={t.adm_reference}: no such file (ADM's reference batch, e.g. "
                                f"VIRTUAL_imagenet256_labeled.npz; nothing is downloaded)")
    if t.get("suite") == "adm" and not t.get("adm_reference"):
        raise ValueError("task.suite=adm needs task.adm_reference=<VIRTUAL_imagenet256_labeled.npz> (ADM's reference "
                         "batch, the statistics the suite compares against)")
    if t.get("classifier") and not Path(t.classifier).is_file():
        raise FileNotFoundError(f"task.classifier={t.classifier}: no such file (a project classifier; null trains "
                                f"one)")
    if t.get("adm_reference") or t.get("inception_fid") or t.get("suite") == "adm":
        check_weights_path(t.get("inception_weights"))
    root = None if OmegaConf.is_missing(cfg.data, "root") else cfg.data.get("root")
    if root and not cfg.data.get("download") and not Path(root).is_dir():
        raise FileNotFoundError(f"data.root={root}: no such folder")


def resolve_suite(cfg: DictConfig) -> str:
    """"adm" or "project"; auto picks adm when a reference batch is configured and refuses to guess for 1000 classes."""
    suite = cfg.task.suite
    if suite not in ("auto", "adm", "project"):
        raise ValueError(f"task.suite must be auto, adm or project, got {suite!r}")
    if suite != "auto":
        return suite
    if cfg.task.get("adm_reference"):
        return "adm"
    if cfg.data.num_classes == 1000:
        raise ValueError("a 1000-class run is evaluated as the papers do: set task.adm_reference=<VIRTUAL_imagenet256_"
                         "labeled.npz>, or ask for task.suite=project explicitly")
    return "project"


def project_classifier(cfg: DictConfig, device, train, val) -> tuple[clf.Classifier, dict, Path]:
    """The configured classifier, or the cached / freshly trained one of the run's data set (`train`, `val`)."""
    t = cfg.task
    if t.get("classifier"):
        model, meta = clf.load_classifier(t.classifier, device)
        return model, meta, Path(t.classifier)
    return clf.cached_classifier(train, val, t.classifier_cache, device, num_classes=cfg.data.num_classes,
                                 image_size=image_size(cfg), steps=t.classifier_steps,
                                 batch_size=t.classifier_batch_size, width=t.classifier_width, seed=t.classifier_seed)


def project_metrics(cfg: DictConfig, npz, device, tokenizer,
                    seconds: PartSeconds) -> list[tuple[str, float, str, dict]]:
    """(metric, value, unit, fields) of the project suite: the project classifier's rows (`classifier_rows`) unless
    task.classifier_metrics is false, and Inception's rows (against the val split, with their floor, tokenizer and
    memorisation rows) when task.inception_fid; each part's time into `seconds`."""
    t = cfg.task
    if not (t.classifier_metrics or t.inception_fid):
        raise ValueError("task.classifier_metrics=false needs task.inception_fid=true: the project suite would "
                         "measure nothing")
    val, train = build_dataset(cfg, "val"), build_dataset(cfg, "train")
    # the classifier first: a classifier below its accuracy threshold stops the task before Inception's long pass
    rows = classifier_rows(cfg, npz, device, tokenizer, seconds, val, train) if t.classifier_metrics else []
    if t.inception_fid:
        with seconds("inception"):
            rows = inception_rows(npz, UInt8Images(val), train, tokenizer, weights=t.inception_weights, device=device,
                                  batch_size=t.fidelity_batch_size, floor_images=t.floor_images, train_set=train,
                                  train_images=t.memorisation_train_images, cache_dir=t.feature_cache) + rows
    return rows


def classifier_rows(cfg: DictConfig, npz, device, tokenizer, seconds: PartSeconds, val,
                    train) -> list[tuple[str, float, str, dict]]:
    """The project classifier's rows: FD, class accuracy, score, KD / precision / recall of the samples against the
    val split, its memorisation row and its floor / tokenizer rows (train images vs val)."""
    with seconds("classifier"):
        model, meta, path = project_classifier(cfg, device, train, val)
        f_val, logits_val, labels_val = clf.classify_dataset(model, val)
    val_accuracy = clf.accuracy(logits_val, labels_val)
    if val_accuracy < cfg.task.classifier_min_val_accuracy:  # its class accuracy / features would mean little
        raise ValueError(f"the project classifier {path} reaches only {val_accuracy:.3f} val accuracy (< task."
                         f"classifier_min_val_accuracy={cfg.task.classifier_min_val_accuracy}): train it longer "
                         f"(task.classifier_steps), lower the threshold knowingly, or measure with Inception alone "
                         f"(task.classifier_metrics=false task.inception_fid=true)")
    images_NHW3, labels_N = load_adm_npz(npz)
    x_N3HW = torch.from_numpy(np.array(images_NHW3)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    with seconds("classifier"):
        f_sample, logits_sample = clf.classify(model, x_N3HW)
    extractor = f"{clf.FIDELITY_NAME}/{path.stem}"
    fields = {"feature_extractor": extractor, "feature_extractor_sha256": file_sha256(path),
              "reference": val.describe(), "classifier": str(path)}
    with seconds("kd_precision_recall"):
        tf = fidelity_metrics(npz, UInt8Images(val), feature_extractor=clf.register_with_fidelity(), weights_path=path,
                              device=device, isc=True, kid=True, prc=True, isc_splits=1, save_cpu_ram=True)
    t = cfg.task
    with seconds("memorisation"):
        rows = memorisation_rows(f_sample, f_val, train, lambda x: clf.classify(model, x)[0],
                                 t.memorisation_train_images, t.fidelity_batch_size, device, fields, t.feature_cache)
    if t.floor_images != 0:
        with seconds("floor_recon"):
            real, recon = floor_features(train, tokenizer, lambda x: clf.classify(model, x)[0],
                                         t.floor_images or len(images_NHW3), t.batch_size, device,
                                         t.feature_cache, f"{extractor} {fields['feature_extractor_sha256']}")
        rows += floor_and_recon_rows("embedded_fd", real, recon, *feature_statistics(f_val),
                                     {**fields, "floor_split": train.describe()})
    return rows + [
        ("embedded_fd", frechet_distance(*feature_statistics(f_sample), *feature_statistics(f_val)), "fd", fields),
        ("class_accuracy", clf.accuracy(logits_sample, labels_N), "fraction", fields),
        ("classifier_val_accuracy", val_accuracy, "fraction",
         {**fields, "num_samples": len(val), "trained": meta.get("hparams")}),
        ("classifier_score", tf["classifier_score_mean"], "score", {**fields, "splits": 1}),
        ("embedded_kd", tf["kernel_distance_mean"], "kd", {**fields, "std": tf["kernel_distance_std"]}),
        ("embedded_precision", tf["precision"], "fraction", {**fields, "neighborhood": 3}),
        ("embedded_recall", tf["recall"], "fraction", {**fields, "neighborhood": 3}),
    ]


def adm_metrics(cfg: DictConfig, npz, device, tokenizer, seconds: PartSeconds) -> list[tuple[str, float, str, dict]]:
    """(metric, value, unit, fields) of the ADM / ImageNet suite: Inception FID against the reference batch's
    mu / sigma, precision / recall against its images, and the floor / tokenizer rows of val images."""
    t = cfg.task
    if not t.get("adm_reference"):
        raise ValueError("the adm suite needs task.adm_reference (a local file; nothing is downloaded)")
    floor_set = build_dataset(cfg, "val") if t.floor_images != 0 else None
    with seconds("inception"):
        return inception_rows(npz, str(t.adm_reference), floor_set, tokenizer, weights=t.inception_weights,
                              device=device, batch_size=t.fidelity_batch_size, floor_images=t.floor_images,
                              cache_dir=t.feature_cache)


def main(cfg: DictConfig) -> dict:
    """Sample the run's evaluation set, compute its suite's metrics and append them to results_dir/evaluate.jsonl;
    return them."""
    device = resolve_device(cfg.device)
    run = load_for_task(cfg, device)  # the run's model, tokenizer and config (its data set, its precision)
    run.refuse_random_tokenizer(cfg, command_line_keys())
    cfg, tokenizer, model = run.config, run.tokenizer, run.model
    t, suite = cfg.task, resolve_suite(cfg)
    num_classes = t.num_classes or model.num_classes
    per_class = t.per_class or DEFAULT_PER_CLASS[suite]
    graphs = resolve_auto(t.cuda_graphs, "task.cuda_graphs", device)
    decode_mode = resolve_decode_mode(t.decode_mode, "task.decode_mode", device)  # the recon rows decode in it too
    run.hold_block_weights(t.block_weights, t.precision)  # before the sample key hashes the weights in memory
    preset = with_guidance(resolve_preset(t.preset, raster=is_raster(model)), t.get("cfg"))  # task.cfg: another scale
    start = time.perf_counter()
    with autocast(device, t.precision):
        samples = sample_for_eval(model, tokenizer, t.out_dir, num_classes, per_class, t.batch_size, preset, t.seed,
                                  device, sampler=t.sampler, cuda_graphs=graphs, decode_mode=decode_mode,
                                  tag={"checkpoint_sha256": run.checkpoint_sha256,
                                       "tokenizer_sha256": run.tokenizer_sha256, "precision": t.precision,
                                       # other devices draw other random streams, other kernels round otherwise
                                       "device": device.type, "backends": model.backends})
    sample_seconds = time.perf_counter() - start
    seconds = PartSeconds(sample=sample_seconds)
    metrics = (adm_metrics if suite == "adm" else project_metrics)(cfg, samples["npz"], device, tokenizer, seconds)
    for split in ("val", "train"):
        if max_images := t[f"{split}_nll_images"]:
            data = build_dataset(cfg, split)
            with seconds(f"{split}_nll"):
                nll, n = teacher_forced_nll(model, tokenizer, data, device, t.batch_size, max_images, t.precision)
            metrics.append((f"{split}_nll", nll, "nats/token", {
                "num_samples": n, "reference": data.describe(),
                "items": f"{n} of {len(data)}, drawn with seed 0 (varbench.eval.likelihood.scored_items)"}))
    common = {"num_samples": samples["images"], "preset": t.preset, "cfg": preset.cfg, "sampler": t.sampler,
              "cuda_graphs": graphs, "decode_mode": decode_mode, "suite": suite,
              "samples": samples["npz"], **run.identity()}
    out = Path(cfg.results_dir) / "evaluate.jsonl"
    for name, value, unit, fields in metrics:
        record(out, name, value, unit, config=cfg, device=device, **{**common, **fields})  # fields win
    parts_s = {part: round(s, 3) for part, s in seconds.items()}
    record(out, "evaluate_seconds", time.perf_counter() - start, "s", config=cfg, device=device, parts_s=parts_s,
           **common)
    return {"suite": suite, "samples": samples, "sample_seconds": sample_seconds, "cfg": preset.cfg,
            "parts_s": parts_s, **{name: value for name, value, _, _ in metrics}}
