#!/usr/bin/env bash
# grid=intra_d16: intra none / full / local x mamba2 / attention at depth 16, ImageNet 256 px.
# One Slurm job array, one task per cell; complete cells are skipped, so rerunning this finishes a grid.
# Add +dry_run=true to list the cells and their status without submitting; any other override is passed on.
#   PROFILE=<name|path.yaml> DATA_ROOT=/data/imagenet VAE_CKPT=/ckpt/vae_ch160v4096z32.pth bash slurm/sweeps/intra_d16.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python run.py grid=intra_d16 cluster=slurm cluster.profile="${PROFILE:?set PROFILE to a varbench/configs/slurm_profiles name or a .yaml path}" \
    data.root="${DATA_ROOT:?set DATA_ROOT to the ImageNet folder (train/ and val/)}" \
    tokenizer.checkpoint="${VAE_CKPT:?set VAE_CKPT to the VAR tokenizer vae_ch160v4096z32.pth}" "$@"
