#!/usr/bin/env bash
# The quick start: fetch the embedded model, build autoif, and run the whole AutoIF loop
# (configs/quickstart.toml) into runs/quickstart — IFEval before and after, SFT, DPO,
# online DPO, a merged model, summary.json and report.html. In the latest measured run
# (2026-11-26, 2 cores; docs/benchmarks.md) the loop took 5 min 53 s; the first setup
# (fetch and release build) took 8 min 34 s when it was measured (2026-11-25).
# A run that is interrupted continues where it stopped when this script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/quickstart}"

scripts/fetch-models.sh
cargo build --release
if [ -f "$out/manifest.json" ]; then
  target/release/autoif run --resume "$out"
else
  target/release/autoif run --config configs/quickstart.toml --out "$out"
fi
echo "report: $out/report.html   merged model: $out/export/merged"
echo "try it: target/release/autoif generate --model $out/export/merged --prompt 'Describe the sea in exactly two sentences.'"
