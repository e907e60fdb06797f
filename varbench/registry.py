"""The registry is the config tree: `varbench/configs/<group>/<name>.yaml` IS the entry for component <name>.

No decorator registry (it fails silently when a module was never imported): a YAML names its class with
`_target_` and is built lazily, so only the chosen component's dependencies are imported. Tests enumerate
`list_options(group)`, so a new mixer is covered by adding its module and its YAML.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
LOADER_KEYS = ("num_workers", "prefetch_factor")  # keys of a data entry read by the DataLoader (varbench.data.loading)


def list_options(group: str) -> list[str]:
    """Names of the components of a config group (the YAML file stems)."""
    folder = CONFIG_ROOT / group
    if not folder.is_dir():
        groups = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir())
        raise ValueError(f"unknown config group {group!r}; valid groups: {groups}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """The YAML of one component; an unknown name fails listing the valid ones."""
    options = list_options(group)
    if name not in options:
        raise ValueError(f"unknown {group} {name!r}; valid {group} names: {options}")
    return OmegaConf.load(CONFIG_ROOT / group / f"{name}.yaml")


def factory(cfg: DictConfig | dict | None):
    """A factory (functools.partial) from a component config, or None for a config whose `_target_` is null."""
    if cfg is None:
        return None
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if cfg.get("_target_") is None:
        return None
    from hydra.utils import instantiate
    return instantiate(cfg, _partial_=True)


def compose(overrides: list[str] = ()) -> DictConfig:
    """The whole config as the `varbench` command composes it with these command-line `overrides` (Hydra's
    compose API; inside a running varbench command its own config root is the same)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def build(group: str, name: str, **kwargs):
    """Build a component (an entry with a `_target_`: mixer, intra, data) by group and name without Hydra, e.g.
    `build("mixer", "gla", dim=64, num_heads=2)`. Keyword arguments that are hyper-parameters of the YAML override
    it; the rest go to the constructor. Models and tokenizers need more than their own entry: `varbench.build`.
    Never returns None: an entry that is the absence of a component (`mixer=none`) raises, naming the group."""
    cfg = load_option(group, name)
    if group == "data":  # the DataLoader's keys are no argument of the data set
        cfg = dataset_config(cfg)
    if "_target_" not in cfg:
        raise ValueError(f"{group} {name!r} is not a component with a _target_ (the {group} group holds settings); "
                         f"varbench.build builds models and tokenizers, this builds mixer, intra and data entries")
    if cfg._target_ is None:
        raise ValueError(f"{group} {name!r} is the absence of a component (a block without this branch): there is "
                         f"nothing to build; a model built with {group}={name} has no {group} branch")
    overrides = {k: v for k, v in kwargs.items() if k in cfg}
    make = factory(OmegaConf.merge(cfg, overrides))
    return make(**{k: v for k, v in kwargs.items() if k not in cfg})


VAR = ("attention", "none")  # (mixer, intra) of VAR: attention between the scales, nothing more inside a scale
MVAR = ("mamba2", "full")  # M-VAR's: Mamba2 between the scales, attention inside each


def default_configs() -> list[tuple[str, str]]:
    """The (mixer, intra) configurations a bench or a cost table covers by default: every registered mixer as a
    pure-mixer model (VAR is attention's; none's is a model with no token mixing at all), plus M-VAR (intra full +
    mamba2) and its Markov counterpart without an inter-scale mixer (intra full + none, HMAR-like)."""
    return [(m, "none") for m in list_options("mixer")] + [MVAR, ("none", "full")]


def dataset_config(data_cfg: DictConfig) -> DictConfig:
    """A copy of the data entry `data_cfg` without the loader keys: what the data set's constructor takes (the copy
    keeps its parent, so interpolations into the rest of the config still resolve)."""
    data_cfg = copy.deepcopy(data_cfg)
    with open_dict(data_cfg):
        for key in LOADER_KEYS:
            data_cfg.pop(key, None)
    return data_cfg

# ----- what the shipped config files set (read by the config check, varbench/config_schema.py) ---------------------

@lru_cache(maxsize=1)
def _shipped_files() -> tuple[tuple[Path, bool, dict], ...]:
    """Every shipped config file, read once: (path, whether it is `@package _global_`, its content unresolved)."""
    return tuple((path, "@package _global_" in path.read_text()[:200],
                  OmegaConf.to_container(OmegaConf.load(path), resolve=False))
                 for path in sorted(CONFIG_ROOT.rglob("*.yaml")))


def group_settings(group: str) -> list[dict]:
    """What each shipped config file sets in `group`, unresolved (an interpolation or `???` as its string): an
    option of the group, or a recipe, preset or grid (a `@package _global_` file) under its `group` key."""
    out = []
    for path, is_global, content in _shipped_files():
        node = content.get(group) if is_global else content if path.parent == CONFIG_ROOT / group else None
        if isinstance(node, dict):
            out.append(node)
    return out


@lru_cache(maxsize=None)
def group_keys(group: str) -> frozenset[str]:
    """Every key a shipped config file sets in `group`."""
    return frozenset({key for setting in group_settings(group) for key in setting} - {"defaults"})


@lru_cache(maxsize=None)
def flag_keys(group: str) -> frozenset[str]:
    """The keys of `group` that every shipped file setting them sets to true or false: switches, whose value must be
    a boolean (a string such as `maybe` would count as true)."""
    values: dict[str, list] = {}
    for setting in group_settings(group):
        for key, value in setting.items():
            values.setdefault(key, []).append(value)
    return frozenset(key for key, seen in values.items() if all(isinstance(v, bool) for v in seen))


OPTIONAL_TASK_KEYS = {"main": {"guidance_scales", "guidance_seeds"}}  # read with .get (task/main.yaml names them)


@lru_cache(maxsize=None)
def task_keys(name: str) -> frozenset[str]:
    """The keys of task `name`: those of varbench/configs/task/<name>.yaml and its optional ones (a key of another
    task, such as `+task.per_class=3` on the main job, would be ignored silently)."""
    path = CONFIG_ROOT / "task" / f"{name}.yaml"
    if not path.is_file():  # (task.name=<not a task>: its own error says so)
        return group_keys("task")
    return frozenset({*OmegaConf.load(path).keys(), *OPTIONAL_TASK_KEYS.get(name, ())})
