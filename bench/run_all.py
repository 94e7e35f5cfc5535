"""Run every benchmark, one process each, then write their tables to
bench/.cache/results/tables.md (BENCHMARKS.md is written from it by hand, with the analysis).

    .venv/bin/python -m bench.run_all            # or: make bench   (about 20-25 min on 2 cores)
    .venv/bin/python -m bench.run_all --quick    # small sizes: a smoke run of every script

The first run also builds LiteLLM's venv and the 1M/5M datasets (cached in bench/.cache/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench._common import PYTHON, REPO, RESULTS, SMOKE_ENV, Row, machine, markdown_table, say

FULL = [
    ["bench.client_overhead"],
    ["bench.recording"],
    ["bench.ingest"],
    ["bench.memory"],
    ["bench.rollup"],  # includes the read path on the rolled-up 5M dataset
    ["bench.import_time"],
    ["bench.gateway"],
    ["bench.purge"],
]
QUICK = [
    ["bench.client_overhead", "--calls", "300", "--warmup", "30"],
    ["bench.recording", "--events", "20000", "--rounds", "2", "--e2e-events", "10000"],
    ["bench.ingest", "--events", "10000"],
    ["bench.memory", "--calls", "2000"],
    ["bench.rollup", "--sizes", "20000,100000"],
    ["bench.import_time", "--runs", "3"],
    ["bench.gateway", "--quick"],
    ["bench.purge", "--events", "50000", "--ingest-events", "20000"],
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated module names, e.g. bench.rollup")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.only:
        wanted = set(args.only.split(","))
        plan = [p for p in plan if p[0] in wanted]
    t0 = time.perf_counter()
    if args.quick:
        os.environ[SMOKE_ENV] = "1"  # the children inherit it
        say("quick run: every script at small sizes, to see that it runs; no verdicts")
    say(f"machine: {machine()}")
    failed = []
    for cmd in plan:
        say(f"\n=== {' '.join(cmd)} (load {os.getloadavg()[0]:.2f}) ===")
        started = time.perf_counter()
        done = subprocess.run([PYTHON, "-m", *cmd], cwd=REPO)
        say(f"=== {cmd[0]}: exit {done.returncode} in {time.perf_counter() - started:.0f} s")
        if done.returncode != 0:
            failed.append(cmd[0])
    total = time.perf_counter() - t0
    kind = "Quick (smoke) run" if args.quick else "Run"
    sections = [f"{kind} of {time.strftime('%Y-%m-%d %H:%M')}, {total / 60:.1f} min, {machine()}"]
    for cmd in plan:
        path = RESULTS / f"{cmd[0].removeprefix('bench.')}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        rows = [Row(**r) for r in doc["rows"]]
        sections.append(
            f"### {doc['bench']}\n\n`{doc['command']}` (load at the end: "
            f"{doc['machine']['loadavg'][0]:.2f})\n\n{markdown_table(rows)}"
        )
    out = RESULTS / "tables.md"
    out.write_text("\n\n".join(sections) + "\n")
    say(f"\nall benchmarks: {total / 60:.1f} min; tables in {out.relative_to(REPO)}")
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
