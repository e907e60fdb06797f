"""The offline FID Inception on real images: the real-vs-real floor, the tokenizer's reconstruction FID, and the
effect of float16-stored weights, on the CIFAR-10 JPEG archive of ../shared/data (not pixel-identical to the official
CIFAR-10 binaries: numbers comparable with each other only).

    python benchmarks/inception_check.py OUT.jsonl --weights W.safetensors [--compare-weights W16.safetensors]
        [--per-class 100] [--device cuda] [-- tokenizer=var tokenizer.checkpoint=... data.image_size=...]

Records (one JSON line each, fields: weights sha256, images, data): `fid_floor` / `kid_floor` (N test images vs N
train images through the same extractor), `fid_recon` (the tokenizer's reconstructions of those N train images vs the
test images) when Hydra overrides name a tokenizer checkpoint, and with --compare-weights the same floor with the
second weights plus `inception_weights_fid_diff` (|FID(W) - FID(W2)|) and `inception_weights_feature_rel_diff`
(max over images of |f(W) - f(W2)| / |f(W)|). On the GPU machine, where 96 MB of float32 weights cannot travel,
carry the float16 file (`python -m varbench.eval.inception setup --dtype float16`, 48 MB): its FID difference
against float32 is measured here on the CPU first.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varbench.data.batches import collate  # noqa: E402
from varbench.eval import metrics as m  # noqa: E402
from varbench.eval.likelihood import scored_items  # noqa: E402
from varbench.eval.references import real_and_reconstructed_features  # noqa: E402
from varbench.utils.records import record  # noqa: E402

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpg.tar.gz"
DATA_NOTE = "CIFAR-10 JPEG re-encoding (../shared/data/README.md): not comparable with published CIFAR-10 FIDs"


def unpack(archive: Path, per_class: int, into: Path) -> Path:
    """The first `per_class` images per class of train and test as root/{train,val}/<class>/ (val = test)."""
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda x: x.name):
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-3] not in ("train", "test"):
                continue
            key = (parts[-3], parts[-2])
            if taken.get(key, 0) >= per_class:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = into / ("val" if key[0] == "test" else "train") / key[1] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return into


def compose(root: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from varbench.registry import CONFIG_ROOT
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[
            "data=folder", f"data.root={root}", "data.num_classes=10", f"run_dir={root}/run", "cell_id=inception_check",
            *overrides])


def features_of(dataset, extractor, device, batch_size: int) -> torch.Tensor:
    items = scored_items(len(dataset), len(dataset))
    return torch.cat([m.inception_batch_features(extractor, collate(dataset, items[i:i + batch_size])[0].to(device))
                      .cpu() for i in range(0, len(items), batch_size)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="JSON-lines file of the records")
    parser.add_argument("--weights", help="mapped Inception .safetensors (default: the cache's, set up on first use)")
    parser.add_argument("--compare-weights", help="a second mapped file (e.g. float16-stored) to compare with")
    parser.add_argument("--per-class", type=int, default=100, help="images per class and split")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--archive", default=str(ARCHIVE))
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # argparse cannot take a trailing positional list here
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]  # Hydra overrides after --: the tokenizer of fid_recon
    device = torch.device(args.device)
    from varbench.build import build_dataset, build_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(unpack(Path(args.archive), args.per_class, Path(tmp)), args.overrides)
        val, train = build_dataset(cfg, "val").set_deterministic(), build_dataset(cfg, "train").set_deterministic()
        tokenizer = build_tokenizer(cfg).to(device).eval() if cfg.tokenizer.get("checkpoint") else None
        common = {"num_samples": len(val), "data": DATA_NOTE, "image_size": int(val[0][0].shape[-1]),
                  "per_class": args.per_class}
        runs = {}
        for weights in [args.weights, args.compare_weights][:1 + bool(args.compare_weights)]:
            start = time.perf_counter()
            extractor, sha256 = m.inception_extractor(weights, device)
            fields = {**m.inception_record_fields(sha256), **common, "weights": str(weights)}
            ref = features_of(val, extractor, device, args.batch_size)
            if tokenizer is not None and weights == args.weights:
                real, recon = real_and_reconstructed_features(train, tokenizer,
                                                              lambda x: m.inception_batch_features(extractor, x),
                                                              len(train), args.batch_size, device)
                out = m.distribution_metrics(recon, ref, device=device)
                record(args.out, "fid_recon", out["fd"], "fd", config=cfg, device=device,
                       **fields, tokenizer=str(cfg.tokenizer.checkpoint))
            else:
                real = features_of(train, extractor, device, args.batch_size)
            floor = m.distribution_metrics(real, ref, device=device)
            record(args.out, "fid_floor", floor["fd"], "fd", config=cfg, device=device, **fields,
                   seconds=time.perf_counter() - start)
            record(args.out, "kid_floor", floor["kd"], "kd", config=cfg, device=device, **fields, std=floor["kd_std"])
            runs[sha256] = (floor["fd"], torch.cat([ref, real]))
        if len(runs) == 2:
            (fid_a, f_a), (fid_b, f_b) = runs.values()
            rel = ((f_a - f_b).norm(dim=1) / f_a.norm(dim=1)).max().item()
            pair = {**common, "weights": [args.weights, args.compare_weights], "sha256": list(runs)}
            record(args.out, "inception_weights_fid_diff", abs(fid_a - fid_b), "fd", device=device, **pair,
                   fids=[fid_a, fid_b])
            record(args.out, "inception_weights_feature_rel_diff", rel, "fraction", device=device, **pair)
            print(f"FID {fid_a:.4f} vs {fid_b:.4f} (diff {abs(fid_a - fid_b):.2e}); feature rel diff max {rel:.2e}")


if __name__ == "__main__":
    main()
