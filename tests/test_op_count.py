"""Regression guards on the aten ops eager sampling dispatches (issue 18 goal 2): at batch 1 a VAR generation is
bound by kernel launches and host dispatch, so every op per block and scale is paid 16 x 10 times per image.
`benchmarks/op_count.py` counts a whole VAR-d16 generation by part against the official code
(results/cpu_opcount/); these tests pin the parts this code removed ops from."""

from __future__ import annotations

from collections import Counter

import torch
from helpers import tiny_model, tiny_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode

from varbench.backbones.sampling import top_k_top_p_filter


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def block_step_ops(k: int) -> Counter:
    """Ops one VAR block's `step` dispatches at scale k (the condition and the KV cache as sampling passes them)."""
    model = tiny_model("attention", vae=tiny_tokenizer())
    block, layout = model.blocks[0], model.layout
    cond_2BD = model.class_emb(torch.tensor([1, model.num_classes]))
    state = model.initial_states(2, cond_2BD.device, cond_2BD.dtype)[0]
    for scale in range(k):
        _, state = block.step(torch.randn(2, layout.lengths[scale], model.width), state, cond_2BD, layout, scale)
    x_2BlC = torch.randn(2, layout.lengths[k], model.width)
    with CountOps() as counter:
        block.step(x_2BlC, state, cond_2BD, layout, k)
    return counter.ops


def test_one_var_block_step_dispatches_at_most_58_ops():
    """58 = AdaLN projection 3 (SiLU, the linear as t + addmm) + one view and one unbind into the six rows
    + 2 x (LayerNorm, x (1 + scale), + shift) + 2 x gated residual (mul, add) + attention step 32 (qkv projection
    and normalisation, two KV-cache slice writes, SDPA on the cached prefix, output projection) + FFN 9. The code
    before indexed the (B, 3, n, 1, C) modulation per branch: six more select ops, 64 in all (VAR's own block: 58)."""
    ops = block_step_ops(k=2)
    assert ops["aten.select"] == 0, ops
    assert sum(ops.values()) <= 58, ops


def test_top_k_top_p_filter_masks_out_of_place_without_a_copy():
    """Filtering builds its result with out-of-place masked_fill: no clone of the logits first (the code before
    cloned, one more kernel per scale than VAR's in-place filter); the input is left as it was."""
    logits_BlV = torch.randn(2, 5, 64)
    before = logits_BlV.clone()
    with CountOps() as counter:
        out = top_k_top_p_filter(logits_BlV, top_k=10, top_p=0.9)
    assert counter.ops["aten.clone"] == 0, counter.ops
    torch.testing.assert_close(logits_BlV, before, rtol=0, atol=0)
    assert out.isfinite().sum(-1).le(10).all() and out.isfinite().sum(-1).ge(1).all()
    with CountOps() as counter:  # nothing to mask: still a new tensor, as documented
        same = top_k_top_p_filter(logits_BlV)
    assert same.data_ptr() != logits_BlV.data_ptr() and torch.equal(same, logits_BlV)
