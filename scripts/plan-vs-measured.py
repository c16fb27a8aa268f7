#!/usr/bin/env python3
"""The memory planner against reality on the CPU: for each model, algorithm, sequence
length and checkpointing setting, `autoif plan --device cpu` beside the peak resident
memory of one optimizer step of `autoif train` (the process's VmHWM, or VmRSS sampled
every 20 ms where that is higher).

    scripts/plan-vs-measured.py [--bin target/release/autoif] [--work /tmp/plan-vs-measured]
                                [--only smollm2|qwen2-0.5b]

Models: the embedded SmolLM2 GGUF, and a Qwen2-0.5B-shaped model with random bf16 weights
written here without PyTorch (vocabulary 151,936, hidden 896, 24 layers, 14 heads, 2 KV
heads, MLP 4864, tied) that reads the tiny test tokenizer, so data uses 320 token ids.
Each run is batch 1 (a pair for DPO), its sequences cut at the length, LoRA r16 on all
seven projections, no token budget. Prints a Markdown table with the machine, the commit
and the load average.
"""
import argparse
import json
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2 = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TINY_QWEN2 = os.path.join(ROOT, "tests", "fixtures", "tiny-qwen2")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing".split()
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936)


def random_qwen2(out):
    """A Qwen2-0.5B-shaped folder: config, bf16 safetensors, the tiny tokenizer."""
    if os.path.exists(os.path.join(out, "model.safetensors")):
        return out
    os.makedirs(out, exist_ok=True)
    c = QWEN2_05B
    h, i, kv = c["hidden_size"], c["intermediate_size"], 2 * 64
    heads_dim = c["num_attention_heads"] * 64
    shapes = {"model.embed_tokens.weight": [c["vocab_size"], h], "model.norm.weight": [h]}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        shapes.update({
            f"{p}.input_layernorm.weight": [h],
            f"{p}.post_attention_layernorm.weight": [h],
            f"{p}.self_attn.q_proj.weight": [heads_dim, h],
            f"{p}.self_attn.q_proj.bias": [heads_dim],
            f"{p}.self_attn.k_proj.weight": [kv, h],
            f"{p}.self_attn.k_proj.bias": [kv],
            f"{p}.self_attn.v_proj.weight": [kv, h],
            f"{p}.self_attn.v_proj.bias": [kv],
            f"{p}.self_attn.o_proj.weight": [h, heads_dim],
            f"{p}.mlp.gate_proj.weight": [i, h],
            f"{p}.mlp.up_proj.weight": [i, h],
            f"{p}.mlp.down_proj.weight": [h, i],
        })
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    rng = random.Random(0)
    # bf16 is the top half of an f32: N(0, 0.02) values, tiled from a 1 MiB block.
    block = b"".join(struct.pack("<f", rng.gauss(0.0, 0.02))[2:] for _ in range(1 << 19))
    one = struct.pack("<f", 1.0)[2:]
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in shapes.items():
            size = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if name.endswith("norm.weight"):
                f.write(one * (size // 2))
                continue
            while size > 0:
                part = min(size, len(block))
                f.write(block[:part])
                size -= part
    config = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                  max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                  attention_dropout=0.0, use_sliding_window=False, torch_dtype="bfloat16", **c)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TINY_QWEN2, name), out)
    return out


def data_files(work, words):
    """SFT and DPO records far longer than any length measured (cut at --max-len)."""
    text = lambda seed: " ".join(WORDS[(seed * 7 + k * 3) % len(WORDS)] for k in range(words))
    sft = os.path.join(work, "sft.jsonl")
    dpo = os.path.join(work, "dpo.jsonl")
    with open(sft, "w") as f:
        f.write(json.dumps({"instruction": "Write a passage.", "output": text(1)}) + "\n")
    with open(dpo, "w") as f:
        msg = lambda role, content: [{"role": role, "content": content}]
        f.write(json.dumps({"prompt": msg("user", "Write a passage."),
                            "chosen": msg("assistant", text(2)),
                            "rejected": msg("assistant", text(3))}) + "\n")
    return {"sft": sft, "dpo": dpo}


def planned(binary, model, algo, length, ckpt):
    out = subprocess.run(
        [binary, "plan", "--device", "cpu", "--model", model, "--batch", "1",
         "--seq-len", str(length), "--algo", algo, "--gradient-checkpointing", ckpt,
         "--pieces-at-once", "1"],  # one record: one piece per step
        check=True, capture_output=True, text=True).stdout
    return float(re.search(r"total \(peak\)\s+([\d.]+)", out).group(1)), out


def measured(binary, model, algo, length, ckpt, data, out):
    """Peak resident memory (GiB) and seconds of one `autoif train` step: the larger of
    the kernel's maximum RSS (`wait4`) and the largest VmRSS sampled every 20 ms. The
    maximum RSS alone can miss a memory-mapped safetensors file's pages, which the plan
    counts while the weights are converted."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [binary, "train", algo, "--model", model, "--data", data, "--out", out,
           "--max-steps", "1", "--batch-size", "1", "--max-len", str(length),
           "--max-batch-tokens", "0", "--gradient-checkpointing", ckpt]
    started = time.time()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampled_kib = 0
    status = f"/proc/{child.pid}/status"
    while child.poll() is None:
        try:
            with open(status) as f:
                rss = next((l for l in f if l.startswith("VmRSS:")), None)
            if rss:
                sampled_kib = max(sampled_kib, int(rss.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.02)
    stderr = child.stderr.read()
    if child.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    match = re.search(r"VmHWM (\d+) kB", stderr)
    hwm_kib = int(match.group(1)) if match else 0
    return max(sampled_kib, hwm_kib) / (1 << 20), time.time() - started


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "autoif"))
    ap.add_argument("--work", default="/tmp/plan-vs-measured")
    ap.add_argument("--only", choices=["smollm2", "qwen2-0.5b"])
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    data = data_files(args.work, 3000)
    models = []
    if args.only in (None, "smollm2"):
        models.append(("SmolLM2-135M (Q4_1 GGUF → f32)", SMOLLM2, (256, 768)))
    if args.only in (None, "qwen2-0.5b"):
        models.append(("Qwen2-0.5B shape, random (bf16 safetensors → f32)",
                       random_qwen2(os.path.join(args.work, "qwen2-0.5b")), (256, 1024)))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · commit {commit} · "
          f"{cpu}, {os.cpu_count()} cores · load average at start {os.getloadavg()[0]:.1f}\n")
    print("| model | job | tokens per sequence | checkpointing | planned GiB | measured GiB "
          "(peak RSS) | planned / measured | step s |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, model, lengths in models:
        for algo in ("sft", "dpo"):
            for length in lengths:
                for ckpt in ("false", "true"):
                    plan, _ = planned(args.bin, model, algo, length, ckpt)
                    rss, seconds = measured(args.bin, model, algo, length, ckpt, data[algo],
                                            os.path.join(args.work, "run"))
                    ratio = plan / rss
                    worst = max(worst, abs(ratio - 1))
                    print(f"| {name} | {algo.upper()} | {length} | {'on' if ckpt == 'true' else 'off'} "
                          f"| {plan:.2f} | {rss:.2f} | {ratio:.2f} | {seconds:.0f} |", flush=True)
    print(f"\nworst deviation {worst * 100:.1f}% · load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
