#!/usr/bin/env bash
# The short device calls around a background run (benchmarks/gpu_s9.sh) on a machine kept warm by calling again
# within its 30 s: `stage DIR` copies a carried folder to /tmp/stage (what does not fit the first call's 64 MiB),
# `wait SECONDS` follows the run until it is done or SECONDS pass, then `collect` brings back what it wrote (at most
# 8 files of 16 MiB: the records and logs as two archives, each study tokenizer as its own file).
# Usage: bash benchmarks/gpu_warm.sh stage .stage/cifar | wait 540 | collect      ($OUT set by the device tool)
set -u
V=/tmp/vb/runs/s9
case ${1:?stage|wait|collect} in
  stage) mkdir -p /tmp/stage && cp -r "${2:?dir}"/. /tmp/stage/ && ls -la /tmp/stage /tmp/stage/* | head -20 ;;
  wait)
    end=$((SECONDS + ${2:?seconds}))
    while [ ! -f $V/done ] && [ $SECONDS -lt $end ]; do sleep 10; done
    tail -n 30 $V/logs/driver.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader ;;
  collect)
    for d in $V/results/*/; do n=$(basename "$d")  # each cell's sample grid beside its records (the report's sheet)
      for f in /tmp/vb/runs/cells/$n-*/*/samples.png; do [ -f "$f" ] || continue
        g=${f#/tmp/vb/}; mkdir -p "$d/$(dirname "$g")" && cp "$f" "$d/$g"; done; done
    tar czf "$OUT/records.tar.gz" -C $V results && tar czf "$OUT/logs.tar.gz" -C $V logs
    for t in /tmp/vb/runs/study19/*/tokenizer/tokenizer.safetensors; do
      [ -f "$t" ] && cp "$t" "$OUT/tokenizer_$(basename "$(dirname "$(dirname "$t")")").safetensors"
    done
    ls -la "$OUT" ;;
esac
