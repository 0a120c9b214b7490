"""Writes frames as InfluxDB line protocol to a file (results of a run, importable with
``influx write`` or ``curl --data-binary @results.lp``)."""

from __future__ import annotations

from pathlib import Path

from ..frame import Frame
from ..lineprotocol import encode_frame
from .base import Sink, SinkConfig


class LineProtocolFileConfig(SinkConfig):
    path: str
    kinds: list[str] = ["result.*", "event", "alert"]


class LineProtocolFileSink(Sink):
    type_name = "lineprotocol"
    Config = LineProtocolFileConfig

    def __init__(self, config: LineProtocolFileConfig):
        super().__init__(config)
        self.path = Path(config.path)
        self._file = None
        self.lines = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8", buffering=1 << 20)

    async def write(self, frame: Frame) -> None:
        lines = encode_frame(frame)
        if lines:
            self._file.write("\n".join(lines) + "\n")
            self.lines += len(lines)

    async def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
