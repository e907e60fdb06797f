"""`compile_cache_dir` (varbench/utils/compile_cache.py): torch.compile's caches go where the config says, a folder
that cannot be made is an error naming the key, and where the cache lives leaves a grid cell's id alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from varbench.grid import cell_id
from varbench.registry import CONFIG_ROOT
from varbench.utils.compile_cache import use_compile_cache

REPO = Path(__file__).resolve().parents[1]

COMPILE_ONE_FUNCTION = """
import sys, torch
from varbench.utils.compile_cache import compile_cache_state, use_compile_cache
use_compile_cache(sys.argv[1])
before = compile_cache_state()
torch.compile(lambda x: torch.sin(x) * 2 + 1)(torch.randn(8))
print(before["files"], compile_cache_state()["files"], compile_cache_state()["dir"])
"""


def test_inductor_and_triton_compile_into_the_folder_given(tmp_path):
    out = subprocess.run([sys.executable, "-c", COMPILE_ONE_FUNCTION, str(tmp_path / "cache")], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    before, after, folder = out.stdout.split()
    assert (int(before), folder) == (0, str(tmp_path / "cache")) and int(after) > 0  # cold, then filled
    assert (tmp_path / "cache" / "triton").is_dir()


def test_the_cache_goes_where_the_config_says_and_null_leaves_the_defaults(tmp_path, monkeypatch):
    from varbench.utils.compile_cache import compile_cache_state
    names = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING")
    for name in names:  # (set, then removed: restored after the test)
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    use_compile_cache(None)  # null: the defaults stay
    assert not set(names) & set(os.environ) and compile_cache_state()["autotune_timings"] is False
    use_compile_cache(tmp_path / "shared")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "shared")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "shared" / "triton")
    # the autotuners' timings are kept there too, and the records say so
    assert os.environ["TRITON_CACHE_AUTOTUNING"] == "1" and compile_cache_state()["autotune_timings"] is True


def test_a_folder_that_cannot_be_made_is_an_error_naming_the_key(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"compile_cache_dir = '.*file/cache': cannot create .* give a writable"):
        use_compile_cache(str(tmp_path / "file" / "cache"))


def test_where_the_cache_lives_leaves_the_cell_id_alone():
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        plain = compose(config_name="config", overrides=["task=train"])
        shared = compose(config_name="config", overrides=["task=train", "compile_cache_dir=/shared/inductor"])
    assert shared.compile_cache_dir == "/shared/inductor" and cell_id(shared) == cell_id(plain)


def test_a_task_run_from_the_command_line_puts_its_cache_there(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "task=costs", f"compile_cache_dir={tmp_path / 'cc'}",
                          f"results_dir={tmp_path / 'res'}", f"run_dir={tmp_path / 'run'}", "task.depths=[2]",
                          "task.resolutions=[256]"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "cc" / "triton").is_dir()
