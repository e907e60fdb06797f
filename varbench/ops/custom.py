"""What every `torch.library.custom_op` around a library kernel needs (the SSD scan, fla's linear recurrences).

A custom op is one opaque node to torch.compile: dynamo neither traces the library's Python and Triton launches nor
breaks the graph around them. Its contract is stricter than a Python function's, and the helpers below keep it:

- outputs are fresh, contiguous tensors in exactly the dtypes the fake (meta) implementation promises, because
  inductor plans the graph around the fake's layout;
- no output is None: an absent input's gradient (or one the library does not compute) is an empty tensor, turned back
  into None before autograd sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def as_promised(t: Tensor, like: Tensor) -> Tensor:
    """`t` contiguous and in `like`'s dtype: what a fake that returns `like.new_empty(...)` promises."""
    return t.to(like.dtype).contiguous()


def op_grads(grads: Sequence[Tensor | None], inputs: Sequence[Tensor | None], like: Tensor) -> list[Tensor]:
    """The gradients a backward op returns: each as promised by its input; an empty tensor where the input is absent
    or the library returned no gradient (a custom op returns no None)."""
    return [as_promised(g, t) if t is not None and g is not None else like.new_empty(0) for g, t in zip(grads, inputs)]


def fake_grads(inputs: Sequence[Tensor | None], like: Tensor) -> list[Tensor]:
    """The fake of `op_grads` when every present input gets a gradient: one tensor like each input, empty if absent."""
    return [t.new_empty(t.shape) if t is not None else like.new_empty(0) for t in inputs]


def autograd_grads(grads: Sequence[Tensor], inputs: Sequence[Tensor | None]) -> list[Tensor | None]:
    """`op_grads` back to what autograd expects: None for an absent input and for an empty stand-in."""
    return [None if t is None or (g.numel() == 0 and t.numel() != 0) else g for g, t in zip(grads, inputs)]
