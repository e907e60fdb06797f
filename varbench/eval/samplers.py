"""The samplers a run names (`task.sampler`): `carry`, the model's own (`ScaleSampler`: each mixer carries its
state from scale to scale), and `prefix_rerun`, the released M-VAR sampler, kept only as a benchmark baseline.

The released M-VAR sampler does not carry a mixer's state: at every scale it re-runs each mixer's `forward` over the
inputs of all scales so far (1,710 token positions per 256-px image instead of 680). It computes the same function
as the carried state (tests/test_samplers.py), so it lives here, outside the model and the mixer contract:
`PrefixRerunSampler` installs a `PrefixRerun` wrapper around every block's mixer for the length of each call.

Shape legend: B batch, L tokens of the scales so far, l tokens of the current scale, C width.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from varbench.backbones.sampling import Generation, ScaleSampler
from varbench.backbones.scale_ar import ScaleAR
from varbench.layout import ScaleLayout
from varbench.mixers.base import State, TokenMixer


class PrefixRerun(TokenMixer):
    """A mixer stepped as the released M-VAR sampler steps it: the state is the inputs of every earlier scale, and
    scale k re-runs the wrapped mixer's `forward` over scales 0..k. The wrapped mixer is its only child, so the
    parameters (and their order) are the wrapped mixer's."""

    def __init__(self, mixer: TokenMixer):
        super().__init__()
        self.mixer = mixer
        self.backend = mixer.backend

    def forward(self, x_BLC: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        return self.mixer(x_BLC, layout)

    def init_state(self, batch: int, layout: ScaleLayout, device=None, dtype=torch.float32) -> State:
        """No inputs yet: the cache starts empty."""
        return {}

    def step(self, x_BlC: torch.Tensor, state: State, layout: ScaleLayout, k: int) -> tuple[torch.Tensor, State]:
        """Scale k's outputs from `forward` over the whole prefix, and the prefix's inputs as the new state."""
        prefix_BLC = x_BlC if k == 0 else torch.cat([state["inputs"], x_BlC], dim=1)
        y_BLC = self.mixer(prefix_BLC, ScaleLayout(layout.patch_nums[: k + 1]))
        return y_BLC[:, -x_BlC.shape[1]:], {"inputs": prefix_BLC}


@contextmanager
def prefix_rerun_installed(model: ScaleAR) -> Iterator[None]:
    """Every block's inter-scale mixer wrapped in `PrefixRerun` inside the `with`, the model's own mixers restored
    after it (also on an error)."""
    mixers = [block.mixer for block in model.blocks]
    try:
        for block, mixer in zip(model.blocks, mixers):
            if mixer is not None:
                block.mixer = PrefixRerun(mixer)
        yield
    finally:
        for block, mixer in zip(model.blocks, mixers):
            block.mixer = mixer


class PrefixRerunSampler(ScaleSampler):
    """`ScaleSampler` with every mixer re-run over the prefix (`PrefixRerun`): the released M-VAR sampler, a
    benchmark baseline. Same arguments; its CUDA graphs (`cuda_graphs=True`) capture the re-run."""

    def __call__(self, label_B: torch.Tensor, **inputs) -> Generation:
        with prefix_rerun_installed(self.model):
            return super().__call__(label_B, **inputs)


SAMPLERS = {"carry": ScaleSampler, "prefix_rerun": PrefixRerunSampler}


def make_sampler(name: str, model: ScaleAR, tokenizer, **settings) -> ScaleSampler:
    """The sampler `name` ("carry" or "prefix_rerun") for a ScaleAR; `settings` as `ScaleSampler`'s (cfg, top_k,
    top_p, more_smooth, cuda_graphs)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {name!r}")
    if not isinstance(model, ScaleAR):
        raise ValueError(f"sampler={name!r} draws from a scale-wise model (ScaleAR), got {type(model).__name__}")
    return SAMPLERS[name](model, tokenizer, **settings)
