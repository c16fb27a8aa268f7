#!/usr/bin/env python3
"""Writes a Qwen2 model folder with random bf16 weights, the tiny test tokenizer and an
SFT data file, for speed and memory checks where no real model can travel (the GPU
machines have no network and take 64 MiB of files).

    make-random-qwen2.py OUT [--shape 0.5b|7b|tiny] [--device cuda|cpu]

0.5b is Qwen2-0.5B's shape (vocabulary 151,936, hidden 896, 24 layers, 14 heads, 2 KV
heads, MLP 4864, tied); 7b is Qwen2-7B's (vocabulary 152,064, hidden 3584, 28 layers, 28
heads, 4 KV heads, MLP 18,944, untied: 15 GB of bf16 weights); tiny is a few-MB stand-in for trying the script on a CPU. The
tokenizer knows 320 tokens: prompts and data use only those, and sampled ids above them
are never decoded into text by the checks (bench counts tokens; training reads ids).
"""
import argparse
import json
import os
import shutil

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
               tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tiny-qwen2")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing".split()

args = argparse.ArgumentParser()
args.add_argument("out")
args.add_argument("--shape", choices=SHAPES, default="0.5b")
args.add_argument("--device", default="cuda")
args = args.parse_args()

defaults = dict(vocab_size=151936, max_position_embeddings=4096, rope_theta=1000000.0,
                rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
config = Qwen2Config(**{**defaults, **SHAPES[args.shape]})
torch.manual_seed(0)
with torch.device(args.device):
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(args.out, safe_serialization=True)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(FIXTURE, name), args.out)
with open(os.path.join(args.out, "sft.jsonl"), "w") as f:
    for i in range(64):
        text = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(300))
        f.write(json.dumps({"instruction": f"Write passage {i}.", "output": text}) + "\n")
print("wrote", args.out)
