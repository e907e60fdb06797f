"""The compiled training step (task.compile, train.compile) on the CPU reference paths: every registered mixer's
model is one graph, so torch.compile sees all of it; and where a kernel does break the graph inside each block (as
an opaque GPU kernel may), every block is still compiled rather than left to run eagerly."""

import pytest
import torch
import torch._dynamo
from helpers import tiny_model, tiny_tokenizer
from torch._dynamo.utils import counters

from varbench.backbones import blocks
from varbench.registry import list_options
from varbench.training.loop import compile_for_training

CONFIGS = [(m, "none") for m in list_options("mixer") if m != "none"] + [("mamba2", "full"), ("none", "full"),
                                                                         ("attention", "local")]


@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()


def captured_training_step(model) -> dict:
    """Dynamo's counters after one compiled forward and backward of `model` in train mode (eager backend: the
    graph capture without Inductor's code generation)."""
    torch._dynamo.reset()
    counters.clear()
    model.train()
    net = compile_for_training(model, len(model.blocks), backend="eager")
    x_BLCv = torch.randn(2, model.layout.L - 1, model.latent_dim)
    net(torch.tensor([1, 2]), x_BLCv).float().pow(2).mean().backward()
    return {"frames": counters["frames"]["total"], "breaks": sum(counters["graph_break"].values()),
            "ops": counters["stats"]["calls_captured"]}


@pytest.mark.parametrize("mixer,intra", CONFIGS, ids=[f"{m}-{i}" for m, i in CONFIGS])
def test_the_compiled_training_step_is_one_graph(mixer, intra, vae):
    seen = captured_training_step(tiny_model(mixer, intra, vae=vae, depth=2, drop_path_rate=0.1))
    assert seen["frames"] == 1 and seen["breaks"] == 0, seen


def test_a_graph_break_in_every_block_leaves_no_block_uncompiled(vae, monkeypatch):
    model = tiny_model("attention", vae=vae, depth=12, drop_path_rate=0.1)  # 12 blocks, 12 different rates
    whole = captured_training_step(model)["ops"]
    ffn = blocks.FFN.forward

    def ffn_behind_a_break(self, x_BLC):  # what an opaque kernel does to the graph, in every block
        torch._dynamo.graph_break()
        return ffn(self, x_BLC)
    monkeypatch.setattr(blocks.FFN, "forward", ffn_behind_a_break)
    broken = captured_training_step(model)
    assert broken["breaks"] >= 12 and broken["ops"] >= 0.98 * whole, (broken, whole)
