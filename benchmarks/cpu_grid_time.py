"""Expected wall time of `python run.py grid=mixers_tiny` on 2 quiet CPU cores, from one measured main job.

Inputs: the log of one plain main job of the grid's default cell (attention, intra none; `varbench.log` of its run_dir:
each step's wall time, "step <name> done in <s> s") and, optionally, the CPU seconds of that process at each step's
end (lines "<unix time> steps_done=<n> cpu_s=<s> load=<l>", sampled from /proc/<pid>/stat while it ran). On a shared
machine the CPU seconds of a single-threaded job (OMP_NUM_THREADS=1) stand for its wall time on a quiet core; the
loaded wall times are recorded beside them.

The cells differ by mixer: each one's training step is timed here (forward + backward + AdamW, fp32, batch
`train.batch_size`, one thread, random ids) and the cell's train + sample + evaluate time is the measured attention
cell's, scaled by its step time over attention's (an estimate: sampling and evaluation are assumed to scale like the
training step), times `--recurrent-factor` for the other mixers (how much longer than that their cells measured). The
grid's own training settings (its `train.steps` and `train.batch_size`, when it sets them) scale the measured job's
train step by images trained on; its evaluate step is taken as measured (an upper bound when the grid scores fewer
images). The grid: the shared tokenizer steps once, then the cells two at a time
(`cluster=local_parallel cluster.jobs=2`), each with the measured start-up.

    OMP_NUM_THREADS=1 python benchmarks/cpu_grid_time.py --log RUN/varbench.log --cpu-log CPU.log \
        --started UNIX_S --command "python run.py ..." --out results/cpu_grid/grid_time.jsonl
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = ("train_tokenizer", "tokenize", "train", "sample", "evaluate")
DONE = re.compile(r"^\[(?P<date>[^\]]+)\]\[varbench\.tasks\.main\]\[INFO\] - step (?P<step>\w+) done in "
                  r"(?P<s>[\d.]+) s")
FIRST = re.compile(r"^\[(?P<date>[^\]]+)\]\[varbench\.tasks\.main\]\[INFO\] - step 1/")
CPU = re.compile(r"^\d+ steps_done=(?P<n>\d+) cpu_s=(?P<cpu>[\d.]+) load=(?P<load>[\d.]+)")
JOBS = 2  # cells side by side on 2 cores


def step_walls(log: Path, started: float) -> dict:
    """{step: wall s} of the main job's log, and the start-up: from `started` (the process's start, unix seconds) to
    step 1 (the log's dates are UTC)."""
    lines = log.read_text().splitlines()
    walls = {m["step"]: float(m["s"]) for line in lines if (m := DONE.match(line))}
    first = next(m["date"] for line in lines if (m := FIRST.match(line)))
    first_s = datetime.strptime(first, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc).timestamp()
    walls["startup"] = first_s - started
    return walls


def step_cpu(cpu_log: Path) -> tuple[dict, list[float]]:
    """{step: CPU s} from the samples (the first includes the start-up) and the load averages seen."""
    rows = [(int(m["n"]), float(m["cpu"]), float(m["load"])) for line in cpu_log.read_text().splitlines()
            if (m := CPU.match(line))]
    out, before = {}, 0.0
    for n, cpu, _ in rows:
        out[STEPS[n - 1]] = cpu - before
        before = cpu
    return out, [load for *_, load in rows]


def train_step_ms(cells: list[tuple[str, str]], repeats: int = 3) -> dict:
    """Median fp32 training-step time (ms) of each (mixer, intra) at the tiny model and batch."""
    import torch
    from hydra import compose, initialize_config_dir

    from varbench.build import build_model
    from varbench.eval.timing import time_ms
    from varbench.registry import CONFIG_ROOT
    torch.set_num_threads(1)
    out = {}
    for mixer, intra in cells:
        with initialize_config_dir(config_dir=str(CONFIG_ROOT), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"mixer={mixer}", f"intra={intra}", "device=cpu"])
        torch.manual_seed(0)
        model = build_model(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        batch = cfg.train.batch_size
        labels = torch.randint(0, model.num_classes, (batch,))
        gt = torch.randint(0, model.vocab_size, (batch, model.layout.L))
        x = torch.randn(batch, model.layout.L - 1, model.latent_dim)

        def step(model=model, opt=opt, labels=labels, gt=gt, x=x):
            torch.nn.functional.cross_entropy(model(labels, x).flatten(0, 1), gt.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[f"{mixer}+{intra}"] = time_ms(step, warmup=1, repeats=repeats)["median_ms"]
    return out


def grid_cells() -> list[tuple[str, str]]:
    """(mixer, intra) of every cell of grid=mixers_tiny (each seed a cell of its own), from its file."""
    from omegaconf import OmegaConf

    from varbench.registry import CONFIG_ROOT, list_options
    sweeper = OmegaConf.load(CONFIG_ROOT / "grid" / "mixers_tiny.yaml").hydra.sweeper
    seeds = len(str(sweeper.params.seed).split(","))
    base = [(m, str(sweeper.params.intra)) for m in list_options("mixer")]
    return [cell for cell in base + [(c.mixer, c.intra) for c in sweeper.cells] for _ in range(seeds)]


def grid_train_scale() -> float:
    """Images a cell of grid=mixers_tiny trains on over those of the measured main job (train/tiny.yaml), steps x
    batch: a step's time is close to proportional to its batch at the tiny model (measured: 0.50-0.56 at 16 vs 32)."""
    from omegaconf import OmegaConf

    from varbench.registry import CONFIG_ROOT
    tiny = OmegaConf.load(CONFIG_ROOT / "train" / "tiny.yaml")
    grid = OmegaConf.load(CONFIG_ROOT / "grid" / "mixers_tiny.yaml").get("train") or {}
    return grid.get("steps", tiny.steps) * grid.get("batch_size", tiny.batch_size) / (tiny.steps * tiny.batch_size)


def quiet_attention_train_s(path: Path, steps: int, batch: int) -> float:
    """Seconds of `steps` attention training steps on a quieter machine: the median images/s of the attention cells
    (intra none, the same tiny model) in an earlier grid's train_summary records."""
    import statistics

    from varbench.utils.records import read_records
    rates = [r["images_per_s"] for r in read_records(path) if r["metric"] == "train_summary"
             and str(r["config"]["mixer"].get("_target_")).endswith("BlockCausalAttention")
             and not (r["config"].get("intra") or {}).get("_target_")
             and not r["config"]["model"].get("match_params_of")]
    if not rates:
        raise ValueError(f"no attention train_summary record in {path}")
    return steps * batch / statistics.median(rates)


def _step_ms_from(path: Path) -> dict:
    """The training-step times of the last cpu_grid_wall_estimate record of `path` (timed by an earlier call)."""
    from varbench.utils.records import read_records
    return [r for r in read_records(path) if r["metric"] == "cpu_grid_wall_estimate"][-1]["train_step_ms"]


def lanes_s(cells: list[float], jobs: int = JOBS) -> float:
    """Wall seconds of cells (seconds each) run `jobs` at a time, longest first."""
    lanes = [0.0] * jobs
    for s in sorted(cells, reverse=True):
        lanes[lanes.index(min(lanes))] += s
    return max(lanes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--cpu-log", type=Path)
    parser.add_argument("--started", type=float, required=True, help="the job's start, unix seconds (date -u +%%s)")
    parser.add_argument("--command", required=True, help="the command that ran the measured main job")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet-records", type=Path, help="train.jsonl of an earlier, quieter mixers_tiny run")
    parser.add_argument("--step-ms-from", type=Path, help="reuse the step times of an earlier record (this file)")
    parser.add_argument("--recurrent-factor", type=float, default=1.0,
                        help="measured / predicted cell time of the non-attention mixers (grid_run.jsonl: 1.18)")
    parser.add_argument("--leave-out", nargs="*", default=["mamba"], help="mixers of a second estimate without them")
    args = parser.parse_args()
    from varbench.utils.records import record
    walls = step_walls(args.log, args.started)
    cpu, loads = step_cpu(args.cpu_log) if args.cpu_log else ({}, [])
    quiet = {s: cpu.get(s, walls[s]) for s in STEPS}  # CPU seconds where sampled, else the loaded wall
    if "train_tokenizer" in cpu:  # the first sample holds the start-up too
        quiet["train_tokenizer"] -= min(walls["startup"], quiet["train_tokenizer"])
    cells = grid_cells()
    t0 = time.perf_counter()
    step_ms = train_step_ms(sorted(set(cells))) if args.step_ms_from is None else _step_ms_from(args.step_ms_from)
    train_scale = grid_train_scale()
    cell_s = quiet["train"] * train_scale + quiet["sample"] + quiet["evaluate"]
    per_cell = {c: walls["startup"] + cell_s * step_ms[f"{c[0]}+{c[1]}"] / step_ms["attention+none"]
                * (1.0 if c == ("attention", "none") else args.recurrent_factor)
                for c in set(cells)}  # one configuration's cells (its seeds) cost the same
    shared_s = walls["startup"] + quiet["train_tokenizer"] + quiet["tokenize"]
    total_s = shared_s + lanes_s([per_cell[c] for c in cells])
    fields = dict(command=args.command, grid="mixers_tiny", cells=len(cells), jobs=JOBS, step_wall_s_loaded=walls,
                  step_cpu_s=cpu, loadavg_during=loads, quiet_step_s=quiet, train_step_ms=step_ms,
                  train_step_ms_from=str(args.step_ms_from) if args.step_ms_from else "timed in this call",
                  cell_s_estimate={f"{m}+{i}": s for (m, i), s in per_cell.items()}, train_scale=train_scale,
                  recurrent_factor=args.recurrent_factor,
                  timing_script_s=time.perf_counter() - t0)
    without = [per_cell[c] for c in cells if c[0] not in args.leave_out]
    fields.update(left_out=args.leave_out, min_without_left_out=(shared_s + lanes_s(without)) / 60)
    if args.quiet_records:  # the contention that inflated the CPU seconds, from a quieter run's training speed
        from omegaconf import OmegaConf

        from varbench.registry import CONFIG_ROOT
        tiny = OmegaConf.load(CONFIG_ROOT / "train" / "tiny.yaml")
        factor = quiet["train"] / quiet_attention_train_s(args.quiet_records, tiny.steps, tiny.batch_size)
        fields.update(quiet_records=str(args.quiet_records), contention_factor=factor,
                      min_calibrated=total_s / factor / 60, min_calibrated_without_left_out=fields[
                          "min_without_left_out"] / factor)
    record(args.out, "cpu_grid_wall_estimate", total_s / 60, "min", **fields,
           method="per-step CPU seconds of one measured attention cell (single thread) + start-up; other cells "
                  "scaled by their fp32 training-step time; cells 2 at a time; shared tokenizer once; calibrated: "
                  "divided by the measured cell's training CPU s over a quieter run's attention training s")
    print(f"grid=mixers_tiny: {len(cells)} cells, about {total_s / 60:.0f} min on {JOBS} quiet cores; "
          + ", ".join(f"{k} {v:.0f}" for k, v in fields.items() if k.startswith("min_")))


if __name__ == "__main__":
    main()
