"""A run is self-describing: its checkpoints carry the architecture and the tokenizer's identity, so that
task=sample / task=evaluate with only the run folder rebuild exactly the trained model and its tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from varbench.build import build_tokenizer
from varbench.registry import CONFIG_ROOT
from varbench.utils.checkpoint import save_atomic

TINY = ["device=cpu", "cell_id=test", "model.depth=1", "model.width=64", "model.num_heads=1",
        "tokenizer.num_res_blocks=1", "tokenizer.vocab_size=64", "data.size_per_class=4", "train.batch_size=8",
        "train.warmup_iters=1", "train.log_every=1", "train.steps=2", "train.ckpt_every=2"]


def read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def trained_run(tmp_path):
    """A run trained for 2 steps with a tokenizer file of its own (not the random tokenizer of the defaults)."""
    from varbench.tasks.train import main as train
    torch.manual_seed(123)
    tokenizer_file = save_atomic(tmp_path / "tok.safetensors",
                                 tensors=build_tokenizer(config(*TINY), load=False).state_dict())
    common = [*TINY, f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}"]
    train(config("task=train", *common, f"tokenizer.checkpoint={tokenizer_file}"))
    return tmp_path, common, tokenizer_file


def test_sample_with_the_run_dir_only_uses_the_runs_tokenizer(trained_run):
    """Issue 15 Found-1: without tokenizer.checkpoint repeated, sampling used a random tokenizer."""
    from varbench.tasks.sample import main as sample
    tmp_path, common, tokenizer_file = trained_run
    sample(config("task=sample", *common, f"tokenizer.checkpoint={tokenizer_file}"))
    expected = read_png(tmp_path / "run" / "samples.png")
    sample(config("task=sample", *common))  # the run folder only
    assert np.array_equal(read_png(tmp_path / "run" / "samples.png"), expected)
