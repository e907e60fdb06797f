"""The run spec file: the JSON that makes a checkpoint folder self-describing (what to build, with which tokenizer).

Every checkpoint folder `step_<N>/` holds `run_spec.json` beside `model.safetensors`, written before the `latest`
pointer flips, so a folder that `latest` names always has it. Its content (`varbench.runs.describe_run`):

    {"format": 1,
     "config": {"model": ..., "mixer": ..., "intra": ..., "tokenizer": ..., "data": ..., "train": ...},
     "tokenizer": {"path": <file>, "sha256": <hex>}}

`config` holds the resolved config groups the model and its data were built from; `tokenizer` is the identity of
the weights the tokenizer was trained with. A relative `path` is relative to the folder holding the spec (a file
inside the run directory), so a run directory can be moved or copied whole.

This module only reads and writes the file; `varbench.runs` builds models from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SPEC_FILE = "run_spec.json"
FORMAT = 1


def write_json_atomic(path, obj: dict) -> Path:
    """Write `obj` as JSON so that a reader (or a run killed mid-write) never sees half of it: temporary file in the
    same folder, fsync, rename. The temporary file is removed when the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_spec(folder, spec: dict) -> Path:
    """Write `spec` as `folder/run_spec.json` (atomically)."""
    missing = sorted({"format", "config", "tokenizer"} - set(spec))
    if missing:
        raise ValueError(f"a run spec needs the fields {missing} (see varbench.runs.describe_run)")
    return write_json_atomic(Path(folder) / SPEC_FILE, spec)


def read_spec(folder) -> dict | None:
    """The spec of checkpoint `folder`, or None when the folder has none (a checkpoint written before specs)."""
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the run spec is damaged") from e
    if spec.get("format") != FORMAT:
        raise ValueError(f"{path}: run spec format {spec.get('format')!r}, this varbench reads format {FORMAT}")
    return spec


def tokenizer_path(folder, spec: dict) -> Path:
    """The tokenizer file recorded by `spec` (read from `folder`), a relative path resolved against `folder`."""
    path = Path(spec["tokenizer"]["path"])
    return path if path.is_absolute() else Path(folder) / path


def relative_if_inside(file, root, folder) -> str:
    """How a spec in `folder` names `file`: relative to `folder` when `file` lies under `root` (the run directory,
    which moves as a whole), else absolute."""
    file, root = Path(file).resolve(), Path(root).resolve()
    if file.is_relative_to(root):
        return os.path.relpath(file, Path(folder).resolve())
    return str(file)
