"""The `varbench` command (and `python run.py`): Hydra over the configs shipped in `varbench/configs/`.

`varbench` runs the main job on the embedded data set; `task=<name>` runs one step. Every option is a file under
varbench/configs/ (the Hydra config root): `varbench task=train model=mvar_d16 data=imagenet data.root=/path`,
`varbench mixer=gla intra=local`. A grid of cells (a multirun without -m): `varbench grid=mixers_tiny
[cluster=slurm] [+dry_run=true]` (varbench/configs/grid, slurm/README.md).
"""

import hydra
from omegaconf import DictConfig

import varbench.grid  # noqa: F401  registers the resolvers the configs use (${varbench.mixers:}, ...) before Hydra composes
from varbench.grid import run_cell


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    return run_cell(cfg)


if __name__ == "__main__":
    main()
