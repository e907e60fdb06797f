#!/usr/bin/env bash
# grid=mixers_d16: every registered mixer at depth 16 (the attention cell is VAR-d16) + M-VAR-d16, ImageNet 256 px.
# One Slurm job array, one task per cell; complete cells are skipped, so rerunning this finishes a grid.
# Add +dry_run=true to list the cells and their status without submitting; any other override is passed on.
#   PROFILE=<name|path.yaml> DATA_ROOT=/data/imagenet VAE_CKPT=/ckpt/vae_ch160v4096z32.pth bash slurm/sweeps/mixers_d16.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python run.py grid=mixers_d16 cluster=slurm cluster.profile="${PROFILE:?set PROFILE to a varbench/configs/slurm_profiles name or a .yaml path}" \
    data.root="${DATA_ROOT:?set DATA_ROOT to the ImageNet folder (train/ and val/)}" \
    tokenizer.checkpoint="${VAE_CKPT:?set VAE_CKPT to the VAR tokenizer vae_ch160v4096z32.pth}" "$@"
