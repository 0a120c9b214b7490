"""The batch writer: one thread that delivers batches to the database, oldest first, and never
loses one.

- A batch goes into a small in-memory queue while the database answers; the thread posts it.
- The first failure that may pass (no answer, 429, 5xx, or any other status that is not about the
  data: 401, 403, 404 ...) moves that batch and everything queued behind it into the disk spool,
  and later batches go to the spool as well until it is empty again. The thread retries the
  oldest spooled batch with exponential backoff and jitter (at least the server's Retry-After),
  then replays the spool oldest first.
- A 400 or 422 (the data is refused) or 413 (too large) is bisected: the halves are posted again
  (points already written are written again, which InfluxDB treats as the same point) down to
  single lines, which go to the dead-letter file with the server's reason.
- The spool is bounded (bytes). When it is full, ``submit`` blocks: backpressure up the pipeline,
  nothing dropped. ``close`` drains what it can within its timeout and spools the rest, beyond
  the bound if it must; a new writer on the same spool directory resumes it.
"""

from __future__ import annotations

import collections
import gzip
import logging
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..lineprotocol import split_lines
from .client import PostResult, V1Client, V2Client
from .deadletter import DeadLetter
from .spool import Spool, SpoolFullError

log = logging.getLogger("opmon.influx")
_LATENCY_WINDOW = 1024


@dataclass(slots=True)
class Batch:
    """Newline-terminated line protocol: ``raw``, or ``gz`` (its gzip) as read from the spool."""
    n_lines: int
    raw: bytes | None = None
    gz: bytes | None = None
    created: float = field(default_factory=time.monotonic)
    spool_path: Path | None = None

    def raw_bytes(self) -> bytes:
        if self.raw is None:
            self.raw = gzip.decompress(self.gz)
        return self.raw

    def gz_bytes(self, level: int) -> bytes:
        if self.gz is None:
            self.gz = gzip.compress(self.raw, level, mtime=0)
        return self.gz


@dataclass
class WriterStats:
    points_written: int = 0
    batches_written: int = 0
    points_spooled: int = 0         # lines that went through the spool (cumulative)
    points_dead_lettered: int = 0
    points_dropped: int = 0         # only if the spool itself cannot be written at close
    retries: int = 0
    backpressure_s: float = 0.0     # time submit() waited for room
    db_up: bool = True
    last_error: str = ""
    _lat: np.ndarray = field(default_factory=lambda: np.zeros(_LATENCY_WINDOW))
    _n_lat: int = 0

    def written(self, n_lines: int, latency_s: float | None) -> None:
        self.points_written += n_lines
        if latency_s is not None:
            self.batches_written += 1
            self._lat[self._n_lat % _LATENCY_WINDOW] = latency_s
            self._n_lat += 1

    def snapshot(self) -> dict[str, float]:
        lat = self._lat[: min(self._n_lat, _LATENCY_WINDOW)]
        p50, p99, pmax = (*np.percentile(lat, [50, 99]).tolist(), float(lat.max())) \
            if lat.size else (0.0, 0.0, 0.0)
        return {"points_written": self.points_written, "batches_written": self.batches_written,
                "points_spooled": self.points_spooled,
                "points_dead_lettered": self.points_dead_lettered,
                "points_dropped": self.points_dropped, "retries": self.retries,
                "backpressure_s": self.backpressure_s, "db_up": float(self.db_up),
                "batch_latency_p50_ms": p50 * 1e3, "batch_latency_p99_ms": p99 * 1e3,
                "batch_latency_max_ms": pmax * 1e3}


class BatchWriter:
    def __init__(self, client: V1Client | V2Client, spool: Spool, dead_letter: DeadLetter, *,
                 gzip_level: int = 1, max_pending: int = 4, retry_min_s: float = 0.2,
                 retry_max_s: float = 30.0, retry_after_max_s: float = 300.0,
                 stats: WriterStats | None = None):
        self.client = client
        self.spool = spool
        self.dead_letter = dead_letter
        self.gzip_level = gzip_level
        self.max_pending = max_pending
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.retry_after_max_s = retry_after_max_s
        self.stats = stats or WriterStats()
        self._memory: collections.deque[Batch] = collections.deque()
        self._cv = threading.Condition()
        self._spooling = len(spool) > 0   # a spool left by the last run is replayed first
        self._failures = 0
        self._answered = True             # the last attempt got an HTTP answer
        self._stop = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opmon-influx-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- producer side --------------------------------------------------------------------
    def try_submit(self, batch: Batch) -> bool:
        """Queue in memory without waiting; False when the batch must go through ``submit``."""
        with self._cv:
            if self._spooling or len(self._memory) >= self.max_pending:
                return False
            self._memory.append(batch)
            self._cv.notify_all()
            return True

    def submit(self, batch: Batch, force: bool = False) -> None:
        """Queue a batch; blocks while the memory queue is full (database slow) or the spool is
        full (database down). ``force`` spools beyond the bound instead of waiting."""
        waited_since = None
        try:
            while True:
                with self._cv:
                    if self._stop:
                        raise RuntimeError("the InfluxDB writer is closed")
                    if not self._spooling:
                        if len(self._memory) < self.max_pending:
                            self._memory.append(batch)
                            self._cv.notify_all()
                            return
                        waited_since = waited_since or time.monotonic()
                        self._cv.wait(0.05)
                        continue
                gz = batch.gz_bytes(self.gzip_level)  # outside the lock
                with self._cv:
                    if not self._spooling:
                        continue
                    try:
                        self._to_spool(batch, gz, force)
                        self._cv.notify_all()
                        return
                    except (SpoolFullError, OSError) as exc:
                        if isinstance(exc, OSError):
                            log.error("cannot write the spool: %s", exc)
                        waited_since = waited_since or time.monotonic()
                        self._cv.wait(0.1)
        finally:
            if waited_since is not None:
                self.stats.backpressure_s += time.monotonic() - waited_since

    def _to_spool(self, batch: Batch, gz: bytes, force: bool) -> None:
        self.spool.put(gz, batch.n_lines, force=force)
        self.stats.points_spooled += batch.n_lines

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._memory and not len(self.spool):
                    self._cv.wait()
                if self._stop:
                    return
                oldest = self.spool.oldest()
                if oldest is not None:
                    path, n_lines = oldest
                    batch = Batch(n_lines, gz=self.spool.read(path), spool_path=path)
                else:
                    batch = self._memory[0]
            if batch.spool_path is not None:
                try:  # check a spooled batch before sending it
                    batch.raw_bytes()
                except (OSError, EOFError, zlib.error) as exc:
                    self._quarantine(batch.spool_path, exc)
                    continue
            done, result = self._deliver(batch)
            with self._cv:
                self._answered = result.status is not None
                if done:
                    if batch.spool_path is not None:
                        self.spool.remove(batch.spool_path)
                    else:
                        self._memory.popleft()
                    self._failures = 0
                    self.stats.db_up = True
                    if not len(self.spool) and not self._memory:
                        self._spooling = False
                    self._cv.notify_all()
                    continue
                self._failures += 1
                self.stats.retries += 1
                self.stats.db_up = False
                self.stats.last_error = f"{result.status}: {result.reason}"[:500]
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    log.warning("write failed (%s), attempt %d; spooling: %s", result.status,
                                self._failures, result.reason[:300])
                self._spooling = True
                self._spool_memory(force=True)
                delay = self._backoff(result)
                self._cv.notify_all()
            self._wake.wait(delay)
            self._wake.clear()

    def _quarantine(self, path: Path, exc: Exception) -> None:
        """A spool file that cannot be read is renamed ``*.corrupt`` and named in the dead-letter
        file; the spool moves on."""
        log.error("spool file %s cannot be read (%s): set aside as .corrupt", path, exc)
        with self._cv:
            self.spool.remove(path, keep_as=path.with_name(path.name + ".corrupt"))
            self._cv.notify_all()
        self.dead_letter.add([{"status": None, "reason": f"unreadable spool file: {exc}",
                               "spool_file": str(path) + ".corrupt"}])

    def _spool_memory(self, force: bool) -> None:
        """Move every batch waiting in memory into the spool, oldest first (holding the lock)."""
        while self._memory:
            batch = self._memory[0]
            try:
                self._to_spool(batch, batch.gz_bytes(self.gzip_level), force)
            except OSError as exc:
                log.error("cannot write the spool: %s", exc)
                return
            self._memory.popleft()

    def _backoff(self, result: PostResult) -> float:
        base = min(self.retry_max_s, self.retry_min_s * 2 ** min(self._failures - 1, 30))
        delay = base * random.uniform(0.5, 1.0)
        if result.retry_after_s is not None:
            delay = max(delay, min(result.retry_after_s, self.retry_after_max_s))
        return delay

    def _post(self, raw: bytes) -> PostResult:
        body = gzip.compress(raw, self.gzip_level, mtime=0) if self.client.gzip_body else raw
        return self.client.post(body)

    def _deliver(self, batch: Batch) -> tuple[bool, PostResult]:
        if self.client.gzip_body:
            result = self.client.post(batch.gz_bytes(self.gzip_level))
        else:
            result = self.client.post(batch.raw_bytes())
        if result.ok:
            self.stats.written(batch.n_lines, time.monotonic() - batch.created)
            return True, result
        if result.rejected or result.too_large:
            return self._bisect(batch, result)
        return False, result

    def _bisect(self, batch: Batch, first: PostResult) -> tuple[bool, PostResult]:
        """Halve a refused batch until the refused lines are alone; they go to the dead-letter
        file. An answer that may pass on retry stops it: the whole batch is retried later."""
        stack = [(split_lines(batch.raw_bytes()), first)]
        while stack:
            lines, result = stack.pop()
            if len(lines) == 1:
                self.dead_letter.lines(result.status, result.reason, lines)
                self.stats.points_dead_lettered += 1
                continue
            half = len(lines) // 2
            for part in (lines[half:], lines[:half]):
                sub = self._post(b"\n".join(part) + b"\n")
                if sub.ok:
                    self.stats.written(len(part), None)
                elif sub.rejected or sub.too_large:
                    stack.append((part, sub))
                else:
                    return False, sub
        self.stats.batches_written += 1
        return True, first

    # -- shutdown -------------------------------------------------------------------------
    def pending(self) -> tuple[int, int]:
        """(batches in memory, batches in the spool)."""
        with self._cv:
            return len(self._memory), len(self.spool)

    def close(self, timeout_s: float) -> None:
        """Deliver what can be delivered within ``timeout_s`` (not waiting for a database that
        does not answer at all), then stop the thread and spool whatever is left in memory."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while (self._memory or len(self.spool)) and time.monotonic() < deadline \
                    and (self._answered or not self._failures):
                self._cv.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._stop = True
            self._cv.notify_all()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._cv:
            for batch in self._memory:
                try:
                    self._to_spool(batch, batch.gz_bytes(self.gzip_level), force=True)
                except OSError as exc:
                    self.stats.points_dropped += batch.n_lines
                    log.error("lost %d points: cannot write the spool: %s", batch.n_lines, exc)
            self._memory.clear()
        self.client.close()
