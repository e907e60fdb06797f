"""The custom-op tests' check of a mixer compiled on its GPU kernels: `fullgraph=True` (a graph break raises) and
the compiled graph computes what eager computes, within bf16's tolerance (bf16 autocast; inductor fuses the
elementwise work differently)."""

from __future__ import annotations

import torch

from varbench.utils.compare import rel_rms


def assert_training_compiles_into_one_graph(mixer, layout, dim: int, tol: float) -> None:
    """Forward + backward of `mixer` over `layout`: the compiled gradients equal eager's (input and parameters)."""
    x = torch.randn(2, layout.L, dim, device="cuda", requires_grad=True)
    leaves = [x, *mixer.parameters()]

    def loss(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return mixer(x, layout).float().square().mean()

    eager = torch.autograd.grad(loss(x), leaves)
    torch._dynamo.reset()
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x), leaves)
    for a, b in zip(compiled, eager):
        assert rel_rms(a, b) <= tol


def assert_sampling_step_compiles_into_one_graph(mixer, layout, state: dict, dim: int, tol: float) -> None:
    """One sampling step (scale 2) from `state`: the compiled output and new conv / ssm states equal eager's."""
    x = torch.randn(2, layout.patch_nums[2] ** 2, dim, device="cuda")

    def step(x, state):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return mixer.step(x, state, layout, 2)

    y_eager, state_eager = step(x, state)
    torch._dynamo.reset()
    y, new_state = torch.compile(step, fullgraph=True)(x, state)
    for a, b in ((y, y_eager), (new_state["conv"], state_eager["conv"]), (new_state["ssm"], state_eager["ssm"])):
        assert rel_rms(a, b) <= tol
