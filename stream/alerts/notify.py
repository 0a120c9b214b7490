"""What the notifiers send, the filter they share, and the log notifier.

Every notifier is a sink for ``alert`` frames: it sees each state change once, in order, and
sends the JSON document ``alert_document`` makes of it. The document's ``key`` is the
idempotency key of that state change (the same on every retry and on a replay).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any, Literal

from ..frame import Frame
from ..sinks.base import Sink, SinkConfig
from .config import SEVERITY_RANK, Severity

log = logging.getLogger("opmon.alerts")

AlertStateName = Literal["firing", "acknowledged", "resolved"]
_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def alert_document(frame: Frame) -> dict[str, Any]:
    """The JSON body of an alert notification (MQTT payload, webhook body)."""
    m = frame.meta
    experiment, cell, _ = frame.stream.split("/")
    value = _number(float(frame.arrays["value"][0])) if "value" in frame.arrays else None
    threshold = _number(float(frame.arrays["threshold"][0])) if "threshold" in frame.arrays \
        else None
    doc = {
        "experiment": experiment, "cell": cell, "rule": m.get("rule"), "state": m.get("state"),
        "severity": m.get("severity"), "alert_id": m.get("alert_id"), "key": m.get("key"),
        "t_ns": frame.t0_ns, "time": datetime.fromtimestamp(frame.t0_ns / 1e9, tz=UTC)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "onset_ns": m.get("onset_ns"), "field": m.get("field"), "value": value,
        "threshold": threshold, "source": m.get("source"), "event": m.get("event"),
        "count": m.get("count"), "repeat": m.get("repeat"), "latch": m.get("latch"),
        "acked_by": m.get("acked_by"), "labels": m.get("labels") or {},
        "tags": m.get("tags") or {},
    }
    doc["summary"] = summary(doc)
    return doc


def summary(doc: dict[str, Any]) -> str:
    what = f"event {doc['event']}" if doc.get("event") else doc.get("field")
    text = (f"[{doc['severity']}] {doc['rule']} {doc['state']} on {doc['experiment']}/"
            f"{doc['cell']}: {what}")
    if doc.get("value") is not None:
        text += f" = {doc['value']:.4g}"
    if doc.get("acked_by"):
        text += f" (acknowledged by {doc['acked_by']})"
    if doc.get("repeat"):
        text += f" (reminder {doc['repeat']})"
    return text


class AlertSinkConfig(SinkConfig):
    kinds: list[str] = ["alert"]
    states: list[AlertStateName] = ["firing", "acknowledged", "resolved"]
    min_severity: Severity = "info"


class AlertSink(Sink):
    """Base of the notifiers: ``wanted`` applies the state and severity filter."""

    Config = AlertSinkConfig

    def wanted(self, frame: Frame) -> bool:
        m = frame.meta
        return (m.get("state") in self.config.states
                and SEVERITY_RANK.get(m.get("severity"), 0)
                >= SEVERITY_RANK[self.config.min_severity])


class LogAlertSink(AlertSink):
    """Alerts to the ``opmon.alerts`` logger: critical as ERROR, warning as WARNING, info as
    INFO (resolved and acknowledged at INFO)."""

    type_name = "alert_log"

    async def write(self, frame: Frame) -> None:
        if frame.kind != "alert" or not self.wanted(frame):
            return
        doc = alert_document(frame)
        level = _LOG_LEVEL.get(doc["severity"], logging.WARNING) if doc["state"] == "firing" \
            else logging.INFO
        log.log(level, "%s [key %s]", doc["summary"], doc["key"])
