"""Decode throughput of the image-folder training path against what the GPU's training step consumes (issue 18 item 3).

Reads VAR's global batch (768 images, 256 px) through the training loader (`varbench.data.batches.batch_loader`:
ImageFolderData with VAR's train transform, LANCZOS resize to 288 then a random crop, whole batches built in
DataLoader workers) and appends one JSON line to OUT: images/s with the given workers, images/s per worker, images
per CPU second (workers included), and the latest VAR-d16 256-px `train_images_per_s` record under results/gpu/h200/
(what one H200 consumes), with the workers (at the measured wall rate) and the fully busy cores (at the CPU-time
rate) per GPU that keep up with it. On a shared host the wall rate is a floor and the CPU-time rate the better guide.

Images: `--images ROOT` (an ImageNet-style folder), or by default CIFAR-10 JPEGs from ../shared/data upscaled to
`--source-size` (ImageNet's typical 500x375) and re-encoded at JPEG quality 90, in a temporary folder. Upscaled
CIFAR images are smoother than photographs, so their JPEGs decode somewhat faster: the record says which was used.

    python benchmarks/data_throughput.py results/cpu_data/data_throughput.jsonl --workers 2 --batches 3
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from varbench.data.batches import GlobalBatches, batch_loader  # noqa: E402
from varbench.data.folders import ImageFolderData  # noqa: E402
from varbench.data.loading import LoaderOptions  # noqa: E402
from varbench.utils.records import read_records, record  # noqa: E402

CIFAR = REPO.parent / "shared" / "data" / "cifar10_jpg.tar.gz"
GPU_RECORDS = REPO / "results" / "gpu" / "h200"
VAR_BATCH, VAR_SIZE = 768, 256


def upscaled_cifar(out: Path, count: int, size: tuple[int, int], quality: int = 90) -> Path:
    """`count` CIFAR-10 training JPEGs (the first of each class in turn) resized to `size` and saved as JPEGs in
    class folders under out/train; returns out."""
    per_class: dict[str, int] = {}
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 4 or parts[1] != "train":
                continue
            label = parts[2]
            if per_class.get(label, 0) >= -(-count // 10):
                continue
            img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            folder = out / "train" / label
            folder.mkdir(parents=True, exist_ok=True)
            img.resize(size, Image.BICUBIC).save(folder / parts[3], quality=quality)
            per_class[label] = per_class.get(label, 0) + 1
            if sum(per_class.values()) >= count:
                break
    return out


def latest_gpu_step(folder: Path = GPU_RECORDS) -> dict:
    """The latest VAR-d16 (attention, no intra) 256-px train_images_per_s record under `folder`."""
    found = [r for r in read_records(folder) if r["metric"] == "train_images_per_s" and r.get("mixer") == "attention"
             and r.get("intra") == "none" and r.get("depth") == 16 and r.get("resolution") == VAR_SIZE]
    if not found:
        raise SystemExit(f"no VAR-d16 train_images_per_s record under {folder}")
    rec = max(found, key=lambda r: r["date"])
    return {"images_per_s": rec["value"], "batch": rec["batch"], "compiled": rec.get("compiled"),
            "param_dtype": rec.get("param_dtype"), "date": rec["date"], "commit": rec["commit"],
            "machine": rec.get("machine"), "device": rec["device"]}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its reaped children (the loader's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_rate(root: Path, workers: int, prefetch: int, batches: int, batch: int) -> dict:
    """Images/s of `batches` training batches read through `batch_loader`, from the loader's creation (worker
    start-up included) to the last batch, and the CPU seconds spent per image (workers included: the loader joins
    them when it is exhausted), which a busy host inflates far less than the wall time."""
    data = ImageFolderData(root, "train", image_size=VAR_SIZE, index_dir=None)
    order = GlobalBatches(len(data), batch, seed=0)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    shapes = [tuple(x.shape) for x, _ in batch_loader(data, order, 0, batches, LoaderOptions(workers, prefetch))]
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    assert shapes == [(batch, 3, VAR_SIZE, VAR_SIZE)] * batches, shapes
    return {"images_per_s": batches * batch / seconds, "seconds": seconds, "cpu_s_per_image": cpu / (batches * batch),
            "distinct_images": len(data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .jsonl file the record is appended to")
    parser.add_argument("--images", type=Path, help="an ImageNet-style folder (default: upscaled CIFAR-10 JPEGs)")
    parser.add_argument("--source-size", default="500x375", help="size of the upscaled CIFAR JPEGs, WxH")
    parser.add_argument("--distinct", type=int, default=VAR_BATCH, help="distinct images to generate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch", type=int, default=VAR_BATCH)
    args = parser.parse_args()
    gpu = latest_gpu_step()
    with tempfile.TemporaryDirectory() as tmp:
        if args.images is None:
            w, h = (int(v) for v in args.source_size.split("x"))
            root = upscaled_cifar(Path(tmp), args.distinct, (w, h))
            source = f"CIFAR-10 JPEGs (../shared/data) upscaled bicubic to {w}x{h}, JPEG quality 90"
        else:
            root, source = args.images, str(args.images)
        rate = decode_rate(root, args.workers, args.prefetch, args.batches, args.batch)
    per_worker, per_core = rate["images_per_s"] / max(args.workers, 1), 1 / rate["cpu_s_per_image"]
    rec = record(args.out, "data_decode_images_per_s", rate["images_per_s"], "img/s", config=vars(args),
                 device="cpu", workers=args.workers, prefetch_factor=args.prefetch, batch=args.batch,
                 image_size=VAR_SIZE, batches=args.batches, seconds=rate["seconds"],
                 distinct_images=rate["distinct_images"], source=source, images_per_s_per_worker=per_worker,
                 cpu_s_per_image=rate["cpu_s_per_image"], images_per_cpu_s=per_core, gpu_step=gpu,
                 ratio_to_gpu_step=rate["images_per_s"] / gpu["images_per_s"],
                 workers_per_gpu_needed=gpu["images_per_s"] / per_worker,
                 busy_cores_per_gpu_needed=gpu["images_per_s"] / per_core,
                 reader="ImageFolderData (VAR train transform) -> batch_loader (whole batches per worker)")
    print(json.dumps({k: rec[k] for k in ("value", "images_per_s_per_worker", "images_per_cpu_s", "ratio_to_gpu_step",
                                          "workers_per_gpu_needed", "busy_cores_per_gpu_needed", "host")},
                     default=str))


if __name__ == "__main__":
    main()
