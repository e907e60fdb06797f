#!/usr/bin/env bash
# Session 9's GPU work on one H200, run in the background across several warm device calls (a call carries at most
# 64 MiB: the wheels, the CIFAR archive and the two Inception shards each need a call of their own; see
# benchmarks/gpu_warm.sh). Everything runs from a copy of the tree in /tmp/vb, so the next call's copy of the tree
# cannot change files under running processes. Lanes, side by side until the lr sweep ends:
#   tests     the GPU-only tests of the ops and of CUDA-graph sampling (untimed: they may share the GPU);
#   proc      study tokenizer `proc` (procedural, tokenizer_seed 0) -> token cache -> grid=study_lr (42 cells, 14 at
#             a time; cut at the deadline: the grid resumes next session, finished cells skipped);
#   proc_b    the second procedural tokenizer (tokenizer_seed 1: the tokenizer's share of the variance);
#   cifar     (after the archive is staged) the CIFAR-10 tokenizer -> token cache -> (after the Inception shards are
#             staged) benchmarks/inception_check.py: Inception FID floor and the tokenizer's reconstruction FID.
# Then, alone on the GPU (undisturbed), while time remains: VAR-d16 sampling b1/b64 eager and with CUDA graphs (peak
# memory now that the KV cache is freed before the decode), the decode modes, M-VAR-d16 training eager and compiled.
# Usage: setsid bash benchmarks/gpu_s9.sh SECONDS_TOTAL > /tmp/s9.log 2>&1 &   (after `. benchmarks/gpu_setup.sh`)
set -u -o pipefail
TOTAL=${1:?seconds}
END=$((SECONDS + TOTAL))
rm -rf /tmp/vb && mkdir -p /tmp/vb && cp -r benchmarks varbench tests run.py pyproject.toml .commit /tmp/vb/ && cd /tmp/vb
export PYTHONPATH=/tmp/site:/tmp/vb
S=runs/study19; R=runs/s9/results; L=runs/s9/logs; mkdir -p $S $R $L
TOKS="tokenizer.patch_nums=[1,2,3,4,5,6,8,10,13,16]"
PROC="data.size_per_class=640"
CIFAR="data=folder data.root=$S/cifar10_jpg data.num_classes=10 data.crop=center"
STAGE=/tmp/stage
log() { echo "$(date +%T) $*" | tee -a $L/driver.log; }
left() { echo $((END - SECONDS)); }

tok() {  # name, tokenizer seed, data overrides...
  python run.py task=train_tokenizer run_dir=$S/$1 task.steps=2000 task.batch_size=32 task.amp=bf16 \
    task.progress=false tokenizer_seed=$2 $TOKS "${@:3}" results_dir=$R/tok_$1 autotune=first &&
  python run.py task=tokenize run_dir=$S/$1 tokenizer.checkpoint=$S/$1/tokenizer/tokenizer.safetensors \
    $TOKS "${@:3}" results_dir=$R/tok_$1 autotune=first
}
wait_for() { while [ ! -f "$1" ] && [ "$(left)" -gt 0 ]; do sleep 5; done; [ -f "$1" ]; }

lane_tests() {
  timeout 480 python benchmarks/gpu_tests.py $R/gpu_tests.jsonl --autotune first -- -q -x --no-header -p no:cacheprovider \
    tests/ops/ "tests/test_compile.py::test_on_cuda_the_training_step_on_the_gpu_kernels_is_one_graph" \
    tests/test_label_checks.py
  timeout 300 python benchmarks/gpu_tests.py $R/gpu_tests.jsonl --autotune first -- -q --no-header -p no:cacheprovider \
    tests/test_backbone.py tests/test_shared_aln.py tests/test_kv_cache.py tests/test_fast_decode.py -k "cuda or bf16"
}
lane_proc() {
  tok proc 0 $PROC || return 1
  T="tokenizer.checkpoint=$S/proc/tokenizer/tokenizer.safetensors train.token_cache=$S/proc/token_cache/train $PROC"
  log "lr sweep starts, $(left) s left"
  setsid python run.py grid=study_lr cluster=local_parallel cluster.jobs=14 $T results_dir=$R/lr autotune=first \
    > $L/lr.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && [ "$(left)" -gt 250 ]; do sleep 5; done
  if kill -0 $pid 2>/dev/null; then log "lr sweep cut at the deadline"; kill -TERM -- -$pid; sleep 10; kill -KILL -- -$pid; fi
  wait $pid; log "lr sweep ended rc=$?"
}
lane_cifar() {
  wait_for $STAGE/cifar10_jpg.tar.gz || return 1
  tar xzf $STAGE/cifar10_jpg.tar.gz -C $S && mv $S/cifar10_jpg/test $S/cifar10_jpg/val
  tok cifar 0 $CIFAR || return 1
  wait_for $STAGE/inception/inception.part2of2.safetensors || return 1
  python benchmarks/inception_check.py $R/inception_check.jsonl --weights $STAGE/inception/inception.part1of2.safetensors \
    --per-class 1000 --archive $STAGE/cifar10_jpg.tar.gz -- tokenizer.checkpoint=$S/cifar/tokenizer/tokenizer.safetensors \
    $TOKS
}
# one timing step alone on the GPU, if its limit still fits
timed() {  # name, limit, command...
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -lt "$limit" ]; then log "skip $name: $(left) s left, needs $limit"; return; fi
  log "start $name"; timeout "$limit" "$@" > $L/$name.log 2>&1; log "end $name rc=$?"
}

log "start, $TOTAL s"
lane_tests > $L/tests.log 2>&1 & T1=$!
lane_proc > $L/proc.log 2>&1 & T2=$!
tok proc_b 1 $PROC > $L/proc_b.log 2>&1 & T3=$!
lane_cifar > $L/cifar.log 2>&1 & T4=$!
for p in $T1 $T2 $T3 $T4; do wait $p; log "lane $p rc=$?"; done

BENCH=(python run.py task=bench model=var_d16 autotune=full "task.rerun_baseline=[]" task.allow_failed_cells=true
       results_dir=$R/speed)
SAMPLE=("${BENCH[@]}" "task.configs=[[attention,none]]" task.train_batch=null "task.sample_batches={256:[1,64]}"
        task.decode_mode=eager task.cell_timeout_s=80)
timed sample_var_eager 90 "${SAMPLE[@]}" task.cuda_graphs=false
timed sample_var_graphs 90 "${SAMPLE[@]}" task.cuda_graphs=true
timed decode_modes 150 python benchmarks/decode_modes.py $R/speed/decode_modes.jsonl
MVAR=("${BENCH[@]}" "task.configs=[[mamba2,full]]" "task.train_batch={256:32}" "task.sample_batches={256:[]}")
timed mvar_eager 110 "${MVAR[@]}" task.cell_timeout_s=90
TORCH_LOGS=graph_breaks,recompiles timed mvar_compiled 240 "${MVAR[@]}" task.compile=true task.cell_timeout_s=220
log "done"; touch runs/s9/done
