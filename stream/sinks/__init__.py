"""Sinks: where frames end up. One module per sink, each with its config schema."""

from __future__ import annotations

import importlib

from .base import Sink, SinkConfig

REGISTRY: dict[str, str] = {
    "lineprotocol": "stream.sinks.lineprotocol_file:LineProtocolFileSink",
    "record": "stream.sinks.record:RecordSink",
    "console": "stream.sinks.console:ConsoleSink",
    "publish": "stream.sinks.publish:PublishSink",
    "influxdb": "stream.sinks.influxdb:InfluxDBSink",
    "alert_mqtt": "stream.alerts.mqtt:MqttAlertSink",
    "alert_webhook": "stream.alerts.webhook:WebhookAlertSink",
    "alert_log": "stream.alerts.notify:LogAlertSink",
}


def sink_class(type_name: str) -> type[Sink]:
    try:
        module, cls = REGISTRY[type_name].split(":")
    except KeyError:
        raise KeyError(f"unknown sink type {type_name!r}; known: {sorted(REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


__all__ = ["REGISTRY", "Sink", "SinkConfig", "sink_class"]
