#!/usr/bin/env bash
# The bench measurements issue 5 lacked after session 5, as two device calls that each stand alone (run in session
# 6: results/gpu/h200/README.md, "Session 6"). Records go under OUT; tar OUT into $OUT of the device call.
#   queues   (nvidia-h200-x4): Q0 the GPU-only tests of CUDA-graph sampling with the mamba_ssm kernels and of
#            Mamba-1's fused carried-state correction (recorded by gpu_tests.py), then Mamba-1's sampling and the
#            models without an inter-scale mixer (mixer=none with intra full, and with none);
#            Q1 VAR / M-VAR at d30; Q2 M-VAR's fused Mamba2 path, eager and compiled; Q3 bf16 weights, then
#            five linear mixers' sampling with CUDA graphs (as far as the deadline allows).
#   latency  (one GPU, nothing else on the host): batch-1 sampling latencies at 512 and 1024 px, sampling only.
#   compiled (one GPU; session 6's fix of the compiled step, not yet run): tests/test_compile.py on the GPU's kernel
#            paths (is each model one graph there too?), then VAR-d16 and M-VAR-d16 compiled training again, with
#            dynamo's graph breaks and recompiles logged to OUT/compile_log.txt.
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_bench_rest.sh queues|latency|compiled OUT
# DRY=1 prints the commands instead of running them.
set -eu
MODE=${1:?queues or latency}; OUT=${2:?records dir}
B=(python run.py task=bench model=var_d16 "autotune=${AUTOTUNE:-first}" task.allow_failed_cells=true)  # an OOM cell is a result here
NO256=("task.sample_batches={256:[]}")  # training-stage knobs: no sampling
run() { if [ -n "${DRY:-}" ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

q0() {
  run python benchmarks/gpu_tests.py "$OUT/q0/gpu_tests.jsonl" --autotune first -- \
    tests/test_backbone.py tests/ops/test_selective_scan.py -k "cuda_graph and (mamba or none-) or fused_correction" \
    || true  # a failing test is a record like a passing one: go on to the timing
  run "${B[@]}" "task.configs=[[mamba,none]]" task.train_batch=null "results_dir=$OUT/q0"
  run "${B[@]}" "task.configs=[[none,full],[none,none]]" "results_dir=$OUT/q0"  # no inter-scale mixer (session 5)
}
q1() { run python run.py grid=bench_depths model=var_d30 autotune=first "results_dir=$OUT/q1"; }
q2() {
  local fused=("task.configs=[[mamba2,full]]" "task.mixer_options={mamba2:{fused:true}}" "${NO256[@]}")
  run "${B[@]}" "${fused[@]}" "results_dir=$OUT/q2"
  run "${B[@]}" "${fused[@]}" task.compile=true "results_dir=$OUT/q2"
}
q3() {
  run "${B[@]}" "task.configs=[[attention,none],[mamba2,full]]" task.param_dtype=bf16 "${NO256[@]}" "results_dir=$OUT/q3"
  # the linear mixers with CUDA graphs (only VAR and M-VAR have graph timings): is batch 1 still launch-bound?
  run "${B[@]}" "task.configs=[[gla,none],[mamba2,none],[linear_attention,none],[hgrn2,none],[retnet,none]]" \
    task.cuda_graphs=true task.train_batch=null "results_dir=$OUT/q3"
}

case $MODE in
  queues)
    if [ -n "${DRY:-}" ]; then for i in 0 1 2 3; do echo "# queue $i"; q$i; done; exit 0; fi
    # one queue per GPU under the call's deadline (gpu_queues.sh); each queue's shell gets the functions above
    defs="$(declare -f run q0 q1 q2 q3); $(declare -p B NO256 OUT)"
    bash "$(dirname "$0")/gpu_queues.sh" "$OUT/logs" "$defs; q0" "$defs; q1" "$defs; q2" "$defs; q3" ;;
  latency)
    run timeout "${DEADLINE_S:-540}" python run.py grid=resolution model=var_d16 autotune=first \
      "task.resolutions=[512],[1024]" \
      "task.configs=[[attention,none]],[[gla,none]],[[hgrn2,none]],[[retnet,none]],[[deltanet,none]],[[mamba2,full]]" \
      task.train_batch=null "task.sample_batches={512:[1],1024:[1]}" "results_dir=$OUT" ;;
  compiled)
    mkdir -p "$OUT"
    run python benchmarks/gpu_tests.py "$OUT/gpu_tests.jsonl" --autotune first -- tests/test_compile.py || true
    export TORCH_LOGS=graph_breaks,recompiles  # why a compiled step is not one graph, in the log
    run "${B[@]}" "task.configs=[[attention,none],[mamba2,full]]" task.compile=true "${NO256[@]}" \
      "results_dir=$OUT" 2> "$OUT/compile_log.txt" ;;
  *) echo "unknown mode $MODE: queues, latency or compiled" >&2; exit 2 ;;
esac
