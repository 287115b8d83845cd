#!/usr/bin/env bash
# The prepared GPU check (issue 15): run on the lent GPU machine from the repository root, e.g.
#   run(command="bash bench/gpu_check.sh", timeout_s=540)
# Installs the package next to the machine's CUDA torch, then runs bench/gpu_check.py (~9 min;
# PARTS="loss_phase memory" bash bench/gpu_check.sh reruns only those parts).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e ".[dev]" 2>&1 | tail -n 2
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export DUALFORGE_SHARED_DATA="${DUALFORGE_SHARED_DATA:-$PWD/../shared/data}"
cd bench && timeout 540 python3 gpu_check.py --output "${OUT:-out}/gpu_check.json" \
  --parts ${PARTS:-exactness loss_phase memory main_job flat_mining}
# Opt-in and UNTESTED (written on the CPU VM, never run on a GPU): the 0.5B decoder + LoRA points
# of bench/big_model.py on CUDA, peak = torch.cuda.max_memory_allocated. BIG_MODEL=1 bash ...
if [ "${BIG_MODEL:-0}" = 1 ]; then
  timeout 240 python3 big_model.py --device cuda --precision bf16 --points plain@8 plain@64 \
    gradcache@64 gradcache+ckpt@64 gradcache+ckpt@512 --output "${OUT:-out}/big_model_gpu.json"
fi
