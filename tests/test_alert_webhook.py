"""The webhook notifier against a real HTTP receiver on a free loopback port: each alert state
change reaches the receiver exactly once (by its idempotency key), in order, although the
receiver answers 500, drops connections before and after taking a delivery, is not listening at
first, or asks to wait with 429 and Retry-After; a 400 is not retried; attempts are bounded."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stream.alerts.webhook import WebhookAlertSink, WebhookConfig
from stream.frame import Frame
from stream.node import Node

from .servers import free_port
from .test_alerts import HARD_SHORT, LOW, ack, blocks, engine, event
from .test_node import CollectSink, ListSource


class Receiver:
    """An HTTP endpoint that answers each request as ``plan`` says, in arrival order, then 200:

    - ``"500"`` / ``"400"``: that status, the delivery not taken;
    - ``"429:S"``: 429 with ``Retry-After: S``;
    - ``"drop"``: the connection is closed without an answer, the delivery not taken;
    - ``"drop-after"``: the delivery is taken, then the connection is closed without an answer
      (the sender cannot know, and sends it again).

    A taken delivery whose Idempotency-Key was taken before is a duplicate and is not processed
    again: what a receiver does with the key."""

    def __init__(self, plan: list[str], port: int = 0):
        self.plan = list(plan)
        self.requests: list[tuple[float, str, dict]] = []   # (arrival, header key, body)
        self.processed: list[dict] = []
        self.duplicates = 0
        self._keys: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers.get("Idempotency-Key", "")
                action = receiver._arrived(key, body)
                if action in ("drop", "drop-after"):
                    if action == "drop-after":
                        receiver._take(key, body)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action.startswith("429:"):
                    self.send_response(429)
                    self.send_header("Retry-After", action[4:])
                elif action in ("500", "400"):
                    self.send_response(int(action))
                else:
                    receiver._take(key, body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _arrived(self, key: str, body: dict) -> str:
        with self._lock:
            self.requests.append((time.monotonic(), key, body))
            return self.plan.pop(0) if self.plan else "ok"

    def _take(self, key: str, body: dict) -> None:
        with self._lock:
            if key in self._keys:
                self.duplicates += 1
            else:
                self._keys.add(key)
                self.processed.append(body)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _frames() -> list[Frame]:
    """Alert state changes of every kind: firing, reminders, acknowledged and resolved on
    cell01 (a latched field rule), firing and resolved on cell02 (an event rule)."""
    return [*blocks([3.0] * 10 + [2.0] * 40), event("hard_short", 2.0, cell="cell02"),
            ack("low", cell="cell01"), *blocks([2.0] * 10 + [3.0] * 10, start_s=5.0, seq0=5),
            *blocks([3.0] * 100, stream="exp/cell02/potentiostat", start_s=2.1)]


def _run(url: str, frames: list[Frame], **options: object) -> tuple[WebhookAlertSink, list]:
    sink = WebhookAlertSink(WebhookConfig(url=url, backoff_s=0.02, backoff_max_s=0.2,
                                          **options))
    collect = CollectSink()
    rules = [{**LOW, "latch": True, "repeat_s": 1.5}, {**HARD_SHORT, "resolve_after_s": 5.0}]
    node = Node("exp", [ListSource(frames)], [engine(*rules)], [sink, collect],
                handle_signals=False)
    asyncio.run(node.run())
    return sink, [f for f in collect.frames if f.kind == "alert"]


def test_each_state_change_exactly_once_through_errors_and_dropped_connections() -> None:
    plan = ["500", "500", "drop", "ok",      # 1st alert: taken at the 4th attempt
            "drop-after", "ok",              # 2nd: taken, answer lost, sent again: a duplicate
            "500", "drop-after", "ok",       # 3rd: the same after a 500
            "drop", "ok", "ok", "500"]       # 4th after a drop, 5th at once, 6th after a 500
    failures = sum(action != "ok" for action in plan)
    with Receiver(plan) as receiver:
        sink, alerts = _run(receiver.url, _frames())
    states = [(a.cell, a.meta["state"], a.meta["repeat"]) for a in alerts]
    assert states == [("cell01", "firing", 0), ("cell01", "firing", 1), ("cell01", "firing", 2),
                      ("cell02", "firing", 0), ("cell01", "acknowledged", 2),
                      ("cell01", "resolved", 2), ("cell02", "resolved", 0)]
    # every state change processed once, in the order the engine made them
    assert [d["key"] for d in receiver.processed] == [a.meta["key"] for a in alerts]
    assert len(set(d["key"] for d in receiver.processed)) == len(alerts)
    assert receiver.duplicates == 2  # the two deliveries taken before a dropped connection
    assert len(receiver.requests) == len(alerts) + failures
    assert all(key == body["key"] for _, key, body in receiver.requests)
    assert (sink.delivered, sink.failed, sink.dropped) == (len(alerts), 0, 0)
    first = receiver.processed[0]
    assert (first["rule"], first["state"], first["cell"], first["value"], first["threshold"]) \
        == ("low", "firing", "cell01", 2.0, 2.5)
    assert first["summary"].startswith("[critical] low firing on exp/cell01: voltage = 2")
    resolved = next(d for d in receiver.processed if d["state"] == "resolved")
    assert resolved["acked_by"] == "tester"


def test_receiver_not_listening_at_first() -> None:
    port = free_port()
    late: dict[str, Receiver] = {}

    def start_later() -> None:
        time.sleep(0.6)
        late["receiver"] = Receiver([], port).__enter__()

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        sink, alerts = _run(f"http://127.0.0.1:{port}/hook", _frames()[:6], max_attempts=30)
    finally:
        starter.join()
        late["receiver"].__exit__()
    receiver = late["receiver"]
    assert [d["key"] for d in receiver.processed] == [a.meta["key"] for a in alerts]
    assert sink.attempts > len(alerts)  # the refused connections were retried


def test_retry_after_is_honoured_and_400_is_not_retried() -> None:
    with Receiver(["429:1", "ok", "400"]) as receiver:
        sink, alerts = _run(receiver.url, _frames()[:3])
    assert len(alerts) == 2  # low firing, then its first reminder
    (t_429, key_1, _), (t_retry, key_1b, _), (_, key_2, _) = receiver.requests[:3]
    assert key_1 == key_1b == alerts[0].meta["key"] and key_2 == alerts[1].meta["key"]
    assert t_retry - t_429 >= 0.2  # Retry-After: 1, capped by backoff_max_s = 0.2
    assert [d["key"] for d in receiver.processed] == [alerts[0].meta["key"]]  # 400: given up
    assert (sink.delivered, sink.failed, len(receiver.requests)) == (1, 1, 3)


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_attempts_are_bounded(max_attempts: int) -> None:
    with Receiver(["500"] * 100) as receiver:
        sink, alerts = _run(receiver.url, _frames()[:2], max_attempts=max_attempts)
    assert len(alerts) == 1 and receiver.processed == []
    assert len(receiver.requests) == max_attempts and sink.failed == 1
