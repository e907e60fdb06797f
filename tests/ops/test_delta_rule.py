"""(Gated) delta-rule references on CPU (DeltaNet and Gated DeltaNet run on them): chunked (WY form) == sequential,
state carrying, gradients, and a cross-check against fla's own naive references.

Shape legend: B batch, T tokens, H heads, K key dim, V value dim.
Tolerances: float64 chunked vs sequential agree to ~5e-15 (measured), so 1e-10 is tight. fla's naive references
compute in float32 whatever the input: against them 2e-5 relative to max|o| (measured <= 2.2e-6) leaves 10x headroom
and is far below a real mistake (a missing beta, decay or l2 norm moves o by > 1e-2).
"""

import pytest
import torch
import torch.nn.functional as F
from fla_reference import fla_naive

from varbench.layout import ScaleLayout
from varbench.ops.linear_rnn import delta_rule, delta_rule_chunk_ref, delta_rule_recurrent_ref, l2norm_ref
from varbench.utils.compare import rel_max

F64 = torch.float64
GATED = [True, False]


def make_inputs(gated, B=2, T=130, H=3, K=16, V=24, dtype=F64, seed=0):
    """Keys are l2-normalised (the delta rule is a contraction only for |beta k|^2 <= 2); queries are not."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    inp = dict(q=r(B, T, H, K), k=l2norm_ref(r(B, T, H, K)), v=r(B, T, H, V),
               beta=torch.rand(B, T, H, generator=g, dtype=dtype), g=F.logsigmoid(r(B, T, H)) if gated else None)
    return inp, r(B, H, K, V)


@pytest.mark.parametrize("chunk_size", [1, 16, 37, 64])
@pytest.mark.parametrize("gated", GATED)
def test_chunked_equals_sequential_fp64(gated, chunk_size):
    # T = 130 is not a multiple of any chunk size above but 1: the padded tail must not leak
    inp, h0 = make_inputs(gated)
    o_seq, s_seq = delta_rule_recurrent_ref(**inp, initial_state=h0, output_final_state=True)
    o, s = delta_rule_chunk_ref(**inp, initial_state=h0, output_final_state=True, chunk_size=chunk_size)
    torch.testing.assert_close(o, o_seq, rtol=0, atol=1e-10)
    torch.testing.assert_close(s, s_seq, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gated", GATED)
def test_appending_scales_equals_one_pass(gated):
    layout = ScaleLayout((1, 2, 3, 4, 6, 8))
    inp, _ = make_inputs(gated, T=layout.L)
    o_full, s_full = delta_rule(**inp, output_final_state=True)
    state, outs = None, []
    for sl in layout.segments():
        part = {name: None if t is None else t[:, sl] for name, t in inp.items()}
        o, state = delta_rule(**part, initial_state=state, output_final_state=True)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=1), o_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, s_full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gated", GATED)
def test_chunked_gradients_equal_sequential_fp64(gated):
    inp, h0 = make_inputs(gated, T=45, H=2, K=8, V=8)
    # raw (unnormalised) q and k through the l2 norm, as the mixers call it
    inp["k"] = torch.randn_like(inp["k"])
    leaves = {name: t.requires_grad_() for name, t in {**inp, "h0": h0}.items() if t is not None}
    grads = []
    for fn in (delta_rule_recurrent_ref, lambda **kw: delta_rule_chunk_ref(**kw, chunk_size=16)):
        o, s = fn(**inp, initial_state=h0, output_final_state=True, use_qk_l2norm=True)
        grads.append(torch.autograd.grad(o.sin().sum() + s.cos().sum(), list(leaves.values())))
    for name, g_seq, g_chunk in zip(leaves, *grads):
        torch.testing.assert_close(g_chunk, g_seq, rtol=0, atol=1e-10, msg=f"d{name}")


def test_fp32_chunked_close_to_fp64_sequential():
    inp, h0 = make_inputs(True, T=300)
    o_seq, s_seq = delta_rule_recurrent_ref(**inp, initial_state=h0, output_final_state=True)
    inp32 = {name: t.float() for name, t in inp.items()}
    o, s = delta_rule(**inp32, initial_state=h0.float(), output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_max(o, o_seq) < 5e-6 and rel_max(s, s_seq) < 5e-6


def test_l2norm_in_the_op_equals_normalised_inputs():
    inp, h0 = make_inputs(True, T=40)
    raw_q, raw_k = inp["q"], torch.randn_like(inp["k"])
    expected = raw_k / torch.sqrt(raw_k.square().sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(l2norm_ref(raw_k), expected, rtol=0, atol=1e-14)
    o1, _ = delta_rule(**{**inp, "q": raw_q, "k": raw_k}, initial_state=h0, use_qk_l2norm=True)
    o2, _ = delta_rule(**{**inp, "q": l2norm_ref(raw_q), "k": expected}, initial_state=h0)
    torch.testing.assert_close(o1, o2, rtol=0, atol=1e-12)


def test_matches_fla_naive_delta_rule():
    naive = fla_naive("delta_rule")
    inp, h0 = make_inputs(False, T=128)
    # fla's delta-rule references are head-first [B, H, T, D]
    q, k, v, beta = (inp[n].transpose(1, 2) for n in ("q", "k", "v", "beta"))
    o_ref, s_ref = naive.delta_rule_recurrence(q, k, v, beta, initial_state=h0.float(), output_final_state=True)
    o, s = delta_rule(**inp, initial_state=h0, output_final_state=True)
    assert rel_max(o, o_ref.transpose(1, 2)) < 2e-5 and rel_max(s, s_ref) < 2e-5
    # the chunkwise reference takes no initial state and needs T to be a multiple of its chunk
    o_ref, s_ref = naive.delta_rule_chunkwise(q.float(), k.float(), v.float(), beta.float(), chunk_size=32)
    o, s = delta_rule(**inp, output_final_state=True)
    assert rel_max(o, o_ref.transpose(1, 2)) < 2e-5 and rel_max(s, s_ref) < 2e-5


def test_matches_fla_naive_gated_delta_rule():
    naive = fla_naive("gated_delta_rule")
    inp, h0 = make_inputs(True)
    q, k, v, beta, g = (inp[n] for n in ("q", "k", "v", "beta", "g"))
    o, s = delta_rule(**inp, initial_state=h0, output_final_state=True, scale=0.3)
    o_ref, s_ref = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=0.3, initial_state=h0,
                                                          output_final_state=True)
    assert rel_max(o, o_ref) < 2e-5 and rel_max(s, s_ref) < 2e-5
    o_ref, s_ref = naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, scale=0.3, initial_state=h0,
                                                      output_final_state=True)
    assert rel_max(o, o_ref) < 2e-5 and rel_max(s, s_ref) < 2e-5


def test_bad_arguments_are_errors():
    inp, _ = make_inputs(True, T=8)
    with pytest.raises(ValueError, match="valid"):
        delta_rule(**inp, backend="no-such-kernel")
