"""The crossover atlas (issue 18 item 4): per configuration and cost, the smallest resolution (and the batch) from
which it beats VAR's attention (mixer attention, no intra, same depth): the table here, the figure in
varbench.analysis.figures.crossover_atlas (both in `task=report` as crossover_atlas.*).

Costs, one table column and one figure panel each (`FAMILIES`):
- training throughput at the largest batch both sides trained at that resolution (higher is better);
- carried-state sampling latency at batch 1, and at the largest batch above 1 both sampled (lower is better);
- sampling's peak memory at that largest batch (the reserved peak under CUDA graphs: a replayed graph allocates
  nothing, `varbench.analysis.tables.speed_wide`);
- inference state bytes per image (analytic: the same formula on any machine, so no protocol).

Protocol. A timed comparison takes one record of each side measured under one protocol: the same `machine` and
device, the same mode (training: compiled, Inductor mode and scope, weight dtype, FP8 recipe; sampling: CUDA graphs,
decode mode, block weights) and Triton fully autotuned (`autotune: full`); never a `disturbed` or `superseded`
record; of repeats the newest. A timing without a machine stamp or under first-config autotuning takes part in no
comparison. Per configuration and cost the protocol with the most comparable resolutions is used (ties: the newest
records); cells name it by a letter that the note spells out, so numbers of two machines or modes are never mixed
in one cell.

Crossover. At each resolution of the atlas (`RESOLUTIONS`) a configuration wins, loses, is `missing` (one side has
no record of that cost there) or `n/c` (both were measured, but never under one admissible protocol, or at no common
batch). The crossover is the smallest resolution from which it wins at every comparable resolution of the atlas: a
measured loss just below it (or none below it in the atlas) makes it exact; unknown resolutions between the last loss
and it make it an upper bound (`≤`). Nothing is interpolated: every unknown resolution is named in the cell.
"""

from __future__ import annotations

import logging
import math
import string
from dataclasses import dataclass, field

import pandas as pd

from varbench.analysis.load import model_label, preference_order
from varbench.analysis.quality import KEY
from varbench.analysis.tables import autotune_modes, bench_errors, timing_machines
from varbench.registry import VAR

log = logging.getLogger(__name__)

RESOLUTIONS = (256, 512, 1024)  # the atlas: grid=resolution's
BASELINE = VAR
FULL = "full"  # the only autotune mode whose timings count
WIN, LOSS, MISSING, NOT_COMPARABLE = "win", "loss", "missing", "n/c"
STATE_METRIC = "state_bytes_per_image"
STATE_SOURCES = (STATE_METRIC, "analytic_cost")  # task=bench's record, task=costs' field: one formula (state_bytes)
NO_RECORD = "no record of this cost"
FAILED_STAGES = {"train_images_per_s": "train", "sample_latency_ms": "sample"}  # and a cell that never ran its stages
CELL_STAGES = ("build", "process")


@dataclass(frozen=True)
class Family:
    """One cost: the records' metric, the mode fields of its protocol, which batch is compared and which way is
    better."""
    column: str
    metric: str
    mode: tuple[str, ...]  # fields besides machine / device / autotune that a protocol fixes
    batch: str | None  # "largest", "one", "largest_above_one"; None: per image (no batch)
    higher_is_better: bool = False
    peak_memory: bool = False  # the number: the stage's peak memory instead of the record's value


# every setting that tells two timings of one metric apart (load.IDENTITY), less the batch the atlas picks and the
# sampling settings family_records fixes: a compile mode, FP8 matmuls or bf16 block weights are a protocol of their
# own, never the newest record of a configuration compared with another mode's (session 31: an FP8 timing stood
# beside attention's bf16 one as sdpa_scales' 0.77x)
TRAIN_MODE = ("compiled", "compile_mode", "compile_scope", "param_dtype", "fp8_recipe")
SAMPLE_MODE = ("cuda_graphs", "decode_mode", "block_weights")
FAMILIES = (
    Family("Train img/s", "train_images_per_s", TRAIN_MODE, "largest", higher_is_better=True),
    Family("Latency b1", "sample_latency_ms", SAMPLE_MODE, "one"),
    Family("Latency, large batch", "sample_latency_ms", SAMPLE_MODE, "largest_above_one"),
    Family("Peak mem, large batch", "sample_latency_ms", SAMPLE_MODE, "largest_above_one", peak_memory=True),
    Family("State bytes/img", STATE_METRIC, (), None),
)
PLACE = ("machine", "device", "autotune")
ANALYTIC = "analytic"  # the protocol of the state bytes


@dataclass(frozen=True)
class Point:
    """One resolution of a comparison: status, and for a win or a loss the batch and the advantage (how many times
    better than attention: throughput over attention's, or attention's latency / memory over the configuration's)."""
    resolution: int
    status: str
    batch: int | None = None
    advantage: float | None = None


@dataclass(frozen=True)
class Crossover:
    """Where a configuration overtakes attention: `resolution` (None: not up to the largest comparable one), `exact`
    (False: at most `resolution`), its `point` (the crossover's, else the largest comparable one; None when none is),
    the unknown resolutions of the atlas and those it won below a later loss (`also_won`)."""
    resolution: int | None
    exact: bool
    point: Point | None
    unknown: tuple[Point, ...] = ()
    also_won: tuple[int, ...] = field(default=())


def crossover(points: list[Point]) -> Crossover:
    """The crossover of one configuration and cost from its points, one per resolution of the atlas in ascending
    order (see the module docstring); its `point` is None when no resolution is comparable."""
    known = [p for p in points if p.status in (WIN, LOSS)]
    unknown = tuple(p for p in points if p.status not in (WIN, LOSS))
    if not known:
        return Crossover(None, False, None, unknown)
    losses = [i for i, p in enumerate(points) if p.status == LOSS]
    last_loss = losses[-1] if losses else -1
    also_won = tuple(p.resolution for p in points[:max(last_loss, 0)] if p.status == WIN)
    wins_after = [i for i, p in enumerate(points) if i > last_loss and p.status == WIN]
    if not wins_after:
        return Crossover(None, True, known[-1], unknown, also_won)
    first = wins_after[0]  # exact when the resolution just below is a loss, or there is none below
    return Crossover(points[first].resolution, first == last_loss + 1, points[first], unknown, also_won)


def cell_text(result: Crossover, tag: str) -> str:
    """One table cell: "512 px, b8: 1.15x", "≤ 512 px, ...", "none to 1024 px (...: 0.85x)", each followed by the
    unknown resolutions by status ("n/c at 512, 1024") and the protocol's letter; "no comparable pair (...)"."""
    unknown = "; ".join(f"{status} at " + ", ".join(str(u.resolution) for u in result.unknown if u.status == status)
                        for status in dict.fromkeys(u.status for u in result.unknown))
    if result.point is None:
        return f"no comparable pair ({unknown})"
    p = result.point
    times = f"{p.advantage:.2f}x" if math.isfinite(p.advantage) else "none of its own"
    batch = f"b{p.batch}: " if p.batch is not None else ""
    if result.resolution is None:
        text = f"none to {p.resolution} px ({batch}{times})"
    else:
        text = ("" if result.exact else "≤ ") + f"{p.resolution} px" + (f", {batch}" if batch else ": ") + times
    if result.also_won:
        text += "; also won at " + ", ".join(map(str, result.also_won))
    if unknown:
        text += f"; {unknown}"
    return f"{text} [{tag}]" if tag else text


def family_records(df: pd.DataFrame, family: Family) -> pd.DataFrame:
    """The records of one cost with `v` (its number), `protocol` (a tuple) and `admissible` columns: of repeated
    measurements under one protocol the newest, never a disturbed or superseded one."""
    metrics = STATE_SOURCES if family.metric == STATE_METRIC else (family.metric,)
    r = df[df["metric"].isin(metrics) & df["disturbed"].isna() & df["superseded"].isna()]
    r = r[r["depth"].notna() & r["resolution"].isin(RESOLUTIONS)]
    if family.metric == "sample_latency_ms":  # attention has no other sampler; the atlas decodes whole batches,
        # with the blocks' chains unfused (the fused option is timed for VAR and M-VAR only)
        r = r[(r["sampler"] == "carry") & (r["decode_batch"] == 0) & ~r["fused_elementwise"].eq(True)]
    if family.batch is None:  # analytic: one number per configuration, whatever measured it
        value = r["value"].where(r["metric"] == STATE_METRIC, r.get("state_bytes_per_image"))
        r = r.assign(protocol=[(ANALYTIC,)] * len(r), admissible=True, batch=None, v=value.astype(float))
        return preference_order(r.dropna(subset=["v"])).drop_duplicates(KEY, keep="last")
    fields = [*PLACE, *family.mode]
    protocol = [tuple("unstamped" if pd.isna(v) else v for v in row) for row in r[fields].itertuples(index=False)]
    r = r.assign(protocol=protocol, admissible=r["autotune"].eq(FULL) & r["machine"].notna())
    value = r["peak_reserved_bytes"].where(r["cuda_graphs"].eq(True), r["peak_mem_bytes"]) if family.peak_memory \
        else r["value"]
    r = r.assign(v=pd.to_numeric(value, errors="raise").astype(float)).dropna(subset=["v"])
    return preference_order(r).drop_duplicates([*KEY, "batch", "protocol"], keep="last")


def pick_batch(mine: pd.DataFrame, base: pd.DataFrame, rule: str | None):
    """The batch a resolution is compared at (None: per image), or False when the two sides share none."""
    if rule is None:
        return None
    common = sorted(set(mine["batch"].dropna()) & set(base["batch"].dropna()))
    common = [b for b in common if (b == 1 if rule == "one" else b > 1 if rule == "largest_above_one" else True)]
    return int(common[-1]) if common else False


def point(mine: pd.DataFrame, base: pd.DataFrame, res: int, protocol, family: Family) -> Point:
    """The comparison at one resolution under one protocol (mine / base: each side's records of this cost)."""
    m_all, b_all = mine[mine["resolution"] == res], base[base["resolution"] == res]
    if m_all.empty or b_all.empty:
        return Point(res, MISSING)
    m = m_all[m_all["protocol"].map(lambda p: p == protocol)]
    b = b_all[b_all["protocol"].map(lambda p: p == protocol)]
    batch = pick_batch(m, b, family.batch)
    if m.empty or b.empty or batch is False:
        return Point(res, NOT_COMPARABLE)
    if batch is not None:
        m, b = m[m["batch"] == batch], b[b["batch"] == batch]
    mine_v, base_v = float(m["v"].iloc[-1]), float(b["v"].iloc[-1])
    if mine_v == 0 and not family.higher_is_better:  # no state at all (mixer none): ahead by any factor
        return Point(res, WIN, batch, float("inf"))
    advantage = mine_v / base_v if family.higher_is_better else base_v / mine_v
    return Point(res, WIN if advantage > 1 else LOSS, batch, advantage)


def compare(mine: pd.DataFrame, base: pd.DataFrame, family: Family) -> tuple[tuple | None, list[Point]]:
    """The protocol with the most comparable resolutions (ties: the newest records) and its points, one per
    resolution of the atlas; (None, points of no protocol) when the sides share no admissible protocol."""
    shared = set(mine.loc[mine["admissible"], "protocol"]) & set(base.loc[base["admissible"], "protocol"])
    best, best_score, best_points = None, None, None
    for protocol in sorted(shared, key=str):
        points = [point(mine, base, res, protocol, family) for res in RESOLUTIONS]
        dates = pd.concat([mine, base]).loc[lambda d: d["protocol"].map(lambda p: p == protocol), "date"]
        score = (sum(p.status in (WIN, LOSS) for p in points), dates.max())
        if best_score is None or score > best_score:
            best, best_score, best_points = protocol, score, points
    if best is None:
        return None, [point(mine, base, res, (), family) for res in RESOLUTIONS]
    return best, best_points


def crossover_long(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Every configuration x cost x resolution of the atlas: status, batch, advantage and protocol (one row each);
    the baseline is attention without intra at the configuration's depth."""
    if device is not None:
        df = df[df["device"].eq(device) | df["metric"].isin(STATE_SOURCES)]  # analytic: any device
    timed = df[df["metric"].isin([f.metric for f in FAMILIES if f.batch is not None])
               & df["resolution"].isin(RESOLUTIONS)]
    configurations = set(zip(timed["mixer"], timed["intra"], timed["depth"]))  # the analytic costs of every depth
    rows = []  # stay out: a row is a configuration that some bench timed
    for family in FAMILIES:
        records = family_records(df, family)
        for (mixer, intra, depth), mine in records.groupby(["mixer", "intra", "depth"], dropna=False):
            if (mixer, intra) == BASELINE or (mixer, intra, depth) not in configurations:
                continue
            base = records[(records["mixer"] == BASELINE[0]) & (records["intra"] == BASELINE[1])
                           & (records["depth"] == depth)]
            protocol, points = compare(mine, base, family)
            rows += [dict(model=model_label(mixer, intra, depth), cost=family.column, protocol=protocol,
                          resolution=p.resolution, status=p.status, batch=p.batch, advantage=p.advantage)
                     for p in points]
    return pd.DataFrame(rows, columns=["model", "cost", "protocol", "resolution", "status", "batch", "advantage"])


MODE_WORDS = {"compiled": {True: "compiled training step", False: "eager training step"},
              "cuda_graphs": {True: "sampling with CUDA graphs", False: "eager sampling"},
              # the defaults go unsaid
              "compile_mode": {"default": "", "none": ""}, "compile_scope": {"model": "", "none": ""},
              "fp8_recipe": {"none": ""}, "block_weights": {"fp32": ""}}
MODE_FORMAT = {"param_dtype": "{} weights", "decode_mode": "{} decode", "compile_mode": "Inductor mode {}",
               "compile_scope": "compiled per {}", "fp8_recipe": "FP8 matmuls {}", "block_weights": "{} block weights"}


def describe(protocol: tuple, family: Family) -> str:
    """A protocol in words, e.g. "nvidia-h200 (NVIDIA H200), eager training step, fp32 weights, autotune full"."""
    if protocol == (ANALYTIC,):
        return "analytic (no timing)"
    machine, device, autotune, *mode = protocol
    words = [MODE_WORDS.get(name, {}).get(value, MODE_FORMAT.get(name, "").format(value))
             for name, value in zip(family.mode, mode)]
    return f"{machine} ({device}), " + ", ".join(w for w in words if w) + f", autotune {autotune}"


def crossover_table(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Per configuration (rows) and cost (columns): the crossover cell (`cell_text`); `attrs["legend"]` spells out
    each protocol letter. Empty when no configuration has a record of any cost beside attention's."""
    long = crossover_long(df, device)
    if long.empty:
        log.warning("crossover_table: no bench records of a configuration and of attention at the same depth")
        return pd.DataFrame()
    families = {f.column: f for f in FAMILIES}
    described = {(c, p): describe(p, families[c]) for c, p in zip(long["cost"], long["protocol"]) if p is not None}
    letters = {text: string.ascii_uppercase[i] for i, text in enumerate(sorted(set(described.values())))}
    cells = {}
    for (model, cost), g in long.groupby(["model", "cost"], sort=False):
        points = [Point(r.resolution, r.status, None if pd.isna(r.batch) else int(r.batch),
                        None if pd.isna(r.advantage) else r.advantage) for r in g.itertuples()]
        protocol = g["protocol"].iloc[0]
        tag = letters[described[(cost, protocol)]] if protocol is not None else ""
        cells.setdefault(model, {})[cost] = cell_text(crossover(points), tag)
    table = pd.DataFrame.from_dict(cells, orient="index")
    failed = failures(df, device)
    columns = [f.column for f in FAMILIES if f.column in table or any(cost == f.column for _, cost in failed)]
    table = table.reindex(columns=columns).astype(object).sort_index().rename_axis("Model")
    for (model, cost), why in failed.items():
        if model in table.index and pd.isna(table.at[model, cost]):
            table.at[model, cost] = why
    table = table.fillna(NO_RECORD)
    table.attrs.update(legend=legend(letters), **provenance(df, long, device))
    return table


def failures(df: pd.DataFrame, device=None) -> dict[tuple[str, str], str]:
    """(model label, cost column) -> why a timed cost has no record: "failed: " and each standing bench error of its
    stage (`varbench.analysis.tables.bench_errors`) with the batches and resolutions it failed at, e.g. Gated
    DeltaNet's training, whose fla kernel refuses Hopper GPUs under Triton 3.6."""
    err = bench_errors(df, device)
    out = {}
    for family in FAMILIES:
        if family.batch is None:
            continue
        mine = err[err["stage"].isin((FAILED_STAGES[family.metric], *CELL_STAGES))]
        mine = mine.assign(at=[f"{w} at {r:g} px" for w, r in zip(mine["where"], mine["resolution"])])
        for (mixer, intra, depth), g in mine.sort_values("resolution").groupby(["mixer", "intra", "depth"],
                                                                               dropna=False):
            places = g.groupby("short", sort=False)["at"].agg(", ".join)
            out[(model_label(mixer, intra, depth), family.column)] = "failed: " + "; ".join(
                f"{error} ({at})" for error, at in places.items())
    return out


def legend(letters: dict[str, str]) -> str:
    """The note's key to the cells: what a cell says and each protocol letter."""
    key = "; ".join(f"{letter}: {text}" for text, letter in sorted(letters.items(), key=lambda kv: kv[1]))
    return ("Each cell: the smallest resolution from which the configuration beats attention (no intra, same "
            "depth) at every comparable resolution of " + "/".join(map(str, RESOLUTIONS)) + " px (≤: unknown "
            "resolutions below it), the batch and its advantage there (x times better); none: it never overtakes "
            "up to the largest comparable resolution; missing: a side has no record; n/c: both measured, never under "
            "one protocol; failed: no timing of that cost, and the bench's recorded errors (stage, batch, the "
            "error's first sentence, where). Only fully autotuned, undisturbed timings of one stamped machine are "
            f"compared. {key}.")


def provenance(df: pd.DataFrame, long: pd.DataFrame, device) -> dict:
    """The attrs every report note reads: the device, how many records fed the table, their autotune modes and
    machines."""
    used = pd.concat([family_records(df, f) for f in FAMILIES])
    used = used[used["admissible"] & ~used.index.duplicated()]  # a sampling record serves three costs: count it once
    return dict(device=device, records=len(used), autotune=autotune_modes(used), machines=timing_machines(used))

