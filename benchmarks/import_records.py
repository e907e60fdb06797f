"""Bring a device call's records into results/, each stamped with where and beside what it was measured.

A record says what ran (config, commit, device, versions, date) but not on which lent machine, nor what else ran
on its host at the time; both change what a timing means (eager batch-1 latency is bound by the host's CPU, and
load on the host slows it). This adds `machine` and `beside` to every record, and a `disturbed` note (which the
tables leave out) to the eager batch-1 sampling latencies when the call had a control showing they were slowed.
Nothing else changes; an existing destination is appended to only when asked, never overwritten.

Usage:
    python benchmarks/import_records.py DEST.jsonl SRC.jsonl [SRC.jsonl ...] --machine nvidia-h200-x4 \
        --beside "three other bench queues, one per GPU" [--disturbed-eager-b1 "control: ..."] [--append]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def is_eager_batch1_latency(record: dict) -> bool:
    """The timing that load on the host disturbs most: eager sampling at batch 1 (launch-bound)."""
    return (record.get("metric") == "sample_latency_ms" and record.get("batch") == 1
            and not record.get("cuda_graphs"))


def stamped(lines, machine: str, beside: str, disturbed: str | None) -> list[dict]:
    """The records of `lines` (JSON strings) with `machine`, `beside` and, where it applies, `disturbed` set."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        record = {**json.loads(line), "machine": machine, "beside": beside}
        if disturbed and is_eager_batch1_latency(record):
            record["disturbed"] = disturbed
        out.append(record)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("sources", type=Path, nargs="+")
    parser.add_argument("--machine", required=True, help="the device tool's kind, e.g. nvidia-h200-x4")
    parser.add_argument("--beside", required=True, help="what else ran on the host ('nothing' when alone)")
    parser.add_argument("--disturbed-eager-b1", metavar="NOTE",
                        help="mark eager batch-1 latencies disturbed, with the control that shows it")
    parser.add_argument("--append", action="store_true", help="add to an existing DEST instead of refusing")
    args = parser.parse_args(argv)
    if args.dest.exists() and not args.append:
        parser.error(f"{args.dest} exists: pass --append to add to it (nothing is overwritten)")
    records = [r for src in args.sources
               for r in stamped(src.read_text().splitlines(), args.machine, args.beside, args.disturbed_eager_b1)]
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    with args.dest.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    marked = sum("disturbed" in r for r in records)
    print(f"{len(records)} records from {len(args.sources)} files into {args.dest} ({marked} marked disturbed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
