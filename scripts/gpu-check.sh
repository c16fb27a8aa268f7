#!/usr/bin/env bash
# The GPU check of issue 9, for a machine with an NVIDIA GPU, no Rust and no network (the
# device machines this project is lent: driver 580 / CUDA 13.0, PyTorch with its cu13
# libraries, transformers). It runs the binaries that scripts/build-cuda.sh made here
# (`autoif` and the kernel harness `examples/kernel_check.rs`), which travel with the
# working tree as one compressed archive:
#
#   run(command="scripts/gpu-check.sh", carry=["target-cuda/autoif-cuda.tar.xz"], timeout_s=600)
#   run(command="scripts/gpu-check.sh --qwen2-7b", carry=[...same...], timeout_s=360)
#
# (the plain binaries are over the 64 MiB that travels).
#
# Steps, a few minutes in all; each has a timeout, together 9.5 minutes at most:
#  1. the kernels against their CPU twins on random inputs (`kernel_check`: the
#     chunked log-probs, the fused attention and the int8 base's projection), with the
#     peak memory of unfused vs
#     chunked log-probs and of the fused attention at 4096 tokens, and the attention's
#     forward and backward TFLOPS (bf16, Qwen2-7B's heads, 2 × 1024 tokens);
#  2. a model to run: SmolLM2-135M's GGUF (98 MB) is too large to travel (64 MiB), so
#     transformers writes a randomly initialised model of Qwen2-0.5B's shape (bf16
#     safetensors) with the tiny test tokenizer; speeds and memory are those of the
#     shape, the text is noise;
#  3. `autoif bench generate` at batch 1 and 64 (128 new tokens each): decode tokens/s;
#  4. `autoif train sft` for a few steps on generated 512-token records;
#  5. the same steps on an int8 base (`--base-dtype int8`, kernels/int8_projection.cu),
#     whose losses should track step 4's (the first run of that kernel in training);
# and prints one table: tokens/s and peak GPU memory (nvidia-smi, sampled every 100 ms)
# per step. Results also go to $OUT (or /tmp/gpu-check).
#
# With --qwen2-7b it runs only: a random model of Qwen2-7B's shape (15 GB of bf16, written
# on the GPU) and two SFT steps on one packed row of 2048 tokens (LoRA r16 on every
# projection, checkpointing on), with their peak memory next to `autoif plan`'s.
set -uo pipefail

cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
work=/tmp/gpu-check-work
mkdir -p "$out" "$work"
log="$out/gpu-check.log"
: >"$log"

say() { echo "$*" | tee -a "$log"; }

# AUTOIF_BIN and KERNEL_CHECK_BIN point at binaries built elsewhere instead.
bin="${AUTOIF_BIN:-$work/autoif}"
kernel_check="${KERNEL_CHECK_BIN:-$work/kernel_check}"
if [ -f target-cuda/autoif-cuda.tar.xz ]; then
  python3 -c 'import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    archive.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' \
    target-cuda/autoif-cuda.tar.xz "$work"
fi
for exe in "$bin" "$kernel_check"; do
  [ -x "$exe" ] || { say "error: no binary $exe (build with scripts/build-cuda.sh, carry target-cuda/autoif-cuda.tar.xz)"; exit 1; }
done

# The cu13 libraries the binary was linked against, from wherever this machine has them.
libdirs="$(python3 - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
dirs = set()
for pattern in ("libcudart.so.13*", "libcublas.so.13*", "libcublasLt.so.13*", "libcurand.so.10*", "libnvrtc.so.13*"):
    for root in roots:
        dirs.update(os.path.dirname(f) for f in glob.glob(os.path.join(root, "**", pattern), recursive=True))
print(":".join(sorted(dirs)))
EOF
)"
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$bin" "$kernel_check" | grep 'not found' | tee -a "$log"; then
  say "error: unresolved libraries (searched: $libdirs)"
  exit 1
fi
gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
say "GPU: $gpu"

# run_step NAME TIMEOUT CMD...: runs CMD with its output in $out/NAME.txt, sampling the
# GPU's used memory; sets peak_mib and step_rc.
run_step() {
  local name=$1 limit=$2
  shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$work/$name.mem" 2>/dev/null &
  local sampler=$!
  local started=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  step_rc=$?
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  peak_mib=$(sort -n "$work/$name.mem" | tail -1)
  say "== $name: exit $step_rc after $(( $(date +%s) - started )) s, peak ${peak_mib:-?} MiB"
  tail -24 "$out/$name.txt" | tee -a "$log"
}

# --qwen2-7b: the peak memory of a Qwen2-7B-shaped SFT step at 2048 tokens, and the plan.
if [ "${1:-}" = "--qwen2-7b" ]; then
  model="$work/qwen2-7b-random"
  timeout 150 python3 scripts/make-random-qwen2.py "$model" --shape 7b --device cuda >>"$log" 2>&1
  [ -f "$model/config.json" ] || { say "error: could not write the random 7B model (see $log)"; exit 1; }
  plan="$(timeout 30 "$bin" plan --model "$model" --device cuda --batch 1 --seq-len 2048 --dtype bf16 2>&1 | tail -3)"
  rm -rf "$work/sft-7b"
  run_step train-7b 180 "$bin" train sft --model "$model" --device cuda --data "$model/sft.jsonl" \
    --out "$work/sft-7b" --max-steps 2 --batch-size 1 --max-len 2048 --packing
  {
    echo
    echo "| $gpu | result |"
    echo "|---|---|"
    echo "| SFT, Qwen2-7B shape, bf16, LoRA r16, 1 × 2048 tokens packed, 2 steps | peak $peak_mib MiB (exit $step_rc) |"
    echo "| autoif plan, same job | $(echo "$plan" | tr '\n' ' ') |"
  } | tee -a "$log"
  exit "$step_rc"
fi

# 1. Kernels against their CPU twins.
run_step kernels 150 "$kernel_check" --device cuda --rows 512 --hidden 1536 --vocab 151936
kernels_rc=$step_rc
kernels_line="$(grep -cE '^(f32|bf16) .* ok$' "$out/kernels.txt") ok, $(grep -cE '^(f32|bf16) .* FAIL$' "$out/kernels.txt") FAIL (tables in kernels.txt)"
memory_line="$(grep '^peak memory' "$out/kernels.txt")"
attention_memory_line="$(grep '^attention peak memory' "$out/kernels.txt")"
# The bf16 row at Qwen2-7B's heads: its forward and backward TFLOPS columns.
attention_tflops="$(awk '$1 == "bf16" && $2 == "28/4" { print $11 " forward, " $12 " backward" }' "$out/kernels.txt")"

# 2. A model of Qwen2-0.5B's shape with random weights.
model="$work/qwen2-0.5b-random"
timeout 90 python3 scripts/make-random-qwen2.py "$model" --shape 0.5b --device cuda >>"$log" 2>&1
[ -f "$model/config.json" ] || { say "error: could not write the random model (see $log)"; exit 1; }

# 3. Generation at batch 1 and 64.
decode_tps() {
  python3 -c 'import json,sys; d=json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1]); print(round(d["decode_tokens_per_s"], 1))' "$1" 2>/dev/null || echo '?'
}
run_step generate-1 60 "$bin" bench generate --model "$model" --device cuda --batch 1 --new-tokens 128 --json
gen1_rc=$step_rc gen1_tps="$(decode_tps "$out/generate-1.txt")"
run_step generate-64 90 "$bin" bench generate --model "$model" --device cuda --batch 64 --new-tokens 128 --json
gen_rc=$step_rc gen_peak=$peak_mib gen_tps="$(decode_tps "$out/generate-64.txt")"

# 4. Training steps.
rm -rf "$work/sft"
run_step train 120 "$bin" train sft --model "$model" --device cuda --data "$model/sft.jsonl" \
  --out "$work/sft" --max-steps 4 --batch-size 4 --max-len 512 --max-batch-tokens 0
train_rc=$step_rc train_peak=$peak_mib
train_tps="$(python3 -c '
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
later = [s["tokens_per_s"] for s in steps[1:]] or [s["tokens_per_s"] for s in steps]
print(round(sum(later) / len(later), 1) if later else "?")' "$work/sft/metrics.jsonl" 2>/dev/null || echo '?')"
cp "$work/sft/metrics.jsonl" "$out/train-metrics.jsonl" 2>/dev/null

# 5. The same training steps on an int8 base.
rm -rf "$work/sft-int8"
run_step train-int8 60 "$bin" train sft --model "$model" --device cuda --data "$model/sft.jsonl" \
  --out "$work/sft-int8" --max-steps 4 --batch-size 4 --max-len 512 --max-batch-tokens 0 \
  --base-dtype int8
int8_rc=$step_rc int8_peak=$peak_mib
cp "$work/sft-int8/metrics.jsonl" "$out/train-int8-metrics.jsonl" 2>/dev/null
losses() {
  python3 -c 'import json, sys
print(" ".join("%.4f" % json.loads(l)["loss"] for l in open(sys.argv[1]) if l.strip()))' "$1" 2>/dev/null || echo '?'
}

{
  echo
  echo "| $gpu | result |"
  echo "|---|---|"
  echo "| kernels vs CPU twin (log-probs 512 × 1536 × 151936; attention 2 × 1024 tokens, 2 shapes; int8 projection 512 rows, 2 shapes; f32 and bf16) | exit $kernels_rc: $kernels_line |"
  echo "| log-prob peak memory | ${memory_line:-not measured} |"
  echo "| attention peak memory | ${attention_memory_line:-not measured} |"
  echo "| attention, bf16, 28/4 heads × 128, 2 × 1024 tokens | ${attention_tflops:-?} TFLOPS |"
  echo "| generation, Qwen2-0.5B shape, bf16, 1 × 128 tokens | $gen1_tps tokens/s decode (exit $gen1_rc) |"
  echo "| generation, Qwen2-0.5B shape, bf16, 64 × 128 tokens | $gen_tps tokens/s decode, peak $gen_peak MiB (exit $gen_rc) |"
  echo "| SFT, Qwen2-0.5B shape, LoRA r16, 4 × 512 tokens, steps 2–4 | $train_tps tokens/s, peak $train_peak MiB (exit $train_rc) |"
  echo "| same, int8 base: losses per step (bf16 base: $(losses "$work/sft/metrics.jsonl")) | $(losses "$work/sft-int8/metrics.jsonl"), peak $int8_peak MiB (exit $int8_rc) |"
} | tee -a "$log"
[ "$kernels_rc" = 0 ] && [ "$gen1_rc" = 0 ] && [ "$gen_rc" = 0 ] && [ "$train_rc" = 0 ] && [ "$int8_rc" = 0 ]
