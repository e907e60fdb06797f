#!/usr/bin/env bash
# The tree a GPU work call carries must stay under 64 MiB with the 63 MB of wheels in .whl/: results/ (21 MB, and
# the study's tokenizers, 35 MB) waits in /tmp/hold during the call. Kept in the tree: what the study script
# reads: the done markers of imported cells, as stubs (benchmarks/gpu_study19.sh skips those cells), the lr sweeps'
# val_nll records and the tokenizers' SHA256SUMS.
#   bash benchmarks/gpu_tree.sh out      before the work call (also writes .commit: records name the commit)
#   bash benchmarks/gpu_tree.sh back     after it, before importing its records (never `git add -A` in between)
# STUBS=0 (out): results/ left empty, for a call that runs no study script (the stubs, 1.3 MB by session 34, took the
# tree with .whl/ just past 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
HOLD=${HOLD:-/tmp/hold}; STUDY=gpu/h200/study19  # (HOLD: another place, for the tests)
case "${1:?out or back}" in
  out)
    [ -e $HOLD ] && { echo "$HOLD exists: results/ may already be out" >&2; exit 1; }
    git rev-parse HEAD > .commit
    mv results $HOLD
    mkdir results
    [ "${STUBS:-1}" = 0 ] && exit 0
    mkdir -p results/$STUDY/tokenizers
    cp $HOLD/$STUDY/tokenizers/SHA256SUMS results/$STUDY/tokenizers/
    # a done marker as a stub (the grids only ask whether it exists): the full ones, 6 kB each, would soon push the
    # tree past the 64 MiB a call carries beside the 63 MB of wheels
    for done in $HOLD/$STUDY/*/cells/*/done.json; do
      cell=${done#$HOLD/}; mkdir -p "results/$(dirname "$cell")"
      echo "{\"cell_id\": \"$(basename "$(dirname "$cell")")\", \"stub\": \"gpu_tree.sh out\"}" > "results/$cell"
    done
    # the sweeps' held-out NLLs, from which the study script picks each arm's rate (best_lr reads them with its own)
    for sweep in lr lr_raster; do
      [ -f $HOLD/$STUDY/$sweep/evaluate.jsonl ] || continue
      mkdir -p results/$STUDY/$sweep
      grep '"metric": "val_nll"' $HOLD/$STUDY/$sweep/evaluate.jsonl > results/$STUDY/$sweep/val_nll.jsonl
    done
    ;;
  back)
    [ -d $HOLD ] || { echo "no $HOLD to bring back" >&2; exit 1; }
    rm -rf results && mv $HOLD results
    ;;
esac
