#!/usr/bin/env python3
"""Throughput of `autoif verify` against the paper's in-process exec loop, on the same
work (the AutoIF sample functions x their cases and responses, repeated), in one run on
one machine. Prints the date, CPU model and load average, and a Markdown table for
docs/verify.md. With --baseline, a second `autoif` binary (say, one built before a
change) is measured in the same run, its runs interleaved with the first one's.

    scripts/bench-verify.py [--repeat 50] [--runs 3] [--no-build]
                            [--binary target/release/autoif] [--baseline OTHER_AUTOIF]
"""
import argparse
import datetime
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


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "unknown CPU")
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{now}, {os.cpu_count()} x {model}, load average {load}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50, help="copies of the sample work")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "autoif")
    parser.add_argument("--no-build", action="store_true", help="use the existing binary")
    parser.add_argument("--binary", type=Path, default=BINARY, help="the autoif binary to measure")
    parser.add_argument("--baseline", type=Path, help="a second autoif binary, measured in the same run")
    args = parser.parse_args()
    if not args.no_build and args.binary == BINARY:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binaries = [("", args.binary)]
    if args.baseline:
        binaries = [("baseline: ", args.baseline), ("", args.binary)]
    print(f"start: {machine()}")

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
            """Per binary: (end-to-end evals/s, the command's own evals/s after start-up)."""
            total = {name: [] for name, _ in binaries}
            inner = {name: [] for name, _ in binaries}
            count = sum(len(json.loads(line)["inputs"]) for line in path.open())
            for _ in range(args.runs):
                for name, binary in binaries:
                    seconds, result = timed([binary, "verify", "--input", path, "--out", out, *flags])
                    total[name].append(count / seconds)
                    inner[name].append(float(re.search(r"\(([\d.]+) evals/s\)", result.stderr).group(1)))
            return {name: (statistics.median(total[name]), statistics.median(inner[name]), count)
                    for name, _ in binaries}

        cold = verify(jobs, "--no-cache")
        warm = verify(jobs)
        once = verify(one)

    base = statistics.median(paper)
    rows = [("paper loop: exec + SIGALRM, one process (loop only)", evals, base, base)]
    for name, _ in binaries:
        rows += [
            (f"{name}autoif verify --no-cache, end to end", evals, *cold[name][:2]),
            (f"{name}autoif verify (cache on), end to end", evals, *warm[name][:2]),
            (f"{name}autoif verify, sample once (start-up dominated)", once[name][2], *once[name][:2]),
        ]
    print(f"end:   {machine()}")
    print(f"python {sys.version.split()[0]}, median of {args.runs} runs\n")
    print("| run | evals | evals/s (end to end) | evals/s (after start-up) | vs paper loop |")
    print("|---|---:|---:|---:|---:|")
    for name, count, total, inner in rows:
        print(f"| {name} | {count} | {total:,.0f} | {inner:,.0f} | {total / base:.2f}x |")


if __name__ == "__main__":
    main()
