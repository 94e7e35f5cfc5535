"""An enforced budget blocks SDK calls made through `meter.transport()`: nothing is sent, and the
SDK sees one HTTP 402 (not retried), since openai wraps transport exceptions and retries them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meter import Meter
from tests.budget_helpers import USD, put_usage
from tests.client_fixtures import require
from tests.test_enforce import HELLO, MODEL, Upstream, budget, store, this_week  # noqa: F401

openai = require("openai", "the openai SDK tests")


def test_the_openai_sdk_gets_a_402_and_nothing_reaches_the_upstream(
    openai_http: Any,
    store,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
):
    url, db = store
    blocked = budget(db, scope="team", subject="search")
    put_usage(db, this_week(db), 1 * USD, team="search", user="alice")
    upstream = Upstream()
    with Meter(database_url=url, spool_dir=tmp_path / "spool") as meter:
        wrapped = openai_http.MockTransport(upstream.handler)
        sdk = openai.OpenAI(
            base_url="http://upstream.test/v1",
            api_key="sk-test",
            http_client=openai_http.Client(
                transport=meter.transport(team="search", wrapped=wrapped)
            ),
        )
        with pytest.raises(openai.APIStatusError) as info:
            sdk.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        assert info.value.status_code == 402
        error = info.value.body
        assert isinstance(error, dict)
        assert error["code"] == "budget_exceeded"
        assert (error["budget_id"], error["scope"], error["subject"]) == (blocked, "team", "search")
        assert (error["limit_usd"], error["spend_usd"]) == ("1", "1")
        assert upstream.calls == 0  # not sent, and not retried either

        other = openai.OpenAI(
            base_url="http://upstream.test/v1",
            api_key="sk-test",
            http_client=openai_http.Client(transport=meter.transport(team="ads", wrapped=wrapped)),
        )
        resp = other.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
        assert resp.choices[0].message.content == "Hi"
        assert upstream.calls == 1
