"""The OmegaConf resolvers the configs use, registered by one explicit call (`register_resolvers()`): importing this
module registers nothing. The `varbench` command's module makes that call when it loads (varbench/cli.py says why).

- `${varbench.mixers:}`: every registered mixer, comma-separated for a sweep;
- `${varbench.bench_configs:}`: one `task.configs` value per bench cell;
- `${varbench.cell_id:}`, `${varbench.results_namespace:<results_dir>}`: a grid cell's id and results folder;
- `${varbench.slurm_profile:<name>}`: varbench/configs/slurm_profiles/<name>.yaml, or a profile of your own;
- `${varbench.checked:<path>}`: the path, once the whole config passed the tasks' `check_config`. config.yaml wraps
  Hydra's run folder in it, so that Hydra creates no folder (and writes no .hydra/) for a config that cannot run.
"""

from __future__ import annotations

from pathlib import Path

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from varbench.grid import cell_id, results_namespace
from varbench.registry import CONFIG_ROOT, list_options
from varbench.tasks import check_config

PROFILES = CONFIG_ROOT / "slurm_profiles"  # not a config group: read by ${varbench.slurm_profile:}


class ConfigCheckFailed(InterpolationResolutionError, CompactHydraException):
    """A failed check while Hydra resolves the run folder: Hydra prints its message alone (no traceback)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self._initialized = True  # OmegaConf re-raises it as it is, without naming the key it was resolving


def _checked(path: str, *, _root_: DictConfig) -> str:
    try:
        check_config(_root_)
    except ValueError as err:  # ConfigError, or a task's own check
        raise ConfigCheckFailed(str(err)) from None
    return path


def _mixers() -> str:
    """Every registered mixer as a sweep string ('attention,deltanet,...')."""
    return ",".join(list_options("mixer"))


def _bench_configs() -> str:
    """One `task.configs` value per bench cell: the bench's default configurations (`registry.default_configs`)."""
    from varbench.registry import default_configs
    return ",".join(f"[[{m},{i}]]" for m, i in default_configs())


def _cell_id(*, _root_: DictConfig) -> str:
    return cell_id(_root_)


def _slurm_profile(name: str) -> DictConfig:
    """varbench/configs/slurm_profiles/<name>.yaml, or a path to a profile of your own (ends with .yaml)."""
    path = Path(name) if str(name).endswith(".yaml") else PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise ValueError(f"unknown Slurm profile {name!r} ({path} does not exist); known profiles: {known}")
    return OmegaConf.load(path)


RESOLVERS = {"varbench.mixers": _mixers, "varbench.bench_configs": _bench_configs, "varbench.cell_id": _cell_id,
             "varbench.results_namespace": results_namespace, "varbench.slurm_profile": _slurm_profile,
             "varbench.checked": _checked}


def register_resolvers() -> None:
    """Register every resolver of RESOLVERS (once: a second call is a no-op)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
