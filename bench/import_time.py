"""What `import meter` costs an application: wall time, modules loaded and peak RSS, each the
median of several fresh interpreters. Two cases: `import meter` alone, and what an application
that sends its events to a meter server does (`from meter import Meter, MeteredClient` and
`Meter(api_url=...)`). Baseline: `import httpx`, which any client of an LLM API pays anyway.
The heavy server-side packages (SQLAlchemy, Alembic, FastAPI, Click, Rich) must stay unloaded.

    .venv/bin/python -m bench.import_time [--runs 9] [--source DIR]

`--source DIR` imports meter from DIR (say, an older checkout: `git worktree add DIR COMMIT`)
instead of this tree, to compare before and after in the same environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from typing import Any

from bench._common import PYTHON, Report, Row, say

COMMAND = ".venv/bin/python -m bench.import_time"
HEAVY = ("sqlalchemy", "alembic", "fastapi", "click", "rich")

# name: (what is timed, what runs after it, untimed)
CASES = {
    "import httpx": ("import httpx", ""),
    "import meter": ("import meter", ""),
    "Meter(api_url=...)": (
        "from meter import Meter, MeteredClient\n"
        "m = Meter(api_url='http://127.0.0.1:9', api_key='k')",
        "m.close(timeout=0)",
    ),
}

CHILD = """\
import json, resource, sys, time
t0 = time.perf_counter()
exec(compile({code!r}, "<case>", "exec"))
elapsed = time.perf_counter() - t0
exec(compile({teardown!r}, "<teardown>", "exec"))
heavy = sorted(n for n in {heavy!r} if n in sys.modules)
print(json.dumps({{"import_s": elapsed, "modules": len(sys.modules), "heavy": heavy,
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def measure(code: str, teardown: str, runs: int, source: str | None) -> dict[str, Any]:
    """Medians over `runs` fresh interpreters (after one unmeasured run warms the disk cache)."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = source
    samples: list[dict[str, Any]] = []
    for i in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(
            [PYTHON, "-c", CHILD.format(code=code, teardown=teardown, heavy=HEAVY)],
            env=env,
            capture_output=True,
            check=True,
            cwd=source or None,
        )
        wall = time.perf_counter() - started
        if i == 0:
            continue
        doc = json.loads(done.stdout.decode().strip().splitlines()[-1])
        doc["process_s"] = wall
        samples.append(doc)
    return {
        "import_ms": statistics.median(s["import_s"] for s in samples) * 1000,
        "process_ms": statistics.median(s["process_s"] for s in samples) * 1000,
        "modules": int(statistics.median(s["modules"] for s in samples)),
        "rss_mb": statistics.median(s["rss_kb"] for s in samples) / 1024,
        "heavy": samples[-1]["heavy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--source", help="import meter from this directory instead")
    args = parser.parse_args(argv)
    results = {name: measure(*case, args.runs, args.source) for name, case in CASES.items()}
    for name, r in results.items():
        say(
            f"  {name:<22} import {r['import_ms']:6.0f} ms  process {r['process_ms']:6.0f} ms  "
            f"{r['modules']:4d} modules  {r['rss_mb']:5.1f} MB RSS  heavy: {r['heavy'] or '-'}"
        )
    base = results["import httpx"]
    report = Report("import_time", COMMAND + (f" --source {args.source}" if args.source else ""))
    report.extra = results
    for name in ("import meter", "Meter(api_url=...)"):
        r = results[name]
        report.add(
            Row(
                f"{name}: import wall time (median of {args.runs})",
                f"{base['import_ms']:.0f} ms",
                f"{r['import_ms']:.0f} ms",
                f"{r['import_ms'] / base['import_ms']:.1f}x",
                "-",
                None,
                notes=f"process {r['process_ms']:.0f} ms",
            )
        )
        report.add(
            Row(
                f"{name}: modules, peak RSS",
                f"{base['modules']}, {base['rss_mb']:.0f} MB",
                f"{r['modules']}, {r['rss_mb']:.0f} MB",
                f"{r['modules'] / base['modules']:.1f}x",
                "-",
                None,
            )
        )
        report.add(
            Row(
                f"{name}: server-side packages loaded",
                "-",
                ", ".join(r["heavy"]) or "none",
                "-",
                "none of " + "/".join(HEAVY),
                not r["heavy"],
            )
        )
    report.save()
    return 0 if not results["Meter(api_url=...)"]["heavy"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
