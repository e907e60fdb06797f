"""Safe reading and strict loading of weight files: safetensors, or torch pickles restricted to tensors.

Nothing here unpickles arbitrary objects: `.pth` files go through `torch.load(weights_only=True)`, which refuses
any pickle holding more than tensors and plain containers, and never runs its code.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """A flat str -> Tensor mapping from a mapping, a `.safetensors` file or a `.pth`/`.pt` file (onto the CPU)."""
    if isinstance(source, Mapping):
        sd, origin = source, "state dict"
    else:
        path, origin = Path(source), str(source)
        if not path.is_file():
            raise ValueError(f"checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
                cause = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(f"refusing to load {path}: it is not a plain tensor checkpoint (torch.load with "
                                 f"weights_only=True failed, e.g. it pickles arbitrary Python objects). "
                                 f"Cause: {cause}") from e
    check_flat_tensor_mapping(sd, origin)
    return dict(sd)


def check_flat_tensor_mapping(sd, origin: str) -> None:
    """Raise ValueError unless `sd` is a mapping of str -> Tensor (no nesting, no other objects)."""
    if not isinstance(sd, Mapping):
        raise ValueError(f"{origin}: expected a flat mapping of str -> Tensor, got {type(sd).__name__}")
    bad = [(k, type(v).__name__) for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        nested = any(isinstance(sd[k], Mapping) for k, _ in bad if isinstance(k, str))
        hint = " (a nested checkpoint? pass its state dict, e.g. ckpt['model'])" if nested else ""
        raise ValueError(f"{origin}: expected a flat mapping of str -> Tensor; offending entries: {bad[:10]}{hint}")


def compare_keys(model_sd: Mapping, sd: Mapping) -> list[str]:
    """Human-readable problems between a model's state dict and a checkpoint (empty when they match)."""
    missing = sorted(set(model_sd) - set(sd))
    unexpected = sorted(set(sd) - set(model_sd))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
              for k in model_sd if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {shapes}")
    return problems


def load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True), converting floating tensors to the module's dtypes, with an error that
    names every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    problems = compare_keys(own, sd)
    if problems:
        raise ValueError(f"{what} does not match the model: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}, strict=True)


TEMP_MARK = ".tmp"  # save_atomic's temporary files: `.<name>.tmp<pid>` beside their target


def save_atomic(path, *, tensors: Mapping[str, torch.Tensor] | None = None, obj=None,
                metadata: dict[str, str] | None = None) -> Path:
    """Write a file so that a reader (or a run killed mid-write) never sees half of it: write to a temporary
    file in the same folder, fsync, then rename over the target. `tensors` go to safetensors (weights);
    `obj` goes through torch.save and must be loadable with weights_only=True (optimizer/scheduler/RNG state);
    `metadata` goes into the safetensors header. The file gets the mode the umask allows (safetensors alone writes
    0600); on any failure the temporary file is removed, and a full disk raises OSError(ENOSPC) naming the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        _write(tmp, tensors, obj, metadata)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and _is_disk_full(e, path.parent):
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path} (the partial file is "
                                        f"removed; {_free_bytes(path.parent)} bytes free there now)") from e
        raise
    return path


def _write(tmp: Path, tensors, obj, metadata) -> None:
    if tensors is not None:
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    else:
        with open(tmp, "wb") as f:  # through a Python file: a failed write leaves its OSError (with errno) behind
            torch.save(obj, f)  # torch's RuntimeError; writing to a path, torch says only "file write failed"
            f.flush()
            os.fsync(f.fileno())


def _is_disk_full(e: BaseException, folder: Path) -> bool:
    """Whether `e` or an error behind it (torch turns the OSError of a Python file's write into "unexpected pos")
    reports a full disk or quota; torch's own writer says only "file write failed": then the disk decides."""
    while e is not None:
        text = str(e)
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text \
                or "os error 28" in text or "file write failed" in text and _free_bytes(folder) == 0:
            return True
        e = e.__cause__ or e.__context__
    return False


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temporary files that save_atomic left under `folder` (recursively) in a process that no longer
    runs (killed mid-write, or a full disk before this fix): they can be as large as a model. Returns them."""
    removed, folder = [], Path(folder)
    for tmp in folder.rglob(f".*{TEMP_MARK}*") if folder.is_dir() else ():
        pid = tmp.name.rpartition(TEMP_MARK)[2]
        if tmp.is_file() and pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_object(path):
    """torch.load of a training-state file, restricted to tensors and plain containers."""
    return torch.load(path, map_location="cpu", weights_only=True)
