"""One frozen tokenizer per data set (task=main's train_tokenizer + tokenize steps, varbench/frozen_tokenizer.py):
shared by every cell whose tokenizer, data and tokenizer steps match, trained once even by cells running side by
side, never used before its complete marker, and named on every record by `tokenizer_id`.

The steps are stand-ins (`run_task` replaced): they write a tokenizer file and a cache folder in a few milliseconds,
so the tests check the sharing, not the training (tests/test_grid.py runs the real pipeline as a grid)."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import varbench.tasks
from varbench.registry import CONFIG_ROOT
from varbench.tasks import main as main_task
from varbench.utils.records import read_records, record

SHARED = ("train_tokenizer", "tokenize")


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"tokenizer_dir={tmp_path / 'tokenizers'}", f"results_dir={tmp_path / 'results'}",
            f"run_dir={tmp_path / 'runs' / str(abs(hash(overrides)))}", "cell_id=c", *overrides])
    return cfg


class FakeSteps:
    """run_task for task=main's steps: the tokenizer steps write their files (the tokenizer's bytes are its seed and
    data settings, so two trainings of the same settings give the same file), every step appends its name to
    `calls` (a file: it counts the steps of other processes too) and records one line with its config."""

    def __init__(self, calls: Path, fail_first_tokenize: bool = False, train_s: float = 0.0):
        self.calls, self.fail_first_tokenize, self.train_s = calls, fail_first_tokenize, train_s

    def __call__(self, cfg):
        with open(self.calls, "a") as f:
            f.write(cfg.task.name + "\n")
        run_dir, out = Path(cfg.run_dir), {}
        if cfg.task.name == "train_tokenizer":
            time.sleep(self.train_s)
            weights = run_dir / "tokenizer" / "tokenizer.safetensors"
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.write_text(f"{cfg.task.seed} {cfg.tokenizer.vocab_size} {cfg.data.size_per_class}")
            out = {"checkpoint": str(weights)}
        elif cfg.task.name == "tokenize":
            if self.fail_first_tokenize and self.calls.read_text().split().count("tokenize") == 1:
                raise RuntimeError("killed while tokenizing")
            Path(cfg.task.cache_dir).mkdir(parents=True, exist_ok=True)
            out = {"cache_dir": cfg.task.cache_dir}
        record(Path(cfg.results_dir) / f"{cfg.task.name}.jsonl", f"{cfg.task.name}_done", 1, "1", config=cfg)
        return out

    def steps(self) -> list[str]:
        return self.calls.read_text().split() if self.calls.is_file() else []


@pytest.fixture
def fake(tmp_path, monkeypatch):
    steps = FakeSteps(tmp_path / "calls.txt")
    monkeypatch.setattr(varbench.tasks, "run_task", steps)
    return steps


def test_two_cells_share_one_tokenizer_trained_once(tmp_path, fake):
    first = _cfg(tmp_path, "mixer=attention", "seed=0")
    second = _cfg(tmp_path, "mixer=gla", "seed=1", "train.base_lr=1e-3")
    main_task.main(first)
    main_task.main(second)
    assert fake.steps().count("train_tokenizer") == 1 and fake.steps().count("tokenize") == 1
    assert fake.steps().count("train") == 2
    assert first.tokenizer.checkpoint == second.tokenizer.checkpoint
    assert first.train.token_cache == second.train.token_cache
    shared = Path(first.tokenizer.checkpoint)
    assert shared.is_relative_to(tmp_path / "tokenizers")  # the shared folder, not a cell's run_dir
    digest = hashlib.sha256(shared.read_bytes()).hexdigest()[:12]
    trained = read_records(tmp_path / "results" / "train.jsonl")
    assert [r["tokenizer_id"] for r in trained] == [digest, digest]


@pytest.mark.parametrize("override", ["tokenizer.vocab_size=128", "data.size_per_class=7", "tokenizer_seed=1",
                                      "++task.overrides.train_tokenizer.steps=3",
                                      "++task.overrides.tokenize.shard_size=100"])
def test_a_changed_tokenizer_or_data_setting_gives_another_tokenizer(tmp_path, fake, override):
    base, changed = _cfg(tmp_path), _cfg(tmp_path, override)
    main_task.main(base)
    main_task.main(changed)
    assert fake.steps().count("train_tokenizer") == 2
    assert Path(base.tokenizer.checkpoint).parent.parent != Path(changed.tokenizer.checkpoint).parent.parent


def test_an_incomplete_shared_tokenizer_is_not_used(tmp_path, monkeypatch):
    steps = FakeSteps(tmp_path / "calls.txt", fail_first_tokenize=True)
    monkeypatch.setattr(varbench.tasks, "run_task", steps)
    killed = _cfg(tmp_path)
    with pytest.raises(RuntimeError, match="killed while tokenizing"):
        main_task.main(killed)  # the tokenizer file is there, its token cache is not: no complete marker
    again = _cfg(tmp_path, "seed=3")
    main_task.main(again)
    assert steps.steps() == ["train_tokenizer", "tokenize", "train_tokenizer", "tokenize", "train", "sample",
                             "evaluate"]  # redone (the real steps resume from their own files), then used
    main_task.main(_cfg(tmp_path, "seed=4"))
    assert steps.steps()[7:] == ["train", "sample", "evaluate"]  # complete now: used as it is


def test_given_tokenizer_and_token_cache_run_only_the_remaining_steps(tmp_path, fake):
    cfg = _cfg(tmp_path, f"tokenizer.checkpoint={tmp_path / 'tok.safetensors'}",
               f"train.token_cache={tmp_path / 'cache'}")
    main_task.main(cfg)
    assert fake.steps() == ["train", "sample", "evaluate"]
    assert not (tmp_path / "tokenizers").exists()


def test_a_run_evaluated_without_a_tokenizer_step_or_checkpoint_is_refused(tmp_path, fake):
    """A study grid's steps (train, sample, evaluate) with no tokenizer.checkpoint would train on a random tokenizer
    and evaluate as if it had a real one: an error naming the key, before any step runs."""
    steps = r"\['train', 'sample', 'evaluate'\]"
    with pytest.raises(ValueError, match=rf"tokenizer.checkpoint = None with task.steps {steps}"):
        main_task.main(_cfg(tmp_path, "task.steps=[train,sample,evaluate]"))
    assert fake.steps() == []


def _run_cell(tmp_path, seed, calls):
    import varbench.tasks as tasks
    tasks.run_task = FakeSteps(calls, train_s=1.0)
    main_task.main(_cfg(tmp_path, f"seed={seed}"))


def test_cells_side_by_side_train_the_tokenizer_once(tmp_path):
    calls = tmp_path / "calls.txt"
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_run_cell, args=(tmp_path, seed, calls)) for seed in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    done = calls.read_text().split()
    assert done.count("train_tokenizer") == 1 and done.count("train") == 2


def test_a_record_names_its_tokenizer_by_the_sha256_of_its_file(tmp_path, monkeypatch):
    from varbench.utils import hashing
    weights = tmp_path / "tok.safetensors"
    weights.write_bytes(b"weights")
    hashed = []
    real = hashing.file_sha256
    monkeypatch.setattr(hashing, "file_sha256", lambda path: hashed.append(path) or real(path))
    config = {"tokenizer": {"checkpoint": str(weights)}}
    lines = [record(tmp_path / "r.jsonl", "m", i, "1", config=config) for i in range(3)]
    assert {r["tokenizer_id"] for r in lines} == {hashlib.sha256(b"weights").hexdigest()[:12]}
    assert len(hashed) == 1  # hashed once per file
    assert record(tmp_path / "r.jsonl", "m", 0, "1", config={"tokenizer": {"checkpoint": None}})["tokenizer_id"] is None
