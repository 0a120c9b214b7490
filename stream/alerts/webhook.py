"""The webhook notifier (sink ``alert_webhook``): each alert state change is POSTed as JSON.

Delivery is at least once, and each state change carries its idempotency key (the
``Idempotency-Key`` header and the body's ``key``), the same on every retry and on a replay, so
the receiver can drop a duplicate: exactly once per state change at the receiver.

- Retried: lost or refused connections, timeouts, 408, 429 and 5xx; after ``backoff_s``,
  doubling up to ``backoff_max_s``, each delay scaled by a random factor in [0.5, 1] (jitter);
  ``Retry-After`` (seconds) is honoured up to ``backoff_max_s``. At most ``max_attempts``.
- Not retried: other 4xx (the request is wrong; retrying would not help). Logged with the reply.
- Deliveries run in a background task, in order, from a bounded buffer: a receiver that is down
  never stalls the node. When the buffer is full the oldest waiting alert is dropped and counted.
- Retries and backoff use the wall clock; nothing else in alerting does.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random

import niquests
from pydantic import Field

from ..frame import Frame
from ..secrets import read_secret
from .notify import AlertSink, AlertSinkConfig, alert_document

log = logging.getLogger("opmon.alerts.webhook")



class WebhookConfig(AlertSinkConfig):
    url: str
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_buffered: int = Field(10_000, ge=1)
    headers: dict[str, str] = {}
    token_env: str | None = None     # sent as "Authorization: Bearer <token>"
    token_file: str | None = None
    dedup_keys: int = Field(100_000, ge=0)  # keys remembered so a repeated frame is sent once


class WebhookAlertSink(AlertSink):
    type_name = "alert_webhook"
    Config = WebhookConfig

    def __init__(self, config: WebhookConfig):
        super().__init__(config)
        self._pending: collections.deque[dict] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._session: niquests.AsyncSession | None = None
        self._sent_keys: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._headers = {"Content-Type": "application/json", "User-Agent": "opmon-alerts",
                         **config.headers}
        self.delivered = 0
        self.attempts = 0
        self.failed = 0
        self.dropped = 0

    async def start(self) -> None:
        token = read_secret(f"webhook {self.config.url} token", self.config.token_env,
                            self.config.token_file)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        if self._task is None:
            self._session = niquests.AsyncSession(retries=0, timeout=self.config.timeout_s)
            self._task = asyncio.create_task(self._run(), name=f"webhook {self.config.url}")

    async def write(self, frame: Frame) -> None:
        if frame.kind != "alert" or not self.wanted(frame):
            return
        if self._task is None:
            await self.start()
        doc = alert_document(frame)
        if doc["key"] in self._sent_keys:
            return  # the same state change again (e.g. a replayed frame): already queued
        self._remember(doc["key"])
        if len(self._pending) >= self.config.max_buffered:
            lost = self._pending.popleft()
            self.dropped += 1
            log.error("%s: buffer full, dropped alert %s", self.config.url, lost["key"])
        self._pending.append(doc)
        self._idle.clear()
        self._wakeup.set()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every alert so far was delivered or given up."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self, timeout: float = 30.0) -> None:
        if self._task is None:
            return
        try:
            await self.flush(timeout)
        except TimeoutError:
            log.error("%s: closing with %d alerts not delivered", self.config.url,
                      len(self._pending))
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _remember(self, key: str) -> None:
        if not self.config.dedup_keys:
            return
        self._sent_keys[key] = None
        if len(self._sent_keys) > self.config.dedup_keys:
            self._sent_keys.popitem(last=False)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            doc = self._pending[0]
            await self._deliver(doc)
            self._pending.popleft()

    async def _deliver(self, doc: dict) -> bool:
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = {**self._headers, "Idempotency-Key": doc["key"]}
        delay = self.config.backoff_s
        for attempt in range(1, self.config.max_attempts + 1):
            self.attempts += 1
            retry_after = None
            try:
                reply = await self._session.post(self.config.url, data=body, headers=headers)
                status = reply.status_code
                if status is not None and 200 <= status < 300:
                    self.delivered += 1
                    return True
                if not _retryable(status):
                    self.failed += 1
                    log.error("%s: alert %s refused with %s: %s", self.config.url, doc["key"],
                              status, (reply.text or "")[:200])
                    return False
                retry_after = _retry_after(reply.headers.get("Retry-After"))
                reason = f"HTTP {status}"
            except niquests.RequestException as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempt == self.config.max_attempts:
                break
            wait = min(self.config.backoff_max_s, delay) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                wait = min(self.config.backoff_max_s, max(wait, retry_after))
            log.warning("%s: alert %s attempt %d failed (%s); retrying in %.2f s",
                        self.config.url, doc["key"], attempt, reason, wait)
            await asyncio.sleep(wait)
            delay *= 2
        self.failed += 1
        log.error("%s: alert %s not delivered after %d attempts", self.config.url, doc["key"],
                  self.config.max_attempts)
        return False


def _retryable(status: int | None) -> bool:
    return status is None or status in (408, 429) or status >= 500


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
