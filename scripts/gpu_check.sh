#!/usr/bin/env bash
# The device checks, on a machine with a CUDA GPU (docs/performance.md, "On one GPU (H200)"):
#   1. the GPU-marked tests (CPU-vs-CUDA corruption parity, every registered method on CUDA against
#      the CPU, the paper preset's dry run on CUDA) and the CUDA-conditional ones;
#   2. test-time throughput of 4 backbones, and iteration overhead / reset / memory of 2, on the GPU; 3. the paper preset's step times on the GPU;
#   4. the default suite with CUDA present.
# Needs: the package importable (PYTHONPATH=src or installed), pytest + pytest-xdist, the
# imagecorruptions wheel (frost), and $TESTTIME_CIFAR10_JPEG (a copy with at least 4 test images per
# class; else the parity tests skip). Usage: bash scripts/gpu_check.sh [OUTDIR]   (about 3 minutes on an H200)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${1:-gpu-check}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/benchmarks:${PYTHONPATH:-}"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: error: CUDA is not available here')" || exit 2
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  echo "== 1. GPU-marked and CUDA-conditional tests"
  OMP_NUM_THREADS=1 $PY -m pytest -q -p no:cacheprovider -m gpu -n 8 tests 2>&1 | tail -15
  OMP_NUM_THREADS=1 $PY -m pytest -q -p no:cacheprovider tests/commands/test_doctor.py tests/store/test_runner.py \
    tests/bench/test_cost.py tests/train/test_reliability_config.py 2>&1 | tail -5
  echo "== 2. test-time throughput (batch 128, 32 px)"
  for a in airbench resnet8 resnet20; do $PY benchmarks/bench_throughput.py --arch $a --device cuda --reps 10 --threads 4; done
  $PY benchmarks/bench_throughput.py --arch resnet50 --device cuda --reps 5 --threads 4
  echo "== 2b. iteration overhead, reset, peak memory (targets 1-3) on the GPU"
  for a in airbench resnet50; do $PY benchmarks/bench_iteration.py --arch $a --device cuda --reps 10 --threads 4; done
  echo "== 3. the paper preset's step times (ResNet-50, at the preset's batch sizes)"
  $PY benchmarks/bench_paper.py --device cuda --at-preset-batch --reps 5 --threads 4
  echo "== 4. the default suite with CUDA present"
  OMP_NUM_THREADS=1 $PY -m pytest -q -p no:cacheprovider -n 14 tests 2>&1 | tail -5
  date -u
} 2>&1 | tee "$OUTDIR/gpu-check.log"
