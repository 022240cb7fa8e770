#!/usr/bin/env bash
# Open a run's report.html in headless Chromium (Debian's `chromium` package) and take a
# screenshot; fails if the page does not render. Usage: bash bench/report_screenshot.sh <run dir> [out.png]
set -euo pipefail
run=${1:?run folder}
out=${2:-$run/report_files/screenshot.png}
command -v chromium >/dev/null || { echo "needs Debian's chromium: apt-get install -y chromium" >&2; exit 2; }
kpod report "$run" >/dev/null
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1200,${KPOD_SCREENSHOT_HEIGHT:-2400} \
  --screenshot="$out" "file://$(realpath "$run")/report.html" 2>/dev/null
dom=$(chromium --headless --no-sandbox --disable-gpu --disable-background-networking --user-data-dir="$profile" \
  --dump-dom "file://$(realpath "$run")/report.html" 2>/dev/null)
rm -rf "$profile"
for section in Accuracy "Progressive schedule" Predictions; do
  grep -q "$section" <<<"$dom" || { echo "report lacks section: $section" >&2; exit 1; }
done
test -s "$out" && echo "rendered: $out ($(stat -c %s "$out") bytes)"
