#!/usr/bin/env bash
# Training throughput of the big configurations on 1..N GPUs of this host (issue 8): DDP on every count, FSDP2 on
# more than one GPU; bf16, fixed per-GPU batch (task=scaling). A failed run is reported and the others go on.
# Usage (after `. benchmarks/gpu_setup.sh`):
#   bash benchmarks/gpu_scaling.sh RESULTS_DIR ["1 2 4 8"] ["var_d24 var_d30 mvar_d24 mvar_d30"] [overrides...]
RES=${1:?results dir}; COUNTS=${2:-"1 2"}; MODELS=${3:-"var_d30 mvar_d30"}; shift $(( $# < 3 ? $# : 3 ))
for model in $MODELS; do
  for n in $COUNTS; do
    for parallel in ddp fsdp; do
      [ "$n" = 1 ] && [ "$parallel" = fsdp ] && continue
      timeout ${RUN_TIMEOUT:-300} torchrun --nproc_per_node "$n" run.py task=scaling model="$model" task.parallel="$parallel" \
        results_dir="$RES" "$@" || echo "FAILED: $model on $n GPU(s), $parallel"
    done
  done
done
