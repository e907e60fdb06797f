"""FP8 matmuls in training (`train.precision: fp8`, task=bench's `task.fp8`; varbench/training/fp8.py): the blocks'
linear layers become torchao's Float8Linear and nothing else does; the weights keep their names (a checkpoint loads
into the plain model); the forward and the gradients stay within FP8's rounding of the bf16 model's (e4m3 keeps 3
mantissa bits, e5m2 for gradients 2: a relative RMS error within one unit roundoff of the format, 2^-4 / 2^-3); a
`train.precision=fp8` run trains, its records say so, and its loss follows the bf16 run's (the loss-curve check, in
miniature on a CPU). The speed is a GPU measurement (task=bench task.fp8=true)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from torch import nn

from varbench.training.fp8 import check_fp8_batch, to_fp8_training

pytest.importorskip("torchao")  # a dev install has it (pyproject's dev extra)
from torchao.float8.float8_linear import Float8Linear  # noqa: E402

# one unit roundoff of each format as the bound of a relative RMS error: e4m3 (forward operands, 3 mantissa bits)
# 2^-4; e5m2 (the output gradient in the backward's matmuls, 2 mantissa bits) 2^-3
E4M3_ROUNDOFF, E5M2_ROUNDOFF = 2.0 ** -4, 2.0 ** -3


@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()


def cpu_scaled_mm_takes_rowwise_scales() -> bool:
    """Whether this torch's CPU _scaled_mm (the FP8 matmul torchao calls) takes one scale per row: torch 2.11's takes
    per-tensor scales only (an internal assert in ATen's mkldnn Linear, seen on the GPU machine in session 31);
    torch 2.14's takes both."""
    fp8 = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(fp8, fp8.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


def relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).pow(2).mean().sqrt() / want.float().pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("mixer,intra", [("attention", "none"), ("mamba2", "full"), ("mamba", "none")])
def test_fp8_swaps_the_blocks_linear_layers_only_and_keeps_every_weight_name(mixer, intra, vae):
    model = tiny_model(mixer, intra, vae=vae, backend="reference")
    names = set(model.state_dict())
    converted = to_fp8_training(model)
    fp8 = {name for name, m in model.blocks.named_modules() if isinstance(m, Float8Linear)}
    assert fp8 == set(converted) and fp8
    assert not any("ada_lin" in name or "dt_proj" in name for name in fp8)  # batch-sized rows; a functional weight
    assert not any(isinstance(m, Float8Linear) for m in (model.head, *model.head_nm.modules()))
    assert set(model.state_dict()) == names


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_fp8_forward_and_gradients_stay_within_fp8_rounding_of_bf16(vae, recipe):
    if recipe == "rowwise" and not cpu_scaled_mm_takes_rowwise_scales():
        pytest.skip(f"torch {torch.__version__}'s CPU _scaled_mm takes per-tensor scales only; the rowwise recipe is "
                    "checked on CUDA (test_on_cuda_the_compiled_fp8_step_stays_within_fp8_rounding_of_bf16)")
    torch.manual_seed(0)
    model = tiny_model("attention", vae=vae, backend="reference").train()
    fp8 = copy.deepcopy(model)
    to_fp8_training(fp8, recipe)
    labels, x = torch.tensor([1, 2]), torch.randn(2, model.layout.L - 1, vae.Cvae)
    outputs = []
    for net in (model, fp8):
        torch.manual_seed(1)  # the same label dropout
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(labels, x)
        logits.float().square().mean().backward()
        outputs.append((logits, net.blocks[0].ffn.fc1.weight.grad, net.blocks[1].mixer.mat_qkv.weight.grad))
    (logits, *grads), (fp8_logits, *fp8_grads) = outputs
    assert 0 < relative_rms(fp8_logits, logits) < E4M3_ROUNDOFF
    for want, got in zip(grads, fp8_grads):
        assert 0 < relative_rms(got, want) < E5M2_ROUNDOFF


def test_the_recipe_sets_the_scales_and_an_unknown_one_is_an_error_naming_the_valid_ones(vae):
    from torchao.float8.config import ScalingGranularity
    model = tiny_model("attention", vae=vae)
    to_fp8_training(model, "rowwise")
    linear = next(m for m in model.blocks.modules() if isinstance(m, Float8Linear))
    assert linear.config.cast_config_input.scaling_granularity == ScalingGranularity.AXISWISE
    with pytest.raises(ValueError, match=r"FP8 recipe must be one of \['tensorwise', 'rowwise'\], got 'blockwise'"):
        to_fp8_training(tiny_model("attention", vae=vae), "blockwise")


def test_attention_runs_a_qkv_linear_with_its_own_forward():
    """VAR's qkv joins its bias to the matmul through the weight (F.linear); a linear with a forward of its own (FP8)
    is called instead, with the same result in exact arithmetic."""
    from varbench.modules.attention import ScaleAttention

    class Counted(nn.Linear):
        calls = 0

        def forward(self, x):
            Counted.calls += 1
            return super().forward(x)
    torch.manual_seed(0)
    attn = ScaleAttention(32, 2)
    nn.init.normal_(attn.q_bias), nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 5, 32)
    want = attn.qkv(x)
    counted = Counted(32, 96, bias=False)
    counted.load_state_dict(attn.mat_qkv.state_dict())
    attn.mat_qkv = counted
    for got, ref in zip(attn.qkv(x), want):
        torch.testing.assert_close(got, ref)
    assert Counted.calls == 1


def test_an_fp8_training_run_follows_the_bf16_run_and_says_fp8(tmp_path):
    """train.precision=fp8 trains from the same init on the same batches as bf16, with a loss within FP8's rounding
    of bf16's at every step, and its records name the precision."""
    from test_training import run

    from varbench.utils.records import read_records
    losses = {}
    for precision in ("bf16", "fp8"):
        out = run(tmp_path, precision, f"train.precision={precision}", "train.steps=12", "train.base_lr=0.1",
                  "train.ckpt_every=1000", "train.deterministic=true")
        assert out.returncode == 0, out.stderr[-3000:]
        assert ("FP8 matmuls in 4 linear layers" in out.stdout + out.stderr) == (precision == "fp8")  # qkv, proj, FFN
        records = read_records(tmp_path / precision / "results" / "train.jsonl")
        losses[precision] = [r["value"] for r in records if r["metric"] == "train_loss"]
        assert {r["config"]["train"]["precision"] for r in records if r.get("config")} == {precision}
    assert len(losses["fp8"]) == len(losses["bf16"]) == 12
    for bf16, fp8 in zip(losses["bf16"], losses["fp8"]):
        assert abs(fp8 - bf16) / bf16 < E4M3_ROUNDOFF
    assert losses["fp8"] != losses["bf16"] and losses["fp8"][-1] < losses["fp8"][0]  # FP8 rounds otherwise; it learns


def test_on_cuda_a_batch_whose_tokens_fp8_cannot_multiply_is_refused_by_name():
    check_fp8_batch(32, 680, "task.train_batch", "cuda")  # VAR-d16's 680 tokens: any even batch
    with pytest.raises(ValueError, match=r"task.train_batch = 3: .* 3 x 680 tokens, .* use a multiple of 2 images"):
        check_fp8_batch(3, 680, "task.train_batch", "cuda")
    check_fp8_batch(3, 680, "task.train_batch", "cpu")  # torch's CPU emulation takes any size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device with FP8 tensor cores (sm_89+)")
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_on_cuda_the_compiled_fp8_step_stays_within_fp8_rounding_of_bf16(vae, recipe):
    """On the GPU (torch._scaled_mm's FP8 kernels) and compiled as training compiles (varbench.training.loop):
    the forward and the first block's FFN gradient of an FP8 model stay within one unit roundoff of bf16's."""
    from varbench.training.loop import compile_for_training
    torch.manual_seed(0)
    model = tiny_model("attention", vae=vae, width=128, heads=2).cuda().train()
    fp8 = copy.deepcopy(model)
    to_fp8_training(fp8, recipe)
    # 8 images of 30 tokens: the weight gradients' inner dim (the batch's tokens) a multiple of 16, as _scaled_mm
    # needs (2 images, 60 tokens, failed to compile on an H100: session 26)
    labels = torch.tensor([1, 2] * 4, device="cuda")
    x = torch.randn(8, model.layout.L - 1, vae.Cvae, device="cuda")
    outputs = []
    for net in (model, fp8):
        compiled = compile_for_training(net, len(net.blocks))
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = compiled(labels, x, inputs_checked=True)
        logits.float().square().mean().backward()
        outputs.append((logits, net.blocks[0].ffn.fc1.weight.grad))
    (logits, grad), (fp8_logits, fp8_grad) = outputs
    assert 0 < relative_rms(fp8_logits, logits) < E4M3_ROUNDOFF
    assert 0 < relative_rms(fp8_grad, grad) < E5M2_ROUNDOFF
