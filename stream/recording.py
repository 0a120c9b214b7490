"""Recordings: every frame in an MCAP file, chunked and zstd-compressed.

One MCAP channel per topic, message encoding ``opmon.frame.v1`` (the binary single-payload form of
``stream.codec``), ``log_time`` = host receive time, ``publish_time`` = the frame's ``t0_ns``.
The writer closes a chunk at least every ``flush_interval_s`` and flushes it to the OS, so a
recorder killed with SIGKILL leaves a file readable up to its last completed chunk; the reader
stops cleanly at a truncated tail and says so.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mcap.exceptions import McapError
from mcap.records import Channel, Message
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from .codec import FrameDecoder, encode_payload
from .frame import Frame, FrameError
from .topics import topic_for

MESSAGE_ENCODING = "opmon.frame.v1"
PROFILE = "opmon"
log = logging.getLogger("opmon.recording")


def _unused_path(path: Path) -> Path:
    """Never overwrite a recording: ``run.mcap`` -> ``run.1.mcap``, ``run.2.mcap``, ..."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    if n:
        log.warning("%s exists; recording to %s instead", path, candidate)
    return candidate


class RecordingWriter:
    def __init__(self, path: str | Path, chunk_size: int = 4 << 20,
                 compression: str = "zstd", flush_interval_s: float = 1.0):
        self.path = _unused_path(Path(path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("xb")
        comp = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4,
                "none": CompressionType.NONE}[compression]
        self._writer = Writer(self._file, chunk_size=chunk_size, compression=comp)
        self._writer.start(profile=PROFILE, library="opmon")
        self._channels: dict[str, int] = {}
        self._flush_interval_ns = int(flush_interval_s * 1e9)
        self._last_flush = time.monotonic_ns()
        self.frames = 0

    def write(self, frame: Frame, log_time_ns: int | None = None,
              payload: bytes | None = None) -> None:
        topic = topic_for(frame)
        channel = self._channels.get(topic)
        if channel is None:
            channel = self._writer.register_channel(topic, MESSAGE_ENCODING, schema_id=0)
            self._channels[topic] = channel
        self._writer.add_message(
            channel_id=channel,
            log_time=log_time_ns if log_time_ns is not None else time.time_ns(),
            publish_time=max(frame.t0_ns, 0),
            sequence=frame.seq & 0xFFFFFFFF,
            data=payload if payload is not None else encode_payload(frame),
        )
        self.frames += 1
        now = time.monotonic_ns()
        if now - self._last_flush >= self._flush_interval_ns:
            self.flush()

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        self._writer.add_metadata(name, data)

    def flush(self) -> None:
        self._writer.flush()
        self._last_flush = time.monotonic_ns()

    def close(self) -> None:
        if self._file.closed:
            return
        self._writer.finish()
        self._file.close()


@dataclass(slots=True)
class RecordedFrame:
    frame: Frame
    log_time_ns: int
    topic: str


class RecordingReader:
    """Reads frames in file order. Tolerates a truncated tail (``truncated`` tells) and counts
    frames that fail validation (``rejects``) instead of stopping."""

    def __init__(self, path: str | Path, max_payload_bytes: int | None = None):
        self.path = Path(path)
        self.decoder = FrameDecoder(max_payload_bytes) if max_payload_bytes else FrameDecoder()
        self.truncated = False
        self.truncation_reason: str | None = None
        self.rejects = 0
        self.metadata: dict[str, dict[str, str]] = {}

    def __iter__(self) -> Iterator[RecordedFrame]:
        channels: dict[int, str] = {}
        with self.path.open("rb") as f:
            records = StreamReader(f, skip_magic=False).records
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    return
                except (McapError, struct.error, ValueError, EOFError) as exc:
                    self.truncated = True
                    self.truncation_reason = f"{type(exc).__name__}: {exc}"
                    log.warning("%s: recording ends early (%s); frames up to the last complete "
                                "chunk were read", self.path, self.truncation_reason)
                    return
                if isinstance(record, Channel):
                    channels[record.id] = record.topic
                elif isinstance(record, Message):
                    try:
                        frame = self.decoder.decode_payload(record.data)
                    except FrameError as exc:
                        self.rejects += 1
                        log.warning("%s: frame at log time %d rejected: %s", self.path,
                                    record.log_time, exc)
                        continue
                    yield RecordedFrame(frame, record.log_time, channels.get(record.channel_id, ""))
                elif type(record).__name__ == "Metadata":
                    self.metadata[record.name] = dict(record.metadata)


def describe(path: str | Path) -> dict:
    """Streams, kinds, counts, time span and gaps of a recording (``opmon inspect``)."""
    from .sequence import SequenceTracker

    reader = RecordingReader(path)
    tracker = SequenceTracker()
    streams: dict[tuple[str, str], dict] = {}
    for rec in reader:
        f = rec.frame
        tracker.observe(f)
        key = (f.stream, f.kind)
        s = streams.get(key)
        t_last = int(f.times_ns()[-1])
        if s is None:
            streams[key] = {"stream": f.stream, "kind": f.kind, "frames": 1,
                            "samples": f.n_samples, "first_ns": f.t0_ns, "last_ns": t_last}
        else:
            s["frames"] += 1
            s["samples"] += f.n_samples
            s["first_ns"] = min(s["first_ns"], f.t0_ns)
            s["last_ns"] = max(s["last_ns"], t_last)
    for key, s in streams.items():
        seq = tracker.streams[key]
        s.update(lost=seq.lost, duplicates=seq.duplicates, late=seq.late, restarts=seq.restarts)
    return {"path": str(path), "truncated": reader.truncated,
            "truncation_reason": reader.truncation_reason, "rejects": reader.rejects,
            "metadata": reader.metadata, "streams": sorted(streams.values(),
                                                           key=lambda s: (s["stream"], s["kind"]))}


def dumps_summary(summary: dict) -> str:
    return json.dumps(summary, indent=2)
