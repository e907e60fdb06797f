"""`python -m varbench.compat check-golden DIR [--only tokenizer,var,mvar|aim] [--out FILE]`

Builds the varbench equivalents of the official models described by DIR/config.json, converts the official
state dicts, runs them in fp32 on CPU and prints the max abs error of every tensor against its tolerance.
Exit status 0 only if every tensor is within tolerance and every index matches.
"""

from __future__ import annotations

import argparse
import json
import sys

from varbench.compat.golden import ALL_PARTS, PARTS, check_golden


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varbench.compat")
    sub = parser.add_subparsers(dest="command", required=True)
    golden = sub.add_parser("check-golden", help="compare with a golden folder laid out like shared/golden/setA")
    golden.add_argument("directory")
    golden.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(ALL_PARTS)} "
                        f"(default {','.join(PARTS)}; aim reads an AiM folder like aim_setC)")
    golden.add_argument("--out", help="also write one JSON line per tensor to this file")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    unknown = sorted(set(parts) - set(ALL_PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; valid: {list(ALL_PARTS)}")
    rows = check_golden(args.directory, parts)
    width = max(len(r.name) for r in rows)
    print(f"{'tensor':<{width}}  {'max abs err':>12}  {'tolerance':>10}  result")
    for r in rows:
        print(f"{r.name:<{width}}  {r.error:>12.3e}  {r.tolerance:>10.1e}  {'ok' if r.passed else 'FAIL'}")
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r.__dict__) + "\n")
    failed = [r.name for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
