"""Gated-linear-attention references on CPU (GLA, RetNet, linear attention and HGRN2 run on them): chunked ==
sequential, state carrying, gradients, and a cross-check against fla's own naive references.

Shape legend: B batch, T tokens, H heads, K key dim, V value dim.
Tolerances: float64 chunked vs sequential agree to ~3e-14 (measured), so 1e-10 is tight. fla's naive references
compute in float32 whatever the input: against them 2e-5 relative to max|o| (measured <= 2.2e-6) leaves 10x headroom
and is far below a real mistake (a wrong scale, decay or layout moves o by > 1e-2).
"""

import pytest
import torch
import torch.nn.functional as F
from fla_reference import fla_naive

from varbench.layout import ScaleLayout
from varbench.mixers.retnet import retention_log_decay
from varbench.ops.linear_rnn import gla, gla_chunk_ref, gla_recurrent_ref
from varbench.utils.compare import rel_max

F64 = torch.float64
DECAYS = ["key", "head", "none"]


def make_inputs(decay, B=2, T=130, H=3, K=16, V=24, dtype=F64, seed=0, strength=2.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    decay_shape = {"key": (B, T, H, K), "head": (B, T, H)}.get(decay)
    log_decay = None if decay_shape is None else F.logsigmoid(strength * r(*decay_shape))
    return dict(q=q, k=k, v=v, g=log_decay), r(B, H, K, V)


@pytest.mark.parametrize("chunk_size", [1, 16, 37, 64])
@pytest.mark.parametrize("decay", DECAYS)
def test_chunked_equals_sequential_fp64(decay, chunk_size):
    # T = 130 is not a multiple of any chunk size above but 1: the padded tail must not leak
    inp, h0 = make_inputs(decay)
    o_seq, s_seq = gla_recurrent_ref(**inp, initial_state=h0, output_final_state=True)
    o, s = gla_chunk_ref(**inp, initial_state=h0, output_final_state=True, chunk_size=chunk_size)
    torch.testing.assert_close(o, o_seq, rtol=0, atol=1e-10)
    torch.testing.assert_close(s, s_seq, rtol=0, atol=1e-10)


@pytest.mark.parametrize("decay", ["key", "head"])
def test_strong_decay_does_not_overflow_fp32(decay):
    # log-decays down to -85 per token sum to -1300 over a 64-token chunk: a k / exp(cumsum) factorisation would
    # overflow. The differences of large fp32 cumsums lose digits (measured 1e-5..2.3e-5 relative to max|o| against
    # the fp64 oracle, 1e-7 for the fp32 sequential form); realistic gates (logsigmoid / 16) stay near 1e-6.
    inp, h0 = make_inputs(decay, strength=20.0)
    o_oracle, s_oracle = gla_recurrent_ref(**inp, initial_state=h0, output_final_state=True)
    inp32 = {name: t.float() for name, t in inp.items()}
    o, s = gla_chunk_ref(**inp32, initial_state=h0.float(), output_final_state=True, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert rel_max(o, o_oracle) < 1e-4 and rel_max(s, s_oracle) < 1e-4


@pytest.mark.parametrize("decay", DECAYS)
def test_appending_scales_equals_one_pass(decay):
    layout = ScaleLayout((1, 2, 3, 4, 6, 8))
    inp, _ = make_inputs(decay, T=layout.L)
    o_full, s_full = gla(**inp, output_final_state=True)
    state, outs = None, []
    for sl in layout.segments():
        part = {name: None if t is None else t[:, sl] for name, t in inp.items()}
        o, state = gla(**part, initial_state=state, output_final_state=True)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=1), o_full, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, s_full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("decay", DECAYS)
def test_chunked_gradients_equal_sequential_fp64(decay):
    inp, h0 = make_inputs(decay, T=45, H=2, K=8, V=8)
    leaves = {name: t.requires_grad_() for name, t in {**inp, "h0": h0}.items() if t is not None}
    grads = []
    for fn in (gla_recurrent_ref, lambda **kw: gla_chunk_ref(**kw, chunk_size=16)):
        o, s = fn(**inp, initial_state=h0, output_final_state=True)
        grads.append(torch.autograd.grad((o.sin().sum() + s.cos().sum()), list(leaves.values())))
    for name, g_seq, g_chunk in zip(leaves, *grads):
        torch.testing.assert_close(g_chunk, g_seq, rtol=0, atol=1e-10, msg=f"d{name}")


def test_fp32_chunked_close_to_fp64_sequential():
    inp, h0 = make_inputs("key", T=300)
    o_seq, s_seq = gla_recurrent_ref(**inp, initial_state=h0, output_final_state=True)
    inp32 = {name: t.float() for name, t in inp.items()}
    o, s = gla(**inp32, initial_state=h0.float(), output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_max(o, o_seq) < 5e-6 and rel_max(s, s_seq) < 5e-6


def test_matches_fla_naive_recurrent_gla():
    naive = fla_naive("gla")
    inp, h0 = make_inputs("key")
    # fla's reference fixes scale = K ** -0.5, our default too
    o_ref, s_ref = naive.naive_recurrent_gla(inp["q"], inp["k"], inp["v"], inp["g"], initial_state=h0,
                                             output_final_state=True)
    o, s = gla(**inp, initial_state=h0, output_final_state=True)
    assert rel_max(o, o_ref) < 2e-5 and rel_max(s, s_ref) < 2e-5


def test_matches_fla_naive_simple_gla():
    naive = fla_naive("simple_gla")
    inp, h0 = make_inputs("head")
    for fn in (naive.naive_recurrent_simple_gla, naive.naive_chunk_simple_gla):
        o_ref, s_ref = fn(inp["q"], inp["k"], inp["v"], inp["g"], initial_state=h0.float(), output_final_state=True,
                          scale=0.3)
        o, s = gla(**inp, initial_state=h0, output_final_state=True, scale=0.3)
        assert rel_max(o, o_ref) < 2e-5 and rel_max(s, s_ref) < 2e-5, fn.__name__


def test_retnet_decay_matches_fla_naive_retention():
    naive = fla_naive("retention")
    inp, _ = make_inputs("none", H=4)
    # fla's retention reference is head-first [B, H, T, D] and builds the gammas 1 - 2^(-5-h) itself
    o_ref = naive.naive_retention(*(inp[n].transpose(1, 2) for n in ("q", "k", "v"))).transpose(1, 2)
    o, _ = gla(inp["q"], inp["k"], inp["v"], g_gamma=retention_log_decay(4).double())
    assert rel_max(o, o_ref) < 2e-5


def test_matches_fla_naive_linear_attn():
    naive = fla_naive("linear_attn")
    inp, h0 = make_inputs("none")
    o_ref, s_ref = naive.naive_recurrent_linear_attn(inp["q"], inp["k"], inp["v"], initial_state=h0.float(),
                                                     output_final_state=True, normalize=False)
    o, s = gla(inp["q"], inp["k"], inp["v"], initial_state=h0, output_final_state=True)
    assert rel_max(o, o_ref) < 2e-5 and rel_max(s, s_ref) < 2e-5


def test_bad_arguments_are_errors():
    inp, _ = make_inputs("head", T=8)
    with pytest.raises(ValueError, match="not both"):
        gla(**inp, g_gamma=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="valid"):
        gla(**inp, backend="no-such-kernel")
