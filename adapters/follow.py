"""Follow a file that an instrument program is still writing, like ``tail -F``.

``FileFollower.read_lines()`` returns the complete lines appended since the last call. A partial
last line (the writer is mid-row) is held back until its newline arrives. If the file is replaced
(a new inode) or truncated (smaller than what was read), the follower starts again from the top of
the new file and reports it through ``rotations``, so the adapter can re-read the header.

Reads are binary, so a multi-byte character split across two writes is never decoded half; the
caller decodes each complete line with the vendor's encoding.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Chunk:
    """Complete lines read in one pass. ``first_line`` is the 1-based line number of
    ``lines[0]`` in the current file; ``restarted`` says the file was replaced or truncated
    before these lines (line numbers start again at 1)."""

    lines: list[bytes]
    first_line: int
    restarted: bool = False


class FileFollower:
    def __init__(self, path: str | Path, read_size: int = 1 << 20, from_start: bool = True):
        self.path = Path(path)
        self.read_size = read_size
        self._fh = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self._next_line = 1
        self._from_start = from_start
        self.rotations = 0
        self.bytes_read = 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open between polls
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        self._fh, self._ino = fh, (st.st_dev, st.st_ino)
        self._offset, self._partial, self._next_line = 0, b"", 1
        if not self._from_start:
            self._offset = st.st_size
            fh.seek(st.st_size)
            self._from_start = True
        return True

    def _replaced(self) -> bool:
        """The path now names another file, or the file shrank below what was read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # mid-rotation: keep reading the old handle until a new file appears
        if (st.st_dev, st.st_ino) != self._ino:
            return True
        return st.st_size < self._offset

    def read_lines(self) -> Chunk:
        """The complete lines appended since the last call (possibly none)."""
        restarted = False
        if self._fh is None:
            if not self._open():
                return Chunk([], self._next_line)
        elif self._replaced():
            lines = self._drain()  # finish the old file's complete lines first
            if lines.lines:
                return lines
            self.close()
            self.rotations += 1
            restarted = True
            if not self._open():
                return Chunk([], 1, True)
        chunk = self._drain()
        chunk.restarted = restarted
        return chunk

    def _drain(self) -> Chunk:
        assert self._fh is not None
        data = bytearray()
        while True:
            block = self._fh.read(self.read_size)
            if not block:
                break
            data += block
        if not data:
            return Chunk([], self._next_line)
        self._offset += len(data)
        self.bytes_read += len(data)
        buf = self._partial + bytes(data)
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._partial = buf
            return Chunk([], self._next_line)
        self._partial = buf[cut + 1:]
        lines = buf[:cut].split(b"\n")
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        first = self._next_line
        self._next_line += len(lines)
        return Chunk(lines, first)

    def pending_partial(self) -> bytes:
        """The bytes of an unfinished last line (a file that ends without a newline)."""
        return self._partial

    async def follow(self, poll_s: float = 0.2, stop: asyncio.Event | None = None,
                     idle_timeout_s: float | None = None) -> AsyncIterator[Chunk]:
        """Chunks as the file grows, polling every ``poll_s``. Ends when ``stop`` is set, or after
        ``idle_timeout_s`` without new data (``None``: follow forever)."""
        idle = 0.0
        while stop is None or not stop.is_set():
            chunk = self.read_lines()
            if chunk.lines or chunk.restarted:
                idle = 0.0
                yield chunk
                continue
            if idle_timeout_s is not None and idle >= idle_timeout_s:
                return
            await asyncio.sleep(poll_s)
            idle += poll_s
