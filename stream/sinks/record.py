"""Records every frame it is given to an MCAP file."""

from __future__ import annotations

from ..frame import Frame
from ..recording import RecordingWriter
from .base import Sink, SinkConfig


class RecordConfig(SinkConfig):
    path: str
    chunk_size: int = 4 << 20
    compression: str = "zstd"
    flush_interval_s: float = 1.0


class RecordSink(Sink):
    type_name = "record"
    Config = RecordConfig

    def __init__(self, config: RecordConfig):
        super().__init__(config)
        self.writer: RecordingWriter | None = None

    async def start(self) -> None:
        c = self.config
        self.writer = RecordingWriter(c.path, c.chunk_size, c.compression, c.flush_interval_s)

    async def write(self, frame: Frame) -> None:
        self.writer.write(frame)

    async def close(self) -> None:
        if self.writer:
            self.writer.close()
