#!/usr/bin/env bash
# Set up, then run the CPU quickstart: a real KPOD distillation of SmolLM2-135M-Instruct on a
# GSM8K subset (worked solutions as the teacher), the Std-CoT baseline and the base model, and
# print the accuracy table. About 9-12 minutes on 2 cores; no API key, no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${KPOD_VENV:-.venv}/bin/activate"
if [ -z "${KPOD_DATA_DIR:-}" ] && [ -d ../shared/data ]; then export KPOD_DATA_DIR=../shared/data; fi
python -m kpod.quickstart "$@"
