"""The AR training loop in this process (no subprocess): resume refuses changed settings but allows more steps, the
NaN guard names a checkpoint whose weights gave a finite loss, signal handlers come back however training ends, and a
real SIGTERM mid-run saves a checkpoint from which the run resumes to the bitwise-same weights."""

import math
import os
import signal

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from varbench.build import build_dataset, build_model, build_tokenizer
from varbench.preemption import PreemptionBridge
from varbench.registry import CONFIG_ROOT
from varbench.training import checkpoints, loop
from varbench.training.loop import train_ar
from varbench.utils.dist import DistInfo
from varbench.utils.records import read_records

TINY = ["model.depth=1", "model.width=32", "model.num_heads=1", "tokenizer.num_res_blocks=1", "tokenizer.ch=32",
        "tokenizer.vocab_size=32", "tokenizer.patch_nums=[1,2,4,8]", "data.size_per_class=2", "data.num_classes=2",
        "train.batch_size=2", "train.warmup_iters=1", "train.log_every=1", "train.ckpt_every=1", "train.keep_last=3",
        "device=cpu", "cell_id=test", "model.cond_drop_rate=0.0"]
ONE = DistInfo()


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, f"run_dir={tmp_path / 'run'}",
                                                        f"results_dir={tmp_path / 'results'}", *overrides])


class Watched(torch.utils.data.Dataset):
    """The run's data set; calls `actions[step]()` when the first item of `step` (0-based) is read."""

    def __init__(self, data, batch_size: int):
        self.data, self.batch_size, self.reads, self.actions = data, batch_size, 0, {}

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        step, first = divmod(self.reads, self.batch_size)
        self.reads += 1
        if first == 0 and step in self.actions:
            self.actions.pop(step)()
        return self.data[i]


def train(cfg, actions=lambda model: {}) -> dict:
    """What task=train does, with a data set that acts at some steps (`actions(model)`: {step: fn}); the summary."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    tokenizer, model = build_tokenizer(cfg).to(device), build_model(cfg).to(device)
    data = Watched(build_dataset(cfg, "train"), cfg.train.batch_size)
    data.actions = actions(model)
    torch.manual_seed(cfg.seed)
    return train_ar(model, tokenizer, data, cfg, device, ONE, from_ids=False)


# ----- resume --------------------------------------------------------------------------------------------------------
def test_a_key_added_since_the_save_resumes_at_its_old_behaviour_and_at_no_other_value():
    """A checkpoint written before `mixer.qk_norm` existed ran what `auto` runs: it resumes under auto, not under
    another value (ADDED_KEYS_AT_OLD_BEHAVIOUR, the table grid cell ids read too)."""
    from varbench.utils.resume import changed_keys
    saved = {"mixer": {"backend": "auto"}, "train": {"steps": 2}}
    assert changed_keys(saved, {"mixer": {"backend": "auto", "qk_norm": "auto"}, "train": {"steps": 2}}) == {}
    assert changed_keys(saved, {"mixer": {"backend": "auto", "qk_norm": "torch"}, "train": {"steps": 2}}) == {
        "mixer.qk_norm": ("auto", "torch")}
    assert changed_keys(saved, {"mixer": {"backend": "auto"}, "train": {"steps": 2, "unknown": 1}}) == {
        "train.unknown": ("<absent>", 1)}  # a key the table does not name stays a change


def test_a_kernel_tiling_of_the_same_sum_may_change_on_resume():
    """TILING_KEYS (mamba2's fit_chunk) are resumable: a run saved before the key existed, or at the other value,
    resumes; the mixer's other keys stay changes that refuse it."""
    from varbench.training.checkpoints import RESUMABLE
    from varbench.utils.resume import changed_keys
    saved = {"mixer": {"chunk_size": 256}, "train": {"steps": 2}}
    for now_fit in (True, False):
        now = {"mixer": {"chunk_size": 256, "fit_chunk": now_fit}, "train": {"steps": 2}}
        assert changed_keys(saved, now, RESUMABLE) == {}
        assert changed_keys({**saved, "mixer": {"chunk_size": 256, "fit_chunk": not now_fit}}, now, RESUMABLE) == {}
    assert changed_keys(saved, {"mixer": {"chunk_size": 128, "fit_chunk": True}, "train": {"steps": 2}},
                        RESUMABLE) == {"mixer.chunk_size": (256, 128)}


@pytest.mark.parametrize("override,key", [("train.batch_size=4", "train.batch_size"), ("seed=1", "seed"),
                                          ("train.base_lr=0.1", "train.base_lr"),
                                          ("data.size_per_class=3", "data.size_per_class")])
def test_resume_refuses_a_changed_setting_and_names_it(tmp_path, override, key):
    train(config(tmp_path, "train.steps=2"))
    new = override.split("=")[1]
    with pytest.raises(ValueError, match=rf"cannot resume .*step_00000002.*{key}: saved [^,]+, now {new}\b"):
        train(config(tmp_path, "train.steps=2", override))


def test_resume_with_more_steps_continues(tmp_path):
    train(config(tmp_path, "train.steps=2", "train.log_every=2"))
    summary = train(config(tmp_path, "train.steps=3", "train.log_every=1"))  # log intervals may change too
    assert summary["steps"] == 3 and checkpoints.latest(tmp_path / "run" / "checkpoints").name == "step_00000003"
    assert summary["resumed_from"] == 2  # (its images/s: of step 3 alone)
    logged = [r["step"] for r in read_records(tmp_path / "results" / "train.jsonl") if r["metric"] == "train_loss"]
    assert logged == [2, 3]  # resumed at step 2, not restarted



def test_a_run_stopped_before_its_summary_record_gets_it_on_the_rerun(tmp_path):
    """Session 22's audit: stopped after its last checkpoint but before its summary record, the rerun found nothing
    to train and recorded nothing, so the run dropped out of every table (and its grid cell's final loss was NaN)."""
    import json

    from varbench.tasks.train import main as train_task
    cfg = config(tmp_path, "task=train", "train.steps=2")
    first = train_task(cfg)
    path = tmp_path / "results" / "train.jsonl"
    again = train_task(cfg)  # a finished run: its summary, nothing recorded again
    assert again["final_loss"] == first["final_loss"] and len(read_records(path)) == 3
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["metric"] != "train_summary"]
    path.write_text("\n".join(kept) + "\n")  # as a kill after the last checkpoint leaves the records
    recovered = train_task(cfg)
    (summary,) = [r for r in read_records(path) if r["metric"] == "train_summary"]
    last_loss = [r for r in read_records(path) if r["metric"] == "train_loss"][-1]
    assert summary["value"] == recovered["final_loss"] == last_loss["value"] == first["final_loss"]
    assert summary["steps"] == 2 and summary["summary_from"].startswith("train_loss record of step 2")
    assert summary["params"] == first["params"] and summary["images_per_s"] == last_loss["images_per_s"]


def test_a_resume_under_more_steps_says_its_schedule_changed(tmp_path, caplog):
    """Session 22's audit: train.steps may grow on resume, but the lr / wd schedules span it, so such a run matches
    no uninterrupted run; it resumed silently and its summary read like a run of the new length."""
    from varbench.tasks.train import main as train_task
    from varbench.utils.run_spec import read_spec
    assert train_task(config(tmp_path, "task=train", "train.steps=2"))["steps_changes"] == []
    with caplog.at_level("WARNING"):
        train_task(config(tmp_path, "task=train", "train.steps=3"))
    assert "resuming" in caplog.text and "schedules change" in caplog.text
    summary = train_task(config(tmp_path, "task=train", "train.steps=4"))
    changes = [{"at_step": 2, "steps_before": 2, "steps_after": 3}, {"at_step": 3, "steps_before": 3, "steps_after": 4}]
    assert summary["steps_changes"] == changes
    assert read_spec(checkpoints.latest(tmp_path / "run" / "checkpoints"))["steps_changes"] == changes
    assert [r["steps_changes"] for r in read_records(tmp_path / "results" / "train.jsonl")
            if r["metric"] == "train_summary"] == [[], changes[:1], changes]

def test_keep_last_is_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"train\.keep_last must be an integer >= 1.*got 0"):
        train(config(tmp_path, "train.steps=2", "train.keep_last=0"))
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----- NaN guard and signals -----------------------------------------------------------------------------------------
def poison_gradients(model):
    """From now on every gradient is NaN while the loss stays finite: the update writes diverged weights."""
    def hook(grad):
        return grad * float("nan")
    return lambda: [p.register_hook(hook) for p in model.parameters() if p.requires_grad]


def test_nan_gradients_stop_the_run_before_they_reach_the_weights(tmp_path):
    """The loss of update 3 is finite, its gradients are NaN: without a loss scaler the step would write NaN weights."""
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm nan at step 2; the last good checkpoint "
                                                 r"is \S+step_00000001 "):
        train(config(tmp_path, "train.steps=6"), lambda model: {2: poison_gradients(model)})
    for folder in checkpoints.step_folders(tmp_path / "run" / "checkpoints"):
        assert all(t.isfinite().all() for t in load_file(folder / "model.safetensors").values()), folder


def test_nan_guard_names_a_checkpoint_whose_weights_gave_a_finite_loss(tmp_path, monkeypatch):
    """Update 2 leaves weights that give a NaN loss (ckpt_every=1: step_2's checkpoint holds them); the loss at step 2
    is the first NaN, so the last good checkpoint is step_1."""
    def diverge_after_update_2(path, metric, value, *args, step, **kw):  # called between the update and the save
        if step == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(float("inf"))
    monkeypatch.setattr(loop, "record", diverge_after_update_2)
    cfg = config(tmp_path, "train.steps=6")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at step 2; the last good checkpoint "
                                                 r"is \S+step_00000001 "):
        train_ar(model, build_tokenizer(cfg), build_dataset(cfg, "train"), cfg, torch.device("cpu"), ONE, False)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert all(t.isfinite().all() for t in load_file(ckpt_dir / "step_00000001" / "model.safetensors").values())
    diverged = load_file(checkpoints.latest(ckpt_dir) / "model.safetensors")
    assert not all(t.isfinite().all() for t in diverged.values())  # what `latest` names: the diverged weights


def test_signal_handlers_are_restored_after_a_nan_stop(tmp_path):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(FloatingPointError):
            train(config(tmp_path, "train.steps=4"), lambda model: {1: poison_gradients(model)})
        os.kill(os.getpid(), signal.SIGTERM)  # the next grid cell's SIGTERM reaches its handler, not the dead loop's
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_slurm_preemption_after_a_nan_stop_goes_straight_to_submitit(tmp_path, monkeypatch):
    """Inside a submitit job a USR2 is forwarded to a running training loop; once the loop has stopped (here on a NaN)
    none listens, so the bridge must call submitit's handler at once instead of waiting for a dead loop."""
    calls = []

    def checkpoint_and_try_requeue(signum, frame):  # the name the bridge recognises as submitit's handler
        calls.append(signum)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    previous = signal.signal(signal.SIGUSR2, checkpoint_and_try_requeue)

    def cell():
        with pytest.raises(FloatingPointError):
            train(config(tmp_path, "train.steps=4"), lambda model: {1: poison_gradients(model)})
        os.kill(os.getpid(), signal.SIGUSR2)  # preempted after training, while the cell does something else
    try:
        with PreemptionBridge(grace_s=60) as bridge:
            bridge.run(cell)
            assert calls == [signal.SIGUSR2] and bridge.pending is None
        assert signal.getsignal(signal.SIGUSR2) is checkpoint_and_try_requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_mid_run_saves_and_resumes_bitwise_exactly(tmp_path):
    train(config(tmp_path / "a", "train.steps=5", "train.ckpt_every=100"))
    before = signal.getsignal(signal.SIGTERM)
    cut = train(config(tmp_path / "b", "train.steps=5", "train.ckpt_every=100"),
                lambda model: {2: lambda: os.kill(os.getpid(), signal.SIGTERM)})  # a real signal, during update 3
    assert cut["interrupted"] == "SIGTERM" and cut["steps"] == 3 and signal.getsignal(signal.SIGTERM) == before
    assert checkpoints.latest(tmp_path / "b" / "run" / "checkpoints").name == "step_00000003"
    resumed = train(config(tmp_path / "b", "train.steps=5", "train.ckpt_every=100"))
    assert resumed["steps"] == 5 and math.isfinite(resumed["final_loss"])
    a, b = (load_file(p / "run" / "checkpoints" / "step_00000005" / "model.safetensors")
            for p in (tmp_path / "a", tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_file_a_training_run_writes_follows_the_umask(tmp_path):
    previous = os.umask(0o002)  # a shared group folder
    try:
        train(config(tmp_path, "train.steps=1"))
    finally:
        os.umask(previous)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in written) and any(p.name == "state.pt" for p in written)
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written} \
        == {str(p.relative_to(tmp_path)): oct(0o664) for p in written}


def test_a_resume_under_another_commit_says_where_each_part_trained(tmp_path, caplog, monkeypatch):
    """Session 22's resume audit: a run resumed under another commit (or GPU) said nothing; each record names its own
    call's commit only, so the summary read as if one commit had trained the whole run."""
    from varbench.tasks import train as train_module
    from varbench.utils.run_spec import read_spec
    monkeypatch.setattr(train_module, "git_commit", lambda: "aaa")
    first = train_module.main(config(tmp_path, "task=train", "train.steps=2"))
    assert [(t["from_step"], t["commit"]) for t in first["trained_by"]] == [(0, "aaa")]
    assert train_module.main(config(tmp_path, "task=train", "train.steps=3"))["trained_by"] == first["trained_by"]
    monkeypatch.setattr(train_module, "git_commit", lambda: "bbb")
    with caplog.at_level("WARNING"):
        summary = train_module.main(config(tmp_path, "task=train", "train.steps=4"))
    assert "under commit bbb" in caplog.text and "it trained to here under aaa" in caplog.text
    assert [(t["from_step"], t["commit"]) for t in summary["trained_by"]] == [(0, "aaa"), (3, "bbb")]
    assert read_spec(checkpoints.latest(tmp_path / "run" / "checkpoints"))["trained_by"] == summary["trained_by"]
    assert [len(r["trained_by"]) for r in read_records(tmp_path / "results" / "train.jsonl")
            if r["metric"] == "train_summary"] == [1, 1, 2]
