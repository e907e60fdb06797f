"""task=bench's pieces on a CPU (its `main` needs a GPU): per-resolution settings, the default configurations, the
training step it times (it must really train), and the records `measure` writes (MFU from the record's own fields)."""

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from omegaconf import OmegaConf

from varbench.eval.flops import model_flops
from varbench.eval.timing import train_step_cell
from varbench.registry import default_configs, list_options
from varbench.tasks.bench import at_resolution, measure, plan_stages
from varbench.training.loop import INDUCTOR_OPTIONS
from varbench.utils.records import read_records


def test_a_setting_is_given_once_or_per_resolution():
    assert at_resolution(32, 512) == 32
    assert at_resolution(OmegaConf.create({256: 32, 1024: 2}), 1024) == 2
    with pytest.raises(ValueError, match="no value for 512 px"):
        at_resolution({256: 32, 1024: 2}, 512)


def test_default_configurations_are_every_mixer_alone_plus_mvar_and_its_markov_counterpart():
    configs = default_configs()
    assert configs[:-2] == [(m, "none") for m in list_options("mixer")] and ("none", "none") in configs
    assert configs[-2:] == [("mamba2", "full"), ("none", "full")]


def test_a_cell_trains_then_samples_each_batch_and_reruns_only_where_asked():
    t = OmegaConf.create({"train_batch": {256: 32, 512: 8}, "sample_batches": {256: [1, 64], 512: [1]},
                          "rerun_baseline": ["mamba2"], "rerun_resolutions": [256]})
    assert plan_stages(t, "mamba2", 256) == [("train", 32, None), ("sample", 1, "carry"), ("sample", 1, "prefix_rerun"),
                                             ("sample", 64, "carry"), ("sample", 64, "prefix_rerun")]
    assert plan_stages(t, "mamba2", 512) == [("train", 8, None), ("sample", 1, "carry")]
    assert plan_stages(t, "gla", 256)[1:] == [("sample", 1, "carry"), ("sample", 64, "carry")]
    t.train_batch = {256: 32, 512: None}  # a sampling-only run at 512 px
    assert plan_stages(t, "gla", 512) == [("sample", 1, "carry")]


def test_the_timed_training_step_trains():
    torch.manual_seed(0)
    model = tiny_model("mamba2").train()
    before = [p.detach().clone() for p in model.parameters()]
    timing = train_step_cell(model, batch=2, repeats=2, profile_steps=1)
    assert timing["median_ms"] > 0 and timing["repeats"] == 2 and timing["top_ops"]
    # every operator of the step listed (report/step_ops.md leaves nothing "not listed")
    assert timing["ops_listed"] == "all" and not any(o["op"].startswith("(the other ") for o in timing["top_ops"])
    assert timing["first_step_s"] > 0  # a compiled step's compile time (issue 18: compiling M-VAR under 90 s)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed)  # forward + backward + AdamW reached every parameter


def test_a_compiled_first_step_says_how_much_of_it_torch_compile_took():
    """issue 18 (compile M-VAR in under 90 s): a record says what in the first step is torch.compile's own work
    (the trace with the forward graph, the backward graph), the rest being autotuning and the step; eager: none."""
    from varbench.eval.timing import COMPILE_PHASES
    torch.manual_seed(0)
    model = tiny_model("attention").train()
    assert "compile_phases_s" not in train_step_cell(model, batch=2, repeats=1)
    torch._dynamo.reset()
    timing = train_step_cell(model, batch=2, repeats=1, net=torch.compile(model))
    phases = timing["compile_phases_s"]
    assert set(phases) == set(COMPILE_PHASES) and all(s > 0 for s in phases.values())
    assert sum(phases.values()) < timing["first_step_s"]


@pytest.fixture()
def cell():
    model, vae = tiny_model("attention", "full"), tiny_tokenizer()
    return model, vae, dict(mixer="attention", intra="full", depth=model.depth, resolution=32, L=model.layout.L,
                            profile_steps=0, matmul_peak_tflops=1e-3, fwd_flops_per_image=model_flops(model)["total"])


def test_measure_records_training_throughput_and_mfu(cell, tmp_path):
    model, vae, fields = cell
    measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 2, fields)
    (rec,) = read_records(tmp_path / "bench.jsonl")
    assert rec["metric"] == "train_images_per_s" and rec["batch"] == 2 and rec["compiled"] is False
    assert rec["value"] == pytest.approx(2 / (rec["timing"]["median_ms"] * 1e-3))
    assert rec["tokens_per_s"] == pytest.approx(rec["value"] * model.layout.L)
    # MFU: training = 3 x the analytic forward FLOPs, against the matmul peak of the same run
    assert rec["mfu"] == pytest.approx(3 * fields["fwd_flops_per_image"] * rec["value"] / 1e9)
    assert rec["compile_mode"] is None  # eager: no Inductor mode


def test_task_fp8_times_a_copy_with_fp8_matmuls_and_the_record_says_so(cell, tmp_path):
    """task.fp8: the training stage times a copy whose blocks' linears run FP8 matmuls (the model the sampling stages
    time is left as built), scaled by task.fp8_recipe; the record says fp8, the recipe and how many linears."""
    pytest.importorskip("torchao")
    from torchao.float8.float8_linear import Float8Linear
    model, vae, fields = cell
    for recipe in ("tensorwise", "rowwise", None):
        measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 2, fields, fp8_recipe=recipe)
    tensorwise, rowwise, plain = read_records(tmp_path / "bench.jsonl")
    assert (plain["fp8"], plain["fp8_recipe"], plain["fp8_linears"]) == (False, None, 0)
    assert [(r["fp8"], r["fp8_recipe"]) for r in (tensorwise, rowwise)] == [(True, "tensorwise"), (True, "rowwise")]
    assert tensorwise["fp8_linears"] == rowwise["fp8_linears"] > 0
    assert not any(isinstance(m, Float8Linear) for m in model.modules())


def test_the_training_record_names_the_compile_mode_and_scope_it_compiled_in(cell, tmp_path, monkeypatch):
    """task.compile_mode reaches torch.compile (Inductor's mode), task.compile_scope what it compiles; both reach
    the record, with what Inductor's cache held before compiling. The default passes no mode."""
    import varbench.training.bench_stage as stage
    model, vae, fields = cell
    cache = tmp_path / "inductor"
    for name in ("a", "b/c", "b/d"):
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text("")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    monkeypatch.delenv("TRITON_CACHE_AUTOTUNING", raising=False)
    calls = []
    monkeypatch.setattr(stage, "compile_for_training",
                        lambda net, depth, scope, mode: calls.append((scope, mode)) or net)
    for mode, scope in (("max-autotune-no-cudagraphs", "model"), ("default", "blocks")):
        measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 2, fields, compiled=True, compile_mode=mode,
                compile_scope=scope)
    measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 2, fields)  # eager: neither
    assert calls == [("model", "max-autotune-no-cudagraphs"), ("blocks", "default")]
    assert [(r["compile_mode"], r["compile_scope"]) for r in read_records(tmp_path / "bench.jsonl")] == [
        ("max-autotune-no-cudagraphs", "model"), ("default", "blocks"), (None, None)]
    assert [r["inductor_options"] for r in read_records(tmp_path / "bench.jsonl")] == [INDUCTOR_OPTIONS] * 2 + [None]
    assert [r["compile_cache"] for r in read_records(tmp_path / "bench.jsonl")] == [
        {"dir": str(cache), "files": 3, "autotune_timings": False}] * 2 + [None]


def test_reduce_overhead_marks_each_step_and_the_record_says_whether_cuda_graphs_ran(cell, tmp_path, monkeypatch):
    """task.compile_mode=reduce-overhead: each timed step tells the compiled graphs that a new step begins, and the
    record counts the graphs Inductor ran without CUDA graphs (on this CPU: all of them, so `cuda_graphs` is
    false), and it profiles no operators (a replayed graph's kernels run under none); a step that replays no graphs
    marks nothing and counts nothing."""
    import varbench.training.bench_stage as stage
    model, vae, fields = cell
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr(stage, "compile_for_training", lambda net, depth, scope, mode: torch.compile(net, mode=mode))
    measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 2, {**fields, "profile_steps": 1},
            compiled=True, compile_mode="reduce-overhead")
    steps = len(marks)
    measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 2, fields)
    graphed, plain = read_records(tmp_path / "bench.jsonl")
    assert steps == 1 + 2 + 2 and len(marks) == steps  # the first step, 2 warm-up, 2 timed; none eagerly
    assert (graphed["compile_mode"], graphed["cuda_graphs"]) == ("reduce-overhead", False)
    assert graphed["cudagraph_skips"] > 0 and plain["cudagraph_skips"] is None and plain["cuda_graphs"] is False
    assert "top_ops" not in graphed["timing"]  # replayed kernels run under no operator: no profile to record


def test_task_block_weights_bf16_samples_from_bf16_block_weights_and_says_so(cell, tmp_path):
    model, vae, fields = cell
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 2, "carry", 2, fields)
    assert {p.dtype for p in model.blocks.parameters()} == {torch.float32}  # the default reads the model as built
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 2, "carry", 2, fields, block_weights="bf16")
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert model.word_embed.weight.dtype == torch.float32  # (outside the blocks: VAR runs it in fp32)
    assert [r["block_weights"] for r in read_records(tmp_path / "bench.jsonl")] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="task.block_weights must be 'fp32' or 'bf16', got 'fp16'"):
        measure(tmp_path / "bench.jsonl", model, vae, "sample", 2, "carry", 2, fields, block_weights="fp16")


@pytest.mark.parametrize("sampler", ["carry", "prefix_rerun"])
def test_measure_records_sampling_latency_with_and_without_the_decode(cell, tmp_path, sampler):
    model, vae, fields = cell
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 3, sampler, 2, fields)
    (rec,) = read_records(tmp_path / "bench.jsonl")
    assert rec["metric"] == "sample_latency_ms" and rec["sampler"] == sampler and rec["cuda_graphs"] is False
    assert rec["decode_mode"] == "eager"
    assert rec["value"] == rec["timing"]["total"]["median_ms"]
    assert rec["decode_ms"] == rec["timing"]["decode"]["median_ms"]
    assert rec["latency_wo_decode_ms"] == pytest.approx(rec["value"] - rec["decode_ms"])
    assert rec["images_per_s"] == pytest.approx(3 / (rec["value"] * 1e-3))
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):  # never a silent eager run
        measure(tmp_path / "bench.jsonl", model, vae, "sample", 3, sampler, 2, fields, cuda_graphs=True)


@pytest.mark.parametrize("decode_mode", ["channels_last", "eager"])
def test_the_sampling_record_names_the_decode_mode_that_ran(cell, tmp_path, decode_mode):
    model, vae, fields = cell
    vae.set_decode_mode("channels_last" if decode_mode == "eager" else "eager")  # the cell sets its own mode
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 2, "carry", 1, fields, decode_mode=decode_mode)
    (rec,) = read_records(tmp_path / "bench.jsonl")
    assert rec["decode_mode"] == decode_mode == vae.decode_mode


def test_the_sampling_record_names_its_decode_batch_and_the_decode_ran_in_chunks_of_it(cell, tmp_path, monkeypatch):
    model, vae, fields = cell
    calls = []
    decoder = vae.decoder.forward
    monkeypatch.setattr(vae.decoder, "forward", lambda z: calls.append(len(z)) or decoder(z))
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 3, "carry", 1, fields, decode_batch=2)
    assert calls and set(calls) == {2, 1}  # every decode (the generations' and the decode's own timing) in chunks
    calls.clear()
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 3, "carry", 1, fields)
    assert calls and set(calls) == {3}
    chunked, whole = read_records(tmp_path / "bench.jsonl")
    assert chunked["decode_batch"] == 2 and whole["decode_batch"] is None


def test_the_sampling_record_names_fused_elementwise_and_only_its_timing_ran_fused(cell, tmp_path, monkeypatch):
    """task.fused_elementwise: the timed generations run the blocks' fused chains and the tokenizer's compiled
    upsampling, model and tokenizer are left unfused after (the next stage, the next cell), and each record says
    which it timed."""
    from varbench.backbones import blocks
    from varbench.tokenizers import quant
    model, vae, fields = cell
    ran, fused = [], blocks.fused
    for module in (blocks, quant):
        monkeypatch.setattr(module, "fused", lambda fn: ran.append(fn.__name__) or fused(fn))
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 2, "carry", 1, fields, fused_elementwise=True)
    assert {"ln_modulate", "bicubic_up"} <= set(ran)
    assert not any(m.fused_elementwise for m in [*model.modules(), *vae.modules()] if hasattr(m, "fused_elementwise"))
    ran.clear()
    measure(tmp_path / "bench.jsonl", model, vae, "sample", 2, "carry", 1, fields)
    assert ran == []
    assert [r["fused_elementwise"] for r in read_records(tmp_path / "bench.jsonl")] == [True, False]


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "true"])
def test_a_bad_task_decode_batch_is_a_config_error_naming_key_and_value(bad):
    from hydra import compose, initialize_config_dir

    from varbench.config_schema import ConfigError, validate
    from varbench.registry import CONFIG_ROOT
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=bench", f"task.decode_batch={bad}"])
    with pytest.raises(ConfigError, match="task.decode_batch = "):
        validate(cfg)
    cfg.task.decode_batch = 16
    validate(cfg)


def test_mixer_and_intra_options_override_their_yaml_and_name_their_own_configuration():
    from hydra import compose, initialize_config_dir

    from varbench.analysis.load import flatten
    from varbench.registry import CONFIG_ROOT
    from varbench.tasks.bench import check_config, options_of
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=bench", "task.mixer_options={mamba2:{fused:true}}",
                                                       "task.intra_options={full:{backend:sdpa_scales}}"])
    assert options_of(cfg, "mixer", "mamba2") == {"fused": True} and options_of(cfg, "mixer", "gla") == {}
    assert options_of(cfg, "intra", "full") == {"backend": "sdpa_scales"} and options_of(cfg, "intra", "local") == {}
    check_config(cfg)
    cfg.task.mixer_options = {"mamba2": {"fusd": True}}
    with pytest.raises(ValueError, match=r"task.mixer_options.mamba2: unknown fields \['fusd'\]; valid: .*'fused'"):
        options_of(cfg, "mixer", "mamba2")
    cfg.task.mixer_options, cfg.task.intra_options = None, {"full": {"backnd": "flex"}}
    with pytest.raises(ValueError, match=r"task.intra_options.full: unknown fields \['backnd'\]; valid: .*'backend'"):
        check_config(cfg)
    cfg.task.intra_options = {"fulll": {"backend": "flex"}}
    with pytest.raises(ValueError, match=r"unknown intra 'fulll'; valid intra names: \["):
        check_config(cfg)
    row = flatten({"metric": "train_images_per_s", "value": 1.0, "mixer": "mamba2", "intra": "full", "depth": 16,
                   "mixer_options": {"fused": True}, "intra_options": {"backend": "sdpa_scales"}})
    assert row["mixer"] == "mamba2[fused=True]" and row["intra"] == "full[backend=sdpa_scales]"
    assert row["model"] == "mamba2[fused=True]+full[backend=sdpa_scales]-d16"


def test_every_record_of_a_cell_carries_the_mixer_and_intra_config_it_built(monkeypatch, tmp_path):
    """A YAML default (mamba2's fit_chunk) leaves no mark on `mixer_options`: the record's config must name it."""
    from hydra import compose, initialize_config_dir

    from varbench.analysis.load import flatten
    from varbench.registry import CONFIG_ROOT, load_option
    from varbench.tasks import bench
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=bench", "task.isolate_cells=false",
                                                       "task.mixer_options={mamba2:{chunk_size:128}}"])
    plain = OmegaConf.create({g: OmegaConf.to_container(cfg[g], resolve=True) for g in ("model", "task")})
    cells = []
    monkeypatch.setattr(bench, "run_cell", lambda *args: cells.append(args[-1]) or 0)
    bench.time_cell(plain, tmp_path / "bench.jsonl", "mamba2", "full", 256, {})
    bench.time_cell(plain, tmp_path / "bench.jsonl", "gla", bench.RASTER, 256, {})
    mvar, raster = (c["config"] for c in cells)
    assert mvar["mixer"] == {**load_option("mixer", "mamba2"), "chunk_size": 128}
    assert mvar["mixer"]["fit_chunk"] == load_option("mixer", "mamba2")["fit_chunk"]  # the YAML's, not set by name
    assert mvar["intra"] == OmegaConf.to_container(load_option("intra", "full"))
    assert mvar["model"] == OmegaConf.to_container(cfg.model, resolve=True)
    assert set(raster) == {"model", "mixer"} and raster["mixer"] == OmegaConf.to_container(load_option("mixer", "gla"))
    row = flatten({"metric": "sample_latency_ms", "value": 1.0, **cells[0]})
    # the label stays what the options name
    assert row["model"] == f"mamba2[chunk_size=128]+full-d{cfg.model.depth}" and row["config"] == mvar


def test_bf16_weights_train_a_copy_and_get_their_own_columns(cell, tmp_path):
    from varbench.analysis.load import load_records
    from varbench.analysis.tables import main_table
    model, vae, fields = cell
    measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 1, fields)
    measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 1, fields, param_dtype="bf16")
    eager, bf16 = read_records(tmp_path / "bench.jsonl")
    assert (eager["param_dtype"], bf16["param_dtype"]) == ("fp32", "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # sampling stages time the model as built
    row = main_table(load_records(tmp_path)).loc[("attention+full-d2", 32)]
    assert row["Train img/s (b2)"] == eager["value"] and row["Train img/s (b2, bf16 weights)"] == bf16["value"]
    with pytest.raises(ValueError, match=r"task.param_dtype must be one of \['fp32', 'bf16'\]"):
        measure(tmp_path / "bench.jsonl", model, vae, "train", 2, None, 1, fields, param_dtype="fp8")


def test_the_bench_states_by_name_that_its_weights_are_random():
    """No evaluation path builds random weights unless asked by name: the speed protocol asks (task.random_weights)."""
    from varbench.registry import compose
    from varbench.tasks.bench import main
    cfg = compose(["task=bench", "task.random_weights=false"])
    with pytest.raises(ValueError, match="task.random_weights=False: task=bench times models with random weights"):
        main(cfg)
    assert compose(["task=bench"]).task.random_weights is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("mixer,intra", [("attention", "none"), ("mamba2", "full")])
def test_on_cuda_reduce_overhead_replays_cuda_graphs_and_trains_as_the_default_compile(mixer, intra):
    """The reduce-overhead training step: Inductor skips no graph (the fused AdamW outside them, the flex masks and
    the kernels' custom ops inside), and three steps from one start give the default compile's losses (the same
    kernels; the tolerance is for the kernels' atomic adds, whose order varies from run to run)."""
    import copy

    import torch.nn.functional as F

    from varbench.training.bench_stage import cudagraph_skips
    from varbench.training.loop import compile_for_training
    torch.manual_seed(0)
    start = tiny_model(mixer, intra, cond_drop_rate=0.0).cuda().train()  # no random label dropout to tell apart
    losses, skips = {}, {}
    for mode in ("default", "reduce-overhead"):
        model, before = copy.deepcopy(start), cudagraph_skips()
        torch._dynamo.reset()
        net = compile_for_training(model, len(model.blocks), "model", mode)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        g = torch.Generator(device="cuda").manual_seed(1)
        losses[mode] = []
        for _ in range(3):
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            labels = torch.randint(0, 10, (4,), device="cuda", generator=g)
            gt = torch.randint(0, model.vocab_size, (4, model.layout.L), device="cuda", generator=g)
            x = torch.randn(4, model.layout.L - 1, model.latent_dim, device="cuda", generator=g)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(labels, x, inputs_checked=True).flatten(0, 1), gt.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[mode].append(loss.item())
        skips[mode] = cudagraph_skips() - before
    assert skips["reduce-overhead"] == 0
    torch.testing.assert_close(losses["reduce-overhead"], losses["default"], rtol=1e-4, atol=0)
