"""Client overhead: MeteredClient vs a bare httpx.Client (which also parses the JSON or each SSE
event), against the same local upstream (bench/upstream.py, its own process), calls
interleaved A/B, streaming and not; recording on, Meter on a SQLite file with its drain running
as in production. Side by side: LiteLLM's `litellm.completion` with a cost callback, against its
own bare-httpx baseline measured in its own process (LiteLLM's venv).

    .venv/bin/python -m bench.client_overhead [--calls 3000] [--no-litellm]

Targets (SPEC section 6): p50 overhead <= +0.2 ms, p99 overhead <= +1 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx

from bench import _ab
from bench._common import REPO, Report, Row, run_json, say, upstream, workdir

P50_TARGET_MS = 0.2
P99_TARGET_MS = 1.0
COMMAND = ".venv/bin/python -m bench.client_overhead"


def measure_meter(base_url: str, calls: int, warmup: int) -> dict[str, Any]:
    from meter import Meter, MeteredClient

    work = workdir("client-overhead")
    meter = Meter(database_url=f"sqlite:///{work / 'meter.db'}", spool_dir=work / "spool")
    client = MeteredClient(
        api_key="sk-bench", base_url=base_url, meter=meter, user=_ab.USER, team="bench-team"
    )

    def call() -> object:
        resp = client.chat.completions.create(
            model=_ab.MODEL, messages=_ab.MESSAGES, max_tokens=_ab.MAX_TOKENS
        )
        return resp.choices[0].message.content

    def call_stream() -> object:
        text = []
        with client.chat.completions.create(
            model=_ab.MODEL, messages=_ab.MESSAGES, max_tokens=_ab.MAX_TOKENS, stream=True
        ) as stream:
            for chunk in stream:
                text.append(chunk.choices[0].delta.content or "")
        return "".join(text)

    out: dict[str, Any] = {}
    try:
        with httpx.Client(timeout=600) as bare:
            for mode, ours in (("nonstream", call), ("stream", call_stream)):
                say(f"  meter, {mode}: {calls} calls each, interleaved A/B ...")
                base = _ab.bare_caller(bare, base_url, stream=mode == "stream")
                t_base, t_ours = _ab.interleaved(base, ours, calls, warmup)
                out[mode] = _ab.summary(t_base, t_ours)
        flushed = meter.flush(timeout=60)
        stats = meter.stats()
        out["flushed"] = flushed
        out["stored"] = stats.stored
        out["spooled"] = stats.spooled
    finally:
        client.close()
        meter.close()
    return out


def measure_litellm(base_url: str, calls: int, warmup: int) -> dict[str, Any] | None:
    from bench.setup_litellm import ensure

    try:
        python = ensure()
    except Exception as exc:  # no PyPI: say so, keep meter's numbers
        say(f"  LiteLLM venv unavailable ({exc}); skipping LiteLLM")
        return None
    say(f"  LiteLLM, {calls} calls each mode, interleaved A/B (its own venv and process) ...")
    doc: dict[str, Any] = run_json(
        [
            str(python),
            str(REPO / "bench" / "litellm_side.py"),
            "--base-url",
            base_url,
            "--calls",
            str(calls),
            "--warmup",
            str(warmup),
        ],
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    return doc


def _ms(value: float) -> str:
    return f"{value:.3f} ms"


def rows(report: Report, who: str, doc: dict[str, Any], targets: bool) -> None:
    for mode in ("nonstream", "stream"):
        s = doc[mode]
        label = "streaming" if mode == "stream" else "non-streaming"
        for q, target in (("p50", P50_TARGET_MS), ("p99", P99_TARGET_MS)):
            overhead = s[f"overhead_{q}"]
            report.add(
                Row(
                    what=f"{who}, {label}, {q} (n={int(s['n'])} each)",
                    baseline=_ms(s[f"baseline_{q}"]),
                    ours=_ms(s[f"ours_{q}"]),
                    ratio=f"{overhead:+.3f} ms",
                    target=f"<= +{target} ms" if targets else "(reference)",
                    met=(overhead <= target) if targets else None,
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls of each side per mode")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args(argv)
    report = Report("client_overhead", COMMAND)
    say(f"client overhead: {args.calls} calls per side and mode (load {os.getloadavg()})")
    with upstream() as base_url:
        ours = measure_meter(base_url, args.calls, args.warmup)
        lite = None if args.no_litellm else measure_litellm(base_url, args.calls, args.warmup)
    report.extra["meter"] = ours
    rows(report, "meter MeteredClient", ours, targets=True)
    if lite is not None:
        report.extra["litellm"] = lite
        rows(report, f"LiteLLM {lite.get('litellm_version', '')} completion", lite, targets=False)
        say(
            f"  LiteLLM import took {lite['import_s']:.1f} s; cost callbacks with a cost: "
            f"{lite['callbacks_with_cost']}"
        )
    say(
        f"  meter stored {ours['stored']} of {ours['spooled']} spooled events (flushed: "
        f"{ours['flushed']})"
    )
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
