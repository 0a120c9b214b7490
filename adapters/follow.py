"""Follow a file that an instrument program is still writing, like ``tail -F``.

``FileFollower`` reads what a file gained since the last call, in one of two modes (one
follower is used in one mode only):

- ``read_lines()``: the complete lines. A partial last line (the writer is mid-row) is held
  back until its newline arrives; CRLF and LF endings are both taken.
- ``read_bytes()``: the bytes as they are (binary formats that the caller cuts itself).

One call reads at most ``max_read`` bytes (8 MiB by default), so catching up on a large backlog
takes several calls of bounded memory; ``Chunk.more`` says that more is already waiting.

If the path comes to name another file (rotation by rename, replacement by a new inode) or the
file shrinks below what was read (truncation), the follower first reads the rest of the old
file, then starts again from the top of the new one and says so with ``restarted`` (line
numbers start again at 1), so the caller can re-read the header. While the path names no file
at all (mid-rotation, or a file that does not exist yet), the old handle is kept, or nothing is
read.

**The last line of a file.** A rotated, replaced or truncated file is complete, so its last
line is complete too, with or without a newline (EC-Lab writes its files without a final
newline): that line is handed over as the old file's last line before the restart. The caller
says when the current file is complete in the same way with ``read_lines(final=True)``
(the end of a replay, an adapter that stops, the next file of a sequence has appeared): once
the read reaches the end of the file, the unfinished line is handed over as a line.

Reads are binary, so a multi-byte character split across two writes is never decoded half; the
caller decodes each complete line with the vendor's encoding.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

DEFAULT_MAX_READ = 8 << 20


@dataclass
class Chunk:
    """Complete lines read in one call. ``first_line`` is the 1-based line number of
    ``lines[0]`` in the current file; ``restarted`` says the file was replaced or truncated
    before these lines (line numbers start again at 1); ``more`` that the call stopped at
    ``max_read`` with more of the file already there."""

    lines: list[bytes]
    first_line: int
    restarted: bool = False
    more: bool = False

    @property
    def content(self) -> bool:
        return bool(self.lines) or self.more


@dataclass
class ByteChunk:
    """Bytes read in one call; ``offset`` is the position of ``data[0]`` in the current file.
    ``restarted`` and ``more`` as for ``Chunk``."""

    data: bytes
    offset: int
    restarted: bool = False
    more: bool = False

    @property
    def content(self) -> bool:
        return bool(self.data) or self.more


_C = TypeVar("_C", Chunk, ByteChunk)


class FileFollower:
    """``path`` followed from its start (``from_start``) or from its end at the first open.
    ``read_size`` is the size of one read from the OS, ``max_read`` the most one call reads."""

    def __init__(self, path: str | Path, read_size: int = 1 << 20, from_start: bool = True,
                 max_read: int = DEFAULT_MAX_READ):
        if read_size < 1 or max_read < 1:
            raise ValueError("read_size and max_read must be positive")
        self.path = Path(path)
        self.read_size = read_size
        self.max_read = max_read
        self._fh = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self._next_line = 1
        self._from_start = from_start
        self._restarting = False
        self.rotations = 0
        self.bytes_read = 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- the file under the path ------------------------------------------------------------
    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - kept open between polls
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        self._fh, self._ino = fh, (st.st_dev, st.st_ino)
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

    def _read(self, drain: Callable[[bool], _C], final: bool) -> _C:
        """One call of either mode: open the file, or finish the old one and restart on the new
        one. ``drain(final)`` reads the open file (an empty chunk when none is open)."""
        if self._fh is None:
            self._open()
        elif self._replaced():
            chunk = drain(True)  # the rest of the old file, which is complete
            if chunk.content:
                return chunk
            self.close()
            self._offset, self._partial, self._next_line = 0, b"", 1
            self.rotations += 1
            self._restarting = True  # also when opening the new file fails: said next time
            self._open()
        chunk = drain(final)
        if self._restarting:
            chunk.restarted, self._restarting = True, False
        return chunk

    def _take(self) -> tuple[bytes, bool]:
        """Up to ``max_read`` bytes of what the open file gained, and whether that limit
        stopped the read."""
        assert self._fh is not None
        blocks, total = [], 0
        while total < self.max_read:
            block = self._fh.read(min(self.read_size, self.max_read - total))
            if not block:
                break
            blocks.append(block)
            total += len(block)
        data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        self._offset += total
        self.bytes_read += total
        return data, total >= self.max_read

    # -- lines ------------------------------------------------------------------------------
    def read_lines(self, final: bool = False) -> Chunk:
        """The complete lines appended since the last call (possibly none). With ``final``
        (the file is complete), once the end is reached an unfinished last line is one too."""
        return self._read(self._drain_lines, final)

    def _drain_lines(self, final: bool) -> Chunk:
        if self._fh is None:
            return Chunk([], self._next_line)
        data, more = self._take()
        partial = self._partial
        lines = data.split(b"\n") if data else [b""]
        lines[0] = partial + lines[0]
        self._partial = lines.pop()
        if final and not more and self._partial:
            lines.append(self._partial)  # the file is complete: so is its last line
            self._partial = b""
        if b"\r" in data or b"\r" in partial:
            lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        first = self._next_line
        self._next_line += len(lines)
        return Chunk(lines, first, more=more)

    def pending_partial(self) -> bytes:
        """The bytes of an unfinished last line held back (a file that ends without a
        newline, or a row the writer has not finished)."""
        return self._partial

    # -- bytes ------------------------------------------------------------------------------
    def read_bytes(self) -> ByteChunk:
        """The bytes appended since the last call (possibly none)."""
        return self._read(self._drain_bytes, False)

    def _drain_bytes(self, final: bool) -> ByteChunk:
        if self._fh is None:
            return ByteChunk(b"", self._offset)
        start = self._offset
        data, more = self._take()
        return ByteChunk(data, start, more=more)
