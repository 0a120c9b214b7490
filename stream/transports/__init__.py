"""Transports: the same frames over ZeroMQ, MQTT or in-process queues.

A link is described by one URL that both ends use:

- ``inproc://NAME``                 in-process bus, lossless, for single-process runs and tests
- ``zmq+pubsub://HOST:PORT``        live fan-out; loss under load is possible and counted by seq
- ``zmq+pushpull://HOST:PORT``      lossless pipeline with backpressure
- ``mqtt://HOST:PORT``, ``mqtts://HOST:PORT``  MQTT through aiomqtt, QoS 0 or 1

Options go in ``TransportConfig`` (or the URL query: ``?qos=1&hwm=1000&format=json``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from .base import Publisher, Subscriber, TransportConfig

__all__ = ["Publisher", "Subscriber", "TransportConfig", "open_publisher", "open_subscriber",
           "parse_transport"]


def parse_transport(spec: str | TransportConfig) -> TransportConfig:
    if isinstance(spec, TransportConfig):
        return spec
    parts = urlsplit(spec)
    options = dict(parse_qsl(parts.query))
    return TransportConfig(url=parts._replace(query="").geturl(), **options)


def open_publisher(spec: str | TransportConfig) -> Publisher:
    cfg = parse_transport(spec)
    if cfg.scheme == "inproc":
        from .inproc import InprocPublisher
        return InprocPublisher(cfg)
    if cfg.scheme.startswith("zmq"):
        from .zmq import ZmqPublisher
        return ZmqPublisher(cfg)
    from .mqtt import MqttPublisher
    return MqttPublisher(cfg)


def open_subscriber(spec: str | TransportConfig, topics: list[str] | None = None) -> Subscriber:
    cfg = parse_transport(spec)
    topics = topics or ["opmon/#"]
    if cfg.scheme == "inproc":
        from .inproc import InprocSubscriber
        return InprocSubscriber(cfg, topics)
    if cfg.scheme.startswith("zmq"):
        from .zmq import ZmqSubscriber
        return ZmqSubscriber(cfg, topics)
    from .mqtt import MqttSubscriber
    return MqttSubscriber(cfg, topics)
