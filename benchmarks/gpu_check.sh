#!/usr/bin/env bash
# One prepared GPU check: correctness (fp32 vs bf16/fp16, CPU vs GPU, vs the reference) and timing
# (baseline, floor, ours at batch 16 and 64, fp32 and bf16), in a single call of at most ~8 minutes.
# Run from the repo root on the lent machine; Python packages it lacks travel as wheels in .whl/.
set -uo pipefail
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
nproc
echo "== correctness"
timeout 150 python3 benchmarks/gpu_correctness.py 2>&1 | tee "$out/correctness.txt"
echo "== timing"
timeout 420 python3 benchmarks/throughput.py --device cuda --images "${IMAGES:-1024}" --batch-sizes 16,64 \
  --precisions fp32,bf16 --repeats 1 --data-dir /tmp/bench-data --json "$out/timing.json" 2>&1 | tee "$out/timing.txt"
