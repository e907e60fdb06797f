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


# Hydra's own run folder is `run_dir` (config.yaml, through the check that runs before the folder is made):
# `hydra.run.dir=X` alone would move the folder but not the checkpoints and records (which follow `run_dir`), and skip
# that check; it means `run_dir=X`
RUN_DIR_ALIAS = "hydra.run.dir="


def main():
    sys.argv = [FLAGS.get(arg.lower(), arg) for arg in sys.argv if FLAGS.get(arg.lower(), arg) is not None]
    sys.argv = [f"run_dir={arg.removeprefix(RUN_DIR_ALIAS)}" if arg.startswith(RUN_DIR_ALIAS) else arg
                for arg in sys.argv]
    _main()


if __name__ == "__main__":
    main()
