"""The AdaLN block's gated residual and modulated LayerNorm as Triton kernels (`varbench.ops.adaln.kernel`), which
the blocks run in training on a GPU (`model.adaln_kernel: auto`): the new stream, the branch input and the gradients
of x, y, gate, 1 + scale and shift are those of the torch form (`ln_modulate`, `residual_modulate` under autograd)
to rounding: no further from the fp64 values than the torch form in the same dtypes is. On the CPU the kernels run
in Triton's interpreter; on a GPU compiled, under bf16 autocast and inside a compiled training step (one graph)."""

import pytest
import torch
from triton_interpreter import run_interpreted

from varbench.modules.fused import ln_modulate, residual_modulate

EPS = 1e-6
# (B, L, C): tokens that fill no whole program (ROWS = 32), a width that is no power of two, more rows than a tile
SHAPES = [(2, 37, 64), (3, 5, 24), (1, 70, 40)]


def torch_form(x, y, gate, scale1p, shift, out_dtype):
    if y is None:
        return (ln_modulate(x, scale1p, shift, EPS, out_dtype),)
    return residual_modulate(x, y, gate, scale1p, shift, EPS, out_dtype)


def kernel_form(x, y, gate, scale1p, shift, out_dtype):
    from varbench.ops.adaln.kernel import adaln_modulate, adaln_residual_modulate
    if y is None:
        return (adaln_modulate(x, scale1p, shift, EPS, out_dtype),)
    return adaln_residual_modulate(x, y, gate, scale1p, shift, EPS, out_dtype)


def make_inputs(B, L, C):
    """x off zero, with one constant row (no variance: the LayerNorm divides by sqrt(eps)); y, gate, 1 + scale,
    shift."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, C, generator=g, dtype=torch.float64) * 2 + 0.5
    x[-1, L // 2] = 3.0
    rows = [torch.randn(B, 1, C, generator=g, dtype=torch.float64) for _ in range(3)]
    return x, torch.randn(B, L, C, generator=g, dtype=torch.float64), rows[0], rows[1] + 1, rows[2]


def values_and_grads(fn, inputs, residual, y_dtype, out_dtype, device, unused=None):
    """The outputs and the gradients of every input of a fixed random reduction of the outputs (`unused`: an output
    it leaves out, so its gradient is None). x and the AdaLN rows in fp32 (fp64 where y is), y in `y_dtype`."""
    x, y, gate, scale1p, shift = inputs
    wide = torch.float64 if y_dtype == torch.float64 else torch.float32
    leaves = [t.to(device, y_dtype if t is y else wide, copy=True).requires_grad_()
              for t in (x, y, gate, scale1p, shift)]
    args = leaves if residual else [leaves[0], None, None, *leaves[3:]]
    outs = fn(*args, out_dtype)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(device, o.dtype) for o in outs]
    sum((o * w).double().sum() for i, (o, w) in enumerate(zip(outs, weights)) if i != unused).backward()
    grads = [t.grad for t in (leaves if residual else [leaves[0], *leaves[3:]])]
    return [o.detach().double().cpu() for o in outs] + [t.double().cpu() for t in grads]


def excess_errors(device, y_dtype, out_dtype, residual=True, unused=None):
    """For each shape and each output and gradient: how much further from the fp64 torch form the kernels are than
    the torch form in the same dtypes is, in units of the narrowest dtype's eps times the largest fp64 value (<= 1:
    as close as the torch form, to one rounding)."""
    errors = []
    for shape in SHAPES:
        inputs = make_inputs(*shape)
        exact = values_and_grads(torch_form, inputs, residual, torch.float64, None, "cpu", unused)
        ref = values_and_grads(torch_form, inputs, residual, y_dtype, out_dtype, device, unused)
        got = values_and_grads(kernel_form, inputs, residual, y_dtype, out_dtype, device, unused)
        assert len(exact) == len(ref) == len(got)
        eps = torch.finfo(out_dtype or y_dtype).eps
        for e, r, k in zip(exact, ref, got):
            errors.append(((k - e).abs().max().item() - (r - e).abs().max().item()) / (eps * e.abs().max().item()))
    return errors


def test_the_kernels_equal_the_torch_form_in_tritons_interpreter():
    pytest.importorskip("triton", reason="the kernels are Triton's (no Triton in this torch build)")
    script = ("import torch, test_adaln as t\n"
              "print(*t.excess_errors('cpu', torch.float32, None))\n"  # 2 outputs, 5 gradients
              "print(*t.excess_errors('cpu', torch.float32, None, unused=0))\n"  # the new stream unused downstream
              "print(*t.excess_errors('cpu', torch.float32, None, residual=False))\n")  # 1 output, 3 gradients
    run = run_interpreted(script)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = [len(line.split()) for line in run.stdout.split("\n") if line]
    errors = [float(v) for line in run.stdout.split("\n") if line for v in line.split()]
    assert counts == [7 * len(SHAPES), 7 * len(SHAPES), 4 * len(SHAPES)] and max(errors) <= 1.0, run.stdout


def test_the_kernels_refuse_an_adaln_row_of_another_shape():
    pytest.importorskip("triton", reason="the kernels are Triton's (no Triton in this torch build)")
    from varbench.ops.adaln.kernel import adaln_modulate
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"1 \+ scale must be \(2, 1, 8\) or \(1, 1, 8\), got \(2, 1, 4\)"):
        adaln_modulate(x, torch.ones(2, 1, 4), torch.zeros(2, 1, 8), EPS)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "modulate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-branch"])
def test_on_cuda_the_kernels_equal_the_torch_form(dtype, residual):
    """bf16: y from a bf16 Linear, h in bf16 for the next one, x and the AdaLN rows in fp32 (VAR under autocast)."""
    assert max(excess_errors("cuda", dtype, dtype if dtype != torch.float32 else None, residual)) <= 1.0


def test_adaln_kernel_is_checked():
    from helpers import tiny_model
    with pytest.raises(ValueError, match="adaln_kernel='cuda': valid values are auto, triton, torch"):
        tiny_model("attention", adaln_kernel="cuda")
    model = tiny_model("attention", adaln_kernel="triton").train()
    labels, x = torch.zeros(1, dtype=torch.long), torch.randn(1, model.layout.L - 1, model.latent_dim)
    with pytest.raises(ValueError, match="adaln_kernel=triton runs on CUDA tensors; got cpu"):
        model(labels, x)


@needs_cuda
def test_on_cuda_a_model_trains_through_the_kernels_in_one_compiled_graph():
    """Intra-scale attention, an inter-scale mixer and the FFN: a block's first pre-norm alone, then two gated
    residuals each fused with the next pre-norm; the loss and every gradient are the torch form's to fp32 rounding."""
    import torch.nn.functional as F
    from helpers import tiny_model
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    kernels, reference = (tiny_model("attention", "full", adaln_kernel=name, cond_drop_rate=0.0).cuda().train()
                          for name in ("auto", "torch"))
    reference.load_state_dict(kernels.state_dict())
    labels = torch.randint(0, 10, (4,), device="cuda")
    x = torch.randn(4, kernels.layout.L - 1, kernels.latent_dim, device="cuda")
    target = torch.randint(0, kernels.vocab_size, (4 * kernels.layout.L,), device="cuda")
    loss = lambda m: F.cross_entropy(m(labels, x).flatten(0, 1), target)  # noqa: E731
    torch._dynamo.reset()
    counters.clear()
    got, want = torch.compile(loss, fullgraph=True)(kernels), loss(reference)
    (got + want).backward()
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert (got - want).abs() <= 1e-5 * want.abs()
    wants = dict(reference.named_parameters())
    for name, p in kernels.named_parameters():
        if wants[name].grad is not None:
            assert (p.grad - wants[name].grad).abs().max() <= 1e-4 * wants[name].grad.abs().max(), name
