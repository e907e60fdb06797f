"""The speed and memory goals of the bench protocol against the records (`bench_goals`): the protocol's own targets
(MFU, M-VAR against VAR, the prefix re-run against the carried state, inference state against the KV cache) and
issue 18's targets against the official VAR and M-VAR code measured on the same GPU kind (peer_speed.md's numbers),
and, where a device call timed the official sampler or training step beside varbench's, the eager sampling and
compiled training goals against that call's (`varbench.analysis.official`)."""

from __future__ import annotations

import logging

import pandas as pd

from varbench import registry
from varbench.analysis import official
from varbench.analysis.load import latest
from varbench.analysis.tables import SPEED, STATE, TIMED, TOKEN_MFU, config_frame, finish, per_key, speed_wide

log = logging.getLogger(__name__)

# The speed / memory goals of the bench protocol: (goal, target, higher is better). Targets, not measurements.
# The two sampling goals are reported for each sampler mode (eager, CUDA graphs) with the tokenizer decode in the
# latency and without it (the decode is the same call for both sides of each ratio).
SAMPLING_MODES = (("", ""), (", graphs", ", CUDA graphs"))
DECODE_MODES = (("Latency", ""), ("W/o decode", ", decode excluded"))
SAMPLING_GOALS = (("M-VAR-d16 sampling: prefix re-run / carried state latency (b64, 256 px{})", 1.3, True),
                  ("M-VAR-d16 / VAR-d16 sampling latency, carried state vs KV cache (b64, 256 px{})", 1.2, False))
GOALS = (("VAR-d16 training MFU (b32, 256 px)", 0.55, True),
         ("VAR-d16 training MFU under torch.compile (b32, 256 px)", 0.55, True),
         # the same step with AdaLN's FLOPs counted per token, as the 47% reference counts them
         ("VAR-d16 training MFU under torch.compile, AdaLN FLOPs per token (b32, 256 px)", 0.55, True),
         # the reference: a plain PyTorch stack on an H200 (its 47% MFU counts AdaLN FLOPs per token, ours
         # per image, so its images/s is the comparable number)
         ("VAR-d16 training img/s under torch.compile (b32, 256 px; plain-stack reference on an H200)", 284, True),
         ("M-VAR-d16 / VAR-d16 training throughput (b32, 256 px)", 0.7, True),
         ("M-VAR-d16 / VAR-d16 training throughput under torch.compile (b32, 256 px)", 0.7, True),
         *((goal.format(graphs_name + decode_name), target, higher) for goal, target, higher in SAMPLING_GOALS
           for _, graphs_name in SAMPLING_MODES for _, decode_name in DECODE_MODES),
         ("inference state / VAR's KV cache at 1024 px (worst linear mixer)", 0.25, False))
# issue 18's goals against the official code, measured on the same H200 kind with one harness
# (../shared/reference/peer_speed.md: official VAR-d16 trains 199 img/s and M-VAR-d16 98 at b32; they sample b64 in
# 453 / 820 ms and b1 in 123 / 424 ms eager; VAR's sampling peaks at 12.0 GiB allocated at b64): (goal, target,
# higher is better, configuration, bench column, scale of the column). A column ending in FASTEST reads the best
# of the columns its stem begins (`read_goal`): the graphed latencies in every decode mode, fused or not, the compiled
# step in every compile mode (each a varbench setting the table names in "Read from")
VAR, MVAR = (*registry.VAR, 256), (*registry.MVAR, 256)
FASTEST = " (fastest mode)"
NUMERICS_DEVIATIONS = (" weights", "fp8 matmuls")  # column tags of options that leave VAR's numerics
OFFICIAL_GOALS = (
    ("VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)", 500, True, VAR,
     "Train img/s (b32, compiled" + FASTEST, 1),
    ("M-VAR-d16 training img/s under torch.compile (b32, 256 px; 2.5x the official)", 250, True, MVAR,
     "Train img/s (b32, compiled" + FASTEST, 1),
    ("VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 1.5x the official)", 300, False, VAR,
     "Latency b64, graphs" + FASTEST, 1),
    ("M-VAR-d16 sampling latency, CUDA graphs (b64, 256 px, ms; 2x the official)", 410, False, MVAR,
     "Latency b64, graphs" + FASTEST, 1),
    ("VAR-d16 sampling latency, CUDA graphs (b1, 256 px, ms)", 40, False, VAR, "Latency b1, graphs" + FASTEST, 1),
    ("M-VAR-d16 sampling latency, CUDA graphs (b1, 256 px, ms)", 40, False, MVAR, "Latency b1, graphs" + FASTEST, 1),
    ("VAR-d16 eager sampling latency (b1, 256 px, ms; the official's)", 123.4, False, VAR, "Latency b1 (ms)", 1),
    ("VAR-d16 eager sampling latency (b64, 256 px, ms; the official's)", 452.8, False, VAR, "Latency b64 (ms)", 1),
    ("M-VAR-d16 eager sampling latency (b1, 256 px, ms; the official's)", 424.4, False, MVAR, "Latency b1 (ms)", 1),
    ("M-VAR-d16 eager sampling latency (b64, 256 px, ms; the official's)", 819.9, False, MVAR, "Latency b64 (ms)", 1),
    ("VAR-d16 eager sampling peak memory allocated (b64, 256 px, GiB; the official's)", 12.0, False, VAR,
     "Peak mem b64 (bytes)", 2 ** -30),
    # the decode's activations hold most of that peak: the same, decoding 16 images per call (task.decode_batch=16)
    ("VAR-d16 eager sampling peak memory allocated, 16 images per decode call (b64, 256 px, GiB; the official's)",
     12.0, False, VAR, "Peak mem b64, decode by 16 (bytes)", 2 ** -30))


def goal_cell(frame: pd.DataFrame, key: tuple, column: str) -> float:
    """The bench frame's value of `column` for configuration `key`, NaN where not measured."""
    return frame.at[key, column] if key in frame.index and column in frame.columns else float("nan")


def kernel_variants(frame: pd.DataFrame, key: tuple) -> list[tuple]:
    """`key` and every configuration of `frame` that runs its math on other kernels only (its mixer and intra each
    the same with kernel choices, `official.same_math`: attention[backend=sdpa_scales] for VAR), `key` first."""
    mixer, intra, *rest = key
    return [key] + [k for k in frame.index if k != key and tuple(k[2:]) == tuple(rest)
                    and official.same_math(k[0], mixer) and official.same_math(k[1], intra)]


def read_goal(frame: pd.DataFrame, key: tuple, column: str, higher: bool) -> tuple[float, str]:
    """A goal's value for configuration `key` and the column it was read from. A column ending in FASTEST: the best
    of the columns its stem begins (every decode mode, fused or not; every compile mode) over `key` and its kernel
    variants (`kernel_variants`; the source then names the variant), never one with bf16 weights or FP8 matmuls
    (deviations from VAR's numerics, tabled on their own); NaN and "" where none is measured."""
    if not column.endswith(FASTEST):
        return goal_cell(frame, key, column), column
    stem = column.removesuffix(FASTEST)
    values = {(k, c): goal_cell(frame, k, c) for k in kernel_variants(frame, key) for c in frame.columns
              if c.startswith(stem) and not any(deviation in c for deviation in NUMERICS_DEVIATIONS)}
    values = {kc: v for kc, v in values.items() if not pd.isna(v)}
    if not values:
        return float("nan"), ""
    (best_key, best), value = max(values.items(), key=lambda kv: kv[1] if higher else -kv[1])
    return value, best if best_key == key else f"{best} of {best_key[0]}+{best_key[1]}"


def call_frames(df: pd.DataFrame, device, samplers) -> list[tuple[pd.DataFrame, str]]:
    """The bench frame of each device call (one commit on one machine) that timed on `device` (a timing neither
    disturbed nor superseded: a call of such timings only has none to show), newest call first, each with its name
    ("one call: <commit> on <machine>")."""
    frame = df.assign(commit=df["commit"].fillna("unknown"), machine=df["machine"].fillna("an unnamed machine"))
    timed = frame[frame["metric"].isin(TIMED) & (frame["device"] == device)
                  & frame["disturbed"].isna() & frame["superseded"].isna()]
    newest_first = timed.groupby(["commit", "machine"])["date"].max().sort_values(ascending=False).index
    calls = frame.groupby(["commit", "machine"])
    return [(speed_wide(calls.get_group(call), device, samplers), f"one call: {call[0][:7]} on {call[1]}")
            for call in newest_first]


def same_call_ratio(calls, num: tuple, den: tuple) -> tuple[float, str]:
    """`num`'s value over `den`'s ((configuration key, column) each) in the newest of `calls` that measured both, and
    that call's name; (NaN, "") where none did. Each side's own newest timing could come from another call: other
    code, another host (session 21: M-VAR's eager b64 of one commit over VAR's of a commit 30 hours later)."""
    for frame, name in calls:
        value = goal_cell(frame, *num) / goal_cell(frame, *den)
        if not pd.isna(value):
            return value, name
    return float("nan"), ""


OTHER_GPUS = ("Measured on {} and Met on {}: the same goals read from that GPU's records alone (a row only it "
              "measured is added, empty on {}). Issue 18's targets from the official code's timings on an H200 "
              "(peer_speed.md) are that card's: met on another GPU, such a target is a number reached there, not the "
              "goal; a target timed in the same call is that GPU's own.")


def bench_goals(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """Each goal of GOALS and OFFICIAL_GOALS with the measured value (from the bench records of one GPU: `device`,
    or the one that ran most timings), whether it is met, by how much it is missed, as a fraction of the target
    (1 - measured / target, or measured / target - 1), and for OFFICIAL_GOALS the bench column it was read from
    (for the graphed latencies, the fastest mode's). Each other GPU with timings adds its own "Measured on" and
    "Met on" columns (`OTHER_GPUS`): an H100's numbers are the only ones of a session no H200 was lent to."""
    table = goals_on(df, device)
    if table.empty:
        return table
    main = table.attrs["device"]
    others = [d for d in latest(df, TIMED)["device"].value_counts().index if d != main]
    for other in others:
        table = beside_gpu(table, goals_on(df, other), other)
    if others:
        table.attrs["legend"] = " ".join(OTHER_GPUS.format(d, d, main) for d in others)
    return table


def beside_gpu(table: pd.DataFrame, theirs: pd.DataFrame, gpu: str) -> pd.DataFrame:
    """`table` with `theirs`' Measured and Met as "Measured on GPU" / "Met on GPU", and the goals only `theirs` has
    (the same-call goals of a GPU the official code was timed on) as rows of their own, "—" in `table`'s cells."""
    if theirs.empty:
        return table
    extra = theirs.index.difference(table.index, sort=False)
    out = table.reindex(table.index.append(extra))
    if len(extra):
        out.loc[extra, ["Target", "Met", "Read from"]] = [[theirs.at[g, "Target"], "—", ""] for g in extra]
    out[f"Measured on {gpu}"] = theirs["Measured"].reindex(out.index)
    out[f"Met on {gpu}"] = theirs["Met"].reindex(out.index).fillna("—")
    out.attrs = dict(table.attrs)
    return out


def goals_on(df: pd.DataFrame, device=None) -> pd.DataFrame:
    """`bench_goals` of one GPU's records (`device`, or the one that ran most timings)."""
    frame = config_frame(df, device, samplers=("carry", "prefix_rerun"))
    if frame.empty:
        log.warning("bench_goals: no bench records")
        return frame

    def cell(mixer, intra, res, column):
        return goal_cell(frame, (mixer, intra, 16, res), column)

    calls = call_frames(df, frame.attrs["device"], samplers=("carry", "prefix_rerun"))

    def ratio(num_arm, den_arm, num_column, den_column=None):  # both timings from one call
        return same_call_ratio(calls, ((*num_arm[:2], 16, num_arm[2]), num_column),
                               ((*den_arm[:2], 16, den_arm[2]), den_column or num_column))

    costs = latest(df, "analytic_cost")  # analytic state bytes of every mixer (task=costs), else the bench's own
    state = per_key(costs, "state_bytes_per_image", STATE) if len(costs) else frame.get(STATE, pd.Series(dtype=float))
    kv = state.iloc[:0]
    if len(state):  # without state records there is no index to select from
        state = state[(state.index.get_level_values("resolution") == 1024)
                      & (state.index.get_level_values("depth") == 16)]
        kv = state[state.index.get_level_values("mixer") == "attention"]
        state = state[state.index.get_level_values("mixer") != "attention"]
    single = ("MFU (b32)", "MFU (b32, compiled)", f"{TOKEN_MFU} (b32, compiled)", "Train img/s (b32, compiled)")
    measured = [(cell(*VAR, column), "") for column in single]
    measured += [ratio(MVAR, VAR, "Train img/s (b32)"), ratio(MVAR, VAR, "Train img/s (b32, compiled)")]
    for rerun in (True, False):  # in SAMPLING_GOALS' order, then its modes' order
        for graphs_tag, _ in SAMPLING_MODES:
            for column, _ in DECODE_MODES:
                carry = f"{column} b64{graphs_tag} (ms)"
                measured.append(ratio(MVAR, MVAR, f"{column} b64 prefix_rerun{graphs_tag} (ms)", carry) if rerun
                                else ratio(MVAR, VAR, carry))
    measured.append(((state.max() / kv.iloc[0]) if len(state) and len(kv) else float("nan"), ""))
    read = [read_goal(frame, (*key[:2], 16, key[2]), column, higher) for _, _, higher, key, column, _ in OFFICIAL_GOALS]
    measured, sources = [value for value, _ in measured], [source for _, source in measured]
    measured += [value * scale for (value, _), (*_, scale) in zip(read, OFFICIAL_GOALS)]
    sources += [column for _, column in read]
    goals = GOALS + tuple(goal[:3] for goal in OFFICIAL_GOALS)
    # goals against the official code timed beside varbench in one call, where a call did
    same_call = official.same_call_goals(df, frame.attrs["device"])
    goals += tuple((goal, target, higher) for goal, target, higher, *_ in same_call)
    measured += [value for *_, value, _ in same_call]
    sources += [table for *_, table in same_call]
    rows = []
    for (goal, target, higher), value, source in zip(goals, measured, sources, strict=True):
        met = value >= target if higher else value <= target
        # the shortfall as a fraction of the target
        missed = float("nan")
        if not pd.isna(value) and not met:
            missed = 1 - value / target if higher else value / target - 1
        rows.append({"Goal": goal, "Target": f"{'≥' if higher else '≤'} {target:g}", "Measured": value,
                     "Met": "—" if pd.isna(value) else ("yes" if met else "no"), "Missed by": missed,
                     "Read from": source if not pd.isna(value) else ""})
    table = pd.DataFrame(rows).set_index("Goal")
    return finish(table, df, SPEED, frame.attrs["device"])
