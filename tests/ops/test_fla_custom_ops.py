"""fla's kernels as the custom ops `varbench::fla_fwd` / `fla_bwd` (varbench/ops/linear_rnn/kernel.py).

On CPU: the fakes promise the shapes and dtypes that the references (the oracles) return, with and without an initial
and a final state, autograd reaches `fla_bwd` with a gradient for each input that has one, and the ops refuse what fla
would not differentiate or take. On a GPU: each op equals fla's public function in values and gradients (the same
kernels on the same inputs, so exactly), passes torch.library.opcheck, and compiles into one graph (fullgraph=True)
with the result of eager.
Shape legend: B batch, T tokens, H heads, K key dim, V value dim.
"""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from varbench.mixers.retnet import retention_log_decay
from varbench.ops.linear_rnn import delta_rule, gla, kernel

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and fla")
B, T, H, K, V = 2, 100, 4, 32, 16

# case -> (fla kernel, decay: key / head / gamma / none, whether it is a delta rule, mode)
CASES = {
    "gla": ("chunk_gla", "key", False, "chunk"),
    "simple_gla": ("chunk_simple_gla", "head", False, "chunk"),
    "retention": ("chunk_simple_gla", "gamma", False, "chunk"),
    "linear_attn": ("chunk_simple_gla", "none", False, "chunk"),
    "delta_rule": ("chunk_delta_rule", "none", True, "chunk"),
    "gated_delta_rule": ("chunk_gated_delta_rule", "head", True, "chunk"),
    "recurrent_delta_rule": ("fused_recurrent_delta_rule", "none", True, "fused_recurrent"),
    "recurrent_gated_delta_rule": ("fused_recurrent_gated_delta_rule", "head", True, "fused_recurrent"),
}
TRAINABLE = [c for c in CASES if c != "recurrent_gated_delta_rule"]  # fla 0.6 has no backward for that one


def make_inputs(case, device="cpu", dtype=torch.bfloat16, seed=0):
    """bf16 q, k, v (what autocast hands the kernels), an fp32 log-decay and an fp32 state."""
    _, decay, is_delta, _ = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    q, k, v = r(B, T, H, K).to(dtype), r(B, T, H, K).to(dtype), r(B, T, H, V).to(dtype)
    if is_delta:
        k = F.normalize(k.float(), dim=-1).to(dtype)
    inputs = dict(q=q, k=k, v=v)
    if decay in ("key", "head"):
        inputs["g"] = F.logsigmoid(r(*(B, T, H, K)[: 4 if decay == "key" else 3]))
    if decay == "gamma":
        inputs["g_gamma"] = retention_log_decay(H, torch.device(device))
    if is_delta:
        inputs["beta"] = torch.rand(B, T, H, generator=gen).to(device, dtype)
    return inputs, r(B, H, K, V)


def run(case, inputs, state, output_final_state, backend):
    """The case through the reference or the fla ops, with the arguments the mixers use."""
    _, _, is_delta, mode = CASES[case]
    if is_delta:
        extra = dict(backend=backend, mode=mode, use_qk_l2norm=True)
        return delta_rule(**inputs, initial_state=state, output_final_state=output_final_state, **extra)
    return gla(**inputs, initial_state=state, output_final_state=output_final_state, backend=backend)


def on_cuda(mode, t):
    """A fake CUDA tensor like `t` (no GPU needed): the kernel path refuses CPU tensors, as on a real machine."""
    return mode.from_tensor(t).to("cuda")


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("output_final_state", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_the_fakes_promise_what_the_reference_returns(case, with_state, output_final_state):
    inputs, state = make_inputs(case)
    state = state if with_state else None
    o_ref, final_ref = run(case, inputs, state, output_final_state, "reference")
    with FakeTensorMode() as mode:
        fake = {name: on_cuda(mode, t) for name, t in inputs.items()}
        o, final = run(case, fake, on_cuda(mode, state) if with_state else None, output_final_state, "fla")
    assert (o.shape, o.dtype) == (o_ref.shape, o_ref.dtype)
    if output_final_state:
        assert (final.shape, final.dtype) == (final_ref.shape, final_ref.dtype) == ((B, H, K, V), torch.float32)
    else:
        assert final is None and final_ref is None


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("case", TRAINABLE)
def test_autograd_reaches_the_backward_op_with_a_gradient_per_input(case, with_state, monkeypatch):
    # autograd's engine needs a real device for fake CUDA tensors: fake CPU ones here, past the guard that refuses
    # CPU tensors on the kernel path (the guard itself: tests/test_backend.py::test_the_fla_ops_refuse_cpu_tensors)
    import varbench.ops.linear_rnn as linear_rnn
    monkeypatch.setattr(linear_rnn, "_on_cuda", lambda q, backend: None)
    inputs, state = make_inputs(case)
    with FakeTensorMode() as mode:
        fake = {name: mode.from_tensor(t).requires_grad_(name != "g_gamma") for name, t in inputs.items()}
        fake_state = mode.from_tensor(state).requires_grad_(True) if with_state else None
        o, final = run(case, fake, fake_state, True, "fla")
        leaves = [t for name, t in fake.items() if name != "g_gamma"] + ([fake_state] if with_state else [])
        grads = torch.autograd.grad(o.float().sum() + final.sum(), leaves)
    for grad, leaf in zip(grads, leaves):
        assert (grad.shape, grad.dtype) == (leaf.shape, leaf.dtype)


def test_a_trainable_g_gamma_is_refused():
    inputs, _ = make_inputs("retention")
    with pytest.raises(ValueError, match="g_gamma"):
        kernel.gla_fla(**{**inputs, "g_gamma": inputs["g_gamma"].requires_grad_(True)})


def test_an_unknown_kernel_is_refused():
    inputs, _ = make_inputs("gla")
    with pytest.raises(ValueError, match="unknown fla kernel 'chunk_gla2'"):
        kernel.fla_call("chunk_gla2", **inputs)


@pytest.mark.parametrize("case", list(CASES))
def test_each_fla_function_takes_the_inputs_we_give_it(case):
    # a renamed parameter in a new fla release must fail loudly here, not drop an input
    pytest.importorskip("fla")
    name, decay, is_delta, _ = CASES[case]
    inputs, state = make_inputs(case)
    given = dict(inputs, initial_state=state, scale=0.5, output_final_state=True, use_qk_l2norm_in_kernel=is_delta)
    kwargs = kernel._forward_kwargs(kernel._function(name), **given)
    assert {k for k, v in given.items() if v is not None and v is not False} <= set(kwargs)


def test_an_option_the_function_does_not_take_is_refused():
    pytest.importorskip("fla")
    with pytest.raises(ValueError, match="use_qk_l2norm_in_kernel"):
        kernel._forward_kwargs(kernel._function("chunk_gla"), use_qk_l2norm_in_kernel=True)



class ShuffledFunction(torch.autograd.Function):
    """A library Function whose forward takes its inputs in another order than ours, one of them left at a default:
    its backward's i-th gradient belongs to its forward's i-th parameter."""

    @staticmethod
    def forward(ctx, v, scale, q, output_final_state, initial_state, k, chunk_size=64, g=None):
        ctx.save_for_backward(q)
        return v, initial_state

    @staticmethod
    def backward(ctx, do, dht):
        return "dv", None, "dq", None, "dh0", "dk", None, "dg"


def test_the_library_gradients_are_named_by_the_forwards_signature_order():
    ctx = kernel._Ctx()
    kwargs = kernel._forward_kwargs(ShuffledFunction, q=1, k=2, v=3, g=4, initial_state=5, scale=0.5,
                                    output_final_state=True)
    ShuffledFunction.forward(ctx, **kwargs)
    grads = kernel._library_backward(ShuffledFunction, ctx, None, None)
    assert {name: grads[name] for name in ("q", "k", "v", "g", "initial_state")} == {
        "q": "dq", "k": "dk", "v": "dv", "g": "dg", "initial_state": "dh0"}

def fla_library_call(case, inputs, state):
    """fla's public function for the case, as a user of fla would call it."""
    import fla.ops as ops

    name, decay, _, _ = CASES[case]
    common = dict(initial_state=state, output_final_state=True)
    i = inputs
    if name == "chunk_gla":
        return ops.gla.chunk_gla(i["q"], i["k"], i["v"], i["g"], **common)
    if decay == "none" and name == "chunk_simple_gla":
        return ops.linear_attn.chunk_linear_attn(i["q"], i["k"], i["v"], normalize=False, **common)
    if name == "chunk_simple_gla":
        return ops.simple_gla.chunk_simple_gla(i["q"], i["k"], i["v"], g=i.get("g"), g_gamma=i.get("g_gamma"),
                                               **common)
    gate = {"g": i["g"]} if "g" in i else {}  # by name: fused_recurrent_gated_delta_rule's 5th argument is gk
    return getattr(ops, name)(i["q"], i["k"], i["v"], beta=i["beta"], use_qk_l2norm_in_kernel=True, **gate, **common)


def cuda_leaves(case, with_state):
    inputs, state = make_inputs(case, device="cuda")
    for name, t in inputs.items():
        t.requires_grad_(name != "g_gamma")
    state = state.requires_grad_(True) if with_state else None
    leaves = [t for name, t in inputs.items() if name != "g_gamma"] + ([state] if with_state else [])
    return inputs, state, leaves


@CUDA
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_the_op_equals_fla_in_values_and_gradients(case, with_state):
    inputs, state, leaves = cuda_leaves(case, with_state)
    o, final = run(case, inputs, state, True, "fla")
    o_lib, final_lib = fla_library_call(case, inputs, state)
    torch.testing.assert_close(o, o_lib, rtol=0, atol=0)  # the same kernels on the same inputs
    torch.testing.assert_close(final, final_lib, rtol=0, atol=0)
    if case not in TRAINABLE:
        return
    do, dfinal = torch.randn_like(o), torch.randn_like(final)
    ours = torch.autograd.grad((o * do).float().sum() + (final * dfinal).sum(), leaves)
    theirs = torch.autograd.grad((o_lib * do).float().sum() + (final_lib * dfinal).sum(), leaves)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@CUDA
@pytest.mark.parametrize("case", TRAINABLE)
def test_opcheck(case):
    inputs, state, _ = cuda_leaves(case, with_state=True)
    name, _, is_delta, _ = CASES[case]
    i = inputs
    args = (name, i["q"], i["k"], i["v"], i.get("g"), i.get("g_gamma"), i.get("beta"), state, K ** -0.5, True,
            is_delta)
    torch.library.opcheck(torch.ops.varbench.fla_fwd, args)


@CUDA
@pytest.mark.parametrize("case", ["gla", "retention", "gated_delta_rule"])
def test_the_op_compiles_into_one_graph(case):
    inputs, state, leaves = cuda_leaves(case, with_state=True)

    def loss(*leaves):
        named = dict(zip([n for n in inputs if n != "g_gamma"], leaves))
        o, final = run(case, {**inputs, **named}, leaves[-1], True, "fla")
        return o.float().square().mean() + final.mean()

    eager = torch.autograd.grad(loss(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(*leaves), leaves)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)  # bf16; inductor fuses the loss differently
