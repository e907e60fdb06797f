"""The `varbench` command (and `python run.py`): Hydra over the configs shipped in `varbench/configs/`.

`varbench` runs the main job on the embedded data set; `task=<name>` runs one step; `debug=true` a one-minute smoke
run of the main job (varbench/configs/debug/smoke.yaml). Every option is a file under varbench/configs/ (the Hydra
config root): `varbench task=train model=mvar_d16 data=imagenet data.root=/path`, `varbench mixer=gla intra=local`.
A grid of cells (a multirun without -m): `varbench grid=mixers_tiny [cluster=slurm] [+dry_run=true]`
(varbench/configs/grid, slurm/README.md). A config value outside its range stops the command before it writes
anything (varbench/config_schema.py).
"""

import sys

import hydra
from omegaconf import DictConfig

from varbench.grid import run_cell
from varbench.resolvers import register_resolvers

# here, at import: a Slurm job unpickles `_main` (importing this module) and never calls `main`, yet Hydra resolves the
# job's folder, which reads the resolvers, before it calls `_main`
register_resolvers()

# Hydra takes `debug=true` as a boolean, and a boolean cannot name a config group's option: the flag names the preset
# (`debug=false`: no preset, as if the flag were absent)
FLAGS = {"debug=true": "debug=smoke", "debug=false": None}


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def _main(cfg: DictConfig):
    return run_cell(cfg)


HYDRA_RUN_DIR = "hydra.run.dir="


def run_folder_overrides(argv: list[str]) -> list[str]:
    """Hydra's own run folder is `run_dir`, resolved through the config check (config.yaml), so that a config that
    cannot run creates no folder. `hydra.run.dir=X` would replace that resolution, skipping the check. Alone, it
    means `run_dir=X`: otherwise the checkpoints and records, which follow `run_dir`, would stay elsewhere. Beside
    `run_dir=`, it keeps Hydra's folder apart, still behind the check."""
    given_run_dir = any(arg.startswith("run_dir=") for arg in argv)

    def rewritten(arg: str) -> str:
        if not arg.startswith(HYDRA_RUN_DIR):
            return arg
        folder = arg.removeprefix(HYDRA_RUN_DIR)
        return f"{HYDRA_RUN_DIR}${{varbench.checked:'{folder}'}}" if given_run_dir else f"run_dir={folder}"
    return [rewritten(arg) for arg in argv]


def main():
    sys.argv = [FLAGS.get(arg.lower(), arg) for arg in sys.argv if FLAGS.get(arg.lower(), arg) is not None]
    sys.argv = run_folder_overrides(sys.argv)
    _main()


if __name__ == "__main__":
    main()
