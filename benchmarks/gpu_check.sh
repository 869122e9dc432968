#!/usr/bin/env bash
# One-GPU check of the large model (see benchmarks/gpu_check.py); stops after 8 minutes whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 python benchmarks/gpu_check.py "$@"
