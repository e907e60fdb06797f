#!/usr/bin/env bash
# Issue 19's procedural study on one H200, in foreground device calls that each return what they made: every call
# runs until its deadline, then brings back the records and logs through $OUT, so a machine given back between calls
# loses only the cells in flight. A later call on the same warm machine resumes: each stage is skipped once done, a
# grid skips its finished cells. Stages, in order:
#   tokenize  token caches of the frozen tokenizers `proc` and `proc_b` (session 9's, staged in /tmp/stage/study19);
#   lr        grid=study_lr (cells with a done marker in results/gpu/h200/study19/lr/cells are skipped), then
#             `best_lr` picks each arm's learning rate (runs/s10/results/best_lr.txt). The sweep spans sessions: once
#             it is complete in results/, run `python -m varbench.analysis.best_lr results/gpu/h200/study19/lr` here
#             and start the command with LR="<its output>";
#   main      grid=study_main at those rates, 12 cells at a time in seed-major order (every arm's seed 0 first), with
#             Inception FID-10k (weights staged in /tmp/stage/inception), then grid=study_tokenizer on `proc_b`.
# 12 cells at a time: 15 ran out of the H200's memory (M-VAR, session 10).
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_study19.sh SECONDS      (OUT set by the device tool)
# Staging: the tokenizers and Inception weights do not fit in one call with the wheels, and a machine is warm for 30 s
# after a call: make the two staging calls of benchmarks/gpu_study_plan.md back to back right before each work call.
set -u -o pipefail
END=$((SECONDS + ${1:?seconds}))
S=runs/study19; R=runs/s10/results; L=runs/s10/logs; mkdir -p $S $R $L
PROC="data.size_per_class=640"
INC=/tmp/stage/inception/inception.part1of2.safetensors
FID=(+task.overrides.evaluate.inception_fid=true +task.overrides.evaluate.inception_weights=$INC)
log() { echo "$(date +%T) $*" | tee -a $L/driver.log; }
left() { echo $((END - SECONDS)); }
frozen() { echo "tokenizer.checkpoint=$S/$1/tokenizer/tokenizer.safetensors train.token_cache=$S/$1/token_cache/train $PROC"; }

stage_tokenizers() {  # session 9's tokenizers, carried in the staging calls
  for n in proc proc_b; do
    [ -f $S/$n/tokenizer/tokenizer.safetensors ] || { mkdir -p $S/$n && cp -r /tmp/stage/study19/$n/tokenizer $S/$n/; }
    [ -f $S/$n/tokenized ] || { python run.py task=tokenize run_dir=$S/$n \
      tokenizer.checkpoint=$S/$n/tokenizer/tokenizer.safetensors tokenizer.patch_nums=[1,2,3,4,5,6,8,10,13,16] $PROC \
      results_dir=$R/tok_$n autotune=first && touch $S/$n/tokenized; } || return 1
  done
}
grid_until_deadline() {  # name, overrides...: one grid, stopped 25 s before the deadline; done marker if it ended
  [ -f $R/$1.done ] && return 0
  log "$1 starts, $(left) s left"
  setsid python run.py "${@:2}" autotune=first >> $L/$1.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && [ "$(left)" -gt 25 ]; do sleep 3; done
  if kill -0 $pid 2>/dev/null; then
    log "$1 cut at the deadline"; kill -TERM -- -$pid; sleep 5; kill -KILL -- -$pid 2>/dev/null; wait $pid; return 1
  fi
  wait $pid; log "$1 ended rc=$?"; touch $R/$1.done   # failed cells are recorded; rerunning retries only those
}
lane_study() {
  stage_tokenizers || { log "tokenize failed"; return 1; }
  # the done markers of earlier sessions' cells (imported with their records): those cells are not run again
  for g in lr main_proc; do d=results/gpu/h200/study19/$g/cells; [ -d $d ] && mkdir -p $R/$g && cp -rn $d $R/$g/; done
  grid_until_deadline lr grid=study_lr cluster=local_parallel cluster.jobs=12 $(frozen proc) results_dir=$R/lr || return 1
  if [ -z "${LR:-}" ]; then  # the sweep ran whole on this machine; else LR comes from the command line
    [ -s $R/best_lr.txt ] || python -m varbench.analysis.best_lr $R/lr > $R/best_lr.txt || return 1
    LR=$(cat $R/best_lr.txt)
  fi
  log "learning rates: $LR"
  local M=(grid=study_main cluster=local_parallel cluster.jobs=12 $(frozen proc) $LR "${FID[@]}" results_dir=$R/main_proc)
  grid_until_deadline main "${M[@]}" || return 1
  grid_until_deadline tokenizer_b grid=study_tokenizer cluster=local_parallel cluster.jobs=6 $(frozen proc_b) $LR \
    "${FID[@]}" results_dir=$R/main_proc
}
collect() {
  for d in $R/*/; do n=$(basename "$d")  # each cell's sample grid beside its records (the report's sheet)
    for f in runs/cells/$n-*/*/samples.png; do [ -f "$f" ] || continue; mkdir -p "$d/$(dirname "$f")" && cp "$f" "$d/$f"; done
  done
  tar czf "$OUT/records.tar.gz" -C runs/s10 results && tar czf "$OUT/logs.tar.gz" -C runs/s10 logs
  ls -la "$OUT"
}

log "start, $(left) s"
lane_study > $L/study.log 2>&1 & T=$!
while kill -0 $T 2>/dev/null && [ "$(left)" -gt 15 ]; do sleep 3; done
kill -0 $T 2>/dev/null && { log "study cut"; pkill -TERM -P $T; }
wait; log "study ended"; collect
