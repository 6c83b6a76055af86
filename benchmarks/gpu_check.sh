#!/usr/bin/env bash
# The one-call GPU check (issue 15): preflight, then 1. parity through the CLI (CPU fp32 vs GPU fp32 with
# TF32 off, bf16/fp16/tf32 and preprocess.device_decode vs fp32, rerun and batch-size byte-equality,
# determinism warnings), 2. GPU compute (engine agreement; floor, ours, pytorch-grad-cam at batch 32..256,
# fp32 and bf16, CUDA events), 3. end to end in fresh processes (4,096 x 640x480 and 96 x 12 MP, fp32 and
# bf16, 12 MP also with device_decode, against the pytorch-grad-cam script, with the issue's targets).
# Each section runs benchmarks/gpu_check.py under its own `timeout`: one that overruns is killed and the
# others still run. Limits: preflight 25 s, parity 140 s, compute 65 s, e2e 180 s or what is left of 405 s
# (the wheels' ~10 s and any overrun come out of it): 7 minutes on an H200.
#
# Writes as it goes, into $OUT (default /tmp/gpu-check):
#   gpu_check.json  {"meta", "rows"}, rewritten atomically after every row (a killed section keeps its rows)
#   gpu_check.md    a table per section under "## GPU (measured on <nvidia-smi's name>)", for RESULTS.md
#   gpu_check.log   everything printed
#
# Run from the repository root (the device tool sets OUT; carry .whl):
#   bash benchmarks/gpu_check.sh                  # on the GPU machine: one call, timeout_s 420, carry [".whl"]
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # here, on the CPU: tiny sizes, every code path, < 2 min
# PYTHON (default python3) picks the interpreter; GPU_CHECK_DATA (default /tmp/gpu-check-data) the data.
#
# Wheels expected in .whl/ (what the bare GPU image lacks; Python 3.12, manylinux x86_64; `echo /.whl/ >>
# .git/info/exclude`), installed with --no-deps into /tmp/site when the folder has any:
#   pydantic 2.14.4, pydantic-core 2.50.5, annotated-types 0.8.0, typing-inspection 0.4.5  (the config)
#   ttach 0.0.3, grad-cam 1.5.7 (pytorch-grad-cam, the reference; sdist only on PyPI: build its wheel with
#   `pip wheel --no-deps grad-cam==1.5.7 -w .whl`)
# The image already has torch, torchvision, numpy, pillow, opencv-python-headless, typer, pyyaml,
# safetensors, tqdm and nvidia-ml-py (GPU utilisation; else `nvidia-smi -lms 200`). Download the others:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 ttach==0.0.3
set -uo pipefail
export PYTHONUNBUFFERED=1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
args=()
for arg in "$@"; do
  case $arg in
    --cpu-dry-run) args+=(--cpu-dry-run) ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-dry-run]" >&2; exit 2 ;;
  esac
done
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
rm -f "$out/gpu_check.json" "$out/gpu_check.md" "$out/gpu_check.log"
PY=${PYTHON:-python3}

section() {  # name, limit in seconds: the driver under timeout(1); a section that fails leaves a row saying so
  local name=$1 limit=$2 start=$SECONDS rc
  echo "== $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$PY" benchmarks/gpu_check.py --out "$out" "${args[@]}" --section "$name" --budget "$limit"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    "$PY" benchmarks/gpu_check.py --out "$out" "${args[@]}" --section failed --name "$name" --rc "$rc" --budget "$limit"
    status=1
  fi
  echo "== $name: exit $rc after $((SECONDS - start)) s"
}

main() {
  status=0
  if [ ${#args[@]} -eq 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || echo "gpu_check: installing .whl/ failed; preflight lists what is missing"
    export PYTHONPATH=/tmp/site:$repo${PYTHONPATH:+:$PYTHONPATH}
  else
    export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
  fi
  # Budget, 410 s in all (+ the wheels): each limit is the most its section may take.
  section preflight 25
  section parity 140
  section compute 65
  # the last section gets what is left of 405 s (the wheels and any overrun came out of it), so the device
  # call's 420 s never cuts the table short; the dry run on a loaded CPU keeps its full limit
  e2e=180
  if [ ${#args[@]} -eq 0 ] && [ $((405 - SECONDS)) -lt $e2e ]; then e2e=$((405 - SECONDS)); fi
  if [ "$e2e" -lt 20 ]; then e2e=20; fi
  section e2e "$e2e"
  echo "== gpu check: $SECONDS s in all; $out/gpu_check.md:"
  cat "$out/gpu_check.md"
  return $status
}

main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
