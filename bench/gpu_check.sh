#!/usr/bin/env bash
# The prepared GPU check: CUDA tests plus timings, in well under 8 minutes on one H100/H200.
# Run from the repository root on a machine with torch, triton, einops, lightning and pytest
# (`datasets` is not needed). Results land in ${OUT:-bench/out}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || echo "note: editable install failed; relying on an existing install"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
status=0
timeout 300 python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.log" || status=1
timeout 240 python bench/gpu_bench.py --json "$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.log" || status=1
exit $status
