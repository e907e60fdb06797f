#!/usr/bin/env bash
# grid=mixers_tiny: every registered mixer x seeds 0,1 (+ the M-VAR cell) on the embedded data: CPU-sized cells.
# One Slurm job array, one task per cell; complete cells are skipped, so rerunning this finishes a grid.
# Add +dry_run=true to list the cells and their status without submitting; any other override is passed on.
#   PROFILE=<name|path.yaml> bash slurm/sweeps/mixers_tiny.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python run.py grid=mixers_tiny cluster=slurm cluster.profile="${PROFILE:-local}" "$@"
