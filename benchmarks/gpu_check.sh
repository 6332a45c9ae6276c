#!/usr/bin/env bash
# One short check on a machine with one CUDA GPU (no network needed; < 6 minutes on an H200): see
# benchmarks/gpu_check.py for the sections and their targets.
# Usage: [OUT=dir] [ORIGINAL_ROOT=/path/to/CCA] bash benchmarks/gpu_check.sh
#   OUT            where gpu_check.json, vs_original.json and gpu_check.log go (default: benchmarks/results-gpu.json)
#   ORIGINAL_ROOT  the original release as thu-ml/CCA pins it (VAR/, LlamaGen/ inside): adds the side-by-side rows
# If pytorch-fid is missing there, carry its wheel in .whl/ (it is only needed for the evaluator comparison row).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ! python3 -c "import pytorch_fid" 2>/dev/null && ls .whl/pytorch_fid-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/gpu-check-site .whl/pytorch_fid-*.whl &&
    export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && LOG="$OUT/gpu_check.log"; fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  timeout 350 python3 benchmarks/gpu_check.py
  echo "gpu_check.py exit code $?"
} 2>&1 | tee "$LOG"
