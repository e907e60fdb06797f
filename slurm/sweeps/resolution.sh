#!/usr/bin/env bash
# grid=resolution: task=bench (GPU speed / memory) at 256, 512, 1024 px for every mixer + M-VAR, depth 16.
# One Slurm job array, one task per cell; complete cells are skipped, so rerunning this finishes a grid.
# Add +dry_run=true to list the cells and their status without submitting; any other override is passed on.
#   PROFILE=<name|path.yaml> bash slurm/sweeps/resolution.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python run.py grid=resolution cluster=slurm cluster.profile="${PROFILE:?set PROFILE to a varbench/configs/slurm_profiles name or a .yaml path}" "$@"
