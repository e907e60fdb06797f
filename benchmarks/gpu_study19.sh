#!/usr/bin/env bash
# Issue 19's procedural study on one H200, in foreground device calls that each return what they made: every call
# runs until its deadline, then brings back the records and logs through $OUT, so a machine given back between calls
# loses only the cells in flight (a cell cut at the deadline resumes from its last checkpoint if the next call finds
# the machine warm). A later call on the same warm machine resumes: each stage is skipped once done, a grid skips its
# finished cells. Stages, in order:
#   tokenizers  the frozen tokenizers `proc` (tokenizer_seed 0) and `proc_b` (seed 1), committed under
#             results/gpu/h200/study19/tokenizers (checked against its SHA256SUMS): taken from runs/study19 (a warm
#             machine), /tmp/stage/study19 (a staging call) or the tree, else trained side by side when
#             TRAIN_TOKENIZERS names it (and then copied to $OUT: commit them, they define the study), else the
#             call stops: a study tokenizer is never retrained silently; then their token caches;
#   lr        grid=study_lr (cells with a done marker in results/gpu/h200/study19/lr/cells are skipped; the whole
#             grid is once the imported records locate every arm's optimum); then `best_lr --located` over the
#             imported records and this machine's picks each arm's rate (LR=... on the command line instead sets
#             them); an arm still at the sweep's edge stops the call before main;
#   main      grid=study_main at those rates, 12 cells at a time in seed-major order (every arm's seed 0 first), with
#             Inception FID-10k (weights staged in /tmp/stage/inception), and beside it grid=study_tokenizer on
#             `proc_b` (6 cells at a time: the two share the GPU once main's last wave is small);
#   flops     grid=study_flops (matched training FLOPs) on `proc` at the same rates, into its own records folder;
#             its seed-0 cells also evaluate at guidance 1.0 and 3.0 (issue 19 item 2: task.guidance_scales);
#   cifar     grid=study_cifar on CIFAR-10 with its committed tokenizer `cifar` (staged with the archive of
#             ../shared/data as /tmp/stage/study19/cifar/tokenizer/tokenizer.safetensors and
#             /tmp/stage/cifar10_jpg.tar.gz; without them the call ends here), at the procedural rates;
#   raster    the raster arms (AiM's backbone with Mamba2 and with attention) on their single-scale tokenizer
#             `proc_single` (committed, or trained here with TRAIN_TOKENIZERS=proc_single): grid=study_raster_lr into
#             lr_raster (skipped once the imported records locate both arms), then grid=study_raster at the located
#             rates into main_proc, beside study_main's cells (FID-10k).
# 12 cells at a time: 15 ran out of the H200's memory (M-VAR, session 10). The cells share the GPU through MPS when
# the machine has it (several processes' kernels then run at once instead of taking turns); the driver log says
# whether it ran, and samples the GPU's utilisation every 30 s.
# Usage (after `. benchmarks/gpu_setup.sh`): [TRAIN_TOKENIZERS="NAME ..."] [LR=...] [STAGES=raster] \
#   bash benchmarks/gpu_study19.sh SECS
# STAGES=raster runs the raster stage alone (once the earlier stages' grids are complete, as after session 17): then
# only `proc_single` and the Inception weights need staging.
# Staging (see benchmarks/gpu_study_plan.md): a machine is warm for 30 s after a call; on a fresh machine the
# tokenizers and the Inception weights travel in staging calls made back to back right before the work call.
set -u -o pipefail
END=$((SECONDS + ${1:?seconds}))
S=runs/study19; R=runs/s12/results; L=runs/s12/logs; mkdir -p $S $R $L
PROC="data.size_per_class=640"
# CIFAR-10's JPEG re-encodes (../shared/data/README.md), test/ as val/, at the study's 64 px without a random crop
CIFAR="data=folder data.root=$S/cifar10_jpg data.num_classes=10 data.crop=center"
TOKENIZERS=results/gpu/h200/study19/tokenizers; SUMS=$TOKENIZERS/SHA256SUMS  # session 12's, committed
INC=${INC:-/tmp/stage/inception/inception.part1of2.safetensors}  # the staged Inception weights (shard 1 of 2)
ARCHIVE=${ARCHIVE:-/tmp/stage/cifar10_jpg.tar.gz}  # the staged ../shared/data/cifar10_jpg.tar.gz
FID=(+task.overrides.evaluate.inception_fid=true +task.overrides.evaluate.inception_weights=$INC)
log() { echo "$(date +%T) $*" | tee -a $L/driver.log; }
left() { echo $((END - SECONDS)); }
frozen() { echo "tokenizer.checkpoint=$S/$1/tokenizer/tokenizer.safetensors train.token_cache=$S/$1/token_cache/train $PROC"; }
schedule() { [ $1 = proc_single ] && echo tokenizer=tiny_single_study || echo tokenizer=tiny_study; }  # its config

train_tokenizer() {  # name, tokenizer seed, data overrides: the study tokenizers' recipe (2,000 steps at 64 px)
  python run.py task=train_tokenizer run_dir=$S/$1 task.steps=2000 task.batch_size=32 task.amp=bf16 \
    task.progress=false tokenizer_seed=$2 $(schedule $1) ${3:-$PROC} \
    results_dir=$R/tok_$1 autotune=first >> $L/tok_$1.log 2>&1 && touch $S/$1/trained_here
}
copy_committed() {  # name: the committed tokenizer, from a staging call or a tree that travelled with results/ in it,
  # checked against the committed sums (another file under their name stops the call); status 2 when neither has it
  local n=$1 staged=/tmp/stage/study19/$1/tokenizer/tokenizer.safetensors
  [ -f $staged ] || staged=$TOKENIZERS/$n.safetensors
  [ -f $staged ] || return 2
  mkdir -p $S/$n/tokenizer && cp $staged $S/$n/tokenizer/tokenizer.safetensors
  (cd $S/$n/tokenizer && grep " $n.safetensors\$" "$OLDPWD/$SUMS" | sed "s/$n.safetensors/tokenizer.safetensors/" \
    | sha256sum -c --quiet) || { log "tokenizer $n is not the committed one ($SUMS)"; rm -r $S/$n; return 1; }
}
tokenize() {  # name, data overrides: the token cache of a frozen tokenizer, once
  [ -f $S/$1/tokenized ] || { python run.py task=tokenize run_dir=$S/$1 \
    tokenizer.checkpoint=$S/$1/tokenizer/tokenizer.safetensors $(schedule $1) $2 \
    results_dir=$R/tok_$1 autotune=first && touch $S/$1/tokenized; }
}
stage_tokenizer() {  # name, tokenizer seed: the committed tokenizer, else one trained here if TRAIN_TOKENIZERS names it
  # (by name: a study tokenizer that failed to stage is never replaced by a new one, whose cells would all run again)
  [ -f $S/$1/tokenizer/tokenizer.safetensors ] && return 0
  copy_committed $1; local rc=$?
  if [ $rc = 2 ] && [[ " ${TRAIN_TOKENIZERS:-} " == *" $1 "* ]]; then
    log "training tokenizer $1"; train_tokenizer $1 $2; return
  fi
  [ $rc = 2 ] && log "tokenizer $1 is neither here nor staged, and TRAIN_TOKENIZERS does not name it"
  return $rc
}
stage_tokenizers() {  # (side by side when both train)
  local a b; stage_tokenizer proc 0 & a=$!; stage_tokenizer proc_b 1 & b=$!
  wait $a && wait $b && tokenize proc "$PROC" && tokenize proc_b "$PROC"
}
stage_cifar() {  # the committed CIFAR-10 tokenizer, the extracted archive (test/ as val/) and the token cache
  [ -f $S/cifar/tokenizer/tokenizer.safetensors ] || copy_committed cifar || return 1
  [ -d $S/cifar10_jpg ] || { [ -f $ARCHIVE ] && tar xzf $ARCHIVE -C $S && mv $S/cifar10_jpg/test $S/cifar10_jpg/val; } \
    || return 1
  tokenize cifar "$CIFAR"
}
start_mps() {  # CUDA MPS, when the machine has it and a CUDA context opens through it; else the cells take turns
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  local try
  for try in 1 2; do  # twice: a daemon left by an earlier call cut at its deadline refused new clients (session 15)
    command -v nvidia-cuda-mps-control > /dev/null || break
    nvidia-cuda-mps-control -d 2>/dev/null  # a warm machine's daemon is still running: then this fails, harmlessly
    if timeout 60 python -c "import torch; assert torch.ones(2, device='cuda').sum().item() == 2"; then
      log "mps: on"; return
    fi
    echo quit | nvidia-cuda-mps-control; sleep 3
  done
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; log "mps: off (not available here)"
}
grid_until_deadline() {  # name, overrides...: one grid, stopped 25 s before the deadline; done marker if it ended
  [ -f $R/$1.done ] && return 0
  log "$1 starts, $(left) s left"
  setsid python run.py "${@:2}" autotune=first >> $L/$1.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && [ "$(left)" -gt 25 ]; do sleep 3; done
  if kill -0 $pid 2>/dev/null; then
    log "$1 cut at the deadline"; kill -TERM -- -$pid; sleep 5; kill -KILL -- -$pid 2>/dev/null; wait $pid; return 1
  fi
  wait $pid; local rc=$? dir; log "$1 ended rc=$rc"
  dir=$(printf '%s\n' "$@" | sed -n 's/^results_dir=//p')
  # failed cells are recorded, and rerunning retries only those; a grid that failed before any cell (session 20: no
  # joblib launcher on the machine) is not done: the next call runs it again
  if [ $rc = 0 ] || compgen -G "$dir/cells/*/*.json" > /dev/null; then touch $R/$1.done
  else log "$1 recorded no cell: not marked done"; return 1; fi
}
run_study() {
  stage_tokenizer proc_single 0 & RASTER_TOKENIZER=$!  # (trained beside the earlier stages when it must be)
  # the done markers of earlier sessions' cells (imported with their records): those cells are not run again
  for d in results/gpu/h200/study19/*/cells; do
    g=$(basename "$(dirname $d)"); mkdir -p $R/$g && cp -rn $d $R/$g/
  done
  if [ "${STAGES:-all}" = raster ]; then log "stages: raster alone"; else run_scale_wise || return 1; fi
  run_raster
}
run_scale_wise() {  # the stages before raster: tokenizers, lr, main beside tokenizer_b, flops, cifar
  stage_tokenizers || { log "tokenize failed"; return 1; }
  # the rates come from the whole sweep: the records imported into the tree (gpu_tree.sh keeps their val_nll lines)
  # read together with the cells this machine ran; an arm whose best rate is still at an edge stops the study here.
  # Once the imported records alone locate every arm's optimum, the sweep is not started again (its only cells left
  # are the ones refused for good, Gated DeltaNet's on fla #640: a grid start-up per machine for nothing)
  if [ -z "${LR:-}" ] && LR=$(swept_out lr "$(study_arms)"); then
    log "lr: every arm's optimum is located in the imported records; the sweep is not run again"
  else
    grid_until_deadline lr grid=study_lr cluster=local_parallel cluster.jobs=12 $(frozen proc) results_dir=$R/lr \
      || return 1
  fi
  if [ -z "${LR:-}" ]; then
    LR=$(python -m varbench.analysis.best_lr results/gpu/h200/study19/lr $R/lr --located --arms "$(study_arms)" \
      2>> $L/driver.log) \
      || { log "main not started: the lr sweep misses an arm or has one at its edge (above), or could not be read"
           return 1; }
  fi
  [ -f $INC ] || { log "main not started: no Inception weights staged at $INC"; return 1; }
  log "learning rates: $LR"
  local M=(grid=study_main cluster=local_parallel cluster.jobs=12 $(frozen proc) $LR "${FID[@]}" results_dir=$R/main_proc)
  local main tokenizer_b ok  # (two grids into one records folder: each cell holds its own marker's lock)
  grid_until_deadline main "${M[@]}" & main=$!
  grid_until_deadline tokenizer_b grid=study_tokenizer cluster=local_parallel cluster.jobs=6 $(frozen proc_b) $LR \
    "${FID[@]}" results_dir=$R/main_proc & tokenizer_b=$!
  wait $main; ok=$?; wait $tokenizer_b; [ "$ok$?" = 00 ] || return 1
  grid_until_deadline flops grid=study_flops cluster=local_parallel cluster.jobs=12 $(frozen proc) $LR "${FID[@]}" \
    results_dir=$R/flops || return 1
  stage_cifar || { log "cifar not started: its tokenizer or archive is not staged (or tokenize failed)"; return 1; }
  grid_until_deadline cifar grid=study_cifar cluster=local_parallel cluster.jobs=12 $CIFAR \
    tokenizer.checkpoint=$S/cifar/tokenizer/tokenizer.safetensors train.token_cache=$S/cifar/token_cache/train $LR \
    "${FID[@]}" results_dir=$R/main_cifar
}
run_raster() {  # the raster arms: their tokenizer `proc_single`, their own lr sweep, then study_main's records folder
  wait $RASTER_TOKENIZER && tokenize proc_single "$PROC" \
    || { log "raster not started: no tokenizer proc_single (or tokenize failed)"; return 1; }
  local rates imported=results/gpu/h200/study19/lr_raster
  if ! rates=$(swept_out lr_raster 2); then
    grid_until_deadline raster_lr grid=study_raster_lr cluster=local_parallel cluster.jobs=12 $(frozen proc_single) \
      results_dir=$R/lr_raster || return 1
    rates=$(python -m varbench.analysis.best_lr $(ls -d $imported 2> /dev/null) $R/lr_raster --located --arms 2 \
      2>> $L/driver.log) \
      || { log "raster not started: the raster lr sweep misses an arm or has one at its edge (above)"; return 1; }
  fi
  log "raster learning rates: $rates"
  [ -f $INC ] || { log "raster not started: no Inception weights staged at $INC"; return 1; }
  grid_until_deadline raster grid=study_raster cluster=local_parallel cluster.jobs=12 $(frozen proc_single) $rates \
    "${FID[@]}" results_dir=$R/main_proc
}
swept_out() {  # sweep, arms: each arm's located rate from the imported records alone, when they cover all `arms`
  python -m varbench.analysis.best_lr results/gpu/h200/study19/$1 --located --arms "$2" 2> /dev/null
}
study_arms() {  # the scale-wise arms of the study (their rates' keys)
  python -c "import varbench.grid; from varbench import registry
print(len(registry.compose(['grid=study_base']).study.lr))"
}
collect() {
  for d in $R/*/; do n=$(basename "$d")  # each cell's sample grid beside its records (the report's sheet)
    for f in runs/cells/$n-*/*/samples*.png; do [ -f "$f" ] || continue; mkdir -p "$d/$(dirname "$f")" && cp "$f" "$d/$f"; done
  done
  # in parts of 15 MiB: a file over 16 MiB does not come back (here: `cat records.tgz.part* | tar xz`); without the
  # feature caches (task.feature_cache: Inception features of the training images alone are 52 MB per data set;
  # remade from the data in seconds)
  tar czf - --exclude=feature_cache -C runs/s12 results | split -b 15M - "$OUT/records.tgz.part" \
    && tar czf "$OUT/logs.tar.gz" -C runs/s12 logs
  for n in proc proc_b proc_single; do  # a tokenizer trained on this machine goes back (16 MiB per file at most)
    [ -f $S/$n/trained_here ] && cp $S/$n/tokenizer/tokenizer.safetensors "$OUT/tokenizer_$n.safetensors" && rm $S/$n/trained_here
  done
  ls -la "$OUT"
}

log "start, $(left) s"
start_mps
while sleep 30 > /dev/null 2>&1; do log "gpu $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done &
U=$!  # (its sleep holds no output pipe: a caller reading ours is not kept waiting after we end)
run_study > $L/study.log 2>&1 & T=$!
while kill -0 $T 2>/dev/null && [ "$(left)" -gt 15 ]; do sleep 3; done
kill -0 $T 2>/dev/null && { log "study cut"; pkill -TERM -P $T; }
kill $U; wait; log "study ended"
# the next call starts its own daemon: one outliving its clients, killed at a deadline, can refuse the next ones
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control
collect
