"""The causal conv1d as shifted multiply-adds (varbench/ops/causal_conv/shifts.py) against the reference's F.conv1d,
the oracle: values, next tails and gradients in float64 at every width, fed whole or in pieces (pieces shorter than
the tail too); bf16 inputs within one bf16 rounding; torch.compile traces it into one graph (fullgraph=True) with
eager's values and gradients. A Mamba2 mixer with `conv_backend: torch` equals one with the reference's conv, forward
and scale by scale; bad `conv_backend` values are refused by name. On a GPU: the mixer with `conv_backend: torch` on
mamba_ssm's other kernels equals the one on causal_conv1d's kernel within the bf16 parity tolerance, and compiles into
one graph.

Shape legend: B batch, L tokens, D channels, W kernel width.
"""

import pytest
import torch
from compile_checks import assert_training_compiles_into_one_graph

from varbench.layout import ScaleLayout
from varbench.mixers.mamba2 import Mamba2Mixer
from varbench.ops.causal_conv.reference import causal_conv1d_ref
from varbench.ops.causal_conv.shifts import causal_conv1d_shifts
from varbench.utils.compare import rel_rms

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device, mamba_ssm and causal_conv1d")


def make_inputs(L=30, D=8, W=4, dtype=F64, seed=0):
    """x, weight (D, W), bias, tail (B, W - 1, D), all leaves that want gradients."""
    g = torch.Generator().manual_seed(seed)
    shapes = ((2, L, D), (D, W), (D,), (2, W - 1, D))
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def values_and_grads(conv, x, w, b, tail, activation="silu"):
    y, next_tail = conv(x, w, b, tail, activation=activation)
    leaves = [t for t in (x, w, b, tail) if t is not None]
    g = torch.Generator().manual_seed(1)
    return y, next_tail, torch.autograd.grad((y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum(), leaves)


@pytest.mark.parametrize("W", [1, 2, 3, 4])
@pytest.mark.parametrize("with_tail", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_equals_the_reference_in_values_tails_and_gradients(W, with_tail, activation):
    x, w, b, tail = make_inputs(W=W)
    tail = tail if with_tail else None
    y, next_tail, grads = values_and_grads(causal_conv1d_shifts, x, w, b, tail, activation)
    y_ref, next_tail_ref, grads_ref = values_and_grads(causal_conv1d_ref, x, w, b, tail, activation)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(next_tail, next_tail_ref, rtol=0, atol=0)
    for a, e in zip(grads, grads_ref):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pieces", [[1, 4, 9, 16], [1, 1, 2, 26]])
def test_pieces_with_tails_equal_the_reference_in_one_pass(pieces):
    x, w, b, _ = make_inputs()
    y_full, _ = causal_conv1d_ref(x, w, b, activation="silu")
    tail, ys = None, []
    for piece in torch.split(x, pieces, dim=1):
        y, tail = causal_conv1d_shifts(piece, w, b, tail, activation="silu")
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=0, atol=1e-12)


def test_bf16_inputs_round_once_like_the_reference():
    x, w, b, tail = (t.detach() for t in make_inputs(dtype=torch.float32))
    x, tail = x.bfloat16(), tail.bfloat16()
    y, _ = causal_conv1d_shifts(x, w, b, tail, activation="silu")
    exact, _ = causal_conv1d_ref(x.double(), w.double(), b.double(), tail.double(), activation="silu")
    assert y.dtype == torch.bfloat16
    # fp32 accumulation then one rounding: within half a bf16 step (2^-9 relative) of the exact value
    torch.testing.assert_close(y.double(), exact, rtol=2 ** -8, atol=1e-6)


def test_bad_activation_is_refused_by_name():
    x, w, b, _ = make_inputs()
    with pytest.raises(ValueError, match="'gelu'"):
        causal_conv1d_shifts(x, w, b, activation="gelu")


def test_compiles_into_one_graph_with_eager_values_and_gradients():
    x, w, b, tail = (t.float().detach().requires_grad_() for t in make_inputs(L=12, D=16))
    torch._dynamo.reset()
    compiled = torch.compile(causal_conv1d_shifts, fullgraph=True)
    y, next_tail, grads = values_and_grads(compiled, x, w, b, tail)
    y_eager, next_tail_eager, grads_eager = values_and_grads(causal_conv1d_shifts, x, w, b, tail)
    torch.testing.assert_close(y, y_eager, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(next_tail, next_tail_eager, rtol=0, atol=0)
    for a, e in zip(grads, grads_eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def mixers(**options):
    """Two Mamba2 mixers with the same weights: the reference's conv, and `options` (conv_backend: torch)."""
    torch.manual_seed(0)
    auto = Mamba2Mixer(32, backend="reference", headdim=16, chunk_size=8).double()
    other = Mamba2Mixer(32, backend="reference", headdim=16, chunk_size=8, **options).double()
    other.load_state_dict(auto.state_dict())
    return auto, other


def test_a_mamba2_mixer_with_the_torch_conv_equals_the_reference_forward_and_by_scale():
    auto, shifts = mixers(conv_backend="torch")
    layout = ScaleLayout((1, 2, 3, 4))
    x = torch.randn(2, layout.L, 32, dtype=F64)
    torch.testing.assert_close(shifts(x, layout), auto(x, layout), rtol=0, atol=1e-12)
    states = [m.init_state(2, layout, dtype=F64) for m in (auto, shifts)]
    for k in range(layout.num_scales):
        (y_auto, states[0]), (y, states[1]) = (m.step(x[:, layout.slice(k)], s, layout, k)
                                               for m, s in zip((auto, shifts), states))
        torch.testing.assert_close(y, y_auto, rtol=0, atol=1e-12)


@pytest.mark.parametrize("options, named", [({"conv_backend": "cuda"}, "conv_backend='cuda'"),
                                            ({"conv_backend": "torch", "fused": True}, "conv_backend='torch'")])
def test_bad_conv_backend_values_are_refused_by_name(options, named):
    with pytest.raises(ValueError, match=named):
        Mamba2Mixer(32, backend="reference", headdim=16, **options)


@CUDA
def test_on_cuda_the_torch_conv_equals_the_kernel_and_compiles_into_one_graph():
    torch.manual_seed(0)
    kernel = Mamba2Mixer(64, backend="mamba_ssm").cuda()
    shifts = Mamba2Mixer(64, backend="mamba_ssm", conv_backend="torch").cuda()
    shifts.load_state_dict(kernel.state_dict())
    layout = ScaleLayout((1, 2, 3, 4, 5))
    x = torch.randn(2, layout.L, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert rel_rms(shifts(x, layout).float(), kernel(x, layout).float()) <= 3e-2  # the bf16 parity tolerance
    assert_training_compiles_into_one_graph(shifts, layout, 64, 3e-2)
