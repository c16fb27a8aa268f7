#!/usr/bin/env bash
# The ablation of a finished `autoif run` (issue 16; the AutoIF paper compares the same
# arms): IFEval on all 541 prompts, greedy, answers up to 512 new tokens, for
#   base · SFT only · SFT + offline DPO · SFT + online DPO · all three
# each compared with the base prompt by prompt (exact McNemar, `autoif eval compare`),
# printed as one markdown table (also written to OUT/ablation.md).
#
# Usage: scripts/ablation.sh RUN [OUT]          (OUT defaults to RUN/ablation)
# Environment (for smoke tests; defaults give the real measurement):
#   AUTOIF=target/release/autoif   the binary (built with `cargo build --release`)
#   LIMIT=                         score only the first N IFEval prompts
#   MAX_NEW_TOKENS=512  BATCH=32   IFEval generation
#   ITERATIONS=                    online DPO iterations of the SFT + online DPO arm
#                                  (default: the run's [online_dpo] iterations)
#
# The weights of each arm: SFT on the run's datasets/trl/sft.jsonl, offline DPO on its
# datasets/trl/dpo.jsonl, online DPO on its queries/pairs.jsonl, each with the run's
# settings (from RUN/manifest.json). Where the run already trained an arm's adapter it is
# reused, since training is deterministic: sft/ (SFT only), dpo/ on top (SFT + offline DPO),
# online_dpo/iter-N/ on top of that (all three). SFT + online DPO is always trained here
# (`autoif train online-dpo` from the SFT model); an arm the run skipped is trained with
# `autoif train sft|dpo`. Adapters are merged into model folders with `autoif export merged`
# (f32 on the CPU, exact). Finished steps are kept: running the script again continues.
set -euo pipefail
cd "$(dirname "$0")/.."

run="${1:?usage: scripts/ablation.sh RUN [OUT]}"
out="${2:-$run/ablation}"
autoif="${AUTOIF:-target/release/autoif}"
max_new_tokens="${MAX_NEW_TOKENS:-512}"
batch="${BATCH:-32}"
manifest="$run/manifest.json"

[ -x "$autoif" ] || { echo "error: $autoif is not built (cargo build --release, or set AUTOIF)" >&2; exit 1; }
[ -f "$manifest" ] || { echo "error: $manifest: not a run folder" >&2; exit 1; }
for f in datasets/trl/sft.jsonl datasets/trl/dpo.jsonl queries/pairs.jsonl; do
  [ -f "$run/$f" ] || { echo "error: $run/$f is missing: the run's data stages have not finished" >&2; exit 1; }
done

# The run's settings as command-line flags: `config KEY` prints one value of the resolved
# config, `flags SECTION` the training flags of a section (sft, dpo, online_dpo.dpo).
config() {
  python3 - "$manifest" "$1" <<'PY'
import json, sys
value = json.load(open(sys.argv[1]))["config"]
for key in sys.argv[2].split("."):
    value = value[key]
print(value)
PY
}
flags() {
  python3 - "$manifest" "$1" <<'PY'
import json, sys
section = json.load(open(sys.argv[1]))["config"]
for key in sys.argv[2].split("."):
    section = section[key]
args = section["args"]
out = []
def flag(name, value):
    if value is not None:
        out.extend([f"--{name}", str(value)])
for key in ["epochs", "max_steps", "lr", "schedule", "warmup_ratio", "batch_size",
            "grad_accum", "max_len", "max_batch_tokens", "max_grad_norm", "seed"]:
    flag(key.replace("_", "-"), args.get(key))
if args.get("packing"):
    out.append("--packing")
flag("weight-decay", args.get("adamw", {}).get("weight_decay"))
lora = args.get("lora", {})
flag("lora-r", lora.get("r"))
flag("lora-alpha", lora.get("lora_alpha"))
flag("lora-dropout", lora.get("lora_dropout"))
if lora.get("target_modules"):
    flag("lora-targets", ",".join(lora["target_modules"]))
if "beta" in section:
    flag("beta", section["beta"])
    flag("loss-type", section.get("loss_type"))
    flag("label-smoothing", section.get("label_smoothing"))
print(" ".join(out))
PY
}

base="$(config model.path)"
device="$(config model.device)"
data="$(config ifeval.data)"
mkdir -p "$out"
log="$out/ablation.log"
echo "ablation of $run into $out (log: $log)"

# merge MODEL ADAPTER DEST: the adapter folded into MODEL, written as a model folder.
merge() {
  [ -f "$3/config.json" ] && return 0
  rm -rf "$3"
  "$autoif" export merged --model "$1" --device "$device" --adapter "$2" --dtype f32 \
    --out "$3" >>"$log" 2>&1
}

# has_adapter DIR: DIR holds a trained adapter.
has_adapter() { [ -f "$1/adapter_model.safetensors" ]; }

# SFT only.
if has_adapter "$run/sft"; then sft_adapter="$run/sft"; else
  sft_adapter="$out/train/sft"
  has_adapter "$sft_adapter" || "$autoif" train sft --model "$base" --device "$device" \
    --data "$run/datasets/trl/sft.jsonl" --out "$sft_adapter" $(flags sft) >>"$log" 2>&1
fi
merge "$base" "$sft_adapter" "$out/models/sft"

# SFT + offline DPO.
if has_adapter "$run/sft" && has_adapter "$run/dpo"; then dpo_adapter="$run/dpo"; else
  dpo_adapter="$out/train/dpo"
  has_adapter "$dpo_adapter" || "$autoif" train dpo --model "$out/models/sft" --device "$device" \
    --data "$run/datasets/trl/dpo.jsonl" --out "$dpo_adapter" $(flags dpo) >>"$log" 2>&1
fi
merge "$out/models/sft" "$dpo_adapter" "$out/models/sft_dpo"

# online_dpo FROM_MODEL DIR: online DPO with the run's settings; then each iteration's
# adapter (relative to the weights after the one before) merged in turn into DIR/model.
online_dpo() {
  local from="$1" dir="$2" iterations
  iterations="${ITERATIONS:-$(config online_dpo.iterations)}"
  if [ ! -f "$dir/model/config.json" ]; then
    "$autoif" train online-dpo --model "$from" --device "$device" \
      --prompts "$run/queries/pairs.jsonl" --out "$dir/train" \
      --iterations "$iterations" --samples "$(config online_dpo.samples)" \
      --temperature "$(config online_dpo.temperature)" --top-p "$(config online_dpo.top_p)" \
      --max-new-tokens "$(config online_dpo.max_new_tokens)" \
      --prompts-per-iteration "$(config online_dpo.prompts_per_iteration)" \
      --generation-batch "$(config online_dpo.batch)" $(flags online_dpo.dpo) >>"$log" 2>&1
  fi
  merge_iterations "$from" "$dir/train" "$dir"
}

# merge_iterations FROM_MODEL ONLINE_DIR DIR: folds the adapters of ONLINE_DIR's finished
# iterations (iterations.jsonl) into FROM_MODEL in turn; DIR/model links to the result. An
# iteration that found no pair trained nothing and leaves the weights as they were.
merge_iterations() {
  local model="$1" i n
  [ -f "$3/model/config.json" ] && return 0
  [ -f "$2/iterations.jsonl" ] || { echo "error: $2/iterations.jsonl is missing" >&2; exit 1; }
  n="$(grep -c . "$2/iterations.jsonl")"
  for i in $(seq 1 "$n"); do
    if has_adapter "$2/iter-$i"; then
      merge "$model" "$2/iter-$i" "$3/iter-$i"
      model="$3/iter-$i"
    fi
  done
  mkdir -p "$3"
  ln -sfn "$(realpath "$model")" "$3/model"
}

# SFT + online DPO: always trained here.
online_dpo "$out/models/sft" "$out/sft_online"

# All three: the run's own online DPO iterations on top of SFT + DPO when it ran them.
if has_adapter "$run/sft" && has_adapter "$run/dpo" && [ -f "$run/online_dpo/iterations.jsonl" ]; then
  merge_iterations "$out/models/sft_dpo" "$run/online_dpo" "$out/sft_dpo_online"
else
  online_dpo "$out/models/sft_dpo" "$out/sft_dpo_online"
fi

# IFEval on every arm, then the table.
declare -A models=(
  [base]="$base"
  [sft]="$out/models/sft"
  [sft_dpo]="$out/models/sft_dpo"
  [sft_online]="$out/sft_online/model"
  [all]="$out/sft_dpo_online/model"
)
arms=(base sft sft_dpo sft_online all)
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
for arm in "${arms[@]}"; do
  [ -f "$out/ifeval/$arm/summary.json" ] && continue
  echo "IFEval: $arm"
  "$autoif" eval ifeval --model "${models[$arm]}" --data "$data" "${limit[@]}" \
    --max-new-tokens "$max_new_tokens" --batch "$batch" --out "$out/ifeval/$arm" >>"$log" 2>&1
done
for arm in "${arms[@]}"; do
  "$autoif" eval compare "$out/ifeval/base" "$out/ifeval/$arm" --json >"$out/ifeval/$arm.compare.json"
done

python3 - "$out" "${arms[@]}" <<'PY' | tee "$out/ablation.md"
import json, sys
out, arms = sys.argv[1], sys.argv[2:]
names = {"base": "base", "sft": "SFT only", "sft_dpo": "SFT + offline DPO",
         "sft_online": "SFT + online DPO", "all": "SFT + offline DPO + online DPO"}
first = json.load(open(f"{out}/ifeval/base.compare.json"))
print(f"IFEval, {first['change']['prompts']} prompts, greedy; McNemar: exact, two-sided, "
      "paired with the base prompt by prompt (loose)\n")
print("| model | prompt strict | prompt loose | instruction strict | instruction loose "
      "| loose gained / lost vs base | McNemar p |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for arm in arms:
    c = json.load(open(f"{out}/ifeval/{arm}.compare.json"))
    s, loose = c["after"], c["change"]["loose"]
    pct = lambda x: f"{100 * x:.2f}"
    vs = "—" if arm == "base" else f"{loose['gained']} / {loose['lost']}"
    p = "—" if arm == "base" else f"{loose['p_value']:.3g}"
    print(f"| {names[arm]} | {pct(s['prompt_level_strict_acc'])} | {pct(s['prompt_level_loose_acc'])} "
          f"| {pct(s['inst_level_strict_acc'])} | {pct(s['inst_level_loose_acc'])} | {vs} | {p} |")
PY
