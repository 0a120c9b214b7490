"""Sources feed a node: instrument adapters, transport subscribers, recordings."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .frame import Frame
from .recording import RecordingReader
from .transports import Subscriber


class Source(ABC):
    """Yields frames. ``trusted`` sources (decoders that already validated) skip node checks."""

    name: str = "source"
    trusted: bool = False
    auxiliary: bool = False   # a side channel (acknowledgements): the node ends with its data
    graceful_stop: bool = False  # frames() ends by itself soon after request_stop()
    _stop_event: asyncio.Event | None = None

    @abstractmethod
    def frames(self) -> AsyncIterator[Frame]: ...

    def request_stop(self) -> None:
        """The node is stopping: a ``graceful_stop`` source yields what it still holds (a
        partly filled block) and ends; the node cancels it after its grace period."""
        self._stopper().set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_event is not None and self._stop_event.is_set()

    async def sleep_or_stop(self, seconds: float) -> bool:
        """Sleep, waking early when a stop is requested; True if it was."""
        stopper = self._stopper()
        if not stopper.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopper.wait(), max(seconds, 0.0))
        return stopper.is_set()

    def _stopper(self) -> asyncio.Event:
        if self._stop_event is None:
            self._stop_event = asyncio.Event()
        return self._stop_event

    def counters(self) -> dict[str, int]:
        return {}


class SubscriberSource(Source):
    trusted = True

    def __init__(self, subscriber: Subscriber, name: str = "subscriber"):
        self.subscriber = subscriber
        self.name = name

    async def frames(self) -> AsyncIterator[Frame]:
        await self.subscriber.start()
        try:
            async for frame in self.subscriber:
                yield frame
        finally:
            await self.subscriber.close()

    def counters(self) -> dict[str, int]:
        s = self.subscriber
        return {"rejects": s.rejects, "lost": s.tracker.lost, "duplicates": s.tracker.duplicates}


DERIVED_KINDS = ("result.", "event", "alert", "health")


def is_derived(frame: Frame) -> bool:
    """Results, events, alerts, health, and raw-kind frames a processor made (an integrated
    ``pattern`` from an ``image`` says so in ``meta.derived_from``)."""
    return frame.kind.startswith(DERIVED_KINDS) or "derived_from" in frame.meta


class RecordingSource(Source):
    """Replays a recording with its original spacing (log time) divided by ``speed``;
    ``speed=math.inf`` sends as fast as the consumer takes them.

    By default only raw instrument frames are replayed: results, events, alerts, health and
    other derived frames recorded live are skipped, so processors recompute them (``raw_only=False`` keeps
    them)."""

    trusted = True

    def __init__(self, path: str | Path, speed: float = math.inf,
                 on_frame: Callable[[int], None] | None = None, raw_only: bool = True):
        self.reader = RecordingReader(path)
        self.speed = speed
        self.raw_only = raw_only
        self.name = f"replay:{Path(path).name}"
        self.on_frame = on_frame

    async def frames(self) -> AsyncIterator[Frame]:
        first_log = None
        start = time.monotonic()
        for i, rec in enumerate(self.reader):
            if self.raw_only and is_derived(rec.frame):
                continue
            if math.isfinite(self.speed):
                if first_log is None:
                    first_log = rec.log_time_ns
                due = start + (rec.log_time_ns - first_log) * 1e-9 / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif i % 256 == 0:
                await asyncio.sleep(0)
            if self.on_frame:
                self.on_frame(1)
            yield rec.frame

    def counters(self) -> dict[str, int]:
        return {"rejects": self.reader.rejects, "truncated": int(self.reader.truncated)}
