#!/usr/bin/env bash
# One-GPU check of the large model (see benchmarks/gpu_check.py): predict_video fp32 / bf16 at K = 1 and 4, the
# bf16-mixed training step without and with activation checkpointing (seconds, peak GiB). Stops after 8 minutes
# whatever happens; the script itself skips a section that would start after 450 s (--budget-s), so the table
# comes out.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 python benchmarks/gpu_check.py "$@"
