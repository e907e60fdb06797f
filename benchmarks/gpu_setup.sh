# Source this on the lent GPU machine: installs the wheels carried in .whl/ (or WHEELS=.whl_fp8: the pure-Python ones
# and torchao, for FP8 training; benchmarks/gpu_prep.sh makes both) without an index, and puts the travelled tree on
# PYTHONPATH. Usage: . benchmarks/gpu_setup.sh
# Records name the commit: before the device call run `git rev-parse HEAD > .commit` and carry [".whl", ".commit"].
# A warm machine keeps the set it installed: a later call need not carry the 62 MB again (then nothing is installed).
# A carried set other than the installed one replaces it whole, in one pip call: pip's --target skips a top-level
# folder that exists already (hydra_plugins/, shared by two launchers), so adding wheels to an installed set would
# silently leave some out (session 20).
WHEELS=${WHEELS:-.whl} SITE=${SITE:-/tmp/site}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  installed="$SITE/.installed_$(cd "$WHEELS" && ls -- *.whl | sha256sum | cut -c1-16)"
  [ -f "$installed" ] || { rm -rf "$SITE"; python3 -m pip install -q --no-index --no-deps --no-compile \
    --target "$SITE" "$WHEELS"/*.whl 2>&1 | grep -v WARNING; touch "$installed"; }
fi
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
# records name this commit (the copy's own .git can be stale: it named the session's first commit + dirty)
[ -f .commit ] && export VARBENCH_COMMIT="$(cat .commit)+copy"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
