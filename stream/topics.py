"""Topic names. Raw data: ``opmon/<experiment>/<cell>/<instrument>/<kind>``; results:
``opmon/<experiment>/<cell>/results/<name>``; events: ``opmon/<experiment>/<cell>/events``;
alerts: ``opmon/<experiment>/alerts``; runtime health: ``opmon/<experiment>/health/<stage>``.
"""

from __future__ import annotations

from .frame import RESULT_PREFIX, Frame

ROOT = "opmon"


def topic_for(frame: Frame) -> str:
    experiment, cell, instrument = frame.stream.split("/")
    kind = frame.kind
    if kind.startswith(RESULT_PREFIX):
        return f"{ROOT}/{experiment}/{cell}/results/{kind[len(RESULT_PREFIX):]}"
    if kind == "event":
        return f"{ROOT}/{experiment}/{cell}/events"
    if kind == "alert":
        return f"{ROOT}/{experiment}/alerts"
    if kind == "health":
        return f"{ROOT}/{experiment}/health/{instrument}"
    return f"{ROOT}/{experiment}/{cell}/{instrument}/{kind}"


def mqtt_matches(pattern: str, topic: str) -> bool:
    """MQTT wildcard match ('+' one level, '#' the rest)."""
    pat, top = pattern.split("/"), topic.split("/")
    for i, p in enumerate(pat):
        if p == "#":
            return True
        if i >= len(top) or (p != "+" and p != top[i]):
            return False
    return len(pat) == len(top)


def zmq_prefix(pattern: str) -> bytes:
    """ZeroMQ subscriptions are prefixes: the part of an MQTT-style pattern before a wildcard."""
    head = pattern.split("#", 1)[0].split("+", 1)[0]
    return head.encode()
