"""Regression guards on the aten ops eager sampling dispatches (issue 18 goal 2): at batch 1 a VAR generation is
bound by kernel launches and host dispatch, so every op per block and scale is paid 16 x 10 times per image.
`benchmarks/op_count.py` counts a whole VAR-d16 generation by part against the official code
(results/cpu_opcount/); these tests pin the parts this code removed ops from."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import benchmark_script, tiny_model, tiny_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode

from varbench.backbones.sampling import ScaleSampler, top_k_top_p_filter


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.kernels = Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        self.kernels += not func.is_view  # what launches a kernel on a GPU
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def scale_ops(k: int, depth: int = 2) -> CountOps:
    """The ops `scale_logits` dispatches at scale k of a VAR of `depth` blocks (CFG-doubled batch 1), from the
    states and condition sampling passes it."""
    model = tiny_model("attention", depth=depth, vae=tiny_tokenizer())
    cond_2BD = model.class_emb(torch.tensor([1, model.num_classes]))
    states = model.initial_states(2, cond_2BD.device, cond_2BD.dtype)
    for scale in range(k):
        _, states = model.scale_logits(torch.randn(2, model.layout.lengths[scale], model.width), states, cond_2BD,
                                       scale)
    x_2BlC = torch.randn(2, model.layout.lengths[k], model.width)
    with CountOps() as counter:
        model.scale_logits(x_2BlC, states, cond_2BD, k)
    return counter


def test_sampling_computes_the_adaln_rows_once_per_generation():
    """After scale 0 no block runs its AdaLN projection (SiLU + linear) or adds 1 to its scales again: the only SiLU
    of a later scale is the head's. The code before recomputed them at every scale, as VAR's sampler does."""
    ops = scale_ops(k=2, depth=3).ops
    assert ops["aten.silu"] == 1, ops
    assert ops["aten.addmm"] == 3 * 4 + 2, ops  # per block qkv, proj, fc1, fc2; the head's AdaLN and its linear


def test_one_sampling_scale_of_a_var_block_dispatches_at_most_45_ops_and_20_kernels():
    """Per block and scale, 45 ops = one unbind of the precomputed AdaLN rows + 2 x (LayerNorm, addcmul: x (1 +
    scale) + shift in one) + 2 x gated residual (mul, add) + attention step 27 (qkv projection with the bias carried
    from scale 0, one L2 normalisation of q and k together times the carried temperature, two KV-cache slice writes,
    SDPA on the cached prefix, output projection) + FFN 9; 20 of them launch kernels (the rest are views). The head
    adds 12 ops, 6 kernels per scale. Session 18's code: 52 ops and 28 kernels per block, 13 and 7 for the head (q
    and k normalised apart, modulation as mul then add, the qkv bias joined and the temperature computed at every
    scale); before that the AdaLN projection (3) ran at every scale and the (B, 3, n, 1, C) modulation was indexed
    per branch (view, unbind, 6 selects, 2 adds): 64 per block and scale (VAR's own block: 58)."""
    two, three = scale_ops(k=2, depth=2), scale_ops(k=2, depth=3)
    per_block_ops = sum(three.ops.values()) - sum(two.ops.values())
    assert per_block_ops <= 45 and three.kernels - two.kernels <= 20, three.ops
    assert sum(two.ops.values()) <= 2 * 45 + 12 and two.kernels <= 2 * 20 + 6, two.ops
    assert two.ops["aten.linalg_vector_norm"] == 2 and two.ops["aten.addcmul"] == 2 * 2 + 1, two.ops


def test_attention_derives_its_weight_terms_at_scale_0_only():
    """The joined qkv bias (cat) and the temperature (clamp_max, exp) are computed at scale 0 and carried in the
    state (mixers/base.py's weight terms); no later scale computes them again."""
    first, later = scale_ops(k=0, depth=2).ops, scale_ops(k=2, depth=2).ops
    assert first["aten.exp"] == first["aten.clamp_max"] == 2 and first["aten.cat"] >= 2, first
    assert later["aten.exp"] == later["aten.clamp_max"] == later["aten.cat"] == 0, later


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


def test_op_count_script_attributes_every_op_to_one_part():
    """benchmarks/op_count.py's labelled count of a generation adds up to every op the generation dispatches, with
    each per-block part counted at every scale, so its per-part records are a partition of the total."""
    op_count, vae = benchmark_script("op_count"), tiny_tokenizer()
    model = tiny_model("attention", depth=2, vae=vae)
    counter, everything = op_count.OpCounter(), CountOps()
    sampler = ScaleSampler(model, vae, cfg=1.5, top_k=10, top_p=0.9)
    with op_count.instrument(counter, model, vae), torch.no_grad(), everything, counter:
        sampler(torch.tensor([3]), generator=torch.Generator().manual_seed(0))
    records = {r["part"]: r for r in op_count.part_records(counter, "varbench", 2, model.layout.num_scales)}
    assert sum(r["value"] for r in records.values()) == sum(everything.ops.values())
    for part in op_count.BLOCK_PARTS[1:] + op_count.SCALE_PARTS:  # block.ada_lin runs at scale 0 only
        assert len(records[part]["per_scale"]) == model.layout.num_scales and records[part]["value"] > 0, part
    assert records["decode"]["value"] > 0 and records["block.ada_lin"]["per_scale"] == [2 * 3]  # SiLU, t, addmm


def test_python_calls_are_counted_per_generation_the_same_every_time_and_grow_with_the_blocks():
    """op_count's `python_call_record`: the Python calls of one generation (the scale loop, decode excluded) are a
    count, not a timing: the same for two generations of other draws, and larger with more blocks to step."""
    op_count, vae = benchmark_script("op_count"), tiny_tokenizer()
    calls = {}
    for depth in (2, 3):
        sampler = ScaleSampler(tiny_model("attention", depth=depth, vae=vae), vae, cfg=1.5, top_k=10, top_p=0.9)
        calls[depth] = [op_count.python_call_record(
            lambda: sampler.scales(torch.tensor([3]), torch.Generator().manual_seed(seed), None, False, None),
            "varbench", "fp32")["value"] for seed in (0, 1)]
    assert calls[2][0] == calls[2][1] and calls[3][0] == calls[3][1]
    assert calls[3][0] > calls[2][0] > 0


def test_host_dispatch_table_sums_a_generation_s_parts_without_the_decode(tmp_path):
    """The host table (report/host_dispatch.md): per system and precision the ops of every part but the decode,
    their non-view ones, and the Python calls of the same system and precision."""
    import json

    from varbench.analysis import load_records
    from varbench.analysis.host import host_dispatch_table
    lines = [{"metric": "aten_ops", "value": v, "kernels": k, "unit": "ops per generation", "system": system,
              "part": part, "precision": "fp32", "date": "2099-01-01T00:00:00+00:00"}
             for system, parts in (("varbench", {"block.attention": (50, 20), "head": (7, 3), "decode": (900, 800)}),
                                   ("official_var", {"block.attention": (60, 30), "head": (9, 4), "decode": (1, 1)}))
             for part, (v, k) in parts.items()]
    lines += [{"metric": "python_calls", "value": n, "unit": "calls per generation", "system": system,
               "precision": "fp32", "date": "2099-01-01T00:00:00+00:00"}
              for system, n in (("varbench", 100), ("official_var", 140))]
    (tmp_path / "ops.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    table = host_dispatch_table(load_records(tmp_path))
    assert table.loc[("varbench", "fp32")].tolist() == [57, 23, 100]
    assert table.loc[("official VAR", "fp32")].tolist() == [69, 34, 140]


def test_scale_logits_names_states_that_are_not_its_own():
    """The AdaLN rows travel in the states from scale 0 on: a state list without the model's own entry, or a later
    scale without the rows, is an error that says what to pass (never silently recomputed or misread)."""
    model = tiny_model("attention", depth=2, vae=tiny_tokenizer())
    cond_2BD = model.class_emb(torch.tensor([1, model.num_classes]))
    states = model.initial_states(2, cond_2BD.device, cond_2BD.dtype)
    x_2BlC = torch.randn(2, 1, model.width)
    with pytest.raises(ValueError, match="3 \\(one per block, then the model's\\)"):
        model.scale_logits(x_2BlC, states[:-1], cond_2BD, 0)
    with pytest.raises(ValueError, match="no AdaLN rows"):
        model.scale_logits(torch.randn(2, 4, model.width), states, cond_2BD, 1)
