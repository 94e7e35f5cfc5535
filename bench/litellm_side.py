"""LiteLLM's side of the client-overhead benchmark, run by LiteLLM's own venv (bench/.cache/
litellm-venv, made by bench/setup_litellm.py), never by meter's.

`litellm.completion` to the benchmark upstream with a success callback that reads the call's
cost (`response_cost`, from a price registered for the model), interleaved A/B with the same
bare-httpx baseline as meter's side, in this same process. Prints one JSON line.

    bench/.cache/litellm-venv/bin/python bench/litellm_side.py --base-url URL --calls 2000
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network for its price map
os.environ.setdefault("LITELLM_TELEMETRY", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _ab import (
    MAX_TOKENS,
    MESSAGES,
    MODEL,
    USER,
    bare_caller,
    interleaved,
    summary,
)

LITELLM_MODEL = "openai/" + MODEL


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    t0 = time.perf_counter()
    import litellm

    import_s = time.perf_counter() - t0
    litellm.telemetry = False
    litellm.register_model(
        {
            LITELLM_MODEL: {
                "input_cost_per_token": 0.11e-6,
                "output_cost_per_token": 0.19e-6,
                "litellm_provider": "openai",
                "mode": "chat",
                "max_tokens": 4096,
            }
        }
    )
    costs: list[float] = []

    def track_cost(kwargs: dict[str, Any], response: Any, start: Any, end: Any) -> None:
        costs.append(float(kwargs.get("response_cost") or 0.0))

    litellm.success_callback = [track_cost]

    def call() -> object:
        resp = litellm.completion(
            model=LITELLM_MODEL,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            user=USER,
            api_base=args.base_url,
            api_key="sk-bench",
        )
        return resp.choices[0].message.content

    def call_stream() -> object:
        text = []
        stream = litellm.completion(
            model=LITELLM_MODEL,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            user=USER,
            api_base=args.base_url,
            api_key="sk-bench",
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
        return "".join(text)

    out: dict[str, Any] = {
        "litellm_version": importlib.metadata.version("litellm"),
        "import_s": import_s,
    }
    with httpx.Client(timeout=600) as bare:
        for mode, ours in (("nonstream", call), ("stream", call_stream)):
            base = bare_caller(bare, args.base_url, stream=mode == "stream")
            t_base, t_ours = interleaved(base, ours, args.calls, args.warmup)
            out[mode] = summary(t_base, t_ours)
    time.sleep(1.0)  # LiteLLM runs success callbacks in a thread pool: let them finish
    out["callbacks"] = len(costs)
    out["callbacks_with_cost"] = sum(1 for c in costs if c > 0)
    out["example_cost"] = costs[-1] if costs else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
