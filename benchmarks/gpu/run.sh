#!/usr/bin/env bash
# The issue-13 GPU benchmark on one GPU, from source (no pip install, no network):
#   benchmarks/gpu/run.sh OUTDIR [--tiny] [run.py options]
# Writes OUTDIR/gpu_results.md, gpu_results.json and gpu_logs.txt; copy the .md to
# benchmarks/results/gpu_<device>_<date>.md. --tiny: the tiny preset and shapes, the CPU check
# (about 2 minutes on a 2-core machine). See benchmarks/gpu/run.py for the stages and budget.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: benchmarks/gpu/run.sh OUTDIR [--tiny] [--budget-s S] [--only STAGES]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -z "${GPU_BENCH_COMMIT:-}" ] && git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
  export GPU_BENCH_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD)"
fi
exec "$PY" "$ROOT/benchmarks/gpu/run.py" "$@"
