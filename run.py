"""varbench entry point. `python run.py` runs the main job on the embedded data set; `task=<name>` runs one step.

Every option is a file under experiments/ (the Hydra config root): `python run.py task=train model=mvar_d16
data=imagenet data.root=/path/to/imagenet`, `python run.py mixer=gla intra=local`. A grid of cells (a multirun
without -m): `python run.py grid=mixers_tiny [cluster=slurm] [+dry_run=true]` (experiments/grid, slurm/README.md).
"""

import hydra
from omegaconf import DictConfig

import varbench.grid  # noqa: F401  registers the resolvers the configs use (${varbench.mixers:}, ...) before Hydra composes
from varbench.grid import run_cell


@hydra.main(config_path="experiments", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    return run_cell(cfg)


if __name__ == "__main__":
    main()
