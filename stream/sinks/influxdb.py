"""Writes results, events, alerts and health frames to InfluxDB: 1.x ``/write`` over HTTP or
2.x/3.x ``/api/v2/write`` through influxdb-client, in gzip'd batches of ``batch_size`` lines or
``flush_interval_s``, with nothing lost (see ``stream.influx.writer``).

Frames are encoded on the event loop by a ``LineEncoder`` (points unique per series and
nanosecond); a frame whose names InfluxDB cannot store goes to the dead-letter file with the
reason. ``counters()`` gives the sink's own health: points written, spooled, dead-lettered and
dropped, spool depth, retries, backpressure and batch latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from ..frame import Frame
from ..influx import Batch, BatchWriter, DeadLetter, InfluxSinkConfig, Spool, WriterStats
from ..influx.client import open_client
from ..lineprotocol import LineEncoder, LineProtocolError
from .base import Sink


class InfluxDBSink(Sink):
    type_name = "influxdb"
    Config = InfluxSinkConfig

    def __init__(self, config: InfluxSinkConfig):
        super().__init__(config)
        self.encoder = LineEncoder(config.unique_window)
        self.stats = WriterStats()
        self.spool: Spool | None = None
        self.dead_letter: DeadLetter | None = None
        self.writer: BatchWriter | None = None
        self.frames_refused = 0
        self._parts: list[str] = []
        self._n_lines = 0
        self._batch_started = 0.0
        self._submit_lock = asyncio.Lock()
        self._timer: asyncio.Task | None = None

    async def start(self) -> None:
        c = self.config
        self.spool = Spool(c.spool_dir, c.spool_max_bytes, c.gzip_level)
        self.dead_letter = DeadLetter(c.dead_letter_path or Path(c.spool_dir) / "dead-letter.jsonl")
        self.writer = BatchWriter(open_client(c), self.spool, self.dead_letter,
                                  gzip_level=c.gzip_level, max_pending=c.max_pending_batches,
                                  retry_min_s=c.retry_min_s, retry_max_s=c.retry_max_s,
                                  retry_after_max_s=c.retry_after_max_s, stats=self.stats)
        self.writer.start()
        self._timer = asyncio.create_task(self._flush_timer())

    async def write(self, frame: Frame) -> None:
        try:
            chunks = self.encoder.encode(frame, self.config.batch_size)
        except LineProtocolError as exc:
            self.frames_refused += 1
            self.dead_letter.add([{"status": None, "reason": str(exc), "stream": frame.stream,
                                   "kind": frame.kind, "seq": frame.seq, "t0_ns": frame.t0_ns}])
            return
        for text, n_lines in chunks:
            if not self._n_lines:
                self._batch_started = time.monotonic()
            self._parts.append(text)
            self._n_lines += n_lines
            if self._n_lines >= self.config.batch_size:
                await self._flush()

    async def _flush(self, force: bool = False) -> None:
        """Hand the batch being filled to the writer (waiting for room: backpressure)."""
        async with self._submit_lock:
            if not self._n_lines:
                return
            batch = Batch(self._n_lines, raw="".join(self._parts).encode(),
                          created=self._batch_started)
            self._parts, self._n_lines = [], 0
            if not self.writer.try_submit(batch):
                await asyncio.to_thread(self.writer.submit, batch, force)

    async def _flush_timer(self) -> None:
        interval = self.config.flush_interval_s
        while True:
            await asyncio.sleep(interval / 4)
            if self._n_lines and time.monotonic() - self._batch_started >= interval:
                await self._flush()

    def counters(self) -> dict[str, float]:
        """The sink's own health, for the node's health frames."""
        out = self.stats.snapshot()
        spool = self.spool
        out.update({"spool_batches": len(spool) if spool else 0,
                    "spool_bytes": spool.bytes if spool else 0,
                    "spool_points": spool.lines if spool else 0,
                    "points_pending": self._n_lines,
                    "points_nudged": self.encoder.nudged, "points_empty": self.encoder.empty,
                    "frames_refused": self.frames_refused})
        return out

    async def close(self) -> None:
        """Flush: the batch being filled, then everything the database takes within
        ``close_timeout_s``; the rest stays in the spool for the next start."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        if self.writer is None:
            return
        await self._flush(force=True)
        await asyncio.to_thread(self.writer.close, self.config.close_timeout_s)
        self.writer = None
        self.spool.close()
