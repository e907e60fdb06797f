"""Checkpoint files: retention never loses the checkpoint to resume from, writes leave no temporary file behind on any
failure, a full disk is named as such with the path, files respect the umask, and no torch.load unpickles code."""

import ast
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varbench.training import checkpoints
from varbench.utils import checkpoint as ckpt_io
from varbench.utils.checkpoint import remove_stale_temps, save_atomic
from varbench.utils.resume import changed_keys, refuse_changed_config

REPO = Path(__file__).resolve().parents[1]
TORCH_DISK_FULL = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                   "file write failed")


def write(ckpt_dir: Path, step: int, keep: int) -> Path:
    return checkpoints.save(ckpt_dir, step, {"w": torch.full((3,), float(step))}, {"step": step}, keep)


def steps_on_disk(ckpt_dir: Path) -> list[int]:
    return sorted(checkpoints.step_of(f) for f in ckpt_dir.glob("step_*"))


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ckpt_io.TEMP_MARK in p.name]


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


# ----- retention -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, -1, 1.5, "2", True])
def test_keep_last_outside_its_range_is_refused_before_anything_is_deleted(tmp_path, keep):
    write(tmp_path, 1, keep=2)
    expected = r"train\.keep_last must be an integer >= 1.*got " + repr(keep).replace(".", r"\.")
    with pytest.raises(ValueError, match=expected):
        write(tmp_path, 2, keep=keep)
    assert steps_on_disk(tmp_path) == [1] and checkpoints.latest(tmp_path).name == "step_00000001"


def test_keep_last_keeps_the_newest(tmp_path):
    for step in range(1, 6):
        write(tmp_path, step, keep=2)
    assert steps_on_disk(tmp_path) == [4, 5] and checkpoints.latest(tmp_path).name == "step_00000005"


def test_partial_folder_at_a_higher_step_never_evicts_the_new_complete_checkpoint(tmp_path):
    """A kill while writing step 10 left its folder half-written; the resumed run (from step 4) writes step 5."""
    write(tmp_path, 4, keep=1)
    partial = tmp_path / "step_00000010"
    partial.mkdir()
    shutil.copy(tmp_path / "step_00000004" / "model.safetensors", partial / "model.safetensors")  # no state.pt
    folder = write(tmp_path, 5, keep=1)
    assert steps_on_disk(tmp_path) == [5] and checkpoints.latest(tmp_path) == folder
    tensors, state = checkpoints.read(folder)
    assert state["step"] == 5 and torch.equal(tensors["w"], torch.full((3,), 5.0))


def test_complete_checkpoints_below_latest_are_kept_before_any_past_it(tmp_path):
    """A complete step_9 that a kill left before `latest` moved to it is no newer than what `latest` names."""
    for step in (2, 3):
        write(tmp_path, step, keep=3)
    shutil.copytree(tmp_path / "step_00000003", tmp_path / "step_00000009")
    write(tmp_path, 4, keep=3)
    assert steps_on_disk(tmp_path) == [2, 3, 4]


def test_a_checkpoint_that_fails_to_write_leaves_no_folder_and_latest_unchanged(tmp_path, monkeypatch):
    write(tmp_path, 1, keep=2)
    monkeypatch.setattr(torch, "save", _torch_save_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match=r"no space left on device while writing \S+step_00000002/state\.pt"):
        write(tmp_path, 2, keep=2)
    monkeypatch.undo()
    assert steps_on_disk(tmp_path) == [1] and checkpoints.latest(tmp_path).name == "step_00000001"
    assert temps(tmp_path) == []


def test_latest_pointing_to_an_incomplete_folder_is_an_error(tmp_path):
    folder = write(tmp_path, 1, keep=1)
    (folder / "state.pt").unlink()
    with pytest.raises(ValueError, match=r"step_00000001.*lacks"):
        checkpoints.latest(tmp_path)


def test_last_good_is_the_newest_checkpoint_before_the_bad_step(tmp_path):
    for step in (1, 2, 3):
        write(tmp_path, step, keep=3)
    assert checkpoints.last_good(tmp_path, 3).name == "step_00000002"
    assert checkpoints.last_good(tmp_path, 1) is None


# ----- atomic writes -------------------------------------------------------------------------------------------------
def _torch_save_then(error):
    def save(obj, f):
        f.write(b"x" * 4096)  # part of a model-sized file is on disk when the disk fills up
        raise error
    return save


def _torch_wrapped_enospc() -> RuntimeError:
    """What torch.save into a Python file raises on a full disk (seen on a full tmpfs): the file's OSError is the
    context of an "unexpected pos" RuntimeError."""
    e = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    e.__context__ = OSError(errno.ENOSPC, "No space left on device")
    return e


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), _torch_wrapped_enospc(),
                                   RuntimeError(TORCH_DISK_FULL)],
                         ids=["oserror", "torch_file_object", "torch_path_writer"])
def test_full_disk_names_the_path_and_leaves_no_temporary_file(tmp_path, monkeypatch, error):
    monkeypatch.setattr(torch, "save", _torch_save_then(error))
    monkeypatch.setattr(ckpt_io, "_free_bytes", lambda folder: 0)
    target = tmp_path / "step_00000001" / "state.pt"
    with pytest.raises(OSError, match="no space left on device") as info:
        save_atomic(target, obj={"step": 1})
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert not target.exists() and temps(tmp_path) == []


def test_full_disk_in_safetensors_names_the_path(tmp_path, monkeypatch):
    import safetensors.torch

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"x" * 4096)
        raise safetensors.SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                          'message: "No space left on device" })')
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError, match=f"no space left on device while writing {target}"):
        save_atomic(target, tensors={"w": torch.ones(2)})
    assert temps(tmp_path) == [] and not target.exists()


def test_any_other_failure_keeps_its_error_and_removes_the_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _torch_save_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_atomic(tmp_path / "state.pt", obj={"step": 1})
    assert temps(tmp_path) == []


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    folder = tmp_path / "step_00000003"
    folder.mkdir()
    stale = folder / f".state.pt{ckpt_io.TEMP_MARK}{dead_pid()}"
    live = folder / f".model.safetensors{ckpt_io.TEMP_MARK}{os.getppid()}"  # a running writer's file stays
    for path in (stale, live):
        path.write_bytes(b"x" * 1024)
    assert remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_written_files_respect_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        paths = [save_atomic(tmp_path / "w.safetensors", tensors={"w": torch.ones(2)}),
                 save_atomic(tmp_path / "s.pt", obj={"step": 1})]
    finally:
        os.umask(previous)
    assert [oct(p.stat().st_mode & 0o777) for p in paths] == [oct(0o666 & ~umask)] * 2


# ----- resume settings -----------------------------------------------------------------------------------------------
def test_changed_keys_are_named_with_both_values_and_the_allow_list_is_honoured():
    saved = {"seed": 0, "train": {"batch_size": 8, "steps": 4, "betas": [0.9, 0.95]}, "data": {"root": "a"}}
    now = {"seed": 1, "train": {"batch_size": 8, "steps": 9, "betas": [0.9, 0.99]}, "data": {"root": "a", "x": 2}}
    assert changed_keys(saved, now, ["train.steps"]) == {
        "data.x": ("<absent>", 2), "seed": (0, 1), "train.betas": ([0.9, 0.95], [0.9, 0.99])}
    with pytest.raises(ValueError, match=r"cannot resume run: .* 3 key\(s\): data\.x: saved '<absent>', now 2; "
                                         r"seed: saved 0, now 1; train\.betas"):
        refuse_changed_config(saved, now, ["train.steps"], "run")
    refuse_changed_config(saved, {**saved, "train": {**saved["train"], "steps": 99}}, ["train.steps"], "run")


# ----- no unpickling -------------------------------------------------------------------------------------------------
def _torch_load_calls_without_weights_only(path: Path, root: Path = REPO) -> list[str]:
    """`file:line` (relative to `root`) of every call of torch.load / torch.serialization.load without a literal
    weights_only=True."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.serialization.load"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                bad.append(f"{path.relative_to(root)}:{node.lineno}")
    return bad


def test_every_torch_load_sets_weights_only():
    files = [REPO / "run.py", *[p for d in ("varbench", "benchmarks", "tests") for p in (REPO / d).rglob("*.py")]]
    assert len(files) > 50
    bad = [hit for path in files for hit in _torch_load_calls_without_weights_only(path)]
    assert bad == [], f"torch.load without weights_only=True (it would run pickled code): {bad}"


def test_the_torch_load_scan_finds_an_unsafe_call(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\n\n\ndef f(p):\n    return torch.load(p, weights_only=False), torch.load(p)\n"
                     "\n\nok = torch.load('x', map_location='cpu', weights_only=True)\n")
    assert _torch_load_calls_without_weights_only(probe, tmp_path) == ["probe.py:5"] * 2
