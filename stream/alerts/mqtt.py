"""MQTT for alerts, through aiomqtt: the retained alert topics and the acknowledgement topic.

- ``MqttAlertSink`` (sink ``alert_mqtt``) publishes every alert state change as JSON on
  ``<root>/<experiment>/alerts/<rule>/<cell>[/<group>]``, retained, so a dashboard or
  ``opmon alerts list`` that subscribes later sees the current state of every alert. A resolved
  alert updates its topic to ``resolved`` (or, with ``clear_on_resolve``, is published once and
  its retained message deleted). Messages go out in order; on a lost connection the sink
  reconnects with exponential backoff and jitter and re-sends the message in flight.
- ``AckSource`` subscribes to ``<root>/<experiment>/alerts/ack`` and turns each JSON
  ``{"rule": ..., "cell": ..., "by": ...}`` into a ``command`` frame for the node, so an
  acknowledgement is processed in order with the data and recorded like it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

import aiomqtt
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..frame import Frame, FrameError
from ..sources import Source, SubscriberSource
from ..transports.base import TransportConfig
from ..transports.mqtt import MqttSubscriber, _Backoff, _client_kwargs
from . import ACK_COMMAND, COMMAND_KIND, ack_topic, alert_topic
from .notify import AlertSink, AlertSinkConfig, alert_document

log = logging.getLogger("opmon.alerts.mqtt")

class MqttAlertConfig(AlertSinkConfig, TransportConfig):
    """The broker and its options as for any MQTT link (url, qos, client_id, username,
    password_env/password_file, tls_*, reconnect_*), plus what is particular to alerts."""

    url: str                          # mqtt://HOST:PORT or mqtts://HOST:PORT
    topic_root: str = "opmon"
    retain: bool = True
    clear_on_resolve: bool = False    # delete the retained message when an alert resolves
    ack: bool = True                  # the node listens on <root>/<experiment>/alerts/ack
    max_buffered: int = 10_000        # alerts waiting to be sent; a full buffer makes write wait

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        if not url.startswith(("mqtt://", "mqtts://")):
            raise ValueError("alert topics need an mqtt:// or mqtts:// URL")
        return url

    def transport(self) -> TransportConfig:
        return TransportConfig(**self.model_dump(include=set(TransportConfig.model_fields)))


class MqttAlertSink(AlertSink):
    type_name = "alert_mqtt"
    Config = MqttAlertConfig

    def __init__(self, config: MqttAlertConfig):
        super().__init__(config)
        self.transport = config.transport()
        self._queue: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(config.max_buffered)
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()
        self.published = 0
        self.reconnects = 0
        self._identifier = f"opmon-alerts-{uuid.uuid4().hex[:12]}"

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"alert_mqtt {self.config.url}")

    async def write(self, frame: Frame) -> None:
        if frame.kind != "alert" or not self.wanted(frame):
            return
        if self._task is None:
            await self.start()
        if self._task.done():  # e.g. a missing secret: say so instead of buffering forever
            raise RuntimeError(f"{self.config.url}: the alert publisher stopped: "
                               f"{self._task.exception()!r}")
        doc = alert_document(frame)
        topic = alert_topic(doc["experiment"], doc["alert_id"], self.config.topic_root)
        payload = json.dumps(doc, separators=(",", ":")).encode()
        if doc["state"] == "resolved" and self.config.clear_on_resolve:
            await self._queue.put((topic, payload, False))
            await self._queue.put((topic, b"", True))  # an empty retained message deletes it
        else:
            await self._queue.put((topic, payload, self.config.retain))

    async def close(self, timeout: float = 10.0) -> None:
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.error("%s: closing with %d alerts not published", self.config.url,
                      self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        backoff = _Backoff(self.transport)
        current: tuple[str, bytes, bool] | None = None
        while True:
            try:
                kwargs = _client_kwargs(self.transport, self._identifier, clean_session=True)
                async with aiomqtt.Client(**kwargs) as client:
                    backoff.reset()
                    self.connected.set()
                    while True:
                        if current is None:
                            current = await self._queue.get()
                        topic, payload, retain = current
                        await client.publish(topic, payload, qos=self.config.qos, retain=retain)
                        current = None
                        self.published += 1
                        self._queue.task_done()
            except (aiomqtt.MqttError, OSError) as exc:
                self.connected.clear()
                self.reconnects += 1
                log.warning("%s: alert publisher connection lost (%s); reconnecting",
                            self.config.url, exc)
                await backoff.sleep()


class AckCommand(BaseModel):
    """The JSON body of an acknowledgement. ``rule`` and ``cell`` may be globs; no cell means
    every cell."""

    model_config = ConfigDict(extra="forbid")
    rule: str
    cell: str | None = None
    by: str | None = None
    comment: str | None = None


class AckSubscriber(MqttSubscriber):
    """Acknowledgements from the MQTT command topic, as ``command`` frames on
    ``<experiment>/_operator/alert_ack``; anything else on the topic is a counted reject."""

    def __init__(self, config: MqttAlertConfig, experiment: str):
        self.topic = ack_topic(experiment, config.topic_root)
        super().__init__(config.transport(), [self.topic])
        self.stream = f"{experiment}/_operator/alert_ack"
        self._seq = 0

    def command_frame(self, payload: bytes) -> Frame:
        try:
            ack = AckCommand.model_validate_json(payload)
        except ValidationError as exc:
            raise FrameError(self.stream, "payload", f"not an acknowledgement {{rule, cell, by, "
                             f"comment}}: {exc.errors()[0]['msg']}") from None
        meta: dict[str, Any] = {"command": ACK_COMMAND, **ack.model_dump(exclude_none=True)}
        frame = Frame(self.stream, COMMAND_KIND, self._seq, time.time_ns(), {}, {}, meta)
        self._seq += 1
        return frame

    def _decode(self, raw: object) -> list[Frame]:
        payload = raw.payload  # type: ignore[attr-defined]
        return [self.command_frame(payload if isinstance(payload, bytes)
                                   else str(payload).encode())]


class AckSource(SubscriberSource):
    """The node's source of acknowledgements. ``auxiliary``: the node does not wait for it to
    end (it never does)."""

    auxiliary = True

    def __init__(self, config: MqttAlertConfig, experiment: str):
        subscriber = AckSubscriber(config, experiment)
        super().__init__(subscriber, name=f"alert-ack {subscriber.topic}")
        self.topic = subscriber.topic


def ack_sources(cfg: Any) -> list[Source]:
    """One ``AckSource`` per ``alert_mqtt`` sink of an ``OpmonConfig`` that listens for acks."""
    out: list[Source] = []
    for plugin in cfg.sinks:
        if plugin.type == MqttAlertSink.type_name:
            sink_cfg = MqttAlertConfig.model_validate(plugin.model_extra or {})
            if sink_cfg.ack:
                out.append(AckSource(sink_cfg, cfg.experiment.id))
    return out


async def publish_ack(config: MqttAlertConfig, experiment: str, ack: AckCommand,
                      timeout: float = 10.0) -> None:
    """Send one acknowledgement (what ``opmon alerts ack`` does)."""
    transport = config.transport()
    kwargs = _client_kwargs(transport, f"opmon-cli-{uuid.uuid4().hex[:12]}", clean_session=True)
    kwargs["timeout"] = timeout
    async with aiomqtt.Client(**kwargs) as client:
        await client.publish(ack_topic(experiment, config.topic_root),
                             ack.model_dump_json(exclude_none=True).encode(), qos=1)


async def read_retained(config: MqttAlertConfig, experiment: str, settle_s: float = 0.5,
                        timeout: float = 10.0) -> list[dict[str, Any]]:
    """The retained alert documents of an experiment (``+`` for all), as a late subscriber
    sees them: collected until nothing new arrived for ``settle_s``."""
    transport = config.transport()
    kwargs = _client_kwargs(transport, f"opmon-cli-{uuid.uuid4().hex[:12]}", clean_session=True)
    kwargs["timeout"] = timeout
    docs: dict[str, dict[str, Any]] = {}
    async with aiomqtt.Client(**kwargs) as client:
        await client.subscribe(f"{config.topic_root}/{experiment}/alerts/#", qos=1)
        with contextlib.suppress(TimeoutError):
            while True:
                message = await asyncio.wait_for(anext(client.messages), settle_s)
                if not message.retain or not message.payload:
                    continue
                with contextlib.suppress(ValueError):
                    doc = json.loads(message.payload)
                    if isinstance(doc, dict) and "alert_id" in doc:
                        docs[str(message.topic)] = doc
    return [docs[t] for t in sorted(docs)]
