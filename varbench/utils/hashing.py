"""What names things by content, in one place: a file's sha256 (checkpoints, tokenizers), the sha256 of weights in
memory (whatever file they came from), and short digests of settings (the names of caches and output folders).

Each digest's input is fixed: a cache, a sample folder or a record made earlier is found again only while the same
content gives the same digest. Two digests keep layouts of their own, fixed by what they are compared with: the
Inception weights' (`varbench.eval.inception.content_digest`, against its pinned values) and a grid cell's id
(`varbench.grid.cell_id`, sha1, against the cells the studies recorded).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch

ID_HEX = 12  # hex digits of a file's sha256 that name it in records (`file_id`)


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def file_id(path) -> str:
    """The first ID_HEX hex digits of a file's sha256: how records name a tokenizer (`tokenizer_id`). Hashed once per
    file and version (path, size, modification time): a file rewritten in place is hashed again."""
    path = Path(path).resolve()
    stat = path.stat()
    return _file_id(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _file_id(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)[:ID_HEX]


def weights_sha256(*modules: torch.nn.Module) -> str:
    """sha256 over the state dicts of `modules` (names, shapes, dtypes and bytes, in key order): what the weights
    are in memory, whatever file they came from."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def settings_digest(settings, digits: int = 16) -> str:
    """The first `digits` hex digits of the sha256 of `settings` as JSON with sorted keys (a value JSON cannot
    write, as its str): the name of what those settings made."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:digits]
