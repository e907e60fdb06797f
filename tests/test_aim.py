"""RasterAR (AiM's raster next-token backbone): published parameter counts, the mixer contract in raster order
(step == forward for every mixer that can step one token), causality, generation options and bad input.
Golden parity with the official code is in tests/test_golden.py; checkpoint layout in tests/test_aim_convert.py."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from varbench.backbones.raster_ar import RasterAR, raster_mixers
from varbench.build import build_raster
from varbench.mixers.base import TokenMixer
from varbench.registry import CONFIG_ROOT, factory, list_options, load_option

V, N, K = 32, 9, 5  # tiny vocabulary, 3x3 tokens, classes


def tiny_raster(mixer: str = "mamba2", depth: int = 2, width: int = 64, **kw) -> RasterAR:
    """A tiny RasterAR in fp32 whose adaLN gates are random (AiM's zero init would make every block an identity
    and a parity test blind to the mixers)."""
    cfg = load_option("mixer", mixer)
    if mixer == "mamba2":
        cfg.d_state, cfg.headdim = 16, 16
    model = RasterAR(mixer=factory(cfg), depth=depth, width=width, num_heads=2, vocab_size=V, num_classes=K,
                     num_tokens=N, **kw)
    with torch.no_grad():
        linears = [b.ada_lin[1] for b in model.blocks if hasattr(b, "ada_lin")] + [model.head_nm.ada_lin[1]]
        linears += [model.adaln_group[1]] if model.adaln_group is not None else []
        for linear in linears:
            linear.weight.normal_(0, linear.in_features ** -0.5)
            linear.bias.normal_(0, 0.1)
    return model.eval()


def official_aim_params(C: int, depth: int, groups: int | None, V=16384, tokens=256, classes=1000, d_state=128):
    """The parameter count of the official MambaLMHeadModel, from its module structure (aim_facts.md): Mamba2
    (in_proj, conv, dt_bias/A_log/D, gated norm, out_proj), RMSNorm, adaLN per block or the group table, tied
    embeddings counted once, positions (tokens + 1 rows), classes + 1 rows, final layer and norm_f."""
    E = 2 * C
    H = E // 64
    mamba2 = C * (2 * E + 2 * d_state + H) + (E + 2 * d_state) * 5 + 3 * H + E + E * C
    ada = 3 * C * C + 3 * C if groups is None else 3 * C
    group_table = 0 if groups is None else C * groups * 3 * C + groups * 3 * C
    final = 2 * C * C + 2 * C + C
    return depth * (mamba2 + C + ada) + V * C + (tokens + 1) * C + (classes + 1) * C + group_table + final + C


@pytest.mark.parametrize("name,C,depth,groups,published_m", [
    ("aim_b", 768, 24, None, 148), ("aim_l", 1024, 48, 4, 350), ("aim_xl", 1536, 48, 4, 763)])
def test_recipes_have_the_official_parameter_counts(name, C, depth, groups, published_m):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}", "data=imagenet"])
    with torch.device("meta"):
        model = build_raster(cfg)
    assert model.num_params() == official_aim_params(C, depth, groups)
    assert round(model.num_params() / 1e6) == published_m
    if name == "aim_b":  # the facts' count: 147.6M
        assert round(model.num_params() / 1e5) == 1476


def test_aim_recipe_is_the_published_one():
    from varbench.training.recipe import lr_factor, peak_lr
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        train = compose(config_name="config", overrides=["model=aim_b"]).train
    assert peak_lr(train.base_lr, train.batch_size) == pytest.approx(8e-4) and train.batch_size == 2048
    assert list(train.betas) == [0.9, 0.95] and train.weight_decay == 0.05 and train.precision == "bf16"
    steps = 1000  # linear from the peak at the first step down to 0, no warm-up (HF's "linear")
    assert [lr_factor(it, 0, steps, train.schedule, train.warmup_start, train.end_factor) for it in (0, steps - 1)] \
        == [1.0, 0.0] and train.warmup_epochs == 0


def test_raster_mixers_enumerate_the_registry():
    names = raster_mixers()
    assert "none" not in names
    assert set(names) == {n for n in list_options("mixer") if n != "none"}, "every registered mixer steps a token"


@pytest.mark.parametrize("name", raster_mixers())
def test_step_equals_forward(name):
    """Teacher-forced generation with training positions (one `step` per token, carried state) reproduces the
    training forward for the conditional half, and guidance combines it with the null-class forward."""
    model = tiny_raster(name)
    label_B, ids_BN = torch.tensor([1, 3]), torch.randint(0, V, (2, N))
    gen = model.generate(label_B, cfg=2.5, forced_ids=ids_BN, return_logits=True, sample_positions="training")
    with torch.no_grad():
        cond, uncond = model(label_B, ids_BN), model(torch.full_like(label_B, K), ids_BN)
    torch.testing.assert_close(gen.logits, uncond + (cond - uncond) * 2.5, atol=2e-5, rtol=1e-5)
    assert torch.equal(gen.ids, ids_BN)


@pytest.mark.parametrize("variant", [dict(adaln_group=True, num_groups=2), dict(mlp_hidden=48),
                                     dict(adaln_group=True, num_groups=3, mlp_hidden=48)])
def test_step_equals_forward_with_adaln_group_and_mlp(variant):
    model = tiny_raster("mamba2", depth=3, **variant)
    label_B, ids_BN = torch.tensor([0, 4]), torch.randint(0, V, (2, N))
    gen = model.generate(label_B, cfg=1.0, forced_ids=ids_BN, return_logits=True, sample_positions="training")
    with torch.no_grad():
        torch.testing.assert_close(gen.logits, model(label_B, ids_BN), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mamba2", "attention"])
def test_a_token_only_changes_later_predictions(name):
    model = tiny_raster(name)
    ids_BN = torch.randint(0, V, (1, N))
    changed = ids_BN.clone()
    changed[0, 4] = (changed[0, 4] + 1) % V
    with torch.no_grad():
        a, b = model(torch.tensor([2]), ids_BN), model(torch.tensor([2]), changed)
    assert torch.equal(a[:, :5], b[:, :5]), "token 4 changed the prediction of a token at or before it"
    assert not torch.allclose(a[:, 5:], b[:, 5:]), "token 4 changed nothing later: the test would be blind"


def test_official_positions_differ_from_the_second_token_on():
    model = tiny_raster("mamba2")
    label_B, ids_BN = torch.tensor([1]), torch.randint(0, V, (1, N))
    train = model.generate(label_B, forced_ids=ids_BN, return_logits=True, sample_positions="training").logits
    official = model.generate(label_B, forced_ids=ids_BN, return_logits=True, sample_positions="official").logits
    assert torch.equal(train[:, 0], official[:, 0])
    assert (train[:, 1:] - official[:, 1:]).abs().amax(-1).min() > 0, "every later step must see the shift"


def test_sampling_filters_and_temperature(monkeypatch):
    """The distribution handed to multinomial is softmax(filtered(guided / temperature))."""
    model = tiny_raster("mamba2")
    seen, real = [], torch.multinomial

    def spy(probs, n, generator=None):
        seen.append(probs)
        return real(probs, n, generator=generator)

    monkeypatch.setattr(torch, "multinomial", spy)
    gen = model.generate(torch.tensor([1, 2]), cfg=1.5, temperature=0.7, top_k=5, return_logits=True)
    assert len(seen) == N
    for t, probs_BV in enumerate(seen):
        logits_BV = gen.logits[:, t] / 0.7
        kept = logits_BV >= logits_BV.topk(5, dim=-1).values[:, -1:]
        expected = logits_BV.masked_fill(~kept, -torch.inf).softmax(-1)
        torch.testing.assert_close(probs_BV, expected)
    seen.clear()
    model.generate(torch.tensor([1]), top_p=0.5)
    assert all((p > 0).sum() < V for p in seen), "top_p 0.5 kept the whole vocabulary"


def test_greedy_and_seeded_sampling():
    model = tiny_raster("mamba2")
    greedy = model.generate(torch.tensor([1, 2]), cfg=2.0, top_k=1, return_logits=True)
    assert torch.equal(greedy.ids, greedy.logits.argmax(-1))
    runs = [model.generate(torch.tensor([3]), generator=torch.Generator().manual_seed(7)).ids for _ in range(2)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("kwargs,match", [(dict(temperature=0.0), "temperature"), (dict(top_p=1.5), "top_p"),
                                          (dict(top_k=-1), "top_k"), (dict(sample_positions="shifted"), "official")])
def test_bad_sampling_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_raster("mamba2").generate(torch.tensor([1]), **kwargs)


def test_bad_inputs_name_the_valid_range():
    model = tiny_raster("mamba2")
    with pytest.raises(ValueError, match=f"vocab_size {V}"):
        model(torch.tensor([1]), torch.full((1, N), V))
    with pytest.raises(ValueError, match=f"num_tokens={N}"):
        model(torch.tensor([1]), torch.zeros(1, N - 1, dtype=torch.long))
    with pytest.raises(ValueError, match=f"0, {K}"):
        model(torch.tensor([K + 1]), torch.zeros(1, N, dtype=torch.long))
    with pytest.raises(ValueError, match=f"num_tokens={N}"):
        model.generate(torch.tensor([1]), forced_ids=torch.zeros(1, N + 1, dtype=torch.long))


def test_a_mixer_that_cannot_step_is_refused_by_name():
    with pytest.raises(ValueError, match="mixer 'none'.*attention"):
        RasterAR(mixer=None, depth=1, width=64, vocab_size=V, num_tokens=N)

    class ForwardOnly(TokenMixer):
        def __init__(self, dim, num_heads=None, layer_idx=0):
            super().__init__()
            self.proj = torch.nn.Linear(dim, dim)

    with pytest.raises(ValueError, match="ForwardOnly cannot advance one token.*mamba2"):
        RasterAR(mixer=ForwardOnly, depth=1, width=64, vocab_size=V, num_tokens=N)


def test_cuda_graphs_need_eval_mode_and_a_cuda_device():
    model = tiny_raster("mamba2")
    with pytest.raises(ValueError, match="CUDA device"):
        model.generate(torch.tensor([1]), cuda_graphs=True)
    with pytest.raises(ValueError, match="eval mode"):
        model.train().generate(torch.tensor([1]), cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["mamba2", "attention"])
def test_cuda_graph_token_steps_equal_eager(name):
    """One CUDA graph per token step (AiM's cg=True) gives the eager logits and samples; a second call with other
    labels reuses the graphs."""
    model = tiny_raster(name, adaln_group=True, num_groups=2).cuda()
    ids_BN = torch.randint(0, V, (2, N), device="cuda")
    for labels in ([1, 3], [0, 4]):
        label_B = torch.tensor(labels, device="cuda")
        runs = [model.generate(label_B, cfg=1.75, forced_ids=ids_BN, return_logits=True, cuda_graphs=graphs)
                for graphs in (True, False)]
        torch.testing.assert_close(runs[0].logits, runs[1].logits)
        sampled = [model.generate(label_B, cfg=1.75, top_k=8, cuda_graphs=graphs,
                                  generator=torch.Generator("cuda").manual_seed(3)).ids for graphs in (True, False)]
        assert torch.equal(*sampled)
    assert len(model._graphed) == 1


def test_raster_layout_is_a_causal_single_token_layout():
    from varbench.layout import RasterLayout
    layout = RasterLayout(5)
    assert layout.lengths == (1,) * 5 and layout.offsets == tuple(range(6)) and layout.L == layout.num_scales == 5
    assert torch.equal(layout.block_causal_mask(), torch.ones(5, 5, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="no patch_nums"):
        layout.patch_nums


def test_aim_init():
    """GPT-2 init as AiM: tables N(0, 0.02), adaLN Linears zero (blocks start as identities), out_proj
    kaiming-uniform / sqrt(depth), the group table randn / sqrt(C)."""
    torch.manual_seed(0)
    model = RasterAR(mixer=factory(load_option("mixer", "mamba2")), depth=4, width=256, vocab_size=512,
                     num_classes=K, num_tokens=N)
    assert abs(model.word_embed.weight.std().item() - 0.02) < 1e-3
    for block in model.blocks:
        assert not block.ada_lin[1].weight.any() and not block.ada_lin[1].bias.any()
        bound = (1 / 512) ** 0.5 / 4 ** 0.5  # kaiming_uniform(a=sqrt(5)) bound 1/sqrt(fan_in), fan_in = 2C = 512
        assert block.mixer.out_proj.weight.abs().max() <= bound < 1.05 * block.mixer.out_proj.weight.abs().max()
    assert not model.head_nm.ada_lin[1].weight.any()
    grouped = RasterAR(mixer=factory(load_option("mixer", "mamba2")), depth=2, width=256, vocab_size=512,
                       num_classes=K, num_tokens=N, adaln_group=True, num_groups=2)
    assert abs(grouped.blocks[0].scale_shift_table.std().item() - 256 ** -0.5) < 0.01


@pytest.mark.parametrize("name", ["mamba2", "attention"])
def test_bf16_autocast_forward_and_steps(name):
    """Under bf16 autocast (AiM trains in bf16) the residual stays fp32 and both paths run and agree with fp32."""
    model = tiny_raster(name, adaln_group=True, num_groups=2, mlp_hidden=48)
    label_B, ids_BN = torch.tensor([1, 2]), torch.randint(0, V, (2, N))
    with torch.no_grad():
        reference = model(label_B, ids_BN)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(label_B, ids_BN)
            steps = model.generate(label_B, forced_ids=ids_BN, return_logits=True, sample_positions="training")
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, atol=3e-2, rtol=3e-2)  # bf16: 8 mantissa bits
    torch.testing.assert_close(steps.logits, reference, atol=3e-2, rtol=3e-2)


def test_the_token_states_are_freed_before_the_tokenizer_decodes(monkeypatch):
    """The KV cache / recurrent states of a raster generation are dead when the tokenizer decodes (peak memory)."""
    import weakref
    model = tiny_raster("attention").eval()
    refs, alive_at_decode = [], []
    scale_logits = model.scale_logits

    def recording_scale_logits(*args):
        logits, states = scale_logits(*args)
        refs.extend(weakref.ref(t) for s in states for t in s.values() if isinstance(t, torch.Tensor))
        return logits, states

    class Decoder:
        def decode(self, ids_BN):
            alive_at_decode.extend(r for r in refs if r() is not None)
            return torch.zeros(ids_BN.shape[0], 3, 4, 4)

    monkeypatch.setattr(model, "scale_logits", recording_scale_logits)
    model.generate(torch.tensor([1, 2]), tokenizer=Decoder())
    assert refs and alive_at_decode == []
