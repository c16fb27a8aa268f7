#!/usr/bin/env python3
"""Checks autoif's exports against transformers and peft.

Given per-token log-probabilities that `autoif logprobs --model MERGED` wrote, this
recomputes them (f32, CPU)
  * with transformers on the merged folder (`--merged`), and
  * with peft: the adapter folder (`--adapter`) loaded onto the base (`--base`),
and fails when any differs by more than --atol. It also checks that transformers'
tokenizer from the merged folder encodes the texts to autoif's ids (and renders records
with `messages` through its chat template to autoif's prompt), that peft loaded
every adapter tensor under the expected name, and that the adapter changes the base's
log-probabilities (so the comparison is not vacuous).

Requires: torch, transformers, peft, safetensors.

  python scripts/check-export.py --logprobs lp.jsonl --merged OUT [--base BASE --adapter ADAPTER]
"""

import argparse
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def completion_logprobs(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids)
    rows = torch.arange(start - 1, start - 1 + len(completion_ids))
    return logp[rows, torch.tensor(completion_ids)]


def worst_diff(model, records):
    worst = 0.0
    for r in records:
        ours = torch.tensor(r["token_logprobs"])
        theirs = completion_logprobs(model, r["prompt_ids"], r["completion_ids"])
        worst = max(worst, (ours - theirs).abs().max().item())
    return worst


def check_tokenizer(folder, records):
    tok = AutoTokenizer.from_pretrained(folder)
    problems = []
    for i, r in enumerate(records):
        completion = tok(r["completion"], add_special_tokens=False)["input_ids"]
        if completion != r["completion_ids"]:
            problems.append(f"line {i + 1}: completion ids {completion} != autoif's {r['completion_ids']}")
        if "messages" in r:
            rendered = tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
            if rendered != r["prompt"]:
                problems.append(f"line {i + 1}: chat template renders {rendered!r}, autoif {r['prompt']!r}")
        # autoif's prompt ids may start with BOS; the text itself must encode the same.
        prompt = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        if r["prompt_ids"][-len(prompt):] != prompt or len(r["prompt_ids"]) - len(prompt) > 1:
            problems.append(f"line {i + 1}: prompt ids {prompt} != autoif's {r['prompt_ids']}")
    return tok, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logprobs", required=True, help="JSONL written by `autoif logprobs`")
    ap.add_argument("--merged", required=True, help="folder written by `autoif export merged`")
    ap.add_argument("--base", help="base model folder the adapter belongs to")
    ap.add_argument("--adapter", help="folder written by `autoif export peft` / the trainer")
    ap.add_argument("--atol", type=float, default=2e-4)
    args = ap.parse_args()
    if (args.base is None) != (args.adapter is None):
        ap.error("--base and --adapter go together")
    torch.manual_seed(0)
    with open(args.logprobs) as f:
        records = [json.loads(line) for line in f if line.strip()]
    failures = []

    tok, problems = check_tokenizer(args.merged, records)
    failures += problems
    chats = sum("messages" in r for r in records)
    print(f"tokenizer and chat template: {len(problems)} mismatches over {len(records)} records "
          f"({chats} rendered from messages)")

    merged = AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float32).eval()
    d = worst_diff(merged, records)
    print(f"merged (transformers) vs autoif: max |Δ logprob| = {d:.3g}")
    if d > args.atol:
        failures.append(f"merged folder differs from autoif by {d:.3g} > {args.atol}")
    del merged

    if args.adapter:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
        base_d = worst_diff(base, records)
        model = PeftModel.from_pretrained(base, args.adapter).eval()
        params = dict(model.named_parameters())
        saved = load_file(f"{args.adapter}/adapter_model.safetensors")
        for name, tensor in saved.items():
            live = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight")
            if live not in params:
                failures.append(f"peft did not load {name}")
            elif not torch.equal(params[live].detach().float(), tensor.float()):
                failures.append(f"peft holds other values for {name}")
        d = worst_diff(model, records)
        print(f"base + adapter (peft) vs autoif merged: max |Δ logprob| = {d:.3g} "
              f"(base without adapter: {base_d:.3g}; {len(saved)} adapter tensors)")
        if d > args.atol:
            failures.append(f"peft adapter differs from autoif by {d:.3g} > {args.atol}")
        if base_d <= 10 * args.atol:
            failures.append(f"the adapter barely changes the base ({base_d:.3g}): vacuous check")

    for f in failures:
        print("FAIL:", f)
    if failures:
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
