"""varbench entry point. `python run.py` runs the main job on the embedded data set; `task=<name>` runs one step.

Every option is a file under experiments/ (the Hydra config root): `python run.py task=train model=mvar_d16
data=imagenet data.root=/path/to/imagenet`, `python run.py mixer=gla intra=local`.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="experiments", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from varbench.tasks import run_task
    return run_task(cfg)


if __name__ == "__main__":
    main()
