"""The sampler objects: `ScaleSampler` (the model's, carrying each mixer's state) and the benchmark's prefix re-run
(`varbench.eval.samplers`, the released M-VAR sampler), which lives outside the model and the mixer contract."""

import copy
import inspect
import weakref

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

from varbench.backbones.blocks import AdaLNBlock
from varbench.backbones.raster_ar import RasterAR
from varbench.backbones.sampling import ScaleSampler, cfg_ramp
from varbench.backbones.scale_ar import ScaleAR
from varbench.eval.samplers import PrefixRerun, PrefixRerunSampler, make_sampler, prefix_rerun_installed
from varbench.mixers.base import TokenMixer, run_steps
from varbench.registry import build, factory, list_options, load_option
from varbench.tokenizers import MultiScaleVQVAE
from varbench.utils.precision import hold_linear_weights_in

MIXERS = [name for name in list_options("mixer") if name != "none"]


@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()


def test_the_model_and_the_mixer_contract_carry_no_benchmark_only_machinery(vae):
    """No prefix re-run in the mixer contract, no re-run flag through the block or the model's scale step, no
    CUDA-graph cache on the model, no sampler choice in `generate`."""
    assert not hasattr(TokenMixer, "prefix_rerun_step")
    for name in MIXERS:
        assert not hasattr(build("mixer", name, dim=64, num_heads=2), "prefix_rerun_step"), name
    assert list(inspect.signature(AdaLNBlock.step).parameters) == ["self", "x_BlC", "state", "cond", "layout", "k"]
    assert list(inspect.signature(ScaleAR.scale_logits).parameters) == ["self", "x_2BlC", "states", "cond_2BD", "k"]
    assert "rerun" not in inspect.signature(ScaleAR.initial_states).parameters
    assert "sampler" not in inspect.signature(ScaleAR.generate).parameters
    model = tiny_model("mamba2", vae=vae)
    assert not any("graph" in name for name in [*vars(model), *dir(ScaleAR), *model.state_dict()])


@pytest.mark.parametrize("intra", ["none", "full"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_prefix_rerun_sampler_reproduces_teacher_forcing(mixer, intra, vae):
    """The released M-VAR sampler's logits, scale by scale, equal the teacher-forced logits for the same tokens
    (float64, with and without guidance), as the carried state's do (tests/test_backbone.py)."""
    model = tiny_model(mixer, intra, vae=vae).double()
    torch.manual_seed(1)
    ids = vae.img_to_ids(torch.rand(2, 3, 64, 64) * 2 - 1)
    vae = copy.deepcopy(vae).double()
    x_BLCv, labels = vae.ids_to_var_input(ids), torch.tensor([3, 7])
    cond, uncond = model(labels, x_BLCv), model(torch.full_like(labels, model.num_classes), x_BLCv)
    K = model.layout.num_scales
    for cfg in (0.0, 2.0):
        expected = torch.cat([(1 + cfg_ramp(cfg, k, K)) * cond[:, s] - cfg_ramp(cfg, k, K) * uncond[:, s]
                              for k, s in enumerate(model.layout.segments())], 1)
        out = make_sampler("prefix_rerun", model, vae, cfg=cfg)(labels, forced_ids=ids, return_logits=True)
        torch.testing.assert_close(torch.cat(out.logits, 1), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", MIXERS)
def test_prefix_rerun_step_equals_carried_state(name, tiny_layout):
    """A mixer wrapped in `PrefixRerun` and stepped scale by scale gives the outputs of its own carried `step`."""
    mixer = build("mixer", name, dim=64, num_heads=2, layer_idx=0).double().eval()
    x_BLC = torch.randn(2, tiny_layout.L, 64, dtype=torch.float64)
    y_carry, _ = run_steps(mixer, x_BLC, tiny_layout)
    y_rerun, cache = run_steps(PrefixRerun(mixer), x_BLC, tiny_layout)
    torch.testing.assert_close(y_rerun, y_carry, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(cache["inputs"], x_BLC, atol=0, rtol=0)  # the state is the whole prefix's inputs


@pytest.mark.parametrize("mixer", ["attention", "mamba2"])
def test_prefix_rerun_draws_the_carry_samplers_ids_in_fp32(mixer, vae):
    """Seeded alike, the two samplers draw the same ids and images (fp32, CPU, top-k/top-p and guidance on)."""
    model = tiny_model(mixer, "full", vae=vae)
    labels, settings = torch.tensor([1, 4, 9]), dict(cfg=2.0, top_k=20, top_p=0.9)
    outs = [make_sampler(name, model, vae, **settings)(labels, generator=torch.Generator().manual_seed(3))
            for name in ("carry", "prefix_rerun")]
    assert all(torch.equal(a, b) for a, b in zip(outs[0].ids, outs[1].ids))
    torch.testing.assert_close(outs[0].images, outs[1].images)


def test_prefix_rerun_sampler_reruns_every_mixer_over_the_prefix_and_restores_the_model(vae):
    """Each mixer's `forward` runs once per scale over all scales so far (what the baseline times); afterwards the
    model's own mixers are back, also after an error inside the call."""
    model = tiny_model("mamba2", vae=vae)
    mixers = [block.mixer for block in model.blocks]
    lengths = []
    hook = mixers[0].register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    make_sampler("prefix_rerun", model, vae)(torch.tensor([1, 2]))
    hook.remove()
    assert lengths == [sum(p * p for p in vae.patch_nums[:k + 1]) for k in range(len(vae.patch_nums))]
    assert [block.mixer for block in model.blocks] == mixers
    with pytest.raises(RuntimeError, match="inside"), prefix_rerun_installed(model):
        assert all(isinstance(block.mixer, PrefixRerun) for block in model.blocks)
        raise RuntimeError("inside")
    assert [block.mixer for block in model.blocks] == mixers


def test_make_sampler_names_the_valid_samplers_and_refuses_other_models(vae):
    model = tiny_model("attention", vae=vae)
    assert type(make_sampler("carry", model, vae)) is ScaleSampler
    assert type(make_sampler("prefix_rerun", model, vae, cfg=1.0)) is PrefixRerunSampler
    with pytest.raises(ValueError, match=r"sampler must be one of \['carry', 'prefix_rerun'\], got 'rerun'"):
        make_sampler("rerun", model, vae)
    with pytest.raises(ValueError, match="draws from a scale-wise model"):
        make_sampler("carry", torch.nn.Linear(2, 2), vae)
    with pytest.raises(ValueError, match=r"tokenizer patch_nums \(1, 2, 4\) != model \(1, 2, 3, 4\)"):
        ScaleSampler(model, tiny_tokenizer(patch_nums=(1, 2, 4)))


def weak_leaves(states) -> list:
    import weakref
    return [weakref.ref(t) for state in states for t in state.values() if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("mixer", ["attention", "mamba2"])
def test_the_mixer_states_are_freed_before_the_tokenizer_decodes(mixer, vae, monkeypatch):
    """VAR's KV cache (a mixer's carried state) is dead when the decoder runs, so the decoder's activations never
    stack on it (the official sampler drops its cache before decoding too): the peak memory of sampling."""
    model = tiny_model(mixer, vae=vae).eval()
    refs, alive_at_decode = [], []
    scale_logits, decode = model.scale_logits, vae.fhat_to_img

    def recording_scale_logits(*args):
        logits, states = scale_logits(*args)
        refs.extend(weak_leaves(states))
        return logits, states

    def checking_decode(f_hat):
        alive_at_decode.extend(r for r in refs if r() is not None)
        return decode(f_hat)

    monkeypatch.setattr(model, "scale_logits", recording_scale_logits)
    monkeypatch.setattr(vae, "fhat_to_img", checking_decode)
    ScaleSampler(model, vae, cfg=1.5)(torch.tensor([1, 2]))
    assert refs and alive_at_decode == []


class _WeightCasts(torch.utils._python_dispatch.TorchDispatchMode):
    """Weak references to every low-precision copy made of one of `weights` (autocast's casts) while active."""

    def __init__(self, weights):
        super().__init__()
        self.addresses, self.copies = {w.data_ptr() for w in weights}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.addresses:
            self.copies.append(weakref.ref(out))
        return out


def _raster_pair():
    vae = MultiScaleVQVAE(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=(4,))
    model = RasterAR(mixer=factory(load_option("mixer", "attention")), depth=1, width=32, num_heads=1,
                     vocab_size=16, num_classes=4, num_tokens=vae.layout.L, mlp_hidden=16)
    return model.eval(), vae.eval(), lambda labels: model.generate(labels, cfg=1.5, tokenizer=vae)


@pytest.mark.parametrize("family", ["scale-wise", "raster"])
def test_the_tokenizer_decodes_beside_none_of_the_weight_casts_autocast_cached_for_the_scales(family, vae):
    """Session 24: under bf16 autocast (the bench's and evaluation's sampling), autocast caches a bf16 copy of each
    fp32 weight the scales' matmuls read (0.57 GiB for VAR-d16) until its region exits, so the copies sat beside the
    decoder's activations, at the batch-64 sampling peak (12.17 GiB against the official sampler's 12.0, which runs
    under inference_mode, where autocast caches nothing). The sampler drops them before the decode."""
    if family == "raster":
        model, tokenizer, draw = _raster_pair()
    else:
        model, tokenizer = tiny_model("attention", vae=vae), vae
        draw = ScaleSampler(model, tokenizer, cfg=1.5)
    casts = _WeightCasts([p for p in model.parameters() if p.dim() == 2])
    alive_at_decode = []
    hook = tokenizer.decoder.register_forward_pre_hook(
        lambda *_: alive_at_decode.append(sum(ref() is not None for ref in casts.copies)))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), casts:
            draw(torch.tensor([1, 2]))
    finally:
        hook.remove()
    assert casts.copies, "the scales cast no weight: the test no longer looks at autocast's casts"
    assert alive_at_decode == [0]


HELD_CONFIGS = [(m, "none") for m in list_options("mixer") if m != "none"] + [("mamba2", "full"), ("none", "full"),
                                                                             ("attention", "local")]


def _held_in_bf16(model):
    held = copy.deepcopy(model)
    assert hold_linear_weights_in(held.blocks, torch.bfloat16) > 0
    return held


def _sampled_and_forward(model, vae, device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The guided logits of every scale of one seeded generation and the teacher-forced logits, under bf16 autocast."""
    x_BLCv = torch.randn(2, model.layout.L - 1, model.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        drawn = ScaleSampler(model, vae, cfg=1.5, top_k=10, top_p=0.9)(
            torch.tensor([1, 2, 3], device=device), generator=torch.Generator(device).manual_seed(0),
            return_logits=True)
        return drawn.logits, model(torch.tensor([1, 2], device=device), x_BLCv.to(device))


def _assert_holding_the_block_weights_in_bf16_changes_nothing(model, vae, device):
    ours, held = _sampled_and_forward(model, vae, device), _sampled_and_forward(_held_in_bf16(model), vae, device)
    for a, b in zip(ours[0], held[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ours[1], held[1], rtol=0, atol=0)


@pytest.mark.parametrize("mixer,intra", HELD_CONFIGS, ids=[f"{m}-{i}" for m, i in HELD_CONFIGS])
def test_the_blocks_linear_weights_held_in_bf16_sample_and_score_bit_equal_under_bf16_autocast(mixer, intra, vae):
    # hold_linear_weights_in: a sampling-only process's way to drop the fp32 weights and autocast's cached casts of
    # them (the batch-1 peak memory, session 25); the same bf16 values reach every matmul
    model = tiny_model(mixer, intra, vae=vae, depth=2, backend="reference")
    _assert_holding_the_block_weights_in_bf16_changes_nothing(model, vae, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the mixers' GPU kernels)")
@pytest.mark.parametrize("mixer,intra", HELD_CONFIGS, ids=[f"{m}-{i}" for m, i in HELD_CONFIGS])
def test_on_cuda_the_blocks_linear_weights_held_in_bf16_change_nothing_on_the_gpu_kernels(mixer, intra, vae):
    model = tiny_model(mixer, intra, vae=vae, depth=2).cuda()
    _assert_holding_the_block_weights_in_bf16_changes_nothing(model, copy.deepcopy(vae).cuda(), torch.device("cuda"))
