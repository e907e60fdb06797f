"""FP8 matmuls in training (`train.precision: fp8`, task=bench's `task.fp8`): a named deviation from VAR's numerics
(issue 18: bf16 autocast with fp32 master weights is the recipe; anything else is an option its records name).

The blocks' linear layers (attention's projections, the FFN, a mixer's projections) become torchao's `Float8Linear`
(`torchao.float8.convert_to_float8_training`, dynamic scaling: each matmul's inputs cast to e4m3, its output
gradient to e5m2, with scales from their absolute maxima), in one of torchao's recipes (`FP8_RECIPES`): `tensorwise`
(the default: one scale per tensor, the recipe torchtitan trains with) or `rowwise` (one scale per row of each
operand: the absolute maxima are row reductions, which the compiler can fuse into the kernel that makes the row,
where a tensor's maximum needs a pass of its own; session 26's tensorwise casts cost VAR-d16 about 35 ms a step). The
rest stays as it was, under bf16 autocast: the embeddings, the AdaLN projections (their rows are the batch, too few
for an FP8 matmul to pay), the head (kept in bf16 for accuracy, as torchtitan keeps its output layer) and every
non-linear op. Weights stay fp32 and their names do not change: a checkpoint loads into the plain model. Needs
`pip install ".[fp8]"` (torchao); FP8 matmuls need FP8 tensor cores (H100, H200), and on a CPU torch's
`_scaled_mm` computes the same numerics slowly (the tests' oracle is the bf16 model). At VAR-d16's size they do not
pay: its compiled step with CUDA graphs took 104.8 ms (tensorwise) and 121.3 ms (rowwise) against 82.5-82.9 ms in
bf16 on one H100 (session 31, `report/numerics_speed.md`): with width 1024 the casts and scales cost more than the
faster GEMMs save.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FP8_MULTIPLE = 16  # torch._scaled_mm needs both matrix dims of the weight divisible by 16
FP8_RECIPES = ("tensorwise", "rowwise")  # torchao's Float8LinearConfig.from_recipe_name
# linear layers whose weight a mixer multiplies itself (Mamba-1 adds dt_proj's bias inside its scan): converting them
# would change nothing but their name; and the AdaLN projections (rows: the batch)
NOT_FP8 = ("ada_lin", "dt_proj")


def fp8_linear(module: nn.Module, name: str) -> bool:
    """Whether the linear layer `name` (a path below the model's blocks) trains with FP8 matmuls."""
    return (isinstance(module, nn.Linear) and not set(NOT_FP8) & set(name.split("."))
            and module.in_features % FP8_MULTIPLE == 0 and module.out_features % FP8_MULTIPLE == 0)


def to_fp8_training(model: nn.Module, recipe: str = "tensorwise") -> list[str]:
    """Swap the linear layers of `model.blocks` that `fp8_linear` selects for torchao's Float8Linear scaled by
    `recipe` (one of FP8_RECIPES), in place; returns their names (below `blocks`). An ImportError says how to install
    torchao."""
    if recipe not in FP8_RECIPES:
        raise ValueError(f"the FP8 recipe must be one of {list(FP8_RECIPES)}, got {recipe!r}")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise ImportError("train.precision=fp8 (task.fp8) needs torchao: pip install '.[fp8]'") from err
    chosen = [name for name, module in model.blocks.named_modules() if fp8_linear(module, name)]
    if not chosen:
        raise ValueError("train.precision=fp8: no linear layer of the blocks has dims divisible by 16")
    convert_to_float8_training(model.blocks, module_filter_fn=fp8_linear,
                               config=Float8LinearConfig.from_recipe_name(recipe))
    return chosen


def check_fp8_batch(batch: int, tokens_per_image: int, key: str, device) -> None:
    """On CUDA, refuse a batch whose tokens are no multiple of 16 before any step runs: a weight gradient multiplies
    over the batch's tokens, and torch._scaled_mm's CUDA kernels need that inner dim divisible by 16 (else a
    RuntimeError about `self.size(1)` while compiling, session 26). The CPU's emulation takes any size."""
    if torch.device(device).type == "cuda" and batch * tokens_per_image % FP8_MULTIPLE:
        multiple = FP8_MULTIPLE // math.gcd(tokens_per_image, FP8_MULTIPLE)
        raise ValueError(f"{key} = {batch}: FP8 matmuls run over the batch's {batch} x {tokens_per_image} tokens, "
                         f"which must be divisible by {FP8_MULTIPLE}: use a multiple of {multiple} images")
