#!/usr/bin/env bash
# The loss checks and benchmarks for a lent GPU machine, in one command of under 10 minutes.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # here, once: MONAI + pytorch-msssim into .whl/
#   device run, carry [".whl"]:  bash benchmarks/gpu.sh
#
# Steps (each with its own time limit, so a slow step cannot starve the next):
#   1. install the carried wheels from .whl/ into /tmp/site (the machine has no registry);
#   2. the CUDA tests: Triton against PyTorch at real sizes, opcheck, torch.compile;
#   3. the rest of tests/losses (PyTorch path, references) under this machine's torch (SKIP_CPU_TESTS=1 skips);
#   4. benchmarks/losses.py --tune: the table and the Triton launch-shape sweep.
# Logs go to $OUT (the device tool's output folder), else runs/gpu/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
PY=python3

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
  $PY -c "import monai, pytorch_msssim; print('monai', monai.__version__)" || echo "monai / pytorch-msssim missing: run fetch_gpu_wheels.sh and carry .whl"
} 2>&1 | tee "$OUT/env.txt"

# --noconftest: the repo-wide tests/conftest.py builds k-space fixtures these tests do not use.
PYTEST=($PY -m pytest -q --noconftest -p no:cacheprovider -m "not slow")
timeout 240 "${PYTEST[@]}" tests/losses/test_loss_cuda.py 2>&1 | tee "$OUT/tests_cuda.log"
PARALLEL=()
$PY -c "import xdist" 2>/dev/null && PARALLEL=(-n 8)
timeout 120 "${PYTEST[@]}" "${PARALLEL[@]}" tests/losses --ignore=tests/losses/test_loss_cuda.py 2>&1 \
  | tee "$OUT/tests_cpu.log"
timeout 210 $PY benchmarks/losses.py --tune 2>&1 | tee "$OUT/bench.md"
