"""Decode modes of the tokenizers (varbench/tokenizers/fast_decode.py): channels_last and compiled decode the images
eager decodes (to fp32 round-off; under bf16 autocast as close to the fp32 images as eager's), the mode is reversible
and leaves the weights' names and bytes alone, `auto` is eager on a CPU, and a bad mode is an error naming key, value
and the valid values. The decoders are small (two or three levels): a deeper random decoder accumulates more fp32
round-off than assert_close's fp32 default allows in either layout (against a float64 decode, both err alike).
"""

import copy

import pytest
import torch
from helpers import tiny_model

from varbench.backbones.sampling import ScaleSampler
from varbench.tokenizers import MultiScaleVQVAE
from varbench.tokenizers.fast_decode import DECODE_MODES, PaddedOutputConv2d, resolve_decode_mode
from varbench.tokenizers.vq_f16 import VQF16
from varbench.utils.hashing import weights_sha256


def small_vqvae() -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                           patch_nums=(1, 2, 4)).eval()


def small_vq_f16() -> VQF16:
    torch.manual_seed(0)
    return VQF16(vocab_size=64, embed_dim=4, z_channels=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1).eval()


def decode(tokenizer, mode: str, seed: int = 1) -> torch.Tensor:
    """The images of 2 random latents (multi-scale VQ-VAE) or 2 random id maps (VQ-f16) decoded in `mode`."""
    tokenizer.set_decode_mode(mode)
    gen, device = torch.Generator().manual_seed(seed), tokenizer.post_quant_conv.weight.device
    with torch.no_grad():
        if isinstance(tokenizer, VQF16):
            return tokenizer.decode(torch.randint(0, tokenizer.vocab_size, (2, 16), generator=gen).to(device))
        side = tokenizer.patch_nums[-1]
        return tokenizer.fhat_to_img(torch.randn(2, tokenizer.Cvae, side, side, generator=gen).to(device))


TOKENIZERS = {"vqvae": small_vqvae, "vq_f16": small_vq_f16}


@pytest.mark.parametrize("name", TOKENIZERS)
def test_channels_last_decodes_the_eager_images(name):
    tokenizer = TOKENIZERS[name]()
    eager = decode(tokenizer, "eager")
    fast = decode(tokenizer, "channels_last")
    assert tokenizer.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # the mode did switch
    assert fast.is_contiguous()  # callers get NCHW images whatever ran
    torch.testing.assert_close(fast, eager)
    assert torch.equal(decode(tokenizer, "eager"), eager)  # back to eager: today's bits again
    assert tokenizer.decoder.conv_in.weight.is_contiguous()


def test_channels_last_computes_the_rgb_convolution_padded_and_back_in_eager():
    """In channels_last the decoder's 3-channel convolution computes 32 channels (29 zero filters) and returns the 3:
    the same values, the Conv2d's own parameters (names and bytes); so does every decode convolution whose output
    channels are no multiple of 32, and no other; eager runs the plain Conv2d again."""
    tokenizer = small_vqvae()
    conv, keys, sha = tokenizer.decoder.conv_out, list(tokenizer.state_dict()), weights_sha256(tokenizer)
    x = torch.randn(2, conv.in_channels, 8, 8).contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    tokenizer.set_decode_mode("channels_last")
    assert type(conv) is PaddedOutputConv2d and conv.out_channels == 3
    torch.testing.assert_close(conv(x), want)
    assert list(tokenizer.state_dict()) == keys and weights_sha256(tokenizer) == sha
    decoder_convs = [m for stage in tokenizer.latent_decoder.stages for m in stage.modules()
                     if isinstance(m, torch.nn.Conv2d)]
    assert {m.out_channels % 32 != 0 for m in decoder_convs} == {True, False}  # padded convolutions and plain ones
    assert all((type(m) is PaddedOutputConv2d) == (m.out_channels % 32 != 0) for m in decoder_convs)
    tokenizer.set_decode_mode("eager")
    assert all(type(m) is torch.nn.Conv2d for m in decoder_convs)


@pytest.mark.slow  # Inductor on a CPU: about 10 s with its kernel cache warm, over a minute cold
@pytest.mark.parametrize("name", TOKENIZERS)
def test_compiled_decodes_the_eager_images_and_adds_no_weights(name):
    tokenizer = TOKENIZERS[name]()
    eager, keys, sha = decode(tokenizer, "eager"), list(tokenizer.state_dict()), weights_sha256(tokenizer)
    torch.testing.assert_close(decode(tokenizer, "compiled"), eager)
    compiled = tokenizer.latent_decoder.compiled
    assert tokenizer.decode_mode == "compiled" and compiled is not None  # cached
    tokenizer.set_decode_mode("compiled")  # asked again (each bench stage does): its compiled shapes are kept
    assert tokenizer.latent_decoder.compiled is compiled
    assert list(tokenizer.state_dict()) == keys and weights_sha256(tokenizer) == sha  # names and bytes kept
    twin = copy.deepcopy(tokenizer)  # e.g. moved to another device: it decodes with its own modules, compiles its own
    assert twin.latent_decoder.stages == (twin.post_quant_conv, twin.decoder) and twin.latent_decoder.compiled is None


def test_a_sampler_decodes_in_the_tokenizers_mode():
    """ScaleSampler's decode (fhat_to_img after its scale loop) follows the tokenizer's mode: the eager images."""
    vae = small_vqvae()
    model, labels = tiny_model("attention", vae=vae), torch.tensor([1, 2])
    images = {}
    for mode in ("eager", "channels_last"):
        vae.set_decode_mode(mode)
        images[mode] = ScaleSampler(model, vae)(labels, generator=torch.Generator().manual_seed(0)).images
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images["channels_last"], images["eager"])
    assert not torch.equal(images["channels_last"], images["eager"])  # another algorithm ran: round-off differs


def test_auto_is_eager_until_a_gpu_measurement_picks_a_faster_mode():
    assert resolve_decode_mode("auto", "task.decode_mode", "cpu") == "eager"
    assert resolve_decode_mode("auto", "task.decode_mode", "cuda") == "eager"
    assert [resolve_decode_mode(m, "task.decode_mode", "cuda") for m in DECODE_MODES] == list(DECODE_MODES)
    on_cpu = [m for m in DECODE_MODES if m != "graphs"]
    assert [resolve_decode_mode(m, "task.decode_mode", "cpu") for m in on_cpu] == on_cpu


def test_graphs_is_refused_off_cuda_naming_the_modes_that_run_there():
    with pytest.raises(ValueError, match=r"task.decode_mode=graphs replays CUDA graphs: it needs a CUDA device, not "
                                         r"cpu; on this device use one of \['eager', 'channels_last', 'compiled'\]"):
        resolve_decode_mode("graphs", "task.decode_mode", "cpu")
    tokenizer = small_vqvae()
    tokenizer.set_decode_mode("graphs")  # the tokenizer itself says so at its first decode
    with pytest.raises(ValueError, match="decode mode 'graphs' needs a CUDA latent"):
        decode(tokenizer, "graphs")


def test_a_bad_decode_mode_is_an_error_naming_key_value_and_the_valid_values():
    with pytest.raises(ValueError, match=r"task.decode_mode must be one of \['eager', 'channels_last', 'compiled', "
                                         r"'graphs', 'auto'\], got 'nhwc'"):
        resolve_decode_mode("nhwc", "task.decode_mode", "cpu")
    with pytest.raises(ValueError, match=r"decode mode must be one of .*got True"):
        small_vqvae().set_decode_mode(True)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("device,mode", [("cpu", "channels_last"), pytest.param("cuda", "channels_last", marks=CUDA),
                                         pytest.param("cuda", "compiled", marks=CUDA)])
def test_fast_decodes_under_bf16_autocast_are_as_accurate_as_eager(name, device, mode):
    """Under bf16 autocast every conv output is rounded to 8 mantissa bits, and other kernels round other elements:
    eager's own bf16 images differ from its fp32 images by up to ~0.045 (on a CPU, these decoders), so elementwise
    bf16 tolerances (1e-2, tests/test_backbone.py) cannot hold between two bf16 decodes. What must hold: the fast
    mode's bf16 images are as close to the fp32 images as eager's bf16 images are."""
    tokenizer = TOKENIZERS[name]().to(device)
    reference = decode(tokenizer, "eager")
    with torch.autocast(device, dtype=torch.bfloat16):
        eager = decode(tokenizer, "eager").float()
        fast = decode(tokenizer, mode).float()
    assert tokenizer.decode_mode == mode
    if device == "cpu":  # another kernel ran (on CUDA, cuDNN may pick NHWC kernels whose bf16 images equal eager's)
        assert not torch.equal(fast, eager)
    err_eager, err_fast = (eager - reference).abs(), (fast - reference).abs()
    assert err_fast.mean() <= 1.1 * err_eager.mean() and err_fast.max() <= 1.5 * err_eager.max()
    assert err_eager.max() < 0.1  # bf16 round-off, not a broken decode: images are in [-1, 1]


@CUDA
@pytest.mark.parametrize("name", TOKENIZERS)
def test_graphs_decodes_eager_s_images_exactly_and_captures_once_per_shape(name):
    """The replayed graph runs eager's kernels: under bf16 autocast too, its images equal eager's bit for bit. A new
    latent of the captured shape replays (no new capture); another batch captures its own graph."""
    tokenizer = TOKENIZERS[name]().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = [decode(tokenizer, "eager", seed) for seed in (1, 2)]
        graphed = [decode(tokenizer, "graphs", seed) for seed in (1, 2)]
    assert all(torch.equal(g, e) for g, e in zip(graphed, eager))
    assert len(tokenizer.latent_decoder.graphs) == 1
    side = tokenizer.patch_nums[-1] if isinstance(tokenizer, MultiScaleVQVAE) else None
    if side is not None:
        with torch.no_grad():
            tokenizer.fhat_to_img(torch.randn(3, tokenizer.Cvae, side, side, device="cuda"))
        assert len(tokenizer.latent_decoder.graphs) == 2
    tokenizer.set_decode_mode("eager")
    assert tokenizer.latent_decoder.graphs == {}


@pytest.mark.parametrize("task", ["bench", "sample", "evaluate"])
def test_a_bad_task_decode_mode_is_a_config_error_naming_key_value_and_the_valid_values(task):
    from hydra import compose, initialize_config_dir

    from varbench.config_schema import ConfigError, validate
    from varbench.registry import CONFIG_ROOT
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={task}", "task.decode_mode=nhwc"])
    with pytest.raises(ConfigError, match=r"task.decode_mode = 'nhwc': expected one of \['eager', 'channels_last', "
                                          r"'compiled', 'graphs', 'auto'\]"):
        validate(cfg)
    cfg.task.decode_mode = "auto"
    validate(cfg)  # the shipped default passes


def decode_five(tokenizer, max_batch) -> torch.Tensor:
    """The images of 5 random latents decoded eagerly, at most `max_batch` per decode call."""
    tokenizer.set_decode_batch(max_batch)
    side = tokenizer.patch_nums[-1]
    latent = torch.randn(5, tokenizer.Cvae, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return tokenizer.fhat_to_img(latent)


def test_a_decode_in_chunks_gives_the_whole_batch_s_images_and_calls_the_decoder_per_chunk(monkeypatch):
    """Every image is decoded alone (GroupNorm, convolutions and attention are per image), so chunks of 2 give the
    whole batch's images (to round-off: another batch size may pick other kernels), in order, from 3 decoder calls."""
    tokenizer = small_vqvae()
    whole = decode_five(tokenizer, None)
    batches = []
    decoder = tokenizer.decoder.forward
    monkeypatch.setattr(tokenizer.decoder, "forward", lambda z: batches.append(len(z)) or decoder(z))
    chunked = decode_five(tokenizer, 2)
    assert batches == [2, 2, 1] and tokenizer.decode_batch == 2
    torch.testing.assert_close(chunked, whole)
    batches.clear()
    decode_five(tokenizer, 8)  # a chunk larger than the batch: one call
    assert batches == [5]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_a_bad_decode_batch_is_an_error_naming_the_value(bad):
    with pytest.raises(ValueError, match=f"decode batch must be a positive integer or None .*got {bad!r}"):
        small_vqvae().set_decode_batch(bad)
