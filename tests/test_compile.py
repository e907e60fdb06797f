"""The compiled training step (task.compile, train.compile) on the CPU reference paths: every registered mixer's
model is one graph, so torch.compile sees all of it; and where a kernel does break the graph inside each block (as
an opaque GPU kernel may), every block is still compiled rather than left to run eagerly. Also: `auto` compiles on
CUDA only, and flex BlockMasks are built before compiling, never traced into the graph. The models of the CPU tests
run their reference kernels (backend="reference"), whatever the machine, since their tensors are on the CPU."""

import pytest
import torch
import torch._dynamo
from helpers import tiny_model, tiny_tokenizer
from test_training import run
from torch._dynamo.utils import counters

from varbench.backbones import blocks
from varbench.config_schema import COMPILE_MODES
from varbench.layout import RasterLayout, ScaleLayout
from varbench.ops.attention import kernel as attention_kernel
from varbench.registry import list_options
from varbench.training.loop import compile_for_training
from varbench.utils.auto import resolve_auto
from varbench.utils.records import read_records

CONFIGS = [(m, "none") for m in list_options("mixer") if m != "none"] + [("mamba2", "full"), ("none", "full"),
                                                                         ("attention", "local")]


@pytest.fixture(scope="module")
def vae():
    return tiny_tokenizer()


def captured_training_step(model, scope="model") -> dict:
    """Dynamo's counters after one compiled forward and backward of `model` in train mode, compiled in `scope` by a
    backend that runs each graph as captured (no Inductor code generation) and counts the operators it runs: `ops`
    is how many of the forward's operators ran inside a compiled graph (a graph reused by several blocks counts at
    each call; a torch.autograd.Function is one node of the graph, its operators in its forward body's graph)."""
    torch._dynamo.reset()
    counters.clear()
    ran = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs):
        graphs = [gm] + [m for name, m in gm.named_children() if name.startswith("fwd_body")]
        ops = sum(node.op in ("call_function", "call_method", "call_module") for g in graphs for node in g.graph.nodes)
        return lambda *args: ran.append(ops) or gm.forward(*args)
    model.train()
    net = compile_for_training(model, len(model.blocks), scope, backend=counting_backend)
    x_BLCv = torch.randn(2, model.layout.L - 1, model.latent_dim)
    net(torch.tensor([1, 2]), x_BLCv).float().pow(2).mean().backward()
    return {"frames": counters["frames"]["total"], "breaks": sum(counters["graph_break"].values()), "ops": sum(ran)}


@pytest.mark.parametrize("mixer,intra", CONFIGS, ids=[f"{m}-{i}" for m, i in CONFIGS])
def test_the_compiled_training_step_is_one_graph(mixer, intra, vae):
    seen = captured_training_step(tiny_model(mixer, intra, vae=vae, depth=2, drop_path_rate=0.1, backend="reference"))
    assert seen["frames"] == 1 and seen["breaks"] == 0, seen


@pytest.mark.parametrize("mixer,intra", CONFIGS, ids=[f"{m}-{i}" for m, i in CONFIGS])
def test_compiled_by_blocks_every_block_is_one_graph_and_the_blocks_share_it(mixer, intra, vae):
    # three blocks, three stochastic-depth rates (0, 0.05, 0.1): block 0 (no stochastic depth) has a graph of its own,
    # blocks 1 and 2 share one (before session 25 the rate was a constant of each block's graph: three graphs, and a
    # model of depth d compiled d times)
    model = tiny_model(mixer, intra, vae=vae, depth=3, drop_path_rate=0.1, backend="reference")
    seen = captured_training_step(model, "blocks")
    assert seen["frames"] == 2 and seen["breaks"] == 0, seen
    assert all(block._compiled_call_impl is not None for block in model.blocks)


def test_a_compile_scope_other_than_blocks_or_model_is_an_error_naming_it(vae):
    with pytest.raises(ValueError, match=r"compile scope must be one of \['model', 'blocks'\], got 'layers'"):
        compile_for_training(tiny_model("attention", vae=vae), 2, "layers", backend="eager")


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_a_graph_break_in_every_block_leaves_no_block_uncompiled(vae, monkeypatch, scope):
    model = tiny_model("attention", vae=vae, depth=12, drop_path_rate=0.1, backend="reference")  # 12 different rates
    whole = captured_training_step(model, scope)["ops"]
    ffn = blocks.FFN.forward

    def ffn_behind_a_break(self, x_BLC):  # what an opaque kernel does to the graph, in every block
        torch._dynamo.graph_break()
        return ffn(self, x_BLC)
    monkeypatch.setattr(blocks.FFN, "forward", ffn_behind_a_break)
    broken = captured_training_step(model, scope)
    assert broken["breaks"] >= 1 and broken["ops"] >= 0.98 * whole, (broken, whole)


@pytest.mark.parametrize("value,device,expected", [("auto", "cpu", False), ("auto", "cuda", True), (True, "cpu", True),
                                                   (False, "cuda", False)])
def test_auto_compiles_on_cuda_only_and_an_explicit_choice_stands(value, device, expected):
    assert resolve_auto(value, "train.compile", device) is expected


def test_a_value_other_than_true_false_auto_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="train.compile must be true, false or 'auto', got 'yes'"):
        resolve_auto("yes", "train.compile", "cpu")


def spy_on_mask_building(monkeypatch) -> list:
    """Replace the BlockMask builder by a stand-in (a tensor: flex needs no CUDA then) that logs each build, and
    flex_attention by a function of it, so that the mask's lifetime is visible on the CPU."""
    built = []

    def build(layout, kind, window, device):
        built.append((layout, kind, window, device))
        return torch.full((1,), float(layout.num_scales))
    monkeypatch.setattr(attention_kernel, "_build_block_mask", build)
    monkeypatch.setattr(attention_kernel, "_BLOCK_MASKS", {})
    monkeypatch.setattr(attention_kernel, "_flex", lambda: lambda q, k, v, block_mask, scale: q * scale + block_mask)
    return built


@pytest.mark.parametrize("layout", [ScaleLayout((1, 2, 3)), RasterLayout(14)], ids=["scales", "raster"])
def test_a_prepared_block_mask_is_not_built_inside_the_compiled_graph(monkeypatch, layout):
    built = spy_on_mask_building(monkeypatch)
    q = torch.randn(1, 2, 14, 4)
    attention_kernel.prepare_block_masks(layout, "cpu", [("block_causal", 0)])
    assert len(built) == 1
    torch._dynamo.reset()
    counters.clear()
    attend = torch.compile(lambda q: attention_kernel.flex_masked_attention(q, q, q, layout, "block_causal", 0.5),
                           backend="eager", fullgraph=True)
    torch.testing.assert_close(attend(q), q * 0.5 + layout.num_scales)
    attend(q)
    assert len(built) == 1 and counters["stats"]["unique_graphs"] == 1  # no build in the graph, no recompile


def test_an_unprepared_mask_traced_into_a_graph_is_not_stored_as_if_built_outside(monkeypatch):
    built = spy_on_mask_building(monkeypatch)
    layout, q = ScaleLayout((1, 2)), torch.randn(1, 2, 5, 4)
    torch._dynamo.reset()
    attend = torch.compile(lambda q: attention_kernel.flex_masked_attention(q, q, q, layout, "block_diag", 0.5),
                           backend="eager", fullgraph=True)
    attend(q)
    assert len(built) == 1 and attention_kernel._BLOCK_MASKS == {}
    attention_kernel.flex_masked_attention(q, q, q, layout, "block_diag", 0.5)  # eager: built once, kept
    attention_kernel.flex_masked_attention(q, q, q, layout, "block_diag", 0.5)
    assert len(built) == 2 and list(attention_kernel._BLOCK_MASKS) == [(layout, "block_diag", 0, "cpu")]


FLEX_MODULES = [("attention", "none", ("block_causal", 0)), ("none", "full", ("block_diag", 0)),
                ("none", "local", ("window", 2))]


@pytest.mark.parametrize("mixer,intra,mask", FLEX_MODULES, ids=[f"{m}-{i}" for m, i, _ in FLEX_MODULES])
def test_a_module_on_auto_names_the_flex_mask_it_attends_with_on_cuda(mixer, intra, mask, vae):
    """Session 24 (the H100 logs): on `auto`, the default, which attends with flex on CUDA tensors, the modules named
    no mask (only a named `flex` did), so compiling built none: each step's graph built its BlockMask, and the first
    trace made the compiled flex_attention, so dynamo traced the whole forward twice."""
    model = tiny_model(mixer, intra, vae=vae, depth=1)
    module = next(m for m in model.modules() if hasattr(m, "flex_mask"))
    assert module.backend == "auto"
    module.kernels_here = ("flex",)  # as on a GPU machine
    assert module.flex_mask(torch.device("cuda")) == mask
    assert module.flex_mask(torch.device("cpu")) is None  # the reference runs on CPU tensors


def test_preparing_the_masks_makes_the_compiled_flex_before_any_trace(monkeypatch):
    """The compiled flex_attention is a module global that the first call makes: made inside a trace, it fails the
    guard dynamo put on it, and the forward is traced again (session 24: M-VAR-d16's first step compiled twice)."""
    monkeypatch.setattr(attention_kernel, "_compiled_flex", None)
    monkeypatch.setattr(attention_kernel, "_BLOCK_MASKS", {})
    monkeypatch.setattr(attention_kernel, "_build_block_mask", lambda *key: torch.zeros(1))
    attention_kernel.prepare_block_masks(ScaleLayout((1, 2)), "cpu", [("block_causal", 0)])
    assert attention_kernel._compiled_flex is not None


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (flex attention, fla, mamba_ssm)")


@CUDA
@pytest.mark.parametrize("backend", ["flex", "auto"])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("mixer,intra", [("attention", "none"), ("none", "full"), ("none", "local")])
def test_on_cuda_compiling_builds_the_flex_masks_first_and_the_step_is_one_graph(mixer, intra, autocast, backend,
                                                                                 vae, monkeypatch):
    # (under bf16 autocast too: the raster attention's compiled step, which trains under it, ran as 2 frames in
    # session 20; in a fresh process, as a training run is, before any flex call made the compiled flex_attention;
    # on auto, the default, too: session 24's logs showed its masks built in the graph and the forward traced twice)
    model = tiny_model(mixer, intra, vae=vae, depth=2, backend=backend).cuda()
    monkeypatch.setattr(attention_kernel, "_compiled_flex", None)
    monkeypatch.setattr(attention_kernel, "_BLOCK_MASKS", {})
    build = attention_kernel._build_block_mask
    built = []
    monkeypatch.setattr(attention_kernel, "_build_block_mask", lambda *key: built.append(key) or build(*key))
    torch._dynamo.reset()
    counters.clear()
    net = compile_for_training(model.train(), len(model.blocks), backend="eager")
    assert built and all(key[3].startswith("cuda") for key in built)  # built by compile_for_training
    before = len(built)
    x_BLCv = torch.randn(2, model.layout.L - 1, model.latent_dim, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = net(torch.tensor([1, 2], device="cuda"), x_BLCv).float().pow(2).mean()
    loss.backward()
    # one graph: dynamo's frame count is no measure of it, as it also counts frames it only looked at (session 29, on
    # an H200: this test's log showed one trace, of the forward, and 2 frames)
    assert len(built) == before and counters["stats"]["unique_graphs"] == 1, (
        dict(counters["frames"]), dict(counters["stats"]), dict(counters["graph_break"]))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


GPU_KERNEL_MIXERS = ["gla", "retnet", "linear_attention", "hgrn2", "deltanet", "gated_deltanet", "mamba2", "mamba"]


def fla_refuses_gated_backward() -> bool:
    """Whether fla refuses the gated chunk backward (`chunk_bwd_dqkwg` with g) here: it raises on Hopper GPUs under
    Triton >= 3.4 and < 3.7.1, which compute it wrong (fla issue #640; the lent H100 / H200 have Triton 3.6)."""
    from fla.ops.common import chunk_o
    return bool(getattr(chunk_o, "IS_NVIDIA_HOPPER", False) and getattr(chunk_o, "TRITON_ABOVE_3_4_0", False)
                and not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True))


@CUDA
@pytest.mark.parametrize("mixer", GPU_KERNEL_MIXERS)
def test_on_cuda_the_training_step_on_the_gpu_kernels_is_one_graph(mixer, vae):
    # the kernels run as custom ops (varbench::fla_fwd / ssd_scan_fwd / selective_scan_fwd / causal_conv1d_fwd): dynamo
    # neither breaks nor retraces at them
    if mixer == "gated_deltanet" and fla_refuses_gated_backward():
        pytest.skip("fla refuses Gated DeltaNet's backward on Hopper under this Triton (fla #640)")
    model = tiny_model(mixer, vae=vae, depth=2, drop_path_rate=0.1).cuda().train()
    assert model.mixer_backend != "reference", model.mixer_backend
    torch._dynamo.reset()
    counters.clear()
    net = compile_for_training(model, len(model.blocks), backend="eager")
    x_BLCv = torch.randn(2, model.layout.L - 1, model.latent_dim, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = net(torch.tensor([1, 2], device="cuda"), x_BLCv).float().pow(2).mean()
    loss.backward()
    assert counters["stats"]["unique_graphs"] == 1, (dict(counters["frames"]), dict(counters["stats"]))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def test_a_cpu_training_run_with_compile_auto_runs_eagerly_and_says_so(tmp_path):
    out = run(tmp_path, "auto", "train.steps=2", "train.ckpt_every=1000")  # train.compile: auto, the default
    assert out.returncode == 0, out.stderr[-3000:]
    records = read_records(tmp_path / "auto" / "results" / "train.jsonl")
    assert {r["metric"] for r in records} == {"train_loss", "train_summary"}
    assert all(r["compiled"] is False for r in records) and records[-1]["config"]["train"]["compile"] == "auto"
    assert all(r["compile_scope"] is None for r in records)


def test_train_compile_mode_reaches_torch_compile_marks_each_micro_batch_and_is_recorded(tmp_path, monkeypatch):
    """train.compile_mode: Inductor's mode of the training step (the default passes none); reduce-overhead replays
    CUDA graphs, so each micro-batch tells them a new step begins, and with micro-batches to accumulate the
    gradients are copied out of the graphs' memory (loop.own_gradients) after each but an update's last; the records
    say the mode."""
    from test_training_resume import config, train

    from varbench.training import loop
    calls, marks, copies = [], [], []
    monkeypatch.setattr(loop, "compile_for_training",
                        lambda net, depth, scope, mode: calls.append((scope, mode)) or net)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    own = loop.own_gradients
    monkeypatch.setattr(loop, "own_gradients", lambda model: copies.append(
        all(p.grad is not None for p in model.parameters())) or own(model))  # after the first backward
    summary = train(config(tmp_path, "train.steps=2", "train.grad_accum=3", "train.log_every=1", "train.compile=true",
                           "train.compile_mode=reduce-overhead"))
    assert calls == [("model", "reduce-overhead")] and len(marks) == 2 * 3 and copies == [True] * 2 * 2
    assert summary["compile_mode"] == "reduce-overhead"
    assert [(r["compile_mode"], r["inductor_options"]) for r in read_records(tmp_path / "results" / "train.jsonl")
            ] == [("reduce-overhead", loop.INDUCTOR_OPTIONS)] * 2
    summary = train(config(tmp_path / "eager", "train.steps=1", "train.grad_accum=2"))  # compile auto: eager here
    assert len(calls) == 1 and len(marks) == 6 and len(copies) == 4 and summary["compile_mode"] is None


@pytest.mark.parametrize("mode", COMPILE_MODES)
def test_each_compile_mode_reaches_inductor_as_its_options_with_padding_off_and_compiles(mode, monkeypatch):
    """torch.compile takes a mode or options, not both: the mode is spelled out as Inductor's own options for it,
    beside comprehensive padding off (loop.INDUCTOR_OPTIONS); Inductor accepts them (an unknown key raises) and the
    compiled step runs; any other backend gets neither."""
    import torch._inductor

    from varbench.training import loop
    options = loop.compile_options(mode)["options"]
    assert options == torch._inductor.list_mode_options(mode) | {"comprehensive_padding": False}
    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: seen.append(kwargs) or net)
    model = tiny_model("attention", "none", depth=1, backend="reference")
    compile_for_training(model, 1, "model", mode)
    compile_for_training(model, 1, "model", mode, backend="eager")
    assert seen == [{"options": options}, {"backend": "eager"}]
    monkeypatch.undo()
    torch._dynamo.reset()
    assert torch.compile(torch.sin, options=options)(torch.zeros(3)).eq(0).all()


def test_own_gradients_copies_each_gradient_into_storage_of_its_own_and_leaves_a_missing_one_missing():
    from varbench.training.loop import own_gradients
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    net[0](torch.ones(1, 3)).sum().backward()  # the second layer gets no gradient
    before = net[0].weight.grad
    own_gradients(net)
    after = net[0].weight.grad
    assert torch.equal(after, before) and after.data_ptr() != before.data_ptr() and net[1].weight.grad is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the replayed CUDA graphs)")
def test_on_cuda_reduce_overhead_trains_as_the_default_compile_and_resumes_exactly(tmp_path):
    """task=train with train.compile_mode=reduce-overhead runs the default compile's Inductor kernels, replayed as
    CUDA graphs, so its losses are the default's, also where two micro-batches accumulate into one update (a replay
    overwrites the previous one's outputs); a run cut by SIGTERM in update 3 resumes to the weights of the run never
    cut (the graphs recorded anew in the resumed call). Under train.deterministic: without it the resumed weights
    differed on an H100 (session 32)."""
    import os
    import signal

    from safetensors.torch import load_file
    from test_training_resume import config, train
    common = ("device=cuda", "data.num_workers=0", "train.steps=5", "train.grad_accum=2", "train.ckpt_every=100",
              "train.compile=true", "train.deterministic=true")
    # (no loader workers: the SIGTERM below comes from the data set's reads)

    def losses(name: str) -> list[float]:
        return [r["value"] for r in read_records(tmp_path / name / "results" / "train.jsonl")
                if r["metric"] == "train_loss"]

    def final_weights(name: str) -> dict:
        return load_file(tmp_path / name / "run" / "checkpoints" / "step_00000005" / "model.safetensors")

    for mode in ("default", "reduce-overhead"):
        train(config(tmp_path / mode, *common, f"train.compile_mode={mode}"))
    assert len(losses("default")) == 5 and losses("reduce-overhead") == losses("default")
    ro = ("train.compile_mode=reduce-overhead",)
    cut = train(config(tmp_path / "cut", *common, *ro),
                lambda model: {4: lambda: os.kill(os.getpid(), signal.SIGTERM)})  # micro-batch 5: update 3
    assert cut["interrupted"] == "SIGTERM" and cut["steps"] == 3
    assert train(config(tmp_path / "cut", *common, *ro))["steps"] == 5
    whole, resumed = final_weights("reduce-overhead"), final_weights("cut")
    assert whole.keys() == resumed.keys()
    differ = {k: float((whole[k].float() - resumed[k].float()).abs().max()) for k in whole
              if not torch.equal(whole[k], resumed[k])}
    assert not differ, f"resumed weights differ (max abs difference): {differ}"
