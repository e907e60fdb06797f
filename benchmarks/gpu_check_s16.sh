#!/usr/bin/env bash
# Issue 18 goal 2 (sampling), the measurements sessions 14-15 prepared, in one device call of at most 9 minutes on
# one H200 alone:
#   tests          CUDA tests, most needed first (a record per test as it ends, so a cut step keeps the early
#                  ones): the compiled flex attention's training step as one graph, raster (2 frames in session
#                  20; not run since the fix) and scale-wise, with and without autocast; autotune=first leaving
#                  no autotune timings on disk (fla keeps them there: session 27); the raster attention's
#                  values on each backend; VAR / M-VAR / Mamba graphed sampling equals eager, also after an
#                  in-place weight change and under autocast (passed in session 20); tests/test_fast_decode.py
#                  (decode mode `graphs` gives eager's images bit for bit and captures once per shape;
#                  channels_last and compiled stay as accurate as eager under bf16 autocast; passed in session
#                  17); the bf16 block weights on every mixer's kernels and the fused element-wise chains under
#                  CUDA graphs (both passed in session 26) (gpu_test records, first-config autotuning);
#   decode_modes   VAR's VQ-VAE decode alone at batch 64, eager and compiled, each with cuDNN's heuristic and with
#                  cudnn.benchmark (benchmarks/decode_modes.py; the compiled decode is over a third of VAR's graphed
#                  batch 64, 311.5 ms against the 300 goal, in session 20): latency, first call, largest difference
#                  from eager;
#   profile_b1, profile_b64  where one eager VAR-d16 generation's time goes (benchmarks/sample_profile.py): host
#                  syncs by call site, host and GPU time per part, GPU busy against wall, the largest kernels
#                  (eager b1 is 0.88x the official code's: find out why); PROFILE_BATCHES (default "1 64") and
#                  PROFILE_ARGS (e.g. "--fused --decode-mode compiled": a timed configuration's kernels);
#   var_graphs     VAR-d16 sampling at batch 1 and 64 with CUDA graphs and the graphs decode (goals: b1 <= 40 ms,
#                  b64 <= 300 ms), no training stage;
#   mvar_graphs    the same for M-VAR-d16 (goals: b1 <= 40 ms, b64 <= 410 ms);
#   var_fused, mvar_fused  var_graphs and mvar_graphs with the blocks' element-wise chains fused
#                  (task.fused_elementwise=true, varbench/modules/fused.py; only when asked);
#   var_expandable VAR-d16 eager sampling at batch 64 with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (the
#                  records name the setting): peak memory against the official code's 12.0 GiB (12.18 allocated
#                  in session 9, 23.5 reserved by the caching allocator);
#   var_eager      VAR-d16 eager sampling at batch 1 and 64 under task=bench's protocol, the official sampler's
#                  path (goal: no slower than the official code, whose sampler `.official/time_sampling.py` times in
#                  the same call; only in STEPS when asked: batch 1 is bound by the host's CPU, so it is timed on the
#                  machine of the call);
#   var_eager_bf16_blocks  var_eager with the blocks' Linear weights held in bf16 (task.block_weights=bf16: the same
#                  values at every matmul, no fp32 copy and no cached cast): the batch-1 peak memory, 2.31 GiB against
#                  the official sampler's 1.77 in session 25 (only when asked; run var_eager in the same call);
#   var_decode_by_16  VAR-d16 eager sampling at batch 64 decoding 16 images per call (task.decode_batch=16): the
#                  peak memory without most of the decode's activations, and what the chunks cost in latency
#                  (only when asked).
# STEPS (default: every step but the fused ones, var_eager, var_eager_bf16_blocks and var_decode_by_16) names the
# steps to run, in the order above;
# GRAPHS_DECODE (default graphs) is the decode mode of var_graphs and mvar_graphs (session 17: graphs saves nothing at batch 64, while
# session 9's compiled decode took two thirds of eager's time; a compiled decode compiles in the untimed warm-up).
# Each step runs under its own `timeout` (a bench cell is killed by the bench 15 s before), tee'd to OUT/<step>.log,
# its status a JSON line of OUT/steps.jsonl (benchmarks/gpu_step.sh); the script goes on after a failed step and
# exits with the number of failed steps. Measurement records (JSON lines) go under OUT.
# MAMBA2_OPTIONS (e.g. "fit_chunk:true") adds options of M-VAR's mamba2 mixer (varbench/mixers/mamba2.py) to the
# mvar_graphs and mvar_fused steps.
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_check_s16.sh OUT     DRY=1 prints the commands.
# Limits (seconds, 540 in all by default) can be moved: TESTS_S=80 DECODE_S=80 PROFILE_S=60 GRAPHS_S=90
# EXPANDABLE_S=80 EAGER_S=100 DECODE_BY_S=80 FUSED_S=130.
set -u -o pipefail
OUT=${1:?records dir}
TESTS_S=${TESTS_S:-80} DECODE_S=${DECODE_S:-80} PROFILE_S=${PROFILE_S:-60} GRAPHS_S=${GRAPHS_S:-90}
EXPANDABLE_S=${EXPANDABLE_S:-80} EAGER_S=${EAGER_S:-100} DECODE_BY_S=${DECODE_BY_S:-80} FUSED_S=${FUSED_S:-130}
STEPS=${STEPS:-tests decode_modes profile var_graphs mvar_graphs var_expandable} GRAPHS_DECODE=${GRAPHS_DECODE:-graphs}
FAILED=0
MVAR=("[mamba2,full]")  # the M-VAR steps' configuration and overrides
[ -n "${MAMBA2_OPTIONS:-}" ] && MVAR+=("task.mixer_options={mamba2:{$MAMBA2_OPTIONS}}")
sampling() {  # limit, configuration, batches, more overrides: task=bench's sampling stage alone, fully autotuned
  echo python run.py task=bench model=var_d16 "task.configs=[$2]" autotune=full "results_dir=$OUT" \
    task.train_batch=null "task.sample_batches={256:[$3]}" "task.rerun_baseline=[]" task.allow_failed_cells=true \
    "task.cell_timeout_s=$(($1 - 15))" "${@:4}"
}

. "$(dirname "$0")/gpu_step.sh"  # step NAME SECONDS COMMAND...

asked() { [[ " $STEPS " == *" $1 "* ]]; }

[ -n "${DRY:-}" ] || mkdir -p "$OUT"
asked tests && step tests "$TESTS_S" python benchmarks/gpu_tests.py "$OUT/gpu_tests.jsonl" --autotune first -- \
  tests/ops/test_raster_attention.py::test_on_cuda_a_compiled_raster_attention_step_builds_its_causal_mask_first_and_is_one_graph \
  tests/test_compile.py::test_on_cuda_compiling_builds_the_flex_masks_first_and_the_step_is_one_graph \
  tests/test_autotune.py::test_on_cuda_first_leaves_no_autotune_timings_on_disk_and_full_keeps_them \
  tests/ops/test_raster_attention.py tests/test_backbone.py::test_cuda_graphs_read_weights_changed_after_capture \
  "tests/test_backbone.py::test_cuda_graph_sampling_equals_eager[attention-none]" \
  "tests/test_backbone.py::test_cuda_graph_sampling_equals_eager[mamba2-full]" \
  tests/test_backbone.py::test_cuda_graphs_under_autocast tests/test_fast_decode.py \
  tests/test_samplers.py::test_on_cuda_the_blocks_linear_weights_held_in_bf16_change_nothing_on_the_gpu_kernels \
  tests/test_fused_elementwise.py
asked decode_modes && step decode_modes "$DECODE_S" python benchmarks/decode_modes.py "$OUT/decode_modes.jsonl" \
  --modes eager compiled --batches 64 --cudnn-benchmark
if asked profile; then for b in ${PROFILE_BATCHES:-1 64}; do
  # shellcheck disable=SC2086  # (PROFILE_ARGS: words meant)
  step profile_b$b "$PROFILE_S" python benchmarks/sample_profile.py "$OUT/sample_profile.jsonl" --batch $b \
    ${PROFILE_ARGS:-}
done; fi
# shellcheck disable=SC2046  # (word splitting of sampling's command is meant: its arguments hold no spaces)
asked var_graphs && step var_graphs "$GRAPHS_S" $(sampling "$GRAPHS_S" "[attention,none]" 1,64 \
  task.cuda_graphs=true task.decode_mode=$GRAPHS_DECODE)
# shellcheck disable=SC2046
asked mvar_graphs && step mvar_graphs "$GRAPHS_S" $(sampling "$GRAPHS_S" "${MVAR[0]}" 1,64 task.cuda_graphs=true \
  task.decode_mode=$GRAPHS_DECODE "${MVAR[@]:1}")
# shellcheck disable=SC2046
asked var_fused && step var_fused "$FUSED_S" $(sampling "$FUSED_S" "[attention,none]" 1,64 task.cuda_graphs=true \
  task.decode_mode=$GRAPHS_DECODE task.fused_elementwise=true)
# shellcheck disable=SC2046
asked mvar_fused && step mvar_fused "$FUSED_S" $(sampling "$FUSED_S" "${MVAR[0]}" 1,64 task.cuda_graphs=true \
  task.decode_mode=$GRAPHS_DECODE task.fused_elementwise=true "${MVAR[@]:1}")
# shellcheck disable=SC2046
asked var_expandable && PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step var_expandable "$EXPANDABLE_S" \
  $(sampling "$EXPANDABLE_S" "[attention,none]" 64 task.cuda_graphs=false task.decode_mode=eager)
# shellcheck disable=SC2046
asked var_eager && step var_eager "$EAGER_S" $(sampling "$EAGER_S" "[attention,none]" 1,64 \
  task.cuda_graphs=false task.decode_mode=eager)
# shellcheck disable=SC2046
asked var_eager_bf16_blocks && step var_eager_bf16_blocks "$EAGER_S" $(sampling "$EAGER_S" "[attention,none]" 1,64 \
  task.cuda_graphs=false task.decode_mode=eager task.block_weights=bf16)
# shellcheck disable=SC2046
asked var_decode_by_16 && step var_decode_by_16 "$DECODE_BY_S" $(sampling "$DECODE_BY_S" "[attention,none]" 64 \
  task.cuda_graphs=false task.decode_mode=eager task.decode_batch=16)
finish_steps
