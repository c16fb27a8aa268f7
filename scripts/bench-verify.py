#!/usr/bin/env python3
"""Throughput of `autoif verify` against the paper's in-process exec loop, on the same
work (the AutoIF sample functions x their cases and responses, repeated), in one run on
one machine. Prints a Markdown table for docs/verify.md.

    scripts/bench-verify.py [--repeat 50] [--runs 3] [--no-build]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "scripts" / "verify_reference.py"
BINARY = ROOT / "target" / "release" / "autoif"


def timed(command):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return seconds, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50, help="copies of the sample work")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "autoif")
    parser.add_argument("--no-build", action="store_true", help="use the existing release binary")
    args = parser.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs, one = tmp / "jobs.jsonl", tmp / "one.jsonl"
        out = tmp / "out.jsonl"
        subprocess.run([sys.executable, REFERENCE, "jobs", "--data", args.data, "--out", jobs,
                        "--repeat", str(args.repeat)], check=True)
        subprocess.run([sys.executable, REFERENCE, "jobs", "--data", args.data, "--out", one], check=True)
        evals = sum(len(json.loads(line)["inputs"]) for line in jobs.open())

        paper = []
        for _ in range(args.runs):
            _, result = timed([sys.executable, REFERENCE, "paper-loop", "--jobs", jobs])
            paper.append(json.loads(result.stdout)["evals_per_s"])

        def verify(path, *flags):
            """(end-to-end evals/s, the command's own evals/s after start-up)."""
            total, inner = [], []
            count = sum(len(json.loads(line)["inputs"]) for line in path.open())
            for _ in range(args.runs):
                seconds, result = timed([BINARY, "verify", "--input", path, "--out", out, *flags])
                total.append(count / seconds)
                inner.append(float(re.search(r"\(([\d.]+) evals/s\)", result.stderr).group(1)))
            return statistics.median(total), statistics.median(inner), count

        cold_total, cold_inner, _ = verify(jobs, "--no-cache")
        warm_total, warm_inner, _ = verify(jobs)
        once_total, once_inner, once_evals = verify(one)

    base = statistics.median(paper)
    rows = [
        ("paper loop: exec + SIGALRM, one process (loop only)", evals, base, base),
        ("autoif verify --no-cache, end to end", evals, cold_total, cold_inner),
        ("autoif verify (cache on), end to end", evals, warm_total, warm_inner),
        ("autoif verify, sample once (start-up dominated)", once_evals, once_total, once_inner),
    ]
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, median of {args.runs} runs\n")
    print("| run | evals | evals/s (end to end) | evals/s (after start-up) | vs paper loop |")
    print("|---|---:|---:|---:|---:|")
    for name, count, total, inner in rows:
        print(f"| {name} | {count} | {total:,.0f} | {inner:,.0f} | {total / base:.2f}x |")


if __name__ == "__main__":
    main()
