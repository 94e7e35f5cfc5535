"""Webhook delivery from the durable outbox (the `alerts` rows), in a worker thread of its own.

Each attempt: claim a due alert in a short transaction (bumping its version and leasing it), send
outside any transaction, record the outcome in another short one. So a slow receiver holds no
lock and never delays a roll-up, two servers never send the same alert at once, and a restart
loses nothing: what was pending is still pending in the database.

Retries: exponential backoff with jitter, `base_delay x 2^(n-1)` (capped at `max_delay`) scaled by
a random factor in [0.5, 1], until a 2xx or `max_attempts` attempts (then `failed`). With the
defaults that is 12 attempts over roughly 35 to 70 minutes. Redirects are not followed (a
redirect could point anywhere), so a 3xx is a failed attempt.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from meter.budgets import repository as repo
from meter.budgets.signing import delivery_headers
from meter.budgets.url_policy import RefusedUrl, check_before_send
from meter.db.session import Database
from meter.settings import Settings

log = logging.getLogger("meter.webhooks")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 12
    base_delay: float = 2.0
    max_delay: float = 3600.0
    connect_timeout: float = 5.0
    timeout: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
        full = min(self.max_delay, self.base_delay * float(2 ** (attempt - 1)))
        return full * (0.5 + random.random() / 2)

    @property
    def lease_seconds(self) -> float:
        # Longer than any one send can take, so a live sender never loses its claim.
        return self.connect_timeout + self.timeout + 30.0


@dataclass(frozen=True)
class SendResult:
    ok: bool
    status_code: int | None
    error: str | None
    retryable: bool = True


def send(
    client: httpx.Client,
    settings: Settings,
    url: str,
    delivery_id: str,
    body: bytes,
    secret: str | None,
) -> SendResult:
    """POST one delivery: URL policy first (no I/O before it), then the signed exact bytes."""
    try:
        check_before_send(url, settings)
    except RefusedUrl as exc:
        return SendResult(False, None, f"refused: {exc}", retryable=False)
    headers = delivery_headers(delivery_id, int(time.time()), body, secret)
    try:
        with client.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
    except httpx.HTTPError as exc:
        # The exception's text can hold the URL (and credentials in it): keep only its kind.
        return SendResult(False, None, f"{type(exc).__name__}")
    if 200 <= status < 300:
        return SendResult(True, status, None)
    return SendResult(False, status, f"HTTP {status}")


def new_client(policy: RetryPolicy) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(policy.timeout, connect=policy.connect_timeout),
        follow_redirects=False,
        trust_env=False,  # a proxy from the environment would bypass the host policy
    )


class DeliveryWorker:
    """Sends due alerts. `run_once` is one pass (tests call it); `start` runs passes in a thread."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        policy: RetryPolicy | None = None,
        poll_interval: float = 1.0,
        batch: int = 20,
    ) -> None:
        self.db = db
        self.settings = settings
        self.policy = policy or RetryPolicy()
        self.poll_interval = poll_interval
        self.batch = batch
        self._client = new_client(self.policy)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> int:
        """Claim and send what is due now; return how many attempts were made."""
        now = now or datetime.now(UTC)
        lease = now + timedelta(seconds=self.policy.lease_seconds)
        claimed: list[repo.DueDelivery] = []
        with self.db.engine.begin() as conn:
            for row in repo.due_heads(conn, now, self.batch):
                if repo.claim_delivery(conn, row.id, row.attempts, lease):
                    claimed.append(
                        repo.DueDelivery(
                            row.id,
                            row.attempts + 1,
                            row.payload,
                            row.webhook_url,
                            row.webhook_secret,
                        )
                    )
        for item in claimed:
            self._attempt(item)
        return len(claimed)

    def _attempt(self, item: repo.DueDelivery) -> None:
        if not item.webhook_url:
            result = SendResult(False, None, "the budget has no webhook_url", retryable=False)
        else:
            body = item.payload.encode("utf-8")
            result = send(
                self._client,
                self.settings,
                item.webhook_url,
                item.alert_id,
                body,
                item.webhook_secret,
            )
        now = datetime.now(UTC)
        if result.ok:
            status, next_at, delivered = "delivered", None, now
        elif result.retryable and item.attempts < self.policy.max_attempts:
            status, delivered = "pending", None
            next_at = now + timedelta(seconds=self.policy.delay(item.attempts))
        else:
            status, next_at, delivered = "failed", None, None
        with self.db.engine.begin() as conn:
            repo.finish_delivery(
                conn,
                item.alert_id,
                item.attempts,
                status=status,
                last_error=result.error,
                next_attempt_at=next_at,
                delivered_at=delivered,
            )
        if not result.ok:
            log.warning(
                "webhook delivery %s attempt %d: %s (%s)",
                item.alert_id,
                item.attempts,
                result.error,
                status,
            )

    # -- the thread ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="meter-webhooks", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once() > 0
            except Exception:  # the database may be down for a while: keep the thread alive
                log.warning("webhook delivery pass failed; retrying", exc_info=True)
                busy = False
            if not busy:
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._client.close()
