#!/usr/bin/env bash
# Session 9's GPU work on one H200, in device calls that each return what they made: every call runs until its
# deadline, then brings back the records, logs and study tokenizers through $OUT (at most 8 files of 16 MiB), so a
# machine given back between calls loses only the cell in flight. A later call on the same warm machine resumes:
# tokenizers already trained are kept, the lr grid skips its finished cells (markers under its results dir).
#   tests   the GPU-only tests of the ops (custom ops, compiled kernels) and of CUDA-graph sampling (untimed);
#   proc    study tokenizer `proc` (procedural, tokenizer_seed 0) -> token cache -> grid=study_lr (42 cells, 14 at a
#           time), cut at the deadline;
#   proc_b  the second procedural tokenizer (tokenizer_seed 1: the tokenizer's share of the variance).
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_s9.sh SECONDS      (OUT set by the device tool)
set -u -o pipefail
END=$((SECONDS + ${1:?seconds}))
S=runs/study19; R=runs/s9/results; L=runs/s9/logs; mkdir -p $S $R $L
TOKS="tokenizer.patch_nums=[1,2,3,4,5,6,8,10,13,16]"
PROC="data.size_per_class=640"
log() { echo "$(date +%T) $*" | tee -a $L/driver.log; }
left() { echo $((END - SECONDS)); }

tok() {  # name, tokenizer seed, data overrides...  (skipped once its token cache is complete)
  [ -f $S/$1/tokenized ] && return 0
  python run.py task=train_tokenizer run_dir=$S/$1 task.steps=2000 task.batch_size=32 task.amp=bf16 \
    task.progress=false tokenizer_seed=$2 $TOKS "${@:3}" results_dir=$R/tok_$1 autotune=first &&
  python run.py task=tokenize run_dir=$S/$1 tokenizer.checkpoint=$S/$1/tokenizer/tokenizer.safetensors \
    $TOKS "${@:3}" results_dir=$R/tok_$1 autotune=first && touch $S/$1/tokenized
}
lane_tests() {
  [ -f $R/gpu_tests.done ] && return 0
  timeout 240 python benchmarks/gpu_tests.py $R/gpu_tests.jsonl --autotune first -- -q --no-header -p no:cacheprovider \
    tests/ops/ "tests/test_compile.py::test_on_cuda_the_training_step_on_the_gpu_kernels_is_one_graph" \
    tests/test_label_checks.py
  timeout 200 python benchmarks/gpu_tests.py $R/gpu_tests.jsonl --autotune first -- -q --no-header -p no:cacheprovider \
    tests/test_backbone.py tests/test_shared_aln.py tests/test_kv_cache.py tests/test_fast_decode.py -k "cuda or bf16"
  touch $R/gpu_tests.done
}
lane_proc() {
  tok proc 0 $PROC || return 1
  T="tokenizer.checkpoint=$S/proc/tokenizer/tokenizer.safetensors train.token_cache=$S/proc/token_cache/train $PROC"
  log "lr sweep starts, $(left) s left"
  setsid python run.py grid=study_lr cluster=local_parallel cluster.jobs=14 $T results_dir=$R/lr autotune=first \
    >> $L/lr.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && [ "$(left)" -gt 25 ]; do sleep 3; done
  if kill -0 $pid 2>/dev/null; then log "lr sweep cut at the deadline"; kill -TERM -- -$pid; sleep 5; kill -KILL -- -$pid; fi
  wait $pid; log "lr sweep ended rc=$?"
}
collect() {
  for d in $R/*/; do n=$(basename "$d")  # each cell's sample grid beside its records (the report's sheet)
    for f in runs/cells/$n-*/*/samples.png; do [ -f "$f" ] || continue; mkdir -p "$d/$(dirname "$f")" && cp "$f" "$d/$f"; done
  done
  tar czf "$OUT/records.tar.gz" -C runs/s9 results && tar czf "$OUT/logs.tar.gz" -C runs/s9 logs
  for n in proc proc_b; do f=$S/$n/tokenizer/tokenizer.safetensors; [ -f $f ] && cp $f "$OUT/tokenizer_$n.safetensors"; done
  ls -la "$OUT"
}

log "start, $(left) s"
lane_tests > $L/tests.log 2>&1 & T1=$!
lane_proc > $L/proc.log 2>&1 & T2=$!
tok proc_b 1 $PROC > $L/proc_b.log 2>&1 & T3=$!
for p in $T1 $T2 $T3; do
  while kill -0 $p 2>/dev/null && [ "$(left)" -gt 15 ]; do sleep 3; done
  kill -0 $p 2>/dev/null && { log "lane $p cut"; pkill -TERM -P $p; }
done
wait; log "lanes ended"; tail -n 5 $L/tests.log; collect
