#!/usr/bin/env bash
# The mixer study (results/README.md) on one GPU machine: one tokenizer trained and frozen, one token cache, the
# project classifier, then grid=mixers_gpu with JOBS cells side by side. With several GPUs, each seed's cells run on
# their own GPU (seed i on GPU i mod GPUs), JOBS at a time on each. Rerun it to resume: finished steps and cells are
# skipped, interrupted cells resume from their checkpoints.
# Usage (after `. benchmarks/gpu_setup.sh`): [SEEDS="0 1 2"] [GPUS="0 1 2"] bash benchmarks/gpu_study.sh RESULTS_DIR [JOBS] [overrides...]
set -eu
RES=${1:?results dir}; JOBS=${2:-8}; shift $(( $# < 2 ? $# : 2 ))
STUDY=${STUDY:-runs/study}; TOKENIZER_STEPS=${TOKENIZER_STEPS:-2000}
SEEDS=(${SEEDS:-0 1 2}); GPUS=(${GPUS:-0})
TOK=$STUDY/tokenizer/tokenizer.safetensors
COMMON=(autotune=first "results_dir=$RES")
mkdir -p "$RES"
export CUDA_VISIBLE_DEVICES=${GPUS[0]}
if [ ! -f "$STUDY/tokenizer.done" ]; then
  python run.py task=train_tokenizer run_dir=$STUDY task.steps=$TOKENIZER_STEPS task.batch_size=32 task.amp=bf16 \
    task.progress=false "${COMMON[@]}"
  touch "$STUDY/tokenizer.done"
fi
python run.py task=tokenize run_dir=$STUDY tokenizer.checkpoint=$TOK "${COMMON[@]}"
# the frozen tokenizer travels with the records: re-running a cell later (or one more mixer) needs this very one
cp "$TOK" "$RES/study_tokenizer.safetensors"
GRID=(grid=mixers_gpu cluster=local_parallel cluster.jobs="$JOBS" tokenizer.checkpoint=$TOK
      train.token_cache=$STUDY/token_cache/train "${COMMON[@]}")
if [ ${#GPUS[@]} = 1 ]; then  # one GPU: one grid over every seed, JOBS cells at a time
  exec python run.py "${GRID[@]}" seed="$(IFS=,; echo "${SEEDS[*]}")" "$@"
fi
status=0
for i in "${!SEEDS[@]}"; do  # several GPUs: seed i's cells on GPU i mod GPUs, JOBS at a time each
  CUDA_VISIBLE_DEVICES=${GPUS[i % ${#GPUS[@]}]} python run.py "${GRID[@]}" seed="${SEEDS[i]}" "$@" \
    > "$RES/grid_seed${SEEDS[i]}.log" 2>&1 &
done
for job in $(jobs -p); do wait "$job" || status=1; done   # a failed cell fails its grid, after all its cells ran
exit $status
