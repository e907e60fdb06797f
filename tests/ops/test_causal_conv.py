"""Causal depthwise conv1d with a carried tail on CPU: the formula, Mamba's padded nn.Conv1d, and feeding a
sequence in pieces (including pieces shorter than the tail).

Shape legend: B batch, L tokens, D channels, W kernel width.
"""

import pytest
import torch
import torch.nn.functional as F

from varbench.ops.causal_conv.reference import causal_conv1d_ref, next_tail

F64 = torch.float64


def make_inputs(L=30, D=8, W=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, L, D, generator=g, dtype=F64), torch.randn(D, W, generator=g, dtype=F64),
            torch.randn(D, generator=g, dtype=F64))


@pytest.mark.parametrize("W", [1, 2, 3, 4])
def test_formula(W):
    x, w, b = make_inputs(W=W)
    y, tail = causal_conv1d_ref(x, w, b)
    x_pad = F.pad(x, (0, 0, W - 1, 0))
    expected = torch.stack([(x_pad[:, t:t + W] * w.T).sum(1) + b for t in range(x.shape[1])], dim=1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(tail, x[:, x.shape[1] - (W - 1):], rtol=0, atol=0)


def test_equals_mamba_padded_conv1d_with_silu():
    # mamba_ssm without causal_conv1d: act(nn.Conv1d(padding=W-1)(x)[..., :L])
    x, w, b = make_inputs()
    conv = torch.nn.Conv1d(8, 8, 4, groups=8, padding=3).double()
    with torch.no_grad():
        conv.weight.copy_(w[:, None]), conv.bias.copy_(b)
        expected = F.silu(conv(x.transpose(1, 2))[..., :x.shape[1]]).transpose(1, 2)
    y, _ = causal_conv1d_ref(x, w, b, activation="silu")
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("pieces", [[1, 4, 9, 16], [1, 1, 2, 26], [30]])
def test_pieces_with_tail_equal_one_pass(W, pieces):
    x, w, b = make_inputs(W=W)
    y_full, tail_full = causal_conv1d_ref(x, w, b, activation="silu")
    tail, ys = None, []
    for piece in torch.split(x, pieces, dim=1):
        y, tail = causal_conv1d_ref(piece, w, b, tail, activation="silu")
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=0, atol=1e-12)
    torch.testing.assert_close(tail, tail_full, rtol=0, atol=0)


def test_tail_shorter_piece_keeps_old_context():
    # one token after a tail of three: the next tail is (tail[1], tail[2], token)
    x, w, b = make_inputs(L=1)
    tail = torch.randn(2, 3, 8, dtype=F64)
    _, new_tail = causal_conv1d_ref(x, w, b, tail)
    torch.testing.assert_close(new_tail, torch.cat([tail[:, 1:], x], dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("L", [1, 2, 3, 30])
def test_the_next_tail_is_a_copy_of_its_last_rows_alone(L):
    # a carried state holds W - 1 rows, never a view of x (a slice of in_proj's output) or of a copy of all of x
    wide = torch.randn(2, L, 24, dtype=F64)
    x, tail = wide[..., 4:12], torch.randn(2, 3, 8, dtype=F64)
    new_tail = next_tail(x, tail, 4)
    torch.testing.assert_close(new_tail, torch.cat([tail, x], dim=1)[:, -3:], rtol=0, atol=0)
    assert new_tail.is_contiguous() and new_tail.untyped_storage().nbytes() == new_tail.numel() * 8


def test_dtype_and_bad_activation():
    x, w, b = make_inputs()
    y, tail = causal_conv1d_ref(x.float(), w.float(), b.float())
    assert y.dtype == torch.float32 and tail.dtype == torch.float32
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_ref(x, w, b, activation="gelu")
