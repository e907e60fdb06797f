#!/usr/bin/env bash
# Independent GPU work side by side on one host: queue i (a shell command line; `;` separates its commands) runs on
# GPU i, every queue under the same deadline, each with its own log. Keep to one bench cell per GPU at a time: small-
# batch latency is bound by the host's launch speed (benchmarks/README.md, load on the host).
# Usage (after `. benchmarks/gpu_setup.sh`): DEADLINE_S=520 bash benchmarks/gpu_queues.sh LOGS "queue 0" ["queue 1" ...]
LOGS=${1:?logs dir}; shift; mkdir -p "$LOGS"
i=0
for queue in "$@"; do
  CUDA_VISIBLE_DEVICES=$i timeout "${DEADLINE_S:-520}" bash -c "$queue" > "$LOGS/queue$i.log" 2>&1 &
  i=$((i + 1))
done
wait
grep -h "\[bench\]\|\[grid\] done\|\[scaling\]\|FAILED" "$LOGS"/queue*.log | cut -c1-200
