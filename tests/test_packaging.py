"""What `pip install .` installs: a wheel built from the checkout holds every module, every config (the registry), the
Slurm profiles, the grid sweeper (hydra_plugins) and the `varbench` command; the versions installed here satisfy the
dependency ranges pyproject.toml declares."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGED = ("pyproject.toml", "README.md", "LICENSE", "varbench", "hydra_plugins")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def build_wheel(tmp: Path) -> Path:
    """A wheel of a copy of the checkout's packaged files (setuptools builds in-tree: the checkout stays clean)."""
    src = tmp / "src"
    for name in PACKAGED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(REPO / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("varbench-*.whl")
    return wheel


def checkout_files(folder: str, pattern: str) -> set[str]:
    return {p.relative_to(REPO).as_posix() for p in (REPO / folder).rglob(pattern) if "__pycache__" not in p.parts}


def test_the_wheel_ships_modules_configs_sweeper_and_the_varbench_command(wheel):
    wheel = zipfile.ZipFile(wheel)
    names = set(wheel.namelist())
    configs = checkout_files("varbench/configs", "*.yaml")
    assert any(n.startswith("varbench/configs/slurm_profiles/") for n in configs)
    assert configs <= names, f"configs left out of the wheel: {sorted(configs - names)}"
    modules = checkout_files("varbench", "*.py") | checkout_files("hydra_plugins", "*.py")
    assert "hydra_plugins/varbench_grid/grid_sweeper.py" in modules
    assert modules <= names, f"modules left out of the wheel: {sorted(modules - names)}"
    (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert any(n.startswith(dist_info) and n.endswith("LICENSE") for n in names)
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())
    assert entry_points["console_scripts"]["varbench"] == "varbench.cli:main"


def test_the_installed_varbench_command_composes_a_grid_through_the_packaged_sweeper(wheel, tmp_path):
    """`pip install .` without the checkout: the command finds its configs and the grid sweeper in the install."""
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site)}  # before the editable checkout, which the install must not need
    where = subprocess.run([sys.executable, "-c", "import varbench, hydra_plugins.varbench_grid as g; "
                            "print(varbench.__file__); print(g.__file__)"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert where.returncode == 0 and all(line.startswith(str(site)) for line in where.stdout.split()), where
    dry = subprocess.run([sys.executable, str(site / "bin" / "varbench"), "grid=mixers_tiny", "+dry_run=true",
                          "hydra.sweep.dir=sweep"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "[grid] dry run: nothing launched" in dry.stdout and "pending" in dry.stdout, dry.stdout[-2000:]


def requirements(*extras: str) -> list[Requirement]:
    lines = PYPROJECT["dependencies"] + [r for e in extras for r in PYPROJECT["optional-dependencies"][e]]
    return [r for r in map(Requirement, lines) if r.marker is None or r.marker.evaluate()]


def test_the_installed_dependencies_satisfy_the_declared_ranges():
    """The CI installs `.[dev]` at the newest versions the ranges admit: each of those must be installed and in
    range; the other extras (kernels, slurm) are optional, but those installed must be in range too."""
    required = {r.name for r in requirements("dev")}
    wrong = {}
    for req in requirements(*PYPROJECT["optional-dependencies"]):
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            if req.name in required:
                wrong[req.name] = "not installed"
            continue
        if not req.specifier.contains(installed, prereleases=True):
            wrong[req.name] = f"{installed} not in {req.specifier}"
    assert not wrong, wrong


def test_the_ranges_admit_the_current_releases_and_exclude_what_the_code_cannot_run():
    """The ends the CI cannot install (a second 6 GB torch is out of its budget), checked against what is known:
    torch < 2.7 lacks what the compile path needs (and < 2.6 FSDP2's public fully_shard); 2.15 and omegaconf 2.4.0
    are the newest releases (checked with `pip index versions`; the config and grid tests pass on omegaconf 2.4.0)."""
    spec = {r.name: r.specifier for r in requirements()}
    assert not spec["torch"].contains("2.6.0") and spec["torch"].contains("2.7.0")
    assert spec["torch"].contains("2.15.0") and spec["omegaconf"].contains("2.4.0")
