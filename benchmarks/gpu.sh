#!/usr/bin/env bash
# The checks and benchmarks for a lent GPU machine, each set in one command of under 10 minutes.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # here, once: the wheels the machine lacks, into .whl/
#   device run, carry [".whl"]:  bash benchmarks/gpu.sh            # full: about 8 minutes at most
#   device run, carry [".whl"]:  QUICK=1 bash benchmarks/gpu.sh    # quick: about 3.5 minutes at most
#   device run, carry [".whl"]:  PARTS="train recon" TRAIN_SECONDS=120 bash benchmarks/gpu.sh
#                                # #3: TRAIN_SECONDS + 9.5 minutes at most (the steps' limits)
#
# PARTS (default "losses") picks what runs, in this order (train first: its checkpoint matters most):
#   train   `medmtl fit -c configs/recon_seg_mni.yaml -c configs/recon_seg_mni_gpu.yaml` with TimeBudget's
#           TRAIN_SECONDS (default 300), then `medmtl checkpoint slim` of its last checkpoint into
#           $OUT/model.ckpt (in 15 MiB parts when larger) and the run's logs, CSV, config and panels into
#           $OUT/train_run.tar.gz; TRAIN_CONFIG layers one more config (e.g. configs/recon_seg_mni_gpu_cg.yaml,
#           stage 4 of the shipped model, which starts from models/recon_seg_mni/refine_stage.ckpt: the other
#           tracked models/ files must be untracked for the call to fit the 64 MiB limit; or
#           configs/recon_seg_mni_gpu_refined.yaml, the next stage, from models/recon_seg_mni/model.ckpt),
#           TRAIN_ARGS adds `medmtl fit` arguments.  TRAIN_SECONDS + 90 s
#   recon   benchmarks/recon_seg_step.py at fastMRI knee size (15 coils, 640 x 368, 12 cascades, B = 1):
#           medmtl joint and joint_cg (the shipped kind) against MONAI's VarNet (RECON_MODELS picks), bf16
#           autocast then fp32, eager and replayed from a CUDA graph, with each eager step's GPU kernel
#           time (torch.profiler; RECON_PROFILE=0 leaves it out; RECON_PRECISIONS picks);  240 s each
#   graph   `MultitaskModule(cuda_graph=True)` on the GPU: tests/lightning/test_cuda_graph.py (graphed
#           against eager gradients, a bf16 Lightning fit), then GRAPH_STEPS (200) steps of
#           `medmtl fit` of the GPU config with `--model.cuda_graph true` in bf16; its step_times.json
#           and metrics.json come back;                                                     120 s + 150 s
#   losses  the Triton loss kernels, steps 2-6 below.
#
# Loss steps (each with its own time limit, so a slow step cannot starve the next; full / QUICK=1):
#   1. install the carried wheels from .whl/ into /tmp/site (the machine has no registry);   30 s / 30 s
#   2. the CUDA tests: Triton against PyTorch (and float64) at real sizes, opcheck, compile;  120 s / 120 s
#   3. the rest of tests/losses (PyTorch path, references) under this machine's torch,         120 s / skipped
#      only when SKIP_CPU_TESTS=0 (the CPU suite already runs them in CI);
#   4. benchmarks/losses.py tables: full: SSIM 2D, SSIM 3D, Dice + CE; QUICK=1: SSIM 2D, Dice + CE;
#      median of 50 runs each (slow reference rows: fewer, marked);                          150 s / 60 s
#   5. full only, unless PROFILE=0: --profile, where the eager calls' host time goes;        40 s
#   6. full only, unless TUNE=0: --tune, each kernel's GPU time over a sweep of launch shapes; 150 s
# Logs go to $OUT (the device tool's output folder), else runs/gpu/; steps.txt has each step's exit code
# (124: it hit its time limit).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
QUICK=${QUICK:-0}
SKIP_CPU_TESTS=${SKIP_CPU_TESTS:-1}
mkdir -p "$OUT"
: >"$OUT/steps.txt"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
PY=${PY:-python3}
PARTS=${PARTS:-losses}

# step LOG SECONDS COMMAND...: run COMMAND under a time limit, its output to the screen and $OUT/LOG.
step() {
  local log=$1 limit=$2
  shift 2
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT/$log"
  echo "$log: exit ${PIPESTATUS[0]}" | tee -a "$OUT/steps.txt"
}

if compgen -G ".whl/*.whl" >/dev/null; then
  timeout 30 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site || echo "wheel install failed: reference rows will be n/a"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
  $PY -c "import monai, pytorch_msssim; print('monai', monai.__version__)" || echo "monai / pytorch-msssim missing: run fetch_gpu_wheels.sh and carry .whl"
} 2>&1 | tee "$OUT/env.txt"

if [[ " $PARTS " == *" train "* ]]; then
  TRAIN_SECONDS=${TRAIN_SECONDS:-300}
  # DataLoader workers hand batches over in /dev/shm; a container's default 64 MiB is too small for 14 workers.
  shm_kib=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1 || echo 0)
  if [ "${shm_kib:-0}" -lt 4000000 ]; then mount -o remount,size=16G /dev/shm 2>/dev/null || true; fi
  df -h /dev/shm | tee -a "$OUT/env.txt"
  rm -rf runs/recon_seg_mni_gpu
  step fit.log $((TRAIN_SECONDS + 90)) $PY -m medmtl.cli fit -c configs/recon_seg_mni.yaml -c configs/recon_seg_mni_gpu.yaml \
    ${TRAIN_CONFIG:+-c "$TRAIN_CONFIG"} \
    --trainer.enable_progress_bar false --trainer.callbacks.init_args.seconds "$TRAIN_SECONDS" ${TRAIN_ARGS:-}
  step slim.log 30 $PY -m medmtl.cli checkpoint slim --checkpoint runs/recon_seg_mni_gpu/checkpoints/last.ckpt \
    --output "$OUT/model.ckpt"
  # The device tool returns files of at most 16 MiB: a larger checkpoint comes back in parts (join them with
  # `cat model.ckpt.part* > model.ckpt`).
  if [ -f "$OUT/model.ckpt" ] && [ "$(stat -c %s "$OUT/model.ckpt")" -gt 15728640 ]; then
    split -b 15M "$OUT/model.ckpt" "$OUT/model.ckpt.part" && rm "$OUT/model.ckpt"
  fi
  tar -czf "$OUT/train_run.tar.gz" --exclude='*.ckpt' runs/recon_seg_mni_gpu "$OUT/fit.log" 2>/dev/null
fi
if [[ " $PARTS " == *" recon "* ]]; then
  KNEE=(--coils 15 --size 640 368 --cascades 12 --rounds 1 --warmup 3 --steps 10 --cuda-graph
    --models ${RECON_MODELS:-joint joint_cg monai})
  [ "${RECON_PROFILE:-1}" = 1 ] && KNEE+=(--profile)
  for precision in ${RECON_PRECISIONS:-bf16 fp32}; do
    step "recon_$precision.md" 240 $PY benchmarks/recon_seg_step.py --device cuda --precision "$precision" "${KNEE[@]}"
  done
fi
if [[ " $PARTS " == *" graph "* ]]; then
  step graph_tests.log 120 $PY -m pytest -q -rfEs -p no:cacheprovider tests/lightning/test_cuda_graph.py
  rm -rf runs/recon_seg_mni_gpu
  step graph_fit.log 150 $PY -m medmtl.cli fit -c configs/recon_seg_mni.yaml -c configs/recon_seg_mni_gpu.yaml \
    --trainer.enable_progress_bar false --model.cuda_graph true --trainer.precision bf16-mixed \
    --trainer.max_steps "${GRAPH_STEPS:-200}" --trainer.callbacks.init_args.seconds 1e9 --trainer.max_time null \
    --trainer.limit_val_batches 4 --data.num_workers 14
  cp runs/recon_seg_mni_gpu/step_times.json runs/recon_seg_mni_gpu/metrics.json "$OUT/" 2>/dev/null
fi

if [[ " $PARTS " != *" losses "* ]]; then exit 0; fi

# --noconftest: the repo-wide tests/conftest.py builds k-space fixtures these tests do not use.
PYTEST=($PY -m pytest -q -rfE --noconftest -p no:cacheprovider -m "not slow")
step tests_cuda.log 120 "${PYTEST[@]}" tests/losses/test_loss_cuda.py
if [ "$SKIP_CPU_TESTS" != 1 ]; then
  PARALLEL=()
  $PY -c "import xdist" 2>/dev/null && PARALLEL=(-n 8)
  step tests_cpu.log 120 "${PYTEST[@]}" "${PARALLEL[@]}" tests/losses --ignore=tests/losses/test_loss_cuda.py
fi
if [ "$QUICK" = 1 ]; then
  step bench.md 60 $PY benchmarks/losses.py --cases ssim2d,dicece
else
  step bench.md 150 $PY benchmarks/losses.py
  if [ "${PROFILE:-1}" = 1 ]; then step profile.txt 40 $PY benchmarks/losses.py --cases "" --profile; fi
  if [ "${TUNE:-1}" = 1 ]; then step tune.md 150 $PY benchmarks/losses.py --cases "" --tune; fi
fi
