"""Writes frames as InfluxDB line protocol to a file (results of a run, importable with
``influx write`` or ``curl --data-binary @results.lp``). Same lines as the InfluxDB sink: points
kept unique per series and nanosecond by a ``LineEncoder``."""

from __future__ import annotations

from pathlib import Path

from ..frame import Frame, FrameError
from ..lineprotocol import LineEncoder, LineProtocolError
from .base import Sink, SinkConfig


class LineProtocolFileConfig(SinkConfig):
    path: str
    kinds: list[str] = ["result.*", "event", "alert"]
    unique_window: int = 16  # timestamps remembered per series to keep points unique


class LineProtocolFileSink(Sink):
    type_name = "lineprotocol"
    Config = LineProtocolFileConfig

    def __init__(self, config: LineProtocolFileConfig):
        super().__init__(config)
        self.path = Path(config.path)
        self._file = None
        self.encoder = LineEncoder(config.unique_window)

    @property
    def lines(self) -> int:
        return self.encoder.lines

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab", buffering=1 << 20)

    async def write(self, frame: Frame) -> None:
        try:
            chunks = self.encoder.encode(frame)
        except LineProtocolError as exc:
            raise FrameError(frame.stream, exc.what, str(exc)) from None
        for data, _ in chunks:
            self._file.write(data)

    async def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
