#!/usr/bin/env bash
# One short check on a machine with one CUDA GPU (no network needed): see benchmarks/gpu_check.py.
# Usage: bash benchmarks/gpu_check.sh   (writes benchmarks/results-gpu.json; about 5-8 minutes)
# If pytorch-fid is missing there, carry its wheel in .whl/ (it is only needed for the evaluator comparison row).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ! python3 -c "import pytorch_fid" 2>/dev/null && ls .whl/pytorch_fid-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/gpu-check-site .whl/pytorch_fid-*.whl &&
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 420 python3 benchmarks/gpu_check.py
timeout 60 python3 benchmarks/gpu_graph_check.py
