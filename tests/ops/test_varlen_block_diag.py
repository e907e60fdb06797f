"""Block-diagonal attention as one varlen flash-attention call (`kernel.varlen_block_diag_attention`, intra=full's
backends `varlen` and `torch_varlen`).

On CPU, each kernel stood in for by attention over each packed segment (the kernels' contract: (T, H, d) inputs,
int32 cumulative boundaries, the longest segment): both implementations pack every scale of every sample into a
segment of its own, hand the kernel views of the qkv projection's output (no copy) and unpack its output to the
dense block-diagonal reference's values; the boundaries are the layout's, made from segment ends cached when built
eagerly (one built while compiling is the graph's own); fp32 q, k, v and an unknown implementation are refused by
name.
On a GPU: intra=full on torch's varlen kernel equals the reference under bf16 autocast, `prepare_model_masks` builds
its segment ends, and it compiles into one graph (fullgraph=True) with eager's gradients.

Shape legend: B batch, H heads, L tokens of all scales, d head dim, T = B * L packed tokens.
"""

import sys
import types

import pytest
import torch
from compile_checks import assert_training_compiles_into_one_graph

from varbench.intra.full import IntraScaleAttention
from varbench.layout import ScaleLayout
from varbench.ops.attention import kernel
from varbench.ops.attention.reference import masked_attention_ref
from varbench.utils.compare import rel_rms

LAYOUT = ScaleLayout((1, 2, 3, 4))
B, H, d = 2, 2, 8
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch's varlen flash kernel)")


def segment_attention(q_THd, k_THd, v_THd, cu_q, cu_k, max_q, max_k, scale, seen):
    """The kernels' contract in plain torch: softmax attention within each segment [cu[i], cu[i+1])."""
    seen.update(pointers={t.data_ptr() for t in (q_THd, k_THd, v_THd)}, max=(max_q, max_k), cu=cu_q, cu_k=cu_k)
    out = torch.empty_like(q_THd)
    for s, e in zip(cu_q.tolist(), cu_q.tolist()[1:]):
        q, k, v = (t[s:e].transpose(0, 1).float() for t in (q_THd, k_THd, v_THd))  # (H, l, d)
        out[s:e] = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1).matmul(v).transpose(0, 1).to(out.dtype)
    return out


@pytest.fixture
def stand_ins(monkeypatch):
    """Both kernels stood in for by `segment_attention`; returns what each call handed the kernel."""
    seen = {}
    flash_attn = types.ModuleType("flash_attn")
    flash_attn.flash_attn_varlen_func = lambda q, k, v, cu_q, cu_k, mq, mk, softmax_scale: segment_attention(
        q, k, v, cu_q, cu_k, mq, mk, softmax_scale, seen)
    monkeypatch.setitem(sys.modules, "flash_attn", flash_attn)
    import torch.nn.attention.varlen as varlen
    monkeypatch.setattr(varlen, "varlen_attn", lambda q, k, v, cu_q, cu_k, mq, mk, *, scale: segment_attention(
        q, k, v, cu_q, cu_k, mq, mk, scale, seen))
    return seen


def qkv_views(dtype=torch.bfloat16):
    """q, k, v (B, H, L, d) as intra=full's projection makes them without l2_norm: views of one (B, L, 3, H, d)
    tensor; and that tensor."""
    qkv = torch.randn(B, LAYOUT.L, 3 * H * d, generator=torch.Generator().manual_seed(0)).to(dtype)
    return qkv.view(B, LAYOUT.L, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0), qkv


@pytest.mark.parametrize("impl", kernel.VARLEN_IMPLS)
def test_packs_each_scale_of_each_sample_as_a_view_and_unpacks_the_reference_values(impl, stand_ins):
    (q, k, v), qkv = qkv_views()
    o = kernel.varlen_block_diag_attention(q, k, v, LAYOUT, 0.3, impl)
    expected = masked_attention_ref(q.float(), k.float(), v.float(), LAYOUT.block_diag_mask(), 0.3)
    assert o.shape == q.shape and o.dtype == torch.bfloat16
    torch.testing.assert_close(o.float(), expected, rtol=0, atol=2e-2)  # the stand-in rounds once to bf16
    lengths = [1, 4, 9, 16] * B
    assert stand_ins["cu"].tolist() == [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    assert stand_ins["cu"].dtype == torch.int32 and stand_ins["cu_k"] is stand_ins["cu"]
    assert stand_ins["max"] == (16, 16)
    start, item = qkv.data_ptr(), qkv.element_size()
    assert stand_ins["pointers"] == {start, start + H * d * item, start + 2 * H * d * item}  # views: no copy


def test_the_boundaries_are_the_layout_s_made_on_the_device_from_ends_built_before_compiling():
    from varbench.ops.attention.kernel import _SEGMENT_ENDS
    torch.testing.assert_close(kernel.block_diag_cu_seqlens(LAYOUT, 3, "cpu"), LAYOUT.cu_seqlens(3), rtol=0, atol=0)
    assert (LAYOUT, "cpu") in _SEGMENT_ENDS  # built eagerly, so cached
    _SEGMENT_ENDS.clear()
    traced = torch.compile(lambda: kernel.block_diag_cu_seqlens(LAYOUT, 2, "cpu"), fullgraph=True)()
    torch.testing.assert_close(traced, LAYOUT.cu_seqlens(2), rtol=0, atol=0)
    assert (LAYOUT, "cpu") not in _SEGMENT_ENDS  # one built while tracing is the graph's own


def test_fp32_inputs_and_an_unknown_implementation_are_refused_by_name(stand_ins):
    (q, k, v), _ = qkv_views(torch.float32)
    with pytest.raises(ValueError, match="float16 / bfloat16.*float32"):
        kernel.varlen_block_diag_attention(q, k, v, LAYOUT, 0.3, "torch")
    (q, k, v), _ = qkv_views()
    with pytest.raises(ValueError, match="impl='cudnn'; valid: flash_attn, torch"):
        kernel.varlen_block_diag_attention(q, k, v, LAYOUT, 0.3, "cudnn")


@CUDA
def test_on_cuda_intra_full_on_torch_varlen_equals_the_reference_and_compiles_into_one_graph():
    torch.manual_seed(0)
    layout = ScaleLayout((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))  # VAR's 256 px scales: the lengths training meets
    varlen = IntraScaleAttention(64, 4, backend="torch_varlen").cuda()
    reference = IntraScaleAttention(64, 4, backend="reference").cuda()
    reference.load_state_dict(varlen.state_dict())
    x = torch.randn(2, layout.L, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert rel_rms(varlen(x, layout).float(), reference(x, layout).float()) <= 3e-2  # bf16's parity tolerance
    assert varlen.backend_ran == "torch_varlen"
    model = torch.nn.Module()
    model.layout, model.intra = layout, varlen
    kernel.prepare_model_masks(model)  # as compile_for_training does: the segment ends built before compiling
    assert (layout, kernel._device_key("cuda")) in kernel._SEGMENT_ENDS
    assert_training_compiles_into_one_graph(varlen, layout, 64, 3e-2)
