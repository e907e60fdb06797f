"""Results are data: every measurement is one JSON line with what was measured, the resolved config, the git
commit, the device, software versions, the host's load and the date. Tables and figures are generated from these
lines only."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from varbench.utils.hashing import ID_HEX, file_id
from varbench.utils.paths import REPO

log = logging.getLogger(__name__)


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


ALLOCATOR_SETTINGS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the old and the new name of one setting


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
    for name in ALLOCATOR_SETTINGS:  # a memory peak (reserved bytes above all) depends on the caching allocator's
        if os.environ.get(name):      # settings, e.g. expandable_segments:True
            out[name] = os.environ[name]
    return out


def host_load() -> dict:
    """The host's load when a record is written: 1-minute load average over its CPU count. A timing taken beside other
    work (a loadavg near or above the CPUs) can be told from one taken alone; small-batch GPU timings depend on it."""
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def tokenizer_id(config: dict | None, fields: dict) -> str | None:
    """Which tokenizer weights a record's numbers came from: the first 12 hex digits of its `tokenizer_sha256` field
    (the weights the run loaded, as its spec names them), else of the sha256 of the file `config.tokenizer.checkpoint`
    names now (varbench.utils.hashing.file_id); None when neither names weights (a config without a tokenizer)."""
    sha = fields.get("tokenizer_sha256")
    if isinstance(sha, str):
        return sha[:ID_HEX]
    checkpoint = ((config or {}).get("tokenizer") or {}).get("checkpoint")
    return file_id(checkpoint) if isinstance(checkpoint, str) and Path(checkpoint).is_file() else None


def make_record(metric: str, value, unit: str, config=None, device=None, **fields) -> dict:
    """One measurement as a record (not written): what `record` appends. Arguments as for `record`; a config with a
    tokenizer adds `tokenizer_id` (`tokenizer_id`) unless the caller gives one."""
    if config is not None and not isinstance(config, dict):
        from omegaconf import OmegaConf
        config = OmegaConf.to_container(config, resolve=True)
    if "tokenizer_id" not in fields and isinstance(config, dict) and "tokenizer" in config:
        fields["tokenizer_id"] = tokenizer_id(config, fields)
    return {"metric": metric, "value": value, "unit": unit, **fields, "config": config, "commit": git_commit(),
            "device": device_name(device), "versions": versions(), "host": host_load(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def record(path, metric: str, value, unit: str, config=None, device=None, **fields) -> dict:
    """Append one measurement to a JSON-lines file and return it.

    Args:
        path: the .jsonl file (parents are created).
        metric (str): what was measured, e.g. "train_loss", "sample_latency_ms".
        value: the number (or a small list/dict of numbers); NaN and infinities are written as null.
        unit (str): its unit ("nats", "ms", "img/s", "bytes", ...).
        config: the resolved config (a dict or an OmegaConf node) the number came from.
        device: the torch device it was measured on (default: CUDA if present, else CPU).
        **fields: anything else that identifies the measurement (cell id, step, backend that ran, ...).
    """
    line = make_record(metric, value, unit, config=config, device=device, **fields)
    append_records(path, [line])
    return line


def to_json(rec: dict) -> str:
    """A record as one line of strict JSON: NaN and infinities become null (bare `NaN` is not JSON), other
    non-JSON values their str()."""
    return json.dumps(finite(rec), default=str, allow_nan=False)


def finite(obj):
    """`obj` with every non-finite float replaced by None (recursively through dicts, lists and tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # a numpy / torch scalar
        return finite(obj.item())
    return obj


def append_records(path, lines: list[dict]) -> None:
    """Append records to a JSON-lines file, each on a line of its own: when the file does not end in a newline (a
    line cut short by a full disk or a kill) the first one starts on a fresh line, so it is not glued to the cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(to_json(line) + "\n" for line in lines)
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.seek(0, os.SEEK_END)
        f.write(text.encode())


def replace_records(path, lines: list[dict], same) -> int:
    """Write `lines` into a JSON-lines file in place of the records `same(record)` says they replace (a re-run of
    an idempotent producer, e.g. task=costs); every other line, damaged ones included, is kept as it was. Atomic:
    a reader sees the old file or the new one. Returns how many old records were replaced."""
    path = Path(path)
    kept, replaced = [], 0
    if path.is_file():
        for text in path.read_text().splitlines():
            try:
                old = json.loads(text) if text.strip() else None
            except json.JSONDecodeError:
                old = None
            if isinstance(old, dict) and same(old):
                replaced += 1
            elif text.strip():
                kept.append(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(t + "\n" for t in kept) + "".join(to_json(line) + "\n" for line in lines))
    tmp.replace(path)
    return replaced


@dataclass
class Damaged:
    """A line of a records file that is not a JSON object (cut short by a full disk or a kill, or hand-edited)."""
    file: str
    line: int  # 1-based
    error: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.error}"


def read_jsonl(path) -> tuple[list[dict], list[Damaged]]:
    """The records of one .jsonl file and its damaged lines (skipped, each named by file and line number)."""
    good, bad = [], []
    for number, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as err:
            bad.append(Damaged(str(path), number, f"not JSON ({err.msg} at column {err.colno})"))
            continue
        if not isinstance(rec, dict) or "metric" not in rec:
            bad.append(Damaged(str(path), number, "not a record (a JSON object with a metric)"))
            continue
        good.append(rec)
    return good, bad


def jsonl_files(path) -> list[Path]:
    """A .jsonl file, or every .jsonl file under a folder (sorted)."""
    path = Path(path)
    return sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]


def read_records(path) -> list[dict]:
    """Every record of a .jsonl file or of every .jsonl file under a folder; a damaged line is skipped with a
    warning naming its file and line (`read_jsonl` returns them)."""
    out = []
    for f in jsonl_files(path):
        good, bad = read_jsonl(f)
        for damaged in bad:
            log.warning("skipped a damaged record line: %s", damaged)
        out += good
    return out
