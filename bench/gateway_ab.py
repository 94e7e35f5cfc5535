"""Gateway A/B: meter's gateway at an earlier revision against the working tree, in one run.

What `bench.gateway` measures against a bare pass-through, this measures against meter itself:
two `meter serve` processes, one running the code of `--against` (a git worktree of that
revision, put first on its PYTHONPATH) and one running this checkout, each on a database of its
own with the same keys and budgets, both pinned to core 0 (the upstream and this process to
core 1). Latency: calls at concurrency 1, the two servers in turn, the order rotating call by
call. CPU: utime + stime of each server over blocks of sequential calls, alternated, each block
ending when its events are committed. On a machine whose speed drifts between runs (see
BENCHMARKS.md), a change's effect is read here, in one run, rather than from two runs of
`bench.gateway`. Each database is migrated, and its keys and budgets made, by its own
revision's code, so the two may differ in schema.

    .venv/bin/python -m bench.gateway_ab --against REV [--db sqlite|postgresql]
        [--budgets off|teams|global] [--calls 1500] [--cpu-calls 1000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench import gateway as g
from bench._common import (
    REPO,
    Report,
    Row,
    free_port,
    pct,
    pg_databases,
    process,
    run_json,
    say,
    upstream,
    wait_http,
    workdir,
)

COMMAND = ".venv/bin/python -m bench.gateway_ab"


@contextlib.contextmanager
def worktree(rev: str, where: Path) -> Iterator[Path]:
    """A detached git worktree of `rev`, removed on the way out."""
    path = where / "against"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False
        )


def prepare(tree: Path, url: str, budgets: str) -> list[str]:
    """`bench.gateway.prepare_meter_db` run by the code of `tree` (its migrations) -> keys."""
    script = (
        "import json, sys; from bench.gateway import prepare_meter_db; "
        "print(json.dumps(prepare_meter_db(sys.argv[1], sys.argv[2])))"
    )
    keys: list[str] = run_json(
        [sys.executable, "-c", script, url, budgets],
        env={"PYTHONPATH": str(tree)},
        timeout=300,
        cwd=tree,  # `python -c` puts its working directory first on sys.path
    )
    return keys


def run(
    report: Report, rev: str, db: str, budgets: str, calls: int, cpu_calls: int, rounds: int
) -> None:
    work = workdir("gateway-ab")
    with contextlib.ExitStack() as stack:
        old_tree = stack.enter_context(worktree(rev, work))
        pg = stack.enter_context(pg_databases()) if db == "postgresql" else None
        up = stack.enter_context(upstream(cpus=g.LOAD_CPUS))
        targets: dict[str, g.Target] = {}
        for name, tree in ((rev, old_tree), ("this checkout", REPO)):
            # An empty database, for the tree's own migrations.
            url = (
                pg.create(migrated=False)
                if pg is not None
                else f"sqlite:///{work}/ab-{len(targets)}.db"
            )
            keys = prepare(tree, url, budgets)
            port = free_port()
            env = {
                "METER_DATABASE_URL": url,
                "METER_UPSTREAM_BASE_URL": up,
                "OPENROUTER_API_KEY": g.UPSTREAM_KEY,
                "METER_SPOOL_DIR": str(work / f"spool-{len(targets)}"),
                "PYTHONPATH": str(tree),
            }
            cmd = [g.METER_BIN, "serve", "--port", str(port), "--no-scheduler"]
            log = work / f"server-{len(targets)}.log"
            proc = stack.enter_context(
                process(cmd, env=env, log=log, unset=("METER_ADMIN_KEY",), cpus=g.PROXY_CPUS)
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120, proc=proc)
            except RuntimeError:
                say(f"{name}'s server did not start; its log:\n{log.read_text()[-3000:]}")
                raise
            g.pin_tree(proc.pid, g.PROXY_CPUS)
            targets[name] = g.Target(name, f"http://127.0.0.1:{port}/v1", keys, proc.pid, url)
        os.sched_setaffinity(0, g.LOAD_CPUS)
        client = httpx.Client(timeout=60)
        callers = {n: g.plain_caller(client, t) for n, t in targets.items()}
        say(f"latency, concurrency 1: {calls} calls each, rotating")
        walls, _ = g.rotate(callers, calls, calls // 10, 300)
        say(f"CPU: {rounds} rounds of {cpu_calls} calls per server, alternated")
        cpu: dict[str, list[float]] = {n: [] for n in targets}
        names = list(targets)
        for r in range(rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                seconds, done = g.cpu_block(targets[n], callers[n], cpu_calls, 120)
                cpu[n].append(seconds / done * 1000)
                say(f"  round {r + 1} {n}: {cpu[n][-1]:.3f} ms CPU per call")
        client.close()
        old, new = names
        for q in (50, 99):
            a, b = pct(walls[old], q), pct(walls[new], q)
            report.add(
                Row(
                    what=f"{db}, budgets {budgets}: latency p{q}, c=1 (n={len(walls[new])})",
                    baseline=f"{rev} {g.ms(a)}",
                    ours=g.ms(b),
                    ratio=f"{b - a:+.3f} ms",
                    target="(A/B)",
                    met=None,
                )
            )
        a, b = sum(cpu[old]) / rounds, sum(cpu[new]) / rounds
        report.add(
            Row(
                what=f"{db}, budgets {budgets}: CPU per call, c=1 (mean of {rounds} blocks)",
                baseline=f"{rev} {g.ms(a)}",
                ours=g.ms(b),
                ratio=f"{b / a:.2f}x",
                target="(A/B)",
                met=None,
                notes="blocks: "
                + ", ".join(f"{x:.2f}" for x in cpu[new])
                + " (against "
                + ", ".join(f"{x:.2f}" for x in cpu[old])
                + ")",
            )
        )
        for t in targets.values():
            t.wait_recorded()
            if t._engine is not None:
                t._engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with")
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--budgets", default="teams", choices=["off", "teams", "global"])
    parser.add_argument("--calls", type=int, default=1500, help="per server at concurrency 1")
    parser.add_argument("--cpu-calls", type=int, default=1000, help="per CPU block")
    parser.add_argument("--rounds", type=int, default=6, help="CPU blocks per server")
    args = parser.parse_args(argv)
    if args.calls < 10 or args.cpu_calls < 1 or args.rounds < 1:
        parser.error("--calls must be at least 10, --cpu-calls and --rounds at least 1")
    report = Report("gateway_ab", COMMAND + f" --against {args.against} --db {args.db} "
                    f"--budgets {args.budgets}")  # fmt: skip
    t0 = time.perf_counter()
    run(report, args.against, args.db, args.budgets, args.calls, args.cpu_calls, args.rounds)
    report.extra["seconds"] = time.perf_counter() - t0
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
