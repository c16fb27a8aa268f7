#!/usr/bin/env bash
# Screenshots a run's HTML report with headless Chromium, for a person to look at:
#   scripts/screenshot-report.sh RUN [OUT.png]       (OUT defaults to RUN/report.png)
# The page is 1200 px wide and 3000 px tall, as the report_render test takes it. Set
# CHROMIUM to use another browser binary (chromium, chromium-browser, google-chrome).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 RUN [OUT.png]" >&2
  exit 2
fi
run=$1
report="$run/report.html"
if [ ! -d "$run" ]; then
  echo "error: $run: no such run folder" >&2
  exit 1
fi
if [ ! -f "$report" ]; then
  echo "error: $report: no report (autoif run writes it when the run ends)" >&2
  exit 1
fi
out=${2:-$run/report.png}

browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null; then
      browser=$(command -v "$candidate")
      break
    fi
  done
fi
if [ -z "$browser" ] || [ ! -x "$(command -v "$browser" || true)" ]; then
  echo "error: chromium not found (install it, e.g. apt-get install -y chromium, or set CHROMIUM)" >&2
  exit 1
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
page="file://$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
if ! "$browser" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --window-size=1200,3000 --screenshot="$out" "$page" \
  >"$profile/log" 2>&1; then
  echo "error: $browser failed to screenshot $report (log: $(tail -n 1 "$profile/log"))" >&2
  exit 1
fi
echo "$out"
