#!/usr/bin/env python3
"""Reference side of the `autoif verify` tests and benchmark (standard library only).

  jobs        AutoIF sample data -> `autoif verify` input lines (one per function)
  direct      verdicts from running each job directly in this CPython, no sandbox
  paper-loop  the paper's in-process exec loop over the same jobs; prints its evals/s

The AutoIF sample files keep functions and inputs in different places:
  back_trans.jsonl          eval_func [[source, accuracy]], cases [[input, bool]]
  query_rft.jsonl           eval_func, cases, gpt-answer (sampled responses)
  dpo_query_w_funcs.jsonl   eval_func, gpt-answer
  eval_func_rft.jsonl       gpt-answer: raw model answers with a ```json {"func", "cases"}``` block
"""
import argparse
import json
import re
import signal
import sys
import time
from pathlib import Path


def sample_jobs(data_dir):
    """Every verification function with every input it is checked on in AutoIF."""
    jobs = []

    def rows(name):
        with open(data_dir / name, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def add(job_id, func, inputs):
        inputs = [text for text in dict.fromkeys(inputs) if isinstance(text, str)]
        if inputs:
            jobs.append({"id": job_id, "func": func, "inputs": inputs})

    for name, fields in (("back_trans.jsonl", ("cases",)),
                         ("query_rft.jsonl", ("cases", "gpt-answer")),
                         ("dpo_query_w_funcs.jsonl", ("gpt-answer",))):
        for row_index, row in enumerate(rows(name)):
            inputs = []
            for field in fields:
                for item in row.get(field, []):
                    inputs.append(item[0] if field == "cases" else item)
            for func_index, (func, _accuracy) in enumerate(row["eval_func"]):
                add(f"{name}:{row_index}:{func_index}", func, inputs)

    for row_index, row in enumerate(rows("eval_func_rft.jsonl")):
        funcs, inputs = [], []
        for answer in row["gpt-answer"]:
            block = re.findall(r"```json(.*?)```", answer, re.DOTALL)
            try:
                parsed = json.loads(block[0].strip())
            except (IndexError, json.JSONDecodeError):
                continue
            funcs.append(parsed["func"].strip())
            inputs += [case.get("input") for case in parsed.get("cases", []) if isinstance(case, dict)]
        for func_index, func in enumerate(dict.fromkeys(funcs)):
            add(f"eval_func_rft.jsonl:{row_index}:{func_index}", func, inputs)
    return jobs


def read_jobs(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout()


def direct_verdicts(job, timeout_s):
    """The verdicts `autoif verify` must give, from plain exec in a fresh namespace."""
    def error(kind, exc):
        return {"verdict": "error", "error": kind, "message": f"{type(exc).__name__}: {exc}"}

    n = len(job["inputs"])
    try:
        code = compile(job["func"], "<evaluate>", "exec")
    except (SyntaxError, ValueError) as exc:
        return [error("compile", exc)] * n
    namespace = {"__name__": "__evaluate__"}
    try:
        exec(code, namespace)
    except MemoryError as exc:
        return [error("memory", exc)] * n
    except Exception as exc:
        return [error("runtime", exc)] * n
    evaluate = namespace.get("evaluate")
    if not callable(evaluate):
        return [{"verdict": "error", "error": "missing_evaluate", "message": None}] * n
    results = []
    signal.signal(signal.SIGALRM, on_alarm)
    for response in job["inputs"]:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            value = evaluate(response)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except Timeout as exc:
            results.append(error("timeout", exc))
            continue
        except MemoryError as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            results.append(error("memory", exc))
            continue
        except Exception as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            results.append(error("runtime", exc))
            continue
        if value is True:
            results.append({"verdict": "pass", "error": None, "message": None})
        elif value is False:
            results.append({"verdict": "fail", "error": None, "message": None})
        else:
            results.append({"verdict": "error", "error": "bad_return", "message": type(value).__name__})
    return results


def timeout_handler(signum, frame):
    raise TimeoutError("Function execution timed out")


def paper_loop(jobs):
    """The loop of AutoIF's released scripts (code/7_query_vertification.py): exec the
    source into a locals dict, then call `evaluate` per response under a 5 s SIGALRM."""
    evals = 0
    start = time.perf_counter()
    for job in jobs:
        evals += len(job["inputs"])
        local_vars = {}
        try:
            exec(job["func"], globals(), local_vars)
        except Exception:
            continue
        if "evaluate" not in local_vars:
            continue
        eval_func = local_vars["evaluate"]
        for response in job["inputs"]:
            try:
                signal.signal(signal.SIGALRM, timeout_handler)
                signal.alarm(5)
                res = eval_func(response)
            except Exception:
                res = None
            finally:
                signal.alarm(0)
    return evals, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    jobs = commands.add_parser("jobs")
    jobs.add_argument("--data", type=Path, required=True, help="the AutoIF sample data folder")
    jobs.add_argument("--out", type=Path, required=True)
    jobs.add_argument("--repeat", type=int, default=1, help="copies of the work, with distinct ids")
    direct = commands.add_parser("direct")
    direct.add_argument("--jobs", type=Path, required=True)
    direct.add_argument("--out", type=Path, required=True)
    direct.add_argument("--timeout", type=float, default=5.0, help="seconds per call")
    loop = commands.add_parser("paper-loop")
    loop.add_argument("--jobs", type=Path, required=True)
    args = parser.parse_args()

    if args.command == "jobs":
        sample = sample_jobs(args.data)
        with open(args.out, "w", encoding="utf-8") as handle:
            for copy in range(args.repeat):
                for job in sample:
                    job_id = job["id"] if args.repeat == 1 else f"{job['id']}#{copy}"
                    handle.write(json.dumps({**job, "id": job_id}) + "\n")
    elif args.command == "direct":
        with open(args.out, "w", encoding="utf-8") as handle:
            for job in read_jobs(args.jobs):
                handle.write(json.dumps({"id": job["id"], "results": direct_verdicts(job, args.timeout)}) + "\n")
    else:
        evals, seconds = paper_loop(read_jobs(args.jobs))
        json.dump({"evals": evals, "seconds": seconds, "evals_per_s": evals / seconds}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
