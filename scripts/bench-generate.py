#!/usr/bin/env python3
"""Generation throughput: autoif's engine against Hugging Face transformers, same CPU, one run.

For each batch size B, both sample N new tokens per sequence (temperature 0.8, top-p 0.95,
every sequence makes exactly N tokens) from SmolLM2-135M-Instruct and report aggregate
tokens/s = B * N / wall time of the whole generate call (prefill included):

  * transformers: PyTorch f32, weights dequantized from the GGUF, torch.set_num_threads(T);
  * autoif: `target/release/autoif bench generate --model M --batch B --new-tokens N --json`
    with RAYON_NUM_THREADS=T (one JSON object per run on stdout): the default path, whose
    projections run on int8 copies of the weights; with --with-exact also `--exact` (the
    f32 weights as loaded) as a second column.

Prints a markdown table: batch | transformers tok/s | autoif tok/s | ratio (and the
`--exact` run's tok/s and ratio with --with-exact).
If the release binary is missing, says how to build it and prints the transformers column.

  /work/refenv/bin/python scripts/bench-generate.py [--batches 1,8,32,64] [--threads 2]
Needs: torch, transformers, gguf (for the GGUF loader), numpy.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a short story about a robot who learns to paint."


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batches: expected comma-separated integers, got {text!r}")
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"--batches: batch sizes must be >= 1, got {text!r}")
    return batches


class TransformersBench:
    def __init__(self, model_path: Path, threads: int, seed: int):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self.torch = torch
        self.seed = seed
        folder, name = str(model_path.parent), model_path.name
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
        prompt = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
        )
        self.prompt_ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        # First call pays for one-time allocations and kernel selection; keep it out of the timings.
        self.generate(1, 8)

    def generate(self, batch: int, new_tokens: int) -> float:
        """Seconds for one sampling call of `batch` copies of the prompt."""
        torch = self.torch
        ids = self.prompt_ids.repeat(batch, 1)
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        elapsed = time.perf_counter() - start
        made = out.shape[1] - ids.shape[1]
        if made != new_tokens:
            raise RuntimeError(f"transformers made {made} new tokens, expected {new_tokens}")
        return elapsed


def autoif_run(binary: Path, model: Path, batch: int, new_tokens: int, threads: int,
               exact: bool = False) -> dict:
    cmd = [str(binary), "bench", "generate", "--model", str(model),
           "--batch", str(batch), "--new-tokens", str(new_tokens), "--json"]
    if exact:
        cmd.append("--exact")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no JSON object: {proc.stdout.strip()[-500:]}")
    return json.loads(lines[-1])


def warn_if_busy(threads: int) -> None:
    """Other processes on the same cores distort both columns (PyTorch's spinning thread pool
    suffers most), so say so instead of printing numbers that look clean."""
    load = os.getloadavg()[0]
    spare = (os.cpu_count() or 1) - threads
    if load > spare + 0.5:
        print(f"warning: 1-minute load average is {load:.1f} on {os.cpu_count()} cores; "
              "other work is running and the timings will be low", file=sys.stderr)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it, for the table's caption."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def fmt(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="SmolLM2 GGUF file")
    parser.add_argument("--batches", type=parse_batches, default=[1, 8, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "autoif")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-autoif", action="store_true")
    parser.add_argument("--with-exact", action="store_true",
                        help="also run autoif with --exact (f32 weights as loaded)")
    parser.add_argument("--json-out", type=Path, help="also write the raw measurements here")
    args = parser.parse_args()

    if not args.model.is_file():
        sys.exit(f"{args.model}: not found (run scripts/fetch-models.sh)")
    run_autoif = not args.skip_autoif
    if run_autoif and not args.binary.is_file():
        print(f"{args.binary}: not found; build it with `cargo build --release` "
              "(add `--features cuda` on a GPU machine). Showing transformers only.", file=sys.stderr)
        run_autoif = False

    warn_if_busy(args.threads)
    hf = None if args.skip_transformers else TransformersBench(args.model, args.threads, args.seed)
    rows = []
    for batch in args.batches:
        row = {"batch": batch, "new_tokens": args.new_tokens, "load_1min": os.getloadavg()[0],
               "transformers": None, "autoif": None, "autoif_exact": None}
        # Interleaved per batch size so both see the same machine state.
        if hf is not None:
            seconds = hf.generate(batch, args.new_tokens)
            row["transformers"] = {"total_s": seconds, "aggregate_tokens_per_s": batch * args.new_tokens / seconds}
        if run_autoif:
            row["autoif"] = autoif_run(args.binary, args.model, batch, args.new_tokens, args.threads)
            if args.with_exact:
                row["autoif_exact"] = autoif_run(args.binary, args.model, batch, args.new_tokens,
                                                 args.threads, exact=True)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    loads = [f"{row['load_1min']:.1f}" for row in rows]
    print(f"\nSmolLM2-135M-Instruct, {args.new_tokens} new tokens sampled (T=0.8, top-p 0.95), "
          f"{args.threads} threads, aggregate tokens/s; CPU: {cpu_model()}; 1-minute load "
          f"average at each row: {', '.join(loads)}\n")
    exact_cols = args.with_exact and run_autoif
    header = "| batch | transformers tok/s | autoif tok/s | ratio |"
    rule = "|------:|-------------------:|-------------:|------:|"
    if exact_cols:
        header += " autoif --exact tok/s | ratio |"
        rule += "---------------------:|------:|"
    print(header)
    print(rule)

    def ratio(ours, theirs):
        return f"{ours / theirs:.2f}×" if ours and theirs else "—"

    for row in rows:
        hf_tps = row["transformers"] and row["transformers"]["aggregate_tokens_per_s"]
        ours = row["autoif"] and row["autoif"]["aggregate_tokens_per_s"]
        line = f"| {row['batch']} | {fmt(hf_tps)} | {fmt(ours)} | {ratio(ours, hf_tps)} |"
        if exact_cols:
            exact = row["autoif_exact"] and row["autoif_exact"]["aggregate_tokens_per_s"]
            line += f" {fmt(exact)} | {ratio(exact, hf_tps)} |"
        print(line)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
