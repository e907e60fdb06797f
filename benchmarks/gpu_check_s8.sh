#!/usr/bin/env bash
# Session 8's GPU check of issue 18 item 1 (compiling M-VAR) in one device call of at most 9 minutes on one H200:
#   tests         the GPU-only tests of the causal_conv1d custom ops (equal to the package and to the float64
#                 reference in values and gradients, opcheck, a Mamba2 mixer compiled with fullgraph=True forward +
#                 backward and its sampling step) and tests/test_compile.py's training step of a Mamba2 model on the
#                 GPU kernels (one graph, no break), as gpu_test records (first-config autotuning);
#   bench_eager   M-VAR-d16 ([mamba2, full] at depth 16, 256 px) eager training at batch 32, bf16 autocast, fully
#                 autotuned: img/s, MFU, top operators, and `timing.first_step_s` (the first step: autotuning plus
#                 one step); it runs first, so Triton's kernel cache is warm for the compiled cell;
#   bench_compiled the same step under torch.compile: img/s and `timing.first_step_s`, the first step, in which it
#                 compiles (minus the eager cell's first step: the compile time; goal < 90 s, 5.5 min before the
#                 conv became a custom op); dynamo's graph breaks and recompiles in bench_compiled.log, their count
#                 a JSON line in OUT/graph_breaks.jsonl (goal 0).
#   sample_var    VAR-d16 ([attention, none]) eager sampling at batch 1 and 64, no training stage: latency and peak
#                 memory now that the KV cache is freed before the tokenizer decodes (18.4 GiB at b64 in session 7,
#                 the official code 12.0 GiB; goal: no more than the official code); the tokenizer decodes eagerly
#                 (task.decode_mode=eager, as in session 7);
#   decode_modes  only with DECODE_S > 0 (not in the 540 s plan: give it seconds taken from another step, or run
#                 benchmarks/decode_modes.py in a call of its own, ~1-2 min): VAR's VQ-VAE decode alone at batch 1
#                 and 64 in each decode mode (eager, channels_last, compiled), latency, compile time and the
#                 largest difference from the eager images (benchmarks/decode_modes.py).
# The M-VAR steps have no sampling stage (task.sample_batches {256: []}). Each step runs under its own `timeout` (a bench cell is killed by
# the bench itself 20 s before, so its error is a record and no orphan holds the GPU); its output is tee'd to
# OUT/<step>.log and its exit status, limit and duration are a JSON line in OUT/steps.jsonl. Measurement records
# (JSON lines) go under OUT. The script goes on after a failed step and exits with the number of failed steps.
# Expected on a cold H200: tests ~2 min, eager ~1-1.5 min, compiled ~2-3 min, sample_var ~40 s (~7 min in all;
# limits 540 s).
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_check_s8.sh OUT     DRY=1 prints the commands.
# The steps' limits (seconds) can be moved: TESTS_S=140 EAGER_S=110 COMPILED_S=240 SAMPLE_S=50 DECODE_S=0.
set -u -o pipefail
OUT=${1:?records dir}
TESTS_S=${TESTS_S:-140} EAGER_S=${EAGER_S:-110} COMPILED_S=${COMPILED_S:-240} SAMPLE_S=${SAMPLE_S:-50}
DECODE_S=${DECODE_S:-0}
BENCH=(python run.py task=bench model=var_d16 "task.configs=[[mamba2,full]]" autotune=full "results_dir=$OUT"
       "task.train_batch={256:32}" "task.sample_batches={256:[]}" "task.rerun_baseline=[]" task.allow_failed_cells=true)
TESTS=(tests/ops/test_causal_conv_custom_op.py
       "tests/test_compile.py::test_on_cuda_the_training_step_on_the_gpu_kernels_is_one_graph[mamba2]")
FAILED=0

. "$(dirname "$0")/gpu_step.sh"  # step NAME SECONDS COMMAND...

[ -n "${DRY:-}" ] || mkdir -p "$OUT"
step tests "$TESTS_S" python benchmarks/gpu_tests.py "$OUT/gpu_tests.jsonl" --autotune first -- "${TESTS[@]}"
step bench_eager "$EAGER_S" "${BENCH[@]}" "task.cell_timeout_s=$((EAGER_S - 20))"
TORCH_LOGS=graph_breaks,recompiles step bench_compiled "$COMPILED_S" "${BENCH[@]}" task.compile=true \
  "task.cell_timeout_s=$((COMPILED_S - 20))"
step sample_var "$SAMPLE_S" python run.py task=bench model=var_d16 "task.configs=[[attention,none]]" autotune=full \
  "results_dir=$OUT" task.train_batch=null "task.sample_batches={256:[1,64]}" "task.rerun_baseline=[]" \
  task.cuda_graphs=false task.decode_mode=eager task.allow_failed_cells=true "task.cell_timeout_s=$((SAMPLE_S - 10))"
[ "$DECODE_S" = 0 ] || step decode_modes "$DECODE_S" python benchmarks/decode_modes.py "$OUT/decode_modes.jsonl"
if [ -z "${DRY:-}" ]; then
  printf '{"metric": "graph_breaks", "value": %d, "unit": "count", "log": "bench_compiled.log"}\n' \
    "$(grep -c '\[__graph_breaks\] Graph break' "$OUT/bench_compiled.log")" >> "$OUT/graph_breaks.jsonl"
fi
finish_steps
