#!/usr/bin/env bash
# Every GPU parity check side by side on one GPU (they are small; Triton compiles on the host's cores):
# the registry-wide check (benchmarks/gpu_parity.py: every mixer and intra variant), and the deeper per-library
# checks (gpu_parity_mamba.py: ops + Mamba mixers at 256 and 512 px; gpu_parity_fla.py: ours vs fla's layers).
# Autotuning is off (first config): numerics do not depend on it. A stuck script is stopped with SIGABRT after
# LIMIT seconds and `python -X faulthandler` prints where it was.
# Usage (after `. benchmarks/gpu_setup.sh`): bash benchmarks/gpu_parity_all.sh OUT_DIR [LIMIT]
OUT_DIR=${1:?out dir}; LIMIT=${2:-420}
mkdir -p "$OUT_DIR"
for script in gpu_parity gpu_parity_mamba gpu_parity_fla; do
  timeout -s ABRT "$LIMIT" python -X faulthandler "benchmarks/$script.py" --first-config \
    --out "$OUT_DIR/$script.jsonl" > "$OUT_DIR/$script.log" 2>&1 &
done
wait
tail -n 40 "$OUT_DIR"/*.log
