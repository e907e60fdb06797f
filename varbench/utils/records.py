"""Results are data: every measurement is one JSON line with what was measured, the resolved config, the git
commit, the device, software versions, the host's load and the date. Tables and figures are generated from these
lines only."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit the code came from: $VARBENCH_COMMIT when set (a copied tree on the lent GPU machine, whose own
    .git may be stale: benchmarks/gpu_setup.sh exports it from the `.commit` stamp written before the copy), else
    git's HEAD with '+dirty' when tracked files differ from it, else the `.commit` stamp, else 'unknown'."""
    if os.environ.get("VARBENCH_COMMIT"):
        return os.environ["VARBENCH_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        stamp = REPO / ".commit"
        return stamp.read_text().strip() + "+copy" if stamp.is_file() else "unknown"


def device_name(device=None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    """Versions of the packages a number can depend on (absent ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda or "none"}
    for pkg in ("triton", "mamba-ssm", "causal-conv1d", "flash-linear-attention", "flash-attn", "xformers",
                "torch-fidelity", "hydra-core", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if "triton" in out:  # how its kernels were tuned (varbench/utils/autotune.py)
        from varbench.utils.autotune import autotune_mode
        out["triton_autotune"] = autotune_mode()
    return out


def host_load() -> dict:
    """The host's load when a record is written: 1-minute load average over its CPU count. A timing taken beside other
    work (a loadavg near or above the CPUs) can be told from one taken alone; small-batch GPU timings depend on it."""
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def record(path, metric: str, value, unit: str, config=None, device=None, **fields) -> dict:
    """Append one measurement to a JSON-lines file and return it.

    Args:
        path: the .jsonl file (parents are created).
        metric (str): what was measured, e.g. "train_loss", "sample_latency_ms".
        value: the number (or a small list/dict of numbers).
        unit (str): its unit ("nats", "ms", "img/s", "bytes", ...).
        config: the resolved config (a dict or an OmegaConf node) the number came from.
        device: the torch device it was measured on (default: CUDA if present, else CPU).
        **fields: anything else that identifies the measurement (cell id, step, backend that ran, ...).
    """
    if config is not None and not isinstance(config, dict):
        from omegaconf import OmegaConf
        config = OmegaConf.to_container(config, resolve=True)
    line = {"metric": metric, "value": value, "unit": unit, **fields, "config": config, "commit": git_commit(),
            "device": device_name(device), "versions": versions(), "host": host_load(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    return line


def read_records(path) -> list[dict]:
    """Every record of a .jsonl file or of every .jsonl file under a folder."""
    path = Path(path)
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
