"""In-process bus: bounded asyncio queues, lossless, frames passed by reference."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from ..frame import Frame
from ..topics import mqtt_matches, topic_for
from .base import Publisher, Subscriber, TransportConfig

_CLOSED = object()


class _Bus:
    def __init__(self) -> None:
        self.subscribers: list[tuple[list[str], asyncio.Queue]] = []


_BUSES: dict[str, _Bus] = {}


def _bus(cfg: TransportConfig) -> _Bus:
    name = urlsplit(cfg.url).netloc or urlsplit(cfg.url).path
    return _BUSES.setdefault(name, _Bus())


class InprocPublisher(Publisher):
    def __init__(self, cfg: TransportConfig):
        super().__init__(cfg)
        self._bus = _bus(cfg)

    async def publish(self, frame: Frame) -> None:
        topic = topic_for(frame)
        for patterns, queue in self._bus.subscribers:
            if any(mqtt_matches(p, topic) for p in patterns):
                await queue.put(frame)
        self.sent += 1

    async def close(self) -> None:
        for _, queue in self._bus.subscribers:
            await queue.put(_CLOSED)


class InprocSubscriber(Subscriber):
    """Ends when a publisher on the bus closes."""

    def __init__(self, cfg: TransportConfig, topics: list[str]):
        super().__init__(cfg, topics)
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.hwm)
        self._bus = _bus(cfg)
        self._entry = (topics, self._queue)
        self._bus.subscribers.append(self._entry)

    async def close(self) -> None:
        if self._entry in self._bus.subscribers:
            self._bus.subscribers.remove(self._entry)

    async def _raw(self) -> AsyncIterator[object]:
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            yield item

    def _decode(self, raw: object) -> list[Frame]:
        assert isinstance(raw, Frame)
        return [raw]
