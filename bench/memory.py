"""Memory with the database down: peak RSS of a process making 100,000 MeteredClient calls
(non-streaming, to bench/upstream.py) whose Meter points at PostgreSQL on a closed loopback
port, so every event stays in the spool and the drain keeps retrying. Baseline: the same calls
with a bare httpx.Client in a process of its own. RSS is sampled along the way: bounded means
flat, i.e. it does not grow with the number of calls once warm.

    .venv/bin/python -m bench.memory [--calls 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

from bench._common import (
    PYTHON,
    Report,
    Row,
    closed_port,
    run_json,
    say,
    upstream,
    workdir,
)

COMMAND = ".venv/bin/python -m bench.memory"
# Bounded means flat once warm: RSS growth over the second half of the calls (50% -> 100%).
# (The first tens of thousands of calls grow the allocator's arenas and the drain's retry
# state; a leak per call would keep growing.)
GROWTH_LIMIT_MB = 5.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(kind: str, base_url: str, calls: int, work: Path) -> dict[str, Any]:
    import httpx

    from bench import _ab

    checkpoints = sorted({calls // 100, calls // 10, calls // 4, calls // 2, 3 * calls // 4, calls})
    samples: dict[int, float] = {}
    extra: dict[str, Any] = {}
    if kind == "meter":
        from meter import Meter, MeteredClient

        url = f"postgresql+psycopg://meter@127.0.0.1:{closed_port()}/meter"
        meter = Meter(database_url=url, spool_dir=work / "spool")
        client = MeteredClient(
            api_key="sk-bench", base_url=base_url, meter=meter, user=_ab.USER, team="bench"
        )

        def call() -> object:
            resp = client.chat.completions.create(
                model=_ab.MODEL, messages=_ab.MESSAGES, max_tokens=_ab.MAX_TOKENS
            )
            return resp.choices[0].message.content

    else:
        bare = httpx.Client(timeout=600)
        call = _ab.bare_caller(bare, base_url, stream=False)
    for i in range(1, calls + 1):
        call()
        if i in checkpoints:
            samples[i] = rss_mb()
    if kind == "meter":
        stats = meter.stats()
        extra = {
            "spooled": stats.spooled,
            "stored": stats.stored,
            "dropped": stats.dropped,
            "spool_bytes": sum(p.stat().st_size for p in (work / "spool").glob("*.jsonl")),
        }
        client.close()
        meter.close(timeout=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "calls": calls, "samples_mb": samples, "peak_mb": peak, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--child", choices=["meter", "bare"])
    parser.add_argument("--base-url")
    args = parser.parse_args(argv)
    if args.child:
        work = workdir(f"memory-{args.child}")
        print(json.dumps(child(args.child, args.base_url, args.calls, work)))
        return 0
    report = Report("memory", COMMAND)
    docs: dict[str, Any] = {}
    with upstream() as base_url:
        for kind in ("bare", "meter"):
            say(f"memory: {args.calls:,} calls, {kind} client (own process) ...")
            docs[kind] = run_json(
                [
                    PYTHON,
                    "-m",
                    "bench.memory",
                    "--child",
                    kind,
                    "--calls",
                    str(args.calls),
                    "--base-url",
                    base_url,
                ]
            )
            say(f"  {json.dumps(docs[kind])}")
    ours, base = docs["meter"], docs["bare"]
    samples = {int(k): v for k, v in ours["samples_mb"].items()}
    growth = samples[args.calls] - samples[args.calls // 2]
    report.extra = docs
    report.add(
        Row(
            what=f"peak RSS, {args.calls:,} MeteredClient calls, PostgreSQL down",
            baseline=f"{base['peak_mb']:.1f} MB",
            ours=f"{ours['peak_mb']:.1f} MB",
            ratio=f"+{ours['peak_mb'] - base['peak_mb']:.1f} MB",
            target="-",
            met=None,
            notes=(
                f"baseline: bare httpx, same calls; {ours['spooled']:,} events spooled, "
                f"{ours['spool_bytes'] / 1e6:.1f} MB on disk, {ours['dropped']} dropped"
            ),
        )
    )
    half = str(args.calls // 2)
    base_growth = base["samples_mb"][str(args.calls)] - base["samples_mb"][half]
    report.add(
        Row(
            what=f"RSS growth from call {args.calls // 2:,} to {args.calls:,}, PostgreSQL down",
            baseline=f"{base_growth:+.1f} MB",
            ours=f"{growth:+.1f} MB",
            ratio="-",
            target=f"flat (<= +{GROWTH_LIMIT_MB:.0f} MB)",
            met=growth <= GROWTH_LIMIT_MB,
            notes="RSS (MB) after N calls: "
            + ", ".join(f"{int(k):,}: {v:.0f}" for k, v in sorted(samples.items())),
        )
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
