#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff) and run the test suite. Extra arguments go to pytest, e.g. -m slow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${KPOD_VENV:-.venv}/bin/activate"
export KPOD_DATA_DIR=${KPOD_DATA_DIR:-../shared/data}
ruff check . && ruff format --check .
python -m pytest -q "$@"
