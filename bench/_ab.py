"""Interleaved A/B timing of two chat-completion callers, and the bare-httpx baseline caller.

Standalone (httpx and the standard library only): imported by meter's side
(`bench.client_overhead`) and by LiteLLM's side (`bench/litellm_side.py`, run by LiteLLM's own
venv), so both compare their client with the very same baseline code.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

MODEL = "mistralai/mistral-7b-instruct-v0.1"
MESSAGES = [{"role": "user", "content": "Hello"}]
MAX_TOKENS = 64
USER = "bench-user"

Caller = Callable[[], object]


def bare_payload(stream: bool) -> dict[str, Any]:
    """The body a metered client sends for the same call (meter forwards `user` and asks for
    usage in streams), so both sides move the same bytes."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "user": USER,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def bare_caller(client: httpx.Client, base_url: str, stream: bool) -> Caller:
    """What an application without a meter does: POST JSON, parse the JSON (or each SSE event)."""
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}
    payload = bare_payload(stream)

    def call() -> object:
        response = client.post(url, json=payload, headers=headers)
        response.raise_for_status()
        doc = response.json()
        return doc["choices"][0]["message"]["content"]

    def call_stream() -> object:
        text = []
        with client.stream("POST", url, json=payload, headers=headers) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                doc = json.loads(data)
                if doc["choices"]:
                    text.append(doc["choices"][0]["delta"].get("content") or "")
        return "".join(text)

    return call_stream if stream else call


def interleaved(a: Caller, b: Caller, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """n calls of each, alternating which goes first; per-call wall times in milliseconds."""
    for _ in range(warmup):
        a()
        b()
    gc.collect()
    ta: list[float] = []
    tb: list[float] = []
    clock = time.perf_counter_ns
    for i in range(n):
        first, second, t_first, t_second = (a, b, ta, tb) if i % 2 == 0 else (b, a, tb, ta)
        t0 = clock()
        first()
        t1 = clock()
        second()
        t2 = clock()
        t_first.append((t1 - t0) / 1e6)
        t_second.append((t2 - t1) / 1e6)
    return ta, tb


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(baseline: list[float], ours: list[float]) -> dict[str, float]:
    """p50/p99 of each side and the overheads, in ms."""
    doc = {
        "n": float(len(ours)),
        "baseline_p50": pct(baseline, 50),
        "baseline_p99": pct(baseline, 99),
        "ours_p50": pct(ours, 50),
        "ours_p99": pct(ours, 99),
        "baseline_mean": sum(baseline) / len(baseline),
        "ours_mean": sum(ours) / len(ours),
    }
    doc["overhead_p50"] = doc["ours_p50"] - doc["baseline_p50"]
    doc["overhead_p99"] = doc["ours_p99"] - doc["baseline_p99"]
    doc["overhead_mean"] = doc["ours_mean"] - doc["baseline_mean"]
    return doc
