#!/usr/bin/env python3
"""LoRA SFT training throughput on SmolLM2-135M: PEFT + PyTorch against `autoif train sft`,
in one run on the same machine.

Both train a rank-16, alpha-32 LoRA on all attention and MLP projections with AdamW, in
f32 on the CPU with the same thread count, on batches of 4 sequences × 512 tokens. The
first step of each is a warm-up and is not timed. tokens/s counts the tokens of the batch
(4 × 512) per optimizer step.

  /work/refenv/bin/python scripts/bench-train.py [--steps 3] [--threads 2] [--checkpointing]

--checkpointing turns on activation checkpointing in both: transformers'
`gradient_checkpointing_enable` (non-reentrant) under PEFT, `--gradient-checkpointing true`
in autoif. Each recomputes every decoder layer in the backward pass.

Needs: torch, transformers (5.x, with gguf), peft; the GGUF from scripts/fetch-models.sh;
a built binary (cargo build --release; the script uses target/release/autoif).
"""

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH, SEQ = 4, 512
WORDS = ("the model writes a function that checks whether the response follows the "
         "instruction and every test case agrees with most functions so the pair is kept "
         "for training while others are dropped after execution in the sandbox").split()


def long_text(rng, words=700):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def bench_peft(steps, threads, checkpointing):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        if step > 0:
            times.append(time.perf_counter() - start)
    return BATCH * SEQ * len(times) / sum(times)


def bench_autoif(steps, threads, binary, checkpointing):
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        with open(data, "w") as f:
            for _ in range(BATCH):
                f.write(json.dumps({"instruction": "Go on.", "output": long_text(rng)}) + "\n")
        out = Path(tmp) / "out"
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        subprocess.run([str(binary), "train", "sft", "--model", str(GGUF), "--device", "cpu",
                        "--data", str(data), "--out", str(out), "--max-len", str(SEQ),
                        "--batch-size", str(BATCH), "--epochs", str(steps + 1), "--lr", "2e-4",
                        "--lora-r", "16", "--lora-alpha", "32", "--max-batch-tokens", str(SEQ),
                        "--gradient-checkpointing", "true" if checkpointing else "false"],
                       check=True, env=env)
        lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    timed = lines[1:]
    tokens = sum(l["tokens"] for l in timed)
    seconds = sum(l["tokens"] / l["tokens_per_s"] for l in timed)
    assert all(l["tokens"] == BATCH * SEQ for l in timed), "sequences are not 512 tokens"
    return tokens / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--binary", default=str(ROOT / "target/release/autoif"))
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown CPU")
    load_before = os.getloadavg()
    peft = bench_peft(a.steps, a.threads, a.checkpointing)
    ours = bench_autoif(a.steps, a.threads, a.binary, a.checkpointing)
    load_after = os.getloadavg()
    ckpt = "activation checkpointing on" if a.checkpointing else "no checkpointing"
    print(f"LoRA SFT, SmolLM2-135M f32, batch {BATCH}x{SEQ}, {a.threads} threads, {a.steps} timed "
          f"steps, {ckpt}; {cpu}")
    print(f"| implementation | tokens/s |\n|---|---|\n| PEFT + PyTorch | {peft:.1f} |\n| autoif | {ours:.1f} |")
    print(f"autoif / PEFT = {ours / peft:.2f}x; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
