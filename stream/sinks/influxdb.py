"""Writes results, events, alerts and health frames to InfluxDB: 1.x ``/write`` over HTTP or
2.x/3.x ``/api/v2/write`` through influxdb-client, in gzip'd batches of ``batch_size`` lines or
``flush_interval_s``, with nothing lost (see ``stream.influx.writer``).

Frames are collected and encoded a batch at a time on the event loop by a ``LineEncoder``
(points unique per series and nanosecond); a frame whose names InfluxDB cannot store goes to the
dead-letter file with the reason. ``counters()`` gives the sink's own health: points written, spooled, dead-lettered and
dropped, spool depth, retries, backpressure and batch latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from ..frame import Frame
from ..influx.client import open_client
from ..influx.config import InfluxSinkConfig
from ..influx.deadletter import DeadLetter
from ..influx.spool import Spool
from ..influx.writer import Batch, BatchWriter, WriterStats
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
        self._frames: list[Frame] = []
        self._n_samples = 0
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
        """Collect the frame; a batch is encoded (``LineEncoder.encode_many``) and handed to the
        writer once it holds ``batch_size`` samples. A frame of ``batch_size`` samples or more
        is encoded alone, in batches of that size."""
        t = frame.arrays.get("t")
        n = t.shape[0] if t is not None and t.ndim else 1  # frame.n_samples, inlined
        if n < self.config.batch_size:
            if not self._frames:
                self._batch_started = time.monotonic()
            self._frames.append(frame)
            self._n_samples += n
            if self._n_samples >= self.config.batch_size:
                await self._flush()
            return
        await self._flush()
        try:
            chunks = self.encoder.encode(frame, self.config.batch_size)
        except LineProtocolError as exc:
            self._refuse([(frame, exc)])
            return
        for data, n_lines in chunks:
            await self._submit(Batch(n_lines, raw=data))

    def _refuse(self, refused: list[tuple[Frame, LineProtocolError]]) -> None:
        """Frames InfluxDB could not store as named go to the dead-letter file."""
        self.frames_refused += len(refused)
        self.dead_letter.add([{"status": None, "reason": str(exc), "stream": f.stream,
                               "kind": f.kind, "seq": f.seq, "t0_ns": f.t0_ns}
                              for f, exc in refused])

    async def _flush(self, force: bool = False) -> None:
        """Encode the frames collected so far and hand them to the writer."""
        if not self._frames:
            return
        frames, self._frames, self._n_samples = self._frames, [], 0
        data, n_lines, refused = self.encoder.encode_many(frames)
        if refused:
            self._refuse(refused)
        if n_lines:
            await self._submit(Batch(n_lines, raw=data, created=self._batch_started), force)

    async def _submit(self, batch: Batch, force: bool = False) -> None:
        """Hand a batch to the writer, waiting for room (backpressure), in order. The gzip is
        made here, in a worker thread, so the writer thread only posts."""
        async with self._submit_lock:
            if self.writer.client.gzip_body:
                await asyncio.to_thread(batch.gz_bytes, self.config.gzip_level)
            if not self.writer.try_submit(batch):
                await asyncio.to_thread(self.writer.submit, batch, force)

    async def _flush_timer(self) -> None:
        interval = self.config.flush_interval_s
        while True:
            await asyncio.sleep(interval / 4)
            if self._frames and time.monotonic() - self._batch_started >= interval:
                await self._flush()

    def counters(self) -> dict[str, float]:
        """The sink's own health, for the node's health frames."""
        out = self.stats.snapshot()
        spool = self.spool
        out.update({"spool_batches": len(spool) if spool else 0,
                    "spool_bytes": spool.bytes if spool else 0,
                    "spool_points": spool.lines if spool else 0,
                    "samples_pending": self._n_samples,
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
