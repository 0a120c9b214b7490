"""Publishes frames onto a transport (ZeroMQ, MQTT, in-process)."""

from __future__ import annotations

from ..frame import Frame
from ..transports import TransportConfig, open_publisher
from .base import Sink, SinkConfig


class PublishConfig(SinkConfig):
    transport: TransportConfig


class PublishSink(Sink):
    type_name = "publish"
    Config = PublishConfig

    def __init__(self, config: PublishConfig):
        super().__init__(config)
        self.publisher = open_publisher(config.transport)

    async def start(self) -> None:
        await self.publisher.start()

    async def write(self, frame: Frame) -> None:
        await self.publisher.publish(frame)

    async def close(self) -> None:
        await self.publisher.close()
