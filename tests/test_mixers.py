"""The mixer contract, checked for every registered inter-scale mixer (every file of varbench/configs/mixer/ except
`none`, the absence of an inter-scale branch: tests/test_backbone.py runs whole models with it).

A new mixer is covered by adding its module and its YAML; nothing here lists mixers by name.
All checks run the reference path on CPU in float64 unless they say otherwise.
"""

import pytest
import torch

from varbench.layout import ScaleLayout
from varbench.mixers.base import carried_terms, run_steps, state_nbytes, take_rows
from varbench.registry import build, list_options

MIXERS = [name for name in list_options("mixer") if name != "none"]
DIM, HEADS = 64, 2


def make(name, dtype=torch.float64):
    mixer = build("mixer", name, dim=DIM, num_heads=HEADS, layer_idx=0)
    return mixer.to(dtype).eval()


def test_registry_is_not_empty():
    assert "attention" in MIXERS and len(MIXERS) >= 1


def test_none_means_no_inter_scale_branch():
    assert "none" in list_options("mixer")
    with pytest.raises(ValueError, match="absence of a component"):  # never None: nothing to build
        build("mixer", "none", dim=DIM, num_heads=HEADS)


CPU_PATHS = {"mamba": "cpu_scan"}  # mixers with a faster CPU form of the reference's math (varbench/ops/backend.py)


@pytest.mark.parametrize("name", MIXERS)
def test_auto_runs_the_cpu_path_on_cpu_tensors_and_records_it(name, tiny_layout):
    mixer = make(name)
    mixer(torch.randn(1, tiny_layout.L, DIM, dtype=torch.float64), tiny_layout)
    assert mixer.backend == "auto" and mixer.backend_ran == CPU_PATHS.get(name, "reference")


@pytest.mark.parametrize("name", MIXERS)
def test_step_chain_equals_forward(name, tiny_layout):
    mixer = make(name)
    x_BLC = torch.randn(2, tiny_layout.L, DIM, dtype=torch.float64)
    y_forward = mixer(x_BLC, tiny_layout)
    y_steps, _ = run_steps(mixer, x_BLC, tiny_layout)
    assert y_forward.shape == x_BLC.shape
    torch.testing.assert_close(y_steps, y_forward, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_no_information_flows_from_later_scales(name, k, tiny_layout):
    mixer = make(name)
    x_BLC = torch.randn(1, tiny_layout.L, DIM, dtype=torch.float64)
    x2_BLC = x_BLC.clone()
    s = tiny_layout.slice(k)
    x2_BLC[:, s] += torch.randn_like(x2_BLC[:, s])
    y1, y2 = mixer(x_BLC, tiny_layout), mixer(x2_BLC, tiny_layout)
    earlier = slice(0, s.start)
    assert torch.equal(y1[:, earlier], y2[:, earlier]), "a later scale changed an earlier scale's output"
    assert not torch.allclose(y1[:, s], y2[:, s]), "perturbing a scale changed nothing: the test would be blind"


@pytest.mark.parametrize("name", MIXERS)
def test_within_scale_semantics(name, tiny_layout):
    """Causal mixers: a token never sees a later token of its own scale. Bidirectional ones: it does."""
    mixer = make(name)
    x_BLC = torch.randn(1, tiny_layout.L, DIM, dtype=torch.float64)
    last = tiny_layout.slice(3).stop - 1
    x2_BLC = x_BLC.clone()
    x2_BLC[:, last] += 1.0
    y1, y2 = mixer(x_BLC, tiny_layout), mixer(x2_BLC, tiny_layout)
    same_scale_before = slice(tiny_layout.slice(3).start, last)
    unchanged = torch.equal(y1[:, same_scale_before], y2[:, same_scale_before])
    assert mixer.within_scale in ("causal", "bidirectional")
    assert unchanged == (mixer.within_scale == "causal")


@pytest.mark.parametrize("name", MIXERS)
def test_doubled_cfg_batch_rows_are_independent(name, tiny_layout):
    """Sampling doubles the batch (conditional rows, then unconditional): each row's result must not depend on
    the others, and selecting state rows must commute with stepping."""
    mixer = make(name)
    x_BLC = torch.randn(4, tiny_layout.L, DIM, dtype=torch.float64)
    y_all, state_all = run_steps(mixer, x_BLC, tiny_layout)
    for row in range(4):
        y_row, state_row = run_steps(mixer, x_BLC[row:row + 1], tiny_layout)
        torch.testing.assert_close(y_all[row:row + 1], y_row, atol=1e-10, rtol=1e-10)
        picked = take_rows(state_all, torch.tensor([row]))
        for key in state_row:
            torch.testing.assert_close(picked[key], state_row[key], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", MIXERS)
def test_state_bytes_is_the_real_state_size(name, tiny_layout):
    mixer = make(name, torch.float32)
    x_BLC = torch.randn(3, tiny_layout.L, DIM)
    _, state = run_steps(mixer, x_BLC, tiny_layout)
    assert mixer.state_bytes(tiny_layout, 3, torch.float32) == state_nbytes(state)


WITH_WEIGHT_TERMS = [name for name in MIXERS if getattr(make(name), "weight_terms", dict)()]


@pytest.mark.parametrize("name", WITH_WEIGHT_TERMS)
def test_a_generation_derives_the_weight_terms_at_its_first_scale_only(name, tiny_layout, monkeypatch):
    """A mixer that carries weight terms (mixers/base.py) derives them once per generation, at scale 0, and the
    state then carries exactly them; the next generation derives them anew."""
    mixer = make(name)
    calls, derive = [], mixer.weight_terms
    monkeypatch.setattr(mixer, "weight_terms", lambda: calls.append(1) or derive())
    x_BLC = torch.randn(2, tiny_layout.L, DIM, dtype=torch.float64)
    _, state = run_steps(mixer, x_BLC, tiny_layout)
    assert len(calls) == 1
    carried = carried_terms(state)
    assert carried.keys() == derive().keys() and all(torch.equal(carried[n], t) for n, t in derive().items())
    run_steps(mixer, x_BLC, tiny_layout)
    assert len(calls) == 2


@pytest.mark.parametrize("name,weight", [("attention", "q_bias"), ("mamba", "A_log"), ("mamba2", "A_log"),
                                         ("gated_deltanet", "A_log")])
def test_a_generation_after_a_weight_change_carries_the_new_terms(name, weight, tiny_layout):
    mixer = make(name)
    x_BLC = torch.randn(2, tiny_layout.L, DIM, dtype=torch.float64)
    before = carried_terms(run_steps(mixer, x_BLC, tiny_layout)[1])
    with torch.no_grad():
        getattr(mixer, weight).add_(0.5)
    after = carried_terms(run_steps(mixer, x_BLC, tiny_layout)[1])
    assert any(not torch.equal(after[n], before[n]) for n in after)
    assert all(torch.equal(after[n], t) for n, t in mixer.weight_terms().items())


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_under_autocast_the_conv_tail_stays_in_its_inputs_dtype_and_nothing_changes(name, tiny_layout):
    """Under bf16 autocast the Mamba conv tails carry in_proj's bf16 outputs as they are (no cast to init_state's
    fp32 and back at every scale); the outputs are those of carrying them in fp32, bit for bit (the cast round trip
    is exact), and the SSM state stays fp32."""
    mixer = make(name, torch.float32)
    x_BLC = torch.randn(2, tiny_layout.L, DIM)
    outs = {}
    for widen in (False, True):
        state, ys = mixer.init_state(2, tiny_layout), []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for k, x_BlC in enumerate(tiny_layout.split(x_BLC)):
                y_BlC, state = mixer.step(x_BlC, state, tiny_layout, k)
                ys.append(y_BlC)
                if widen:  # the code before: the tail went back to init_state's dtype
                    state = {**state, "conv": state["conv"].float()}
        outs[widen] = torch.cat(ys, 1)
        if not widen:
            assert state["conv"].dtype == torch.bfloat16 and state["ssm"].dtype == torch.float32
    assert torch.equal(outs[False], outs[True])


@pytest.mark.parametrize("name", MIXERS)
def test_every_parameter_gets_a_gradient(name, tiny_layout):
    mixer = make(name).train()
    x_BLC = torch.randn(2, tiny_layout.L, DIM, dtype=torch.float64, requires_grad=True)
    mixer(x_BLC, tiny_layout).square().sum().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    assert torch.isfinite(x_BLC.grad).all()


@pytest.mark.parametrize("name", MIXERS)
def test_flops_are_positive_and_linear_in_batch(name):
    mixer = make(name)
    layout = ScaleLayout((1, 2, 3, 4, 5, 6, 8, 10, 13, 16))
    one = mixer.flops(layout, 1)
    assert one > 0 and mixer.flops(layout, 3) == 3 * one
    # every mixer at least runs its projections: 2 * L * C * C multiply-adds is a floor no mixer can go under
    assert one >= 2 * layout.L * DIM * DIM


@pytest.mark.parametrize("name", MIXERS)
def test_unknown_backend_is_an_error(name):
    with pytest.raises(ValueError, match="valid"):
        build("mixer", name, dim=DIM, num_heads=HEADS, backend="no-such-kernel")


def test_unknown_mixer_lists_the_registered_names():
    with pytest.raises(ValueError) as err:
        build("mixer", "transformer-xl", dim=DIM, num_heads=HEADS)
    for name in MIXERS:
        assert name in str(err.value)
