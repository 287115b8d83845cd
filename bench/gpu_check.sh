#!/usr/bin/env bash
# The prepared GPU check (issue 15): run on the lent GPU machine from the repository root, e.g.
#   run(command="bash bench/gpu_check.sh", timeout_s=540)
# Installs the package next to the machine's CUDA torch, then runs bench/gpu_check.py (~8 min).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e ".[dev]" 2>&1 | tail -n 2
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export DUALFORGE_SHARED_DATA="${DUALFORGE_SHARED_DATA:-$PWD/../shared/data}"
cd bench && timeout 480 python3 gpu_check.py --output "${OUT:-out}/gpu_check.json"
