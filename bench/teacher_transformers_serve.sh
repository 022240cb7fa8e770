#!/usr/bin/env bash
# End to end with a real teacher model: `transformers serve` serves SmolLM2-135M-Instruct on
# 127.0.0.1 as an OpenAI-compatible endpoint, and `kpod generate` asks it for rationales of 10
# GSM8K training questions. Installs transformers[serving] (FastAPI, Uvicorn) if missing.
#   KPOD_DATA_DIR=../shared/data bash bench/teacher_transformers_serve.sh [out dir]
set -euo pipefail
out=${1:-bench/out/teacher_serve}
port=${KPOD_SERVE_PORT:-8123}
python -c "import fastapi, uvicorn" 2>/dev/null || pip install -q "transformers[serving]"
folder=$(python -c "from kpod.models import smollm2_folder; print(smollm2_folder())")
transformers serve --host 127.0.0.1 --port "$port" "$folder" > "$out.server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 1
done
OPENAI_API_KEY=local-server OPENAI_BASE_URL="http://127.0.0.1:$port/v1" \
  kpod generate --dataset gsm8k --output-dir "$out" --quiet \
  --set teacher.kind=openai --set "teacher.model=$folder" --set teacher.max_tokens=160 \
  --set teacher.concurrency=2 --set teacher.timeout=300 --set data.max_train_questions=10
python - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/rationales/train.jsonl")]
assert len(rows) == 10, len(rows)
print(f"{len(rows)} rationales from SmolLM2 via transformers serve; {sum(r['correct'] for r in rows)} correct; "
      f"mean latency {sum(r['latency_s'] for r in rows) / len(rows):.1f} s")
print("first:", rows[0]["rationale"][:300].replace("\n", " | "))
PY
