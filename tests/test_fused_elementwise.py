"""The fused element-wise kernels of sampling (`varbench.modules.fused`, `ScaleAR.set_fused_elementwise`): each
compiled chain computes its eager reference, for every shape a generation passes (one token, a whole scale, another
batch) and under autocast; a model sampling with them gives the eager logits, runs them only in eval mode, and runs
the eager ops again when they are switched off. On a GPU: the same beside CUDA graphs, which capture the fused
kernels (the bench's `task.fused_elementwise` runs them so)."""

import copy

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

from varbench.backbones import blocks
from varbench.eval.samplers import make_sampler
from varbench.modules.fused import fused, gated_residual, l2_qk, ln_modulate, residual_modulate
from varbench.tokenizers.quant import bicubic_up

SHAPES = [(2, 1, 64), (2, 9, 64), (6, 25, 64)]  # (batch, tokens, width): scale 0, later scales, another batch


def modulate_args(shape):
    B, _, C = shape
    return torch.randn(shape), 1 + torch.randn(B, 1, C), torch.randn(B, 1, C)


@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_each_fused_chain_computes_its_reference_at_every_shape(autocast):
    torch.manual_seed(0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for shape in SHAPES:
            x, scale1p, shift = modulate_args(shape)
            want = ln_modulate(x, scale1p, shift, 1e-6)
            torch.testing.assert_close(fused(ln_modulate)(x, scale1p, shift, 1e-6), want)
            y = torch.randn(shape, dtype=torch.bfloat16 if autocast else torch.float32)
            torch.testing.assert_close(fused(gated_residual)(x, y, scale1p), gated_residual(x, y, scale1p))
            gate = torch.randn_like(shift)
            for dtype in (None, torch.bfloat16):  # the next branch's input as it is, or in its Linear's dtype
                got = fused(ln_modulate)(x, scale1p, shift, 1e-6, dtype)
                assert got.dtype == (dtype or want.dtype)
                torch.testing.assert_close(got, want.to(got.dtype))
                got = fused(residual_modulate)(x, y, gate, scale1p, shift, 1e-6, dtype)
                stream = gated_residual(x, y, gate)
                want_next = ln_modulate(stream, scale1p, shift, 1e-6, dtype)
                assert got[1].dtype == want_next.dtype
                torch.testing.assert_close(got, (stream, want_next))
            B, L, C = shape
            qk = torch.randn(2, B, 2, L, C // 2)
            temperature = torch.rand(1, 2, 1, 1) * 4
            dtype = torch.bfloat16 if autocast else torch.float32
            for got, want in zip(fused(l2_qk)(qk, temperature, dtype), l2_qk(qk, temperature, dtype)):
                assert got.dtype == want.dtype == dtype
                torch.testing.assert_close(got, want)


def counting_fused(monkeypatch) -> list:
    """Record every chain the blocks and the attention run fused (the real compiled ones run)."""
    ran = []

    def spy(fn):
        ran.append(fn.__name__)
        return fused(fn)
    monkeypatch.setattr(blocks, "fused", spy)
    monkeypatch.setattr("varbench.modules.attention.fused", spy)
    return ran


def forced_generation(model, vae, labels=(3, 7)):
    """One CFG-2 generation teacher-forced on fixed ids, logits returned."""
    torch.manual_seed(1)
    ids = [torch.randint(0, vae.vocab_size, (2, p * p)) for p in vae.patch_nums]
    return make_sampler("carry", model, vae, cfg=2.0)(torch.tensor(labels), forced_ids=ids, return_logits=True)


@pytest.mark.parametrize("mixer,intra,chains", [
    ("attention", "none", {"ln_modulate", "residual_modulate", "gated_residual", "l2_qk"}),
    ("mamba2", "full", {"ln_modulate", "residual_modulate", "gated_residual"}),  # M-VAR's intra: no L2 norm
], ids=["VAR", "M-VAR"])
def test_fused_sampling_gives_the_eager_logits(mixer, intra, chains, vae, monkeypatch):
    model = tiny_model(mixer, intra, vae=vae, backend="reference")
    eager = forced_generation(model, vae)
    ran = counting_fused(monkeypatch)
    model.set_fused_elementwise(True)
    fused_run = forced_generation(model, vae)
    assert set(ran) == chains
    torch.testing.assert_close(torch.cat(fused_run.logits, 1), torch.cat(eager.logits, 1))
    # the first generation compiled every variant: the next compiles nothing (CUDA graphs capture after one warm-up)
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    forced_generation(model, vae, labels=(0, 9))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled
    ran.clear()
    model.set_fused_elementwise(False)
    forced_generation(model, vae)
    assert ran == []


def branch_input_dtypes(block) -> dict:
    """The dtype of the input each branch of `block` reads at its latest step, by branch name."""
    seen = {}
    for name in ("intra", "mixer"):
        module = getattr(block, name)
        if module is not None:
            def spy(h, *args, _name=name, _step=module.step):
                seen[_name] = h.dtype
                return _step(h, *args)
            module.step = spy
    block.ffn.register_forward_pre_hook(lambda module, args: seen.__setitem__("ffn", args[0].dtype))
    return seen


def test_under_autocast_fused_pre_norms_feed_each_linear_first_branch_in_its_dtype(vae):
    """The fused pre-norm writes a branch's input in autocast's dtype where the branch's first op is a Linear (it
    would cast it so: one pass fewer), and leaves it fp32 for the others (Mamba2's step); eager never casts it."""
    model = tiny_model("mamba2", "full", vae=vae, backend="reference")
    seen = branch_input_dtypes(model.blocks[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forced_generation(model, vae)
        assert seen == {"intra": torch.float32, "mixer": torch.float32, "ffn": torch.float32}
        model.set_fused_elementwise(True)
        forced_generation(model, vae)
    assert seen == {"intra": torch.bfloat16, "mixer": torch.float32, "ffn": torch.bfloat16}
    forced_generation(model, vae)  # outside autocast nothing is cast
    assert seen == {"intra": torch.float32, "mixer": torch.float32, "ffn": torch.float32}


@pytest.mark.parametrize("mixer,intra", [("attention", "none"), ("mamba2", "full")], ids=["VAR", "M-VAR"])
def test_under_autocast_fused_sampling_is_as_close_to_fp32_as_eager(mixer, intra, vae):
    """Under bf16 autocast (CPU) the fused chains give logits as close to the fp32 logits as eager's bf16 logits:
    the pre-norm cast in the fused kernel rounds what the Linear would round."""
    model = tiny_model(mixer, intra, vae=vae, backend="reference")
    reference = torch.cat(forced_generation(model, vae).logits, 1)
    runs = []
    for on in (False, True):
        model.set_fused_elementwise(on)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(torch.cat(forced_generation(model, vae).logits, 1).float())
    err_eager, err_fused = ((run - reference).abs() for run in runs)
    assert err_fused.mean() <= 1.1 * err_eager.mean() and err_fused.max() <= 1.5 * err_eager.max()


def test_the_fused_chains_never_run_in_training_mode(vae, monkeypatch):
    """Training keeps the eager ops (stochastic depth acts on the gate there; the fused residual has none)."""
    model = tiny_model("attention", "full", vae=vae, backend="reference", drop_path_rate=0.1)
    model.set_fused_elementwise(True)
    ran = counting_fused(monkeypatch)
    labels, (x_BLCv,) = torch.tensor([1, 2]), [torch.randn(2, model.layout.L - 1, vae.Cvae)]
    model.train()(labels, x_BLCv).sum().backward()
    assert ran == []
    assert all(m.fused_elementwise for m in model.modules() if hasattr(m, "fused_elementwise"))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("batch", [2, 5])
def test_the_compiled_bicubic_upsampling_computes_torchs_at_every_scale(batch, device):
    """VAR-d16's scale sides (256 px) up to the latent side: Inductor's kernel gives torch's values (fp32)."""
    torch.manual_seed(0)
    for p in (1, 2, 3, 4, 5, 6, 8, 10, 13):
        h_BCpp = torch.randn(batch, 32, p, p, device=device)
        torch.testing.assert_close(fused(bicubic_up)(h_BCpp, 16), bicubic_up(h_BCpp, 16))


def test_a_fused_tokenizer_upsamples_with_the_compiled_kernel_in_sampling_only(vae, monkeypatch):
    """`MultiScaleVQVAE.set_fused_elementwise`: a generation runs the compiled upsampling and decodes eager's images
    (fp32, forced ids); switched off, or in training mode, torch's kernel runs again."""
    model = tiny_model("attention", "none", vae=vae, backend="reference")
    ran = []
    monkeypatch.setattr("varbench.tokenizers.quant.fused", lambda fn: ran.append(fn.__name__) or fused(fn))
    eager = forced_generation(model, vae)
    assert ran == []
    vae.set_fused_elementwise(True)
    try:
        got = forced_generation(model, vae)
        assert set(ran) == {"bicubic_up"} and len(ran) == len(vae.patch_nums) - 1  # no upsampling at the last scale
        torch.testing.assert_close(got.images, eager.images)
        ran.clear()
        vae.train()
        with torch.no_grad():
            vae.quantize.upsample_phi(0, torch.randn(2, vae.Cvae, 1, 1))
        assert ran == []
    finally:
        vae.eval().set_fused_elementwise(False)
    forced_generation(model, vae)
    assert ran == []


def test_the_fused_functions_are_compiled_once_each():
    assert fused(ln_modulate) is fused(ln_modulate) and fused(ln_modulate) is not fused(gated_residual)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mixer,intra", [("attention", "none"), ("mamba2", "full")], ids=["VAR", "M-VAR"])
def test_cuda_graphs_capture_the_fused_kernels(mixer, intra, vae):
    """With CUDA graphs (the bench's fused mode), the fused kernels compile in the warm-up and are captured: in fp32
    the replayed generation gives the eager logits. Under bf16 autocast the fused chains round once where eager rounds
    after every op, so one logit in ~60 moves by a few bf16 ulps (first GPU run, session 26): what must hold there,
    as for the fast decodes (tests/test_fast_decode.py), is that the fused logits are as close to the fp32 logits as
    eager's bf16 logits are. The images decode the same forced ids, so they are eager's."""
    model = tiny_model(mixer, intra, vae=vae).cuda()
    gpu_vae, labels = copy.deepcopy(vae).cuda(), torch.tensor([3, 7], device="cuda")
    torch.manual_seed(1)
    ids = [torch.randint(0, vae.vocab_size, (2, p * p), device="cuda") for p in vae.patch_nums]
    runs = {}
    for autocast in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            model.set_fused_elementwise(False)
            eager = make_sampler("carry", model, gpu_vae, cfg=2.0)(labels, forced_ids=ids, return_logits=True)
            model.set_fused_elementwise(True)
            graphed = make_sampler("carry", model, gpu_vae, cfg=2.0, cuda_graphs=True)
            got = graphed(labels, forced_ids=ids, return_logits=True)
        runs[autocast] = [torch.cat(run.logits, 1).float() for run in (eager, got)]
        torch.testing.assert_close(got.images, eager.images)
    torch.testing.assert_close(runs[False][1], runs[False][0])
    reference, (eager_bf16, fused_bf16) = runs[False][0], runs[True]
    err_eager, err_fused = (eager_bf16 - reference).abs(), (fused_bf16 - reference).abs()
    assert err_fused.mean() <= 1.1 * err_eager.mean() and err_fused.max() <= 1.5 * err_eager.max()
