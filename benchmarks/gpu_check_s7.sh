#!/usr/bin/env bash
# Session 7's GPU check of issue 18 (items 1-2) in one device call of at most 9 minutes on one H200:
#   tests  the GPU-only tests of the custom ops, the preallocated KV cache's peak memory, shared AdaLN's CUDA graphs (mamba_ssm's SSD scan, fla's kernels: equal to the library in values
#          and gradients, opcheck, fullgraph compile), AiM's CUDA tests, and tests/test_compile.py (reference models on
#          CPU tensors; flex BlockMasks built before compiling; the training step on the GPU kernels is one graph), as
#          gpu_test records (first-config autotuning: correctness, not speed);
#   bench  VAR-d16 and M-VAR-d16 (fully autotuned): the compiled training step at batch 32 (images/s, MFU, top
#          operators; dynamo's graph breaks and recompiles in bench_compiled.log), sampling at batch 1 and 64 with
#          CUDA graphs (task.cuda_graphs: auto), then the same sampling eagerly; every sampling record has its peak
#          memory.
# Each step runs under its own `timeout`; its output is tee'd to OUT/<step>.log and its exit status, limit and
# duration are a JSON line in OUT/steps.jsonl. Measurement records (JSON lines) go under OUT. The script goes on
# after a failed step and exits with the number of failed steps.
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_check_s7.sh OUT     DRY=1 prints the commands.
# The steps' limits (seconds, 530 in all) can be moved: TESTS_S=250 COMPILED_S=230 EAGER_S=50.
set -u -o pipefail
OUT=${1:?records dir}
BENCH=(python run.py task=bench model=var_d16 "task.configs=[[attention,none],[mamba2,full]]" autotune=full
       task.allow_failed_cells=true "results_dir=$OUT" "task.sample_batches={256:[1,64]}" "task.rerun_baseline=[]")
TESTS=(tests/ops/test_ssd_custom_op.py tests/ops/test_fla_custom_ops.py
       tests/test_aim.py::test_cuda_graph_token_steps_equal_eager tests/test_aim_convert.py::test_golden_on_the_gpu_with_kernels
       tests/test_kv_cache.py::test_peak_memory_of_a_step_is_one_scale_not_the_cache
       tests/test_shared_aln.py::test_shared_aln_cuda_graph_sampling_equals_eager tests/test_compile.py)
FAILED=0

. "$(dirname "$0")/gpu_step.sh"  # step NAME SECONDS COMMAND...

[ -n "${DRY:-}" ] || mkdir -p "$OUT"
step tests "${TESTS_S:-250}" python benchmarks/gpu_tests.py "$OUT/gpu_tests.jsonl" --autotune first -- "${TESTS[@]}"
TORCH_LOGS=graph_breaks,recompiles step bench_compiled "${COMPILED_S:-230}" "${BENCH[@]}" task.compile=true
step bench_eager_sampling "${EAGER_S:-50}" "${BENCH[@]}" task.train_batch=null task.cuda_graphs=false
finish_steps
