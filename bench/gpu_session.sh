#!/usr/bin/env bash
# issue 25's GPU figures in one device call (docs/results.md, "GPU figures").
#
#   bash bench/gpu_session.sh prepare      # here: data and pydantic wheels into git-ignored .gpu_data/ and .whl/
#   then, with the device tool:  run(command="bash bench/gpu_session.sh run", carry=[".gpu_data", ".whl"], timeout_s=600)
#
# On the GPU machine (no network, no ../shared, no pydantic) it installs the carried wheels into /tmp/site,
# runs bench/gpu_pipeline.py on the SmolLM2-135M shape (2000 GSM8K questions, 500 test) and then, while
# time is left, on the LLaMA-1B shape (500 questions, 100 test), and leaves each result's JSON and log
# under $OUT. KPOD_GPU_SMOKE=1 runs the same script in the CPU smoke mode (to check the script here).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  data="${KPOD_DATA_DIR:-../shared/data}"
  rm -rf .gpu_data && mkdir -p .gpu_data
  cp -r "$data/gsm8k" "$data/tokenizers" .gpu_data/
  mkdir -p .gpu_data/splits_mcc_kd && cp -r "$data/splits_mcc_kd/GSM8K" .gpu_data/splits_mcc_kd/
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  du -sh .gpu_data .whl
  ;;
run)
  out="${OUT:-bench/out/gpu_session}"
  mkdir -p "$out"
  py="${PYTHON:-python3}"
  if ! "$py" -c "import pydantic" 2>/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" KPOD_DATA_DIR="$PWD/.gpu_data" PYTHONUNBUFFERED=1
  export KPOD_CACHE=/tmp/kpod-cache HF_HUB_OFFLINE=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
  if [ "${KPOD_GPU_SMOKE:-0}" = 1 ]; then
    "$py" bench/gpu_pipeline.py --device cpu --smoke --json "$out/smoke.json" 2>&1 | tee "$out/smoke.log"
    exit 0
  fi
  timeout 330 "$py" bench/gpu_pipeline.py --shape smollm2-135m --n 2000 --test 500 --work /tmp/gpu-work \
    --json "$out/smollm2-135m.json" 2>&1 | grep -v "it/s]" | tee "$out/smollm2-135m.log" || true
  timeout 200 "$py" bench/gpu_pipeline.py --shape llama-1b --n 500 --test 100 --work /tmp/gpu-work \
    --json "$out/llama-1b.json" 2>&1 | grep -v "it/s]" | tee "$out/llama-1b.log" || true
  ;;
*)
  echo "usage: bash bench/gpu_session.sh prepare|run" >&2
  exit 2
  ;;
esac
