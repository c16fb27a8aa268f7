#!/usr/bin/env python3
"""Samples/s of a response-stage-like workload (P prompts x K samples, up to T tokens, at
temperature 0.8) through an OpenAI-compatible server (the llama.cpp server from
`llama-cpp-python[server]`, started here) against the local engine, same model, same
machine. Times are measured inside `autoif generate` (model loading excluded).

    cargo build --release
    python3 scripts/bench-openai.py --python /work/llamacpp-env/bin/python
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

INSTRUCTIONS = [
    "Answer in fewer than 30 words.",
    "Use no commas in your answer.",
    "Write your answer in all capital letters.",
    "End your answer with the phrase 'Is there anything else?'.",
]
QUERIES = [
    "How do plants make food?",
    "Why is the sky blue?",
    "What is a good breakfast for runners?",
    "Explain what a database index is.",
    "How should I prepare for a job interview?",
    "What causes ocean tides?",
    "Give me tips for learning a new language.",
    "What is the difference between weather and climate?",
    "How does a bicycle stay upright?",
    "Why do cats purr?",
    "What is compound interest?",
    "How do vaccines work?",
    "What makes a good password?",
    "How is paper recycled?",
    "Why do we have leap years?",
    "What does a compiler do?",
]

SAMPLES_LINE = re.compile(r"(\d+) samples in ([0-9.]+)s")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_generate(binary, prompts, args, extra):
    out = prompts + f".{extra[1]}.jsonl"
    cmd = [
        binary, "generate", "--prompts", prompts, "-n", str(args.samples),
        "--max-new-tokens", str(args.tokens), "--temperature", "0.8", "--top-p", "0.95",
        "--seed", "1", "--model", args.model, "--out", out, *extra,
    ]
    env = dict(os.environ, AUTOIF_LOG="info")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    match = SAMPLES_LINE.search(proc.stderr)
    samples, seconds = int(match.group(1)), float(match.group(2))
    with open(out) as f:
        tokens = sum(json.loads(line)["num_tokens"] for line in f)
    return samples, seconds, tokens


def start_server(python, model, port, threads):
    log = open(os.path.join(tempfile.gettempdir(), f"bench-llama-{port}.log"), "w")
    proc = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads)],
        stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"llama_cpp.server exited; see {log.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("llama_cpp.server not ready in 120 s")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default=os.environ.get("AUTOIF_LLAMA_PYTHON", "python3"),
                   help="a Python that can import llama_cpp.server")
    p.add_argument("--binary", default="target/release/autoif")
    p.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-openai-")
    prompts = os.path.join(workdir, "prompts.jsonl")
    with open(prompts, "w") as f:
        for i in range(args.prompts):
            query = QUERIES[i % len(QUERIES)]
            instruction = INSTRUCTIONS[i % len(INSTRUCTIONS)]
            f.write(json.dumps({"prompt": f"{query} {instruction}"}) + "\n")

    results = {}
    load_before = os.getloadavg()
    results["local engine"] = run_generate(args.binary, prompts, args, ["--backend", "local"])
    port = free_port()
    server = start_server(args.python, args.model, port, args.threads)
    try:
        results["llama.cpp server"] = run_generate(
            args.binary, prompts, args,
            ["--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1",
             "--max-concurrency", str(args.concurrency)])
    finally:
        server.kill()
        server.wait()
    load_after = os.getloadavg()

    print(f"workload: {args.prompts} prompts x {args.samples} samples, <= {args.tokens} "
          f"tokens, temperature 0.8; {os.cpu_count()} cores; load average (1/5/15 min) "
          f"before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    print(f"| backend | samples | seconds | samples/s | tokens | tokens/s |")
    print(f"|---|---|---|---|---|---|")
    for name, (samples, seconds, tokens) in results.items():
        print(f"| {name} | {samples} | {seconds:.2f} | {samples / seconds:.2f} | {tokens} "
              f"| {tokens / seconds:.1f} |")


if __name__ == "__main__":
    main()
