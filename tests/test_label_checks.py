"""The class labels are checked where reading them is free: the training step checks the loader's host tensor before
the move, and the forward it calls (`inputs_checked=True`) reads no label value, so no step waits on the device for
the check (two host syncs per step, min and max, when the forward read them there). Bad labels still get the same
clear error, from the training step and from a plain forward, on both backbones.

A `LabelSpy` stands in for the labels: it logs every read of its values ("read") and every move ("move") and hands
every other op a plain tensor. A CPU run cannot see a host sync, but it sees which tensor is read and when.
"""

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from torch import Tensor

from varbench.backbones.raster_ar import RasterAR
from varbench.registry import factory, load_option
from varbench.training.loop import micro_batch_loss

READS = {Tensor.min, Tensor.max, Tensor.aminmax, Tensor.item, Tensor.tolist, Tensor.__int__, Tensor.__index__,
         Tensor.__bool__, Tensor.any, Tensor.all, torch.min, torch.max, torch.aminmax}
EVENTS: list[str] = []


class LabelSpy(Tensor):
    """Labels that log their value reads and moves in EVENTS; a move's result is a spy too."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in READS:
            EVENTS.append("read")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if func is Tensor.to:
            EVENTS.append("move")
            return out.as_subclass(LabelSpy)
        return out


def spied(labels: list[int]) -> LabelSpy:
    EVENTS.clear()
    return torch.tensor(labels).as_subclass(LabelSpy)


@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()


def models(vae):
    """A tiny ScaleAR and a tiny RasterAR (AiM), 10 classes each, with cached ids as their training data."""
    scale = tiny_model("attention", vae=vae)
    raster = RasterAR(mixer=factory(load_option("mixer", "attention")), depth=1, width=32, num_heads=1,
                      vocab_size=vae.vocab_size, num_classes=10, num_tokens=vae.layout.L, mlp_hidden=16)
    return {"scale": scale.train(), "raster": raster.train()}


@pytest.mark.parametrize("backbone", ["scale", "raster"])
def test_the_training_step_reads_the_labels_on_the_host_before_the_move_and_never_after(vae, backbone):
    model = models(vae)[backbone]
    ids = torch.randint(0, vae.vocab_size, (2, vae.layout.L))
    labels = spied([3, 10])
    loss = micro_batch_loss(model, model, vae, ids, labels, torch.device("cpu"), True, None, 0.0)
    assert loss.isfinite()
    assert "read" in EVENTS and "move" in EVENTS  # the values are checked, and the labels do move
    assert "read" not in EVENTS[EVENTS.index("move"):], EVENTS  # no read of the moved (device) labels


def test_an_aim_training_step_checks_cached_ids_on_the_host_and_never_reads_them_after_the_move(vae):
    model = models(vae)["raster"]
    labels = torch.tensor([3, 9])
    ids = spied([[0] * vae.layout.L] * 2)
    assert micro_batch_loss(model, model, vae, ids, labels, torch.device("cpu"), True, None, 0.0).isfinite()
    assert "read" in EVENTS and "move" in EVENTS
    assert "read" not in EVENTS[EVENTS.index("move"):], EVENTS
    bad = ids.clone()
    bad[1, -1] = vae.vocab_size
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {vae.vocab_size - 1}\]"):
        micro_batch_loss(model, model, vae, bad, labels, torch.device("cpu"), True, None, 0.0)


@pytest.mark.parametrize("backbone", ["scale", "raster"])
def test_a_forward_told_the_labels_are_checked_reads_none_of_their_values(vae, backbone):
    model = models(vae)[backbone]
    x = torch.randint(0, vae.vocab_size, (2, vae.layout.L)) if backbone == "raster" else \
        torch.randn(2, vae.layout.L - 1, vae.Cvae)
    model(spied([3, 10]), x, inputs_checked=True)
    assert EVENTS == []
    model(spied([3, 10]), x)  # by default the forward checks them itself: the spy sees it
    assert "read" in EVENTS


MESSAGES = {"scale": r"labels must be integers in [0, 10] (10 = null class), got [3, 11] (torch.int64)",
            "raster": r"labels must be integers (B,) in [0, 10] (10 = null class), got shape (2,) torch.int64"}


@pytest.mark.parametrize("backbone", ["scale", "raster"])
@pytest.mark.parametrize("bad", [[3, 11], [-1, 0]])
def test_bad_labels_get_the_same_clear_error_from_the_training_step_and_a_forward(vae, backbone, bad):
    model = models(vae)[backbone]
    ids = torch.randint(0, vae.vocab_size, (2, vae.layout.L))
    x = ids if backbone == "raster" else torch.randn(2, vae.layout.L - 1, vae.Cvae)
    message = MESSAGES[backbone].replace("[3, 11]", str(bad))
    with pytest.raises(ValueError) as from_step:
        micro_batch_loss(model, model, vae, ids, torch.tensor(bad), torch.device("cpu"), True, None, 0.0)
    with pytest.raises(ValueError) as from_forward:
        model(torch.tensor(bad), x)
    assert str(from_step.value) == str(from_forward.value) == message
