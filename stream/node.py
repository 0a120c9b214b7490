"""The node runtime: sources -> processors -> sinks on one asyncio loop.

Bounded queues sit between the stages; a full queue makes the stage before it wait (explicit
backpressure, nothing dropped). Each stage keeps counters (frames in and out, gaps, rejects,
queue depth, latency) that the node publishes as ``health`` frames. SIGINT and SIGTERM stop the
sources, drain every queue, flush the processors and close (flush) every sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from processors.base import Processor

from .frame import Frame, FrameError
from .sequence import SequenceTracker
from .sinks.base import Sink
from .sources import Source

log = logging.getLogger("opmon.node")
_DONE = object()
_LATENCY_WINDOW = 2048


@dataclass
class StageStats:
    name: str
    frames_in: int = 0
    frames_out: int = 0
    rejects: int = 0
    node_rejects: int = 0   # counted here; a source's own rejects come from its counters()
    lost: int = 0
    duplicates: int = 0
    queue: asyncio.Queue | None = None
    _lat: np.ndarray = field(default_factory=lambda: np.zeros(_LATENCY_WINDOW))
    _n_lat: int = 0
    last_error: str | None = None

    def latency(self, seconds: float) -> None:
        self._lat[self._n_lat % _LATENCY_WINDOW] = seconds
        self._n_lat += 1

    def reject(self, message: str) -> None:
        self.rejects += 1
        self.node_rejects += 1
        self.last_error = message
        if self.rejects <= 20 or self.rejects % 1000 == 0:
            log.warning("%s: reject #%d: %s", self.name, self.rejects, message)

    def snapshot(self) -> dict[str, float]:
        lat = self._lat[: min(self._n_lat, _LATENCY_WINDOW)]
        p50, p99, pmax = (np.percentile(lat, [50, 99]).tolist() + [lat.max()]) if lat.size \
            else (0.0, 0.0, 0.0)
        return {"frames_in": self.frames_in, "frames_out": self.frames_out,
                "rejects": self.rejects, "lost": self.lost, "duplicates": self.duplicates,
                "queue_depth": self.queue.qsize() if self.queue else 0,
                "latency_p50_ms": p50 * 1e3, "latency_p99_ms": p99 * 1e3,
                "latency_max_ms": float(pmax) * 1e3}


def _take_counters(source: Source, st: StageStats) -> None:
    """A source's own counts (a decoder's rejects, a transport's lost frames) on its stage;
    rejects the node made while validating its frames are added."""
    counts = source.counters()
    for key in ("lost", "duplicates"):
        if key in counts:
            setattr(st, key, counts[key])
    if "rejects" in counts:
        st.rejects = st.node_rejects + counts["rejects"]


async def _cancel(tasks: list[asyncio.Task], wait_s: float = 0.5, attempts: int = 20) -> None:
    """Cancel tasks and wait for them, cancelling again those that swallowed the request
    (Python 3.11's ``asyncio.wait_for`` loses a cancellation that races with its result, as
    happens inside aiomqtt's connect)."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(attempts):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    for task in pending:
        log.warning("task %s did not stop when cancelled; abandoned", task.get_name())


class Node:
    def __init__(self, experiment: str, sources: list[Source], processors: list[Processor],
                 sinks: list[Sink], queue_size: int = 1024, health_interval_s: float = 5.0,
                 handle_signals: bool = True, stop_grace_s: float = 2.0):
        self.experiment = experiment
        self.sources = sources
        self.processors = processors
        self.sinks = sinks
        self.queue_size = queue_size
        self.health_interval_s = health_interval_s
        self.handle_signals = handle_signals
        self.stop_grace_s = stop_grace_s
        self.tracker = SequenceTracker()
        self.stats: dict[str, StageStats] = {}
        self._input: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self._sink_queues: list[tuple[Sink, asyncio.Queue, StageStats]] = []
        self._stop = asyncio.Event()
        self._health_seq: dict[str, int] = {}
        self._source_stats: list[tuple[Source, StageStats]] = []
        self.on_health: Callable[[dict[str, dict[str, float]]], None] | None = None

    # -- public ---------------------------------------------------------------------------
    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: draining queues and flushing sinks")
        self._stop.set()

    def snapshot(self) -> dict[str, dict[str, float]]:
        for source, st in self._source_stats:
            _take_counters(source, st)
        return {name: st.snapshot() for name, st in self.stats.items()}

    async def run(self) -> dict[str, dict[str, float]]:
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
        try:
            return await self._run()
        finally:
            if self.handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)

    # -- stages ---------------------------------------------------------------------------
    async def _run(self) -> dict[str, dict[str, float]]:
        process_stats = self._stage("process", self._input)
        for sink in self.sinks:
            await sink.start()
            q: asyncio.Queue = asyncio.Queue(maxsize=sink.config.queue_size)
            self._sink_queues.append((sink, q, self._stage(f"sink.{sink.name}", q)))
        sink_tasks = [asyncio.create_task(self._sink_loop(*entry)) for entry in self._sink_queues]
        process_task = asyncio.create_task(self._process_loop(process_stats))
        source_tasks = [asyncio.create_task(self._source_loop(src)) for src in self.sources]
        health_task = asyncio.create_task(self._health_loop())
        stop_task = asyncio.create_task(self._stop.wait())
        # the node ends when its data sources end; side channels (acknowledgements) do not
        # keep it alive
        data_tasks = [t for t, src in zip(source_tasks, self.sources, strict=True)
                      if not src.auxiliary]
        waits = {stop_task}
        if data_tasks:
            waits.add(asyncio.gather(*data_tasks, return_exceptions=True))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        graceful = [t for t, src in zip(source_tasks, self.sources, strict=True)
                    if src.graceful_stop and not t.done()]
        if graceful:  # let buffering adapters hand over their last partial block
            for src in self.sources:
                src.request_stop()
            await asyncio.wait(graceful, timeout=self.stop_grace_s)
        await _cancel(source_tasks)
        stop_task.cancel()
        await self._input.put(_DONE)
        await process_task
        health_task.cancel()
        await asyncio.gather(health_task, return_exceptions=True)
        await self._to_sinks(self._health_frames())
        for _, q, _ in self._sink_queues:
            await q.put(_DONE)
        await asyncio.gather(*sink_tasks)
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception:
                log.exception("sink %s failed to close", sink.name)
        return self.snapshot()

    def _stage(self, name: str, queue: asyncio.Queue | None) -> StageStats:
        st = self.stats[name] = StageStats(name, queue=queue)
        return st

    async def _source_loop(self, source: Source) -> None:
        st = self._stage(f"source.{source.name}", None)
        self._source_stats.append((source, st))
        try:
            async for frame in source.frames():
                if not source.trusted:
                    try:
                        frame.validate()
                    except FrameError as exc:
                        st.reject(f"source {source.name}: {exc}")
                        continue
                st.frames_in += 1
                await self._input.put((frame, time.perf_counter()))
                st.frames_out += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("source %s failed", source.name)
            st.reject(f"source {source.name} failed: {exc!r}")
        finally:
            _take_counters(source, st)

    async def _process_loop(self, st: StageStats) -> None:
        while True:
            item = await self._input.get()
            if item is _DONE:
                break
            frame, t_in = item
            st.frames_in += 1
            if not self.tracker.observe(frame):
                st.duplicates += 1
                continue
            out = [frame]
            self._run_processors(frame, out, st)
            st.frames_out += len(out) - 1
            await self._to_sinks(out)
            st.latency(time.perf_counter() - t_in)
        st.lost = self.tracker.lost
        final: list[Frame] = []
        for proc in self.processors:
            final.extend(proc.flush())
        await self._to_sinks(final)

    def _run_processors(self, frame: Frame, out: list[Frame], st: StageStats, depth: int = 0) -> None:
        for proc in self.processors:
            if not proc.wants(frame.kind):
                continue
            try:
                results = proc.process(frame)
                for result in results:
                    result.validate()
            except FrameError as exc:
                st.reject(f"processor {proc.name}: {exc}")
                continue
            except Exception as exc:
                st.reject(f"processor {proc.name} on stream {frame.stream!r} seq {frame.seq}: "
                          f"{type(exc).__name__}: {exc}")
                continue
            out.extend(results)
            if depth < 4:  # results are frames too: later processors may consume them
                for result in results:
                    self._run_processors(result, out, st, depth + 1)

    async def _to_sinks(self, frames: list[Frame]) -> None:
        for frame in frames:
            for sink, q, _ in self._sink_queues:
                if sink.wants(frame.kind):
                    await q.put((frame, time.perf_counter()))

    async def _sink_loop(self, sink: Sink, q: asyncio.Queue, st: StageStats) -> None:
        while True:
            item = await q.get()
            if item is _DONE:
                return
            frame, t_in = item
            st.frames_in += 1
            try:
                await sink.write(frame)
                st.frames_out += 1
            except FrameError as exc:
                st.reject(f"sink {sink.name}: {exc}")
            except Exception as exc:
                st.reject(f"sink {sink.name} on stream {frame.stream!r}: {type(exc).__name__}: {exc}")
            st.latency(time.perf_counter() - t_in)

    # -- health ---------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self._to_sinks(self._health_frames())

    def _health_frames(self) -> list[Frame]:
        snapshot = self.snapshot()
        if self.on_health:
            self.on_health(snapshot)
        now = time.time_ns()
        frames = []
        for stage, values in snapshot.items():
            name = re.sub(r"[^A-Za-z0-9_.\-]", "_", stage)
            stream = f"{self.experiment}/node/{name}"
            seq = self._health_seq.get(stream, 0)
            self._health_seq[stream] = seq + 1
            arrays = {k: np.array([v], dtype=np.float64) for k, v in values.items()}
            frames.append(Frame(stream, "health", seq, now, arrays,
                                {k: "ms" for k in values if k.endswith("_ms")}))
        return frames
