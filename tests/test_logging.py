"""Status through `logging` (never print), progress bars that know when to hide, and the experiment loggers
(`logger=tensorboard|wandb|none`): scalars, hyper-parameters and sample grids read back from their own files."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from varbench.registry import compose
from varbench.utils import log as vlog
from varbench.utils.loggers import ExperimentLogger, TensorBoardLogger, open_logger

REPO = Path(__file__).resolve().parents[1]
# command-line programs whose report IS their stdout (a table, file listing), and notebook display helpers
PRINT_ALLOWED = {"varbench/compat/__main__.py", "varbench/eval/inception.py", "varbench/analysis/notebook.py",
                 "varbench/analysis/best_lr.py", "varbench/analysis/budget.py"}  # command-line reports on stdout


def config(tmp_path, *overrides):
    return compose([f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'res'}", "cell_id=abc", *overrides])


def test_no_varbench_module_prints():
    """Status goes through logging, so that the run's log (varbench.log) holds it; print only where stdout is the
    program's report."""
    printing = []
    for path in sorted((REPO / "varbench").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        calls = [n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        if calls and rel not in PRINT_ALLOWED:
            printing.append(f"{rel}:{calls}")
    assert not printing, f"print() in library modules (use varbench.utils.log.get_logger): {printing}"


# ----- progress bars -----------------------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("mode,tty,shown", [("auto", True, True), ("auto", False, False), (True, False, True),
                                            (False, True, False)])
def test_progress_bar_shows_where_the_setting_says(monkeypatch, mode, tty, shown):
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with vlog.job_logging(mode):
        assert vlog.bars_shown() == shown
        for _ in vlog.progress_bar(range(3), desc="work"):
            pass
    assert ("work" in err.getvalue()) == shown
    assert vlog._progress["mode"] == "auto"  # restored after the job


def test_progress_bar_hides_off_rank_zero_and_when_the_caller_says(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.delenv("RANK", raising=False)
    vlog.set_progress(True)
    try:
        assert not vlog.progress_bar(range(2), desc="x").disable
        assert vlog.progress_bar(range(2), desc="x", enabled=False).disable
        monkeypatch.setenv("RANK", "1")
        assert vlog.progress_bar(range(2), desc="x").disable
    finally:
        vlog.set_progress("auto")


def test_progress_setting_refuses_other_values():
    with pytest.raises(ValueError, match=r"progress must be one of \['auto', True, False\], got 'yes'"):
        vlog.set_progress("yes")


def test_job_logging_logs_warnings_and_quiets_other_ranks(monkeypatch, caplog):
    monkeypatch.delenv("RANK", raising=False)
    with caplog.at_level(logging.INFO), vlog.job_logging():
        warnings.warn("a numerical caveat", UserWarning, stacklevel=1)
        logging.getLogger("varbench.x").info("step one")
    assert "a numerical caveat" in caplog.text and "step one" in caplog.text
    caplog.clear()
    monkeypatch.setenv("RANK", "2")
    with caplog.at_level(logging.INFO), vlog.job_logging():
        logging.getLogger("varbench.x").info("said by rank 2")
        logging.getLogger("varbench.x").warning("warned by rank 2")
    assert "said by rank 2" not in caplog.text and "warned by rank 2" in caplog.text



def test_said_once_drops_a_message_said_again_and_only_within_its_block(caplog):
    say = logging.getLogger("varbench.x")
    with caplog.at_level(logging.INFO), vlog.said_once():
        for _ in range(3):
            say.warning("a caveat about the records")
        say.info("a caveat about the records")  # another level: said
        say.warning("another caveat")
    assert [r.getMessage() for r in caplog.records] == ["a caveat about the records"] * 2 + ["another caveat"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        say.warning("another caveat")
    assert len(caplog.records) == 1

# ----- experiment loggers ------------------------------------------------------------------------------------------

def grid_images(n: int = 6, side: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0))


def tensorboard_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def tensorboard_hparams(events) -> dict:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def test_tensorboard_logger_writes_scalars_hparams_and_a_grid(tmp_path):
    cfg = config(tmp_path, "logger=tensorboard", "train.batch_size=48")
    with open_logger(cfg, "train") as logger:
        assert isinstance(logger, TensorBoardLogger)
        logger.log_scalars(1, {"train/loss": 2.5})
        logger.log_scalars(2, {"train/loss": 2.0})
        logger.log_images("samples", grid_images(), 2, nrow=3)
    events = tensorboard_events(tmp_path / "run" / "tb" / "train")
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 2.0)]
    hparams = tensorboard_hparams(events)
    assert hparams["train.batch_size"] == 48 and hparams["mixer._target_"] == cfg.mixer._target_
    assert hparams["train.token_cache"] == "null" and hparams["train.betas"] == "[0.9, 0.95]"  # as text
    (image,) = events.Images("samples")
    assert image.step == 2 and (image.width, image.height) == (3 * 10 + 2, 2 * 10 + 2)  # 3 per row, 2 px padding


def test_no_logger_writes_nothing(tmp_path):
    cfg = config(tmp_path, "logger=none")
    with open_logger(cfg, "train") as logger:
        assert type(logger) is ExperimentLogger
        logger.log_scalars(1, {"train/loss": 1.0})
        logger.log_images("samples", grid_images(), 1)
    assert not (tmp_path / "run").exists()


def test_other_ranks_log_nothing_but_sample_alike(tmp_path):
    cfg = config(tmp_path, "logger=tensorboard", "logger.sample_every=5")
    logger = open_logger(cfg, "train", is_main=False)
    assert type(logger) is ExperimentLogger and logger.sample_every == 5 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,message", [
    (["logger.sample_every=-1"], "logger.sample_every = -1: expected an integer >= 0"),
    (["logger=wandb", "logger.mode=cloud"], "logger.mode = 'cloud': expected one of ['offline', 'online', 'disabled']"),
    (["progress=sometimes"], "progress = 'sometimes': expected one of ['auto', True, False]")])
def test_logging_settings_outside_their_range_stop_the_run(tmp_path, overrides, message):
    from varbench.config_schema import ConfigError, validate
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config(tmp_path, *overrides))


def test_an_unknown_logger_is_an_error_naming_the_valid_ones(tmp_path):
    cfg = config(tmp_path, "logger.name=mlflow")
    with pytest.raises(ValueError, match=r"logger.name must be one of \['tensorboard', 'wandb', 'none'\]"):
        open_logger(cfg, "train")


def wandb_records(run_file: Path):
    """The protobuf records of a W&B run file (.wandb): a LevelDB-style log of 32 KiB blocks after a 7-byte header
    (":W&B", magic 0xBEE1, version), each record chunk 7 bytes (crc32c, length, type: full 1, first 2, middle 3,
    last 4) and its data."""
    from wandb.proto import wandb_internal_pb2
    data, block, out, pending = run_file.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def test_wandb_offline_run_holds_scalars_hparams_and_a_grid(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    cfg = config(tmp_path, "logger=wandb", "train.batch_size=48")
    assert cfg.logger.mode == "offline"
    with open_logger(cfg, "train") as logger:
        logger.log_scalars(1, {"train/loss": 2.5})
        logger.log_scalars(2, {"train/loss": 2.0})
        logger.log_images("samples", grid_images(), 2, nrow=3)
    # run.finish() can return before the W&B service has written the run's last records (seen in the full suite);
    # teardown waits for the service to close its streams, as a process exit does before `wandb sync` reads the file
    import wandb
    wandb.teardown()
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h] == [(1, 2.5), (2, 2.0)]
    (image,) = [h for h in history if h.get("samples/_type") == "image-file"]
    assert image["_step"] == 2 and (image["samples/width"], image["samples/height"]) == (3 * 10 + 2, 2 * 10 + 2)
    assert (run_file.parent / "files" / image["samples/path"]).is_file()
    config_items = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
                    for item in r.config.update}
    assert config_items["train.batch_size"] == 48 and config_items["mixer._target_"] == cfg.mixer._target_
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "abc/train" and run.run_group == "abc" and run.job_type == "train"


# ----- training -----------------------------------------------------------------------------------------------------

TINY = ["model.depth=1", "model.width=32", "model.num_heads=1", "tokenizer.num_res_blocks=1", "tokenizer.ch=32",
        "tokenizer.vocab_size=32", "tokenizer.patch_nums=[1,2,4,8]", "data.size_per_class=2", "data.num_classes=2",
        "train.batch_size=2", "train.warmup_iters=1", "train.steps=2", "train.log_every=1", "train.ckpt_every=2",
        "device=cpu", "model.cond_drop_rate=0.0"]


def train_tiny(tmp_path, *overrides):
    from varbench.build import build_dataset, build_model, build_tokenizer
    from varbench.training.loop import train_ar
    from varbench.utils.dist import DistInfo
    cfg = config(tmp_path, *TINY, *overrides)
    torch.manual_seed(0)
    tokenizer, model = build_tokenizer(cfg), build_model(cfg)
    summary = train_ar(model, tokenizer, build_dataset(cfg, "train"), cfg, torch.device("cpu"), DistInfo(), False)
    return summary, model


def test_training_logs_hparams_scalars_and_sample_grids_without_changing_training(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="varbench"):
        previewed, model = train_tiny(tmp_path / "a", "logger=tensorboard", "logger.sample_every=1")
    plain, model_plain = train_tiny(tmp_path / "b", "logger=none")
    assert previewed["final_loss"] == plain["final_loss"]  # sampling drew from its own generator only
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model_plain.state_dict().values()))
    events = tensorboard_events(tmp_path / "a" / "run" / "tb" / "train")
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in events.Images("samples")] == [1, 2]  # logger.sample_every=1
    assert tensorboard_hparams(events)["logger.sample_every"] == 1
    assert "step 2/2 loss" in caplog.text  # the status line of the run's log
    assert not (tmp_path / "b" / "run" / "tb").exists()


@pytest.mark.slow
def test_the_debug_main_job_tells_every_step_in_its_run_log(tmp_path):
    """`varbench debug=true`: the run's varbench.log holds the status of every step (the bars stay out of it), and
    TensorBoard holds the tokenizer's and the model's scalars and the sample step's grid. ~1-3 min on 2 cores."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "debug=true", f"run_dir={tmp_path / 'run'}",
                          "device=cpu", "progress=true"], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "run" / "varbench.log").read_text()
    for step in ("train_tokenizer", "tokenize", "train", "sample", "evaluate"):
        assert f"[varbench.tasks.main][INFO] - step {step} done in" in text, step
    for module in ("tokenizers.trainer", "data.token_cache", "training.loop", "tasks.sample", "eval.sampling",
                   "eval.classifier", "eval.likelihood"):  # each step's own status, not only the main job's
        assert f"[varbench.{module}][INFO]" in text, module
    for bar in ("tokenizer", "tokenize", "train", "sample", "classifier", "nll"):  # progress=true: bars on stderr
        assert f"{bar}: 100%" in out.stderr, bar
    assert "100%" not in text and "it/s" not in text  # ... and never in the log
    tb = tmp_path / "run" / "tb"
    (shared,) = (tmp_path / "run" / "tokenizers").glob("*/tb")  # the tokenizer's curves: in its own folder
    assert tensorboard_events(shared / "train_tokenizer").Scalars("val/psnr")
    assert len(tensorboard_events(tb / "train").Scalars("train/loss")) == 30
    assert tensorboard_events(tb / "sample").Images("samples")[0].step == 30
