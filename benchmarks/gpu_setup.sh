# Source this on the lent GPU machine: installs the wheels carried in .whl/ (or WHEELS=.whl_fp8: the pure-Python ones
# and torchao, for FP8 training; benchmarks/gpu_prep.sh makes both) without an index, and puts the travelled tree on
# PYTHONPATH. Usage: . benchmarks/gpu_setup.sh
# Records name the commit: before the device call run `git rev-parse HEAD > .commit` and carry [".whl", ".commit"].
# a warm machine already holds a set it installed (a later call need not carry the 62 MB again)
WHEELS=${WHEELS:-.whl}
[ -f "/tmp/site/.installed_$WHEELS" ] || { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  "$WHEELS"/*.whl 2>&1 | grep -v WARNING; touch "/tmp/site/.installed_$WHEELS"; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# records name this commit (the copy's own .git can be stale: it named the session's first commit + dirty)
[ -f .commit ] && export VARBENCH_COMMIT="$(cat .commit)+copy"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
