#!/usr/bin/env bash
# The crossover atlas's cells (issue 18 item 4; varbench/analysis/crossover.py, report/crossover_atlas.*): every
# registered mixer and VAR's attention at 256, 512 and 1024 px under ONE protocol, on one H200 with nothing else on
# the host (undisturbed), one cell at a time, Triton fully autotuned (autotune=full), at depth 16 (model=var_d16):
#   training   eager step, fp32 weights, bf16 autocast, at the bench batch (32 / 8 / 2 by resolution: 32 at 1024 px
#              ran out of memory); one training batch per run (task.train_batch takes one per resolution);
#   sampling   carried state, CUDA graphs, eager decode, at batch 1 and a large batch (64 / 64 / 16): latency and
#              peak (reserved) memory;
#   state      the analytic inference-state bytes every cell records.
# The records already here cannot close the atlas: most 512 / 1024 px timings are autotune=first or from the x4
# host, the 256 px ones from other commits and eager sampling (report/crossover_atlas.md says which cells are n/c).
# Each step is one task=bench over its configurations (resolution-major: 256 px of each, then 512, then 1024), with
# task.isolate_cells=false so that the kernels a configuration autotuned serve its other resolutions and the
# configurations of its family within the process (fla 0.6's chunk kernels key their autotuning on block sizes and
# head dims, not the sequence length; mamba_ssm's keys are not checked here); Triton's compile cache on disk
# (TRITON_CACHE_DIR, gpu_setup.sh) serves later steps. A cell that hangs is stopped by the step's `timeout` (with
# isolate_cells=false the bench's own cell timeout does not apply); an out-of-memory stage is a bench_error record
# and the rest goes on; a CUDA error that poisons the context fails the rest of that step only.
#
# Plans, one device call each (limits in seconds; each plan's sum <= 540). Estimates on a cold H200 from earlier
# records (results/gpu/h200/, gaps between a cell's records): run.py start + matmul peak ~15 s; a cell's
# measurements 15-30 s (more at 1024 px); cold autotuning: attention none (flex compiles ~10 s per shape), M-VAR's
# mamba_ssm kernels ~80-100 s (session 2: 82 s at 256 px; x4: 96 s at 1024), GLA's chunk kernels ~40 s to train and
# ~135 s in its first sampling (session 2; HGRN2 after it 3 s to train, ~100 s to sample; linear attention ~10 s for
# its whole cell), and per fresh process at 512 / 1024 px over 200 s (session 4, four queues compiling at once:
# killed at its 200 s cell timeout; hence one process per family). These are guesses from other protocols (eager
# sampling, other commits): a step cut by its limit loses its last cells (1024 px of the last configurations).
#   1  baseline  VAR (attention) + Mamba-1: 15 + ~110 + ~60                         ~185 s  limit 210
#      ssd       M-VAR (mamba2 + full) + Mamba2: 15 + ~150 + ~60                    ~225 s  limit 320
#   2  gla       GLA + HGRN2 + linear attention: 15 + ~190 + ~105 (their 256 px
#                cells, cold) + 6 x ~25 (512 / 1024 px) + 3 x ~15 (linear)         ~505 s  limit 530
#                (the tightest: a cut loses linear attention's 1024 px first; its training crossover is <= 512 px (x4))
#   3  (cut: does not fit two calls) RetNet; DeltaNet + Gated DeltaNet (the delta rule; Gated DeltaNet cannot train
#      on fla's kernels on Hopper, fla #640: its training stage is a bench_error, sampling runs); mixer none with and
#      without intra full (no inter-scale mixer). DeltaNet's training crossover is already answered (x4, full).
#   retnet 170, delta 230, markov 130
# The crossover table compares within one protocol, so plans run in different calls still compare if both ran on
# the same machine kind (records' `machine`, stamped by benchmarks/import_records.py).
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_crossover.sh OUT PLAN     DRY=1 prints the commands.
# Each step's limit can be moved: BASELINE_S, SSD_S, GLA_S, RETNET_S, DELTA_S, MARKOV_S. Records go under OUT
# (bench.jsonl), each step's output to OUT/<step>.log and its status to OUT/steps.jsonl; exits with the number of
# failed steps. Then: python benchmarks/import_records.py results/gpu/h200/bench_crossover.jsonl OUT/bench.jsonl
#   --machine nvidia-h200 --beside "nothing (one bench process at a time)" [--append]; python run.py task=report.
set -u -o pipefail
OUT=${1:?records dir}
PLAN=${2:?plan: 1, 2 or 3}
FAILED=0
BENCH=(python run.py task=bench model=var_d16 autotune=full "results_dir=$OUT" "task.resolutions=[256,512,1024]"
       "task.train_batch={256:32,512:8,1024:2}" "task.sample_batches={256:[1,64],512:[1,64],1024:[1,16]}"
       task.cuda_graphs=true task.decode_mode=eager task.compile=false task.param_dtype=fp32 "task.rerun_baseline=[]"
       task.isolate_cells=false task.profile_steps=0 task.allow_failed_cells=true)

. "$(dirname "$0")/gpu_step.sh"  # step NAME SECONDS COMMAND...

bench() {  # bench STEP SECONDS CONFIGS: one task=bench over CONFIGS ([[mixer,intra],...]) at every resolution
  step "$1" "$2" "${BENCH[@]}" "task.configs=$3"
}

[ -n "${DRY:-}" ] || mkdir -p "$OUT"
case "$PLAN" in
  1) bench baseline "${BASELINE_S:-210}" "[[attention,none],[mamba,none]]"
     bench ssd "${SSD_S:-320}" "[[mamba2,full],[mamba2,none]]" ;;
  2) bench gla "${GLA_S:-530}" "[[gla,none],[hgrn2,none],[linear_attention,none]]" ;;
  3) bench retnet "${RETNET_S:-170}" "[[retnet,none]]"
     bench delta "${DELTA_S:-230}" "[[deltanet,none],[gated_deltanet,none]]"
     bench markov "${MARKOV_S:-130}" "[[none,none],[none,full]]" ;;
  *) echo "PLAN must be 1, 2 or 3, got $PLAN" >&2; exit 2 ;;
esac
finish_steps
