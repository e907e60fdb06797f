#!/usr/bin/env bash
# Issue 18 goal 2 (sampling), the measurements sessions 14-15 prepared, in one device call of at most 9 minutes on
# one H200 alone:
#   tests          the CUDA tests of tests/test_fast_decode.py: decode mode `graphs` gives eager's images bit for bit
#                  and captures once per shape; channels_last and compiled stay as accurate as eager under bf16
#                  autocast (gpu_test records, first-config autotuning);
#   decode_modes   VAR's VQ-VAE decode alone at batch 1 and 64, eager against graphs (benchmarks/decode_modes.py):
#                  latency, capture time, largest difference from eager;
#   profile_b1, profile_b64  where one eager VAR-d16 generation's time goes (benchmarks/sample_profile.py): host
#                  syncs by call site, host and GPU time per part, GPU busy against wall (eager b1 is 0.88x the
#                  official code's: find out why);
#   var_graphs     VAR-d16 sampling at batch 1 and 64 with CUDA graphs and the graphs decode (goals: b1 <= 40 ms,
#                  b64 <= 300 ms), no training stage;
#   mvar_graphs    the same for M-VAR-d16 (goals: b1 <= 40 ms, b64 <= 410 ms);
#   var_expandable VAR-d16 eager sampling at batch 64 with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (the
#                  records name the setting): peak memory against the official code's 12.0 GiB (12.18 allocated
#                  in session 9, 23.5 reserved by the caching allocator).
# Each step runs under its own `timeout` (a bench cell is killed by the bench 15 s before), tee'd to OUT/<step>.log,
# its status a JSON line of OUT/steps.jsonl (benchmarks/gpu_step.sh); the script goes on after a failed step and
# exits with the number of failed steps. Measurement records (JSON lines) go under OUT.
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_check_s16.sh OUT     DRY=1 prints the commands.
# Limits (seconds, 540 in all) can be moved: TESTS_S=80 DECODE_S=80 PROFILE_S=60 GRAPHS_S=90 EXPANDABLE_S=80.
set -u -o pipefail
OUT=${1:?records dir}
TESTS_S=${TESTS_S:-80} DECODE_S=${DECODE_S:-80} PROFILE_S=${PROFILE_S:-60} GRAPHS_S=${GRAPHS_S:-90}
EXPANDABLE_S=${EXPANDABLE_S:-80}
FAILED=0
sampling() {  # limit, configuration, batches, more overrides: task=bench's sampling stage alone, fully autotuned
  echo python run.py task=bench model=var_d16 "task.configs=[$2]" autotune=full "results_dir=$OUT" \
    task.train_batch=null "task.sample_batches={256:[$3]}" "task.rerun_baseline=[]" task.allow_failed_cells=true \
    "task.cell_timeout_s=$(($1 - 15))" "${@:4}"
}

. "$(dirname "$0")/gpu_step.sh"  # step NAME SECONDS COMMAND...

[ -n "${DRY:-}" ] || mkdir -p "$OUT"
step tests "$TESTS_S" python benchmarks/gpu_tests.py "$OUT/gpu_tests.jsonl" --autotune first -- \
  tests/test_fast_decode.py
step decode_modes "$DECODE_S" python benchmarks/decode_modes.py "$OUT/decode_modes.jsonl" --modes eager graphs \
  --batches 1 64
for b in 1 64; do step profile_b$b "$PROFILE_S" python benchmarks/sample_profile.py "$OUT/sample_profile.jsonl" \
  --batch $b; done
# shellcheck disable=SC2046  # (word splitting of sampling's command is meant: its arguments hold no spaces)
step var_graphs "$GRAPHS_S" $(sampling "$GRAPHS_S" "[attention,none]" 1,64 task.cuda_graphs=true \
  task.decode_mode=graphs)
# shellcheck disable=SC2046
step mvar_graphs "$GRAPHS_S" $(sampling "$GRAPHS_S" "[mamba2,full]" 1,64 task.cuda_graphs=true task.decode_mode=graphs)
# shellcheck disable=SC2046
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True step var_expandable "$EXPANDABLE_S" \
  $(sampling "$EXPANDABLE_S" "[attention,none]" 64 task.cuda_graphs=false task.decode_mode=eager)
exit "$FAILED"
