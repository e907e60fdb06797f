#!/usr/bin/env bash
# Issue 18 goal 1 (training), the block-causal attention: VAR-d16's compiled training step at batch 32 spends about
# 23 of its 92 ms in flex attention's forward and backward (bench_s7's top operators), the largest part after the
# matmuls. The `sdpa_scales` backend attends one scale at a time without a mask, so SDPA can
# run its flash kernel. One device call of at most 9 minutes on one H200 alone:
#   tests         the CUDA tests of tests/ops/test_sdpa_scales.py (VAR's attention and M-VAR's intra attention on
#                 sdpa_scales match their dense-mask reference under bf16 autocast) and of tests/test_fp8.py (the
#                 compiled FP8 step within FP8's rounding of bf16's; skipped without torchao) and of
#                 tests/test_bench.py (the reduce-overhead step replays CUDA graphs and trains as the default
#                 compile), gpu_test records;
#   train_flex    VAR-d16 compiled training at batch 32 on flex attention (the default), fully autotuned: img/s,
#                 MFU, top operators (the baseline, in the same call);
#   train_sdpa_scales  the same with task.mixer_options={attention: {backend: sdpa_scales}};
#   train_reference  the same with the dense-mask SDPA (backend: reference, as the official code attends), which
#                 beat flex and sdpa_scales forward + backward in the attention step of session 29; only when asked;
#   train_mvar    M-VAR-d16 ([mamba2, full]) compiled training at batch 32 (goal: >= 250 img/s, compiled in under
#                 90 s: `timing.first_step_s`; no record yet), its graph breaks counted into OUT/graph_breaks.jsonl
#                 (goal 0); only when asked (the M-VAR kernels' wheels: carry .whl, not .whl_fp8);
#   train_mvar_sdpa_scales  the same with M-VAR's intra-scale attention on sdpa_scales
#                 (task.intra_options={full: {backend: sdpa_scales}}: one unmasked SDPA call per scale, where flex
#                 took 19.2 of the 158.6 ms step in session 25); only when asked;
#   train_mvar_varlen  the same with M-VAR's intra-scale attention on torch's varlen flash kernel
#                 (task.intra_options={full: {backend: torch_varlen}}: one call for every scale of every sample, no
#                 per-scale slices and concatenation, which took about 6.8 ms of sdpa_scales' 151.6 ms step in
#                 session 35); only when asked;
#   attention     the scale layout's attention alone at VAR-d16's shapes, forward and forward + backward, each way
#                 varbench can call the kernels (benchmarks/attention_backends.py: flex, the dense-mask reference,
#                 sdpa_scales with 1 / 64 / 128 / 256 tokens as the first scales' masked call and SDPA's own,
#                 cuDNN's, flash's or the memory-efficient kernel first): where cuDNN's backward took 3.3x its
#                 forward in session 26; only when asked.
# Graph breaks and recompiles go to the steps' logs (TORCH_LOGS). Each step runs under its own `timeout` (a bench
# cell is killed by the bench 20 s before), tee'd to OUT/<step>.log, its status a line of OUT/steps.jsonl
# (benchmarks/gpu_step.sh); the script goes on after a failed step and exits with the number of failed steps.
# STEPS (default: all three) names the steps to run; COMPILE_MODE (default: default) is Inductor's mode of both
# training steps (task.compile_mode: max-autotune-no-cudagraphs benchmarks flex attention's and the GEMMs' kernel
# configs while compiling); COMPILE_SCOPE (default: model) what they compile (task.compile_scope: blocks compiles each
# block, one graph they share); FP8=true times them with FP8 matmuls (task.fp8; torchao: carry the wheels
# benchmarks/gpu_prep.sh puts in .whl_fp8/ and source gpu_setup.sh with WHEELS=.whl_fp8), FP8_RECIPE=rowwise with
# one scale per row (task.fp8_recipe; default tensorwise). The records say which.
# SDPA_OPTIONS (e.g. "sdpa_kernels:[flash,efficient],together_below:128") adds the sdpa_scales options of the attention
# mixer and intra=full (varbench/ops/attention/kernel.py) to the sdpa_scales steps.
# MAMBA2_OPTIONS (e.g. "chunk_size:128") adds options of M-VAR's mamba2 mixer (varbench/mixers/mamba2.py) to the
# train_mvar steps.
# AUTOTUNE=first (default full) takes each Triton autotuner's first working config (varbench/utils/autotune.py): how
# much of a first step the kernel libraries' autotuning takes; the records say which mode ran.
# COMPILE_CACHE_DIR=DIR puts torch.compile's caches there (compile_cache_dir; default: the machine's temp dir, which
# stays while the machine is warm): a fresh DIR times a cold compile, the same DIR again a warm one.
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_check_s16_train.sh OUT     DRY=1 prints the commands.
# Limits (seconds, 540 in all) can be moved: TESTS_S=80 TRAIN_S=230 ATTENTION_S=120.
set -u -o pipefail
OUT=${1:?records dir}
TESTS_S=${TESTS_S:-80} TRAIN_S=${TRAIN_S:-230} ATTENTION_S=${ATTENTION_S:-120} STEPS=${STEPS:-tests train_flex train_sdpa_scales}
FAILED=0
BENCH=(python run.py task=bench model=var_d16 "autotune=${AUTOTUNE:-full}" "results_dir=$OUT"
       "task.train_batch={256:32}" "task.sample_batches={256:[]}" "task.rerun_baseline=[]" task.allow_failed_cells=true
       task.compile=true "task.compile_mode=${COMPILE_MODE:-default}" "task.compile_scope=${COMPILE_SCOPE:-model}"
       "task.fp8=${FP8:-false}" "task.fp8_recipe=${FP8_RECIPE:-tensorwise}" "compile_cache_dir=${COMPILE_CACHE_DIR:-null}"
       "task.cell_timeout_s=$((TRAIN_S - 20))")

. "$(dirname "$0")/gpu_step.sh"  # step NAME SECONDS COMMAND...

asked() { [[ " $STEPS " == *" $1 "* ]]; }

[ -n "${DRY:-}" ] || mkdir -p "$OUT"
asked tests && step tests "$TESTS_S" python benchmarks/gpu_tests.py "$OUT/gpu_tests.jsonl" --autotune first -- \
  tests/ops/test_sdpa_scales.py tests/test_fp8.py \
  tests/test_bench.py::test_on_cuda_reduce_overhead_replays_cuda_graphs_and_trains_as_the_default_compile
VAR="task.configs=[[attention,none]]" MVAR=("task.configs=[[mamba2,full]]")
[ -n "${MAMBA2_OPTIONS:-}" ] && MVAR+=("task.mixer_options={mamba2:{$MAMBA2_OPTIONS}}")
asked train_flex && TORCH_LOGS=graph_breaks,recompiles step train_flex "$TRAIN_S" "${BENCH[@]}" "$VAR"
SDPA="backend:sdpa_scales${SDPA_OPTIONS:+,$SDPA_OPTIONS}"
asked train_sdpa_scales && TORCH_LOGS=graph_breaks,recompiles step train_sdpa_scales "$TRAIN_S" "${BENCH[@]}" "$VAR" \
  "task.mixer_options={attention:{$SDPA}}"
asked train_reference && TORCH_LOGS=graph_breaks,recompiles step train_reference "$TRAIN_S" "${BENCH[@]}" "$VAR" \
  "task.mixer_options={attention:{backend:reference}}"
if asked train_mvar; then
  TORCH_LOGS=graph_breaks,recompiles step train_mvar "$TRAIN_S" "${BENCH[@]}" "${MVAR[@]}"
  if [ -z "${DRY:-}" ] && [ -f "$OUT/train_mvar.log" ]; then  # (none for a step CALL_END left no time to start)
    printf '{"metric": "graph_breaks", "value": %d, "unit": "count", "log": "train_mvar.log"}\n' \
      "$(grep -c '\[__graph_breaks\] Graph break' "$OUT/train_mvar.log")" >> "$OUT/graph_breaks.jsonl"
  fi
fi
asked train_mvar_sdpa_scales && TORCH_LOGS=graph_breaks,recompiles step train_mvar_sdpa_scales "$TRAIN_S" \
  "${BENCH[@]}" "${MVAR[@]}" "task.intra_options={full:{$SDPA}}"
asked train_mvar_varlen && TORCH_LOGS=graph_breaks,recompiles step train_mvar_varlen "$TRAIN_S" \
  "${BENCH[@]}" "${MVAR[@]}" "task.intra_options={full:{backend:torch_varlen}}"
asked attention && step attention "$ATTENTION_S" python benchmarks/attention_backends.py "$OUT/attention.jsonl"
finish_steps
