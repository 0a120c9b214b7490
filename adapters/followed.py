"""Vendor files followed while the instrument program writes them, or read once as a replay:
the machinery every file adapter shares (``biologic``, ``neware``, ``generic_csv`` through
``adapters.tabular``; ``zilien``; ``pfeiffer``).

- ``FollowedFileConfig``: the keys every file adapter has (``path``, ``follow``, ``poll_s``,
  ``idle_timeout_s``, ``clock``). ``timebase.replay_clock``: a file read once trusts the instrument
  clock unless the config chose a clock mode or an offset.
- ``FollowedFile`` drives a ``FileHandler`` (``new_file``, ``feed_lines`` or ``feed_bytes``,
  ``end_of_file``) through ``FileFollower``: a new file for a rotation, replacement or
  truncation, or (with a glob) the next file of a sequence; an unreadable path reported once
  per error and retried. ``end_of_file(complete)`` closes each file: ``complete`` when the file
  is known to be whole (rotated, replaced, the next one of a glob appeared, the replay ended,
  the follow timed out), not when the adapter stops while the file may still grow. Either way
  the file's unfinished last line has been fed as a line first.
- ``FollowedFileAdapter``: an adapter that is the handler of its own file, with the follow /
  replay loop (``frames``), ``stop`` and the counters.
- ``TextFileAdapter``: a followed text file that starts with a header read line by line
  (``read_header``, ``start_file``, ``rows``).
"""

from __future__ import annotations

import asyncio
import glob
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from pydantic import Field, field_validator

from stream.frame import Frame

from .base import Adapter, AdapterConfig, InputError
from .follow import DEFAULT_MAX_READ, ByteChunk, Chunk, FileFollower
from .timebase import replay_clock

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class FollowedFileConfig(AdapterConfig):
    """Keys shared by the file adapters."""

    path: str = Field(min_length=1)  # the file (a glob where the adapter takes one)
    follow: bool = True              # follow the file as it is written; false: read it once
    poll_s: float = Field(0.2, gt=0)  # following: how often to look for new data
    idle_timeout_s: float | None = Field(None, gt=0)  # following: stop after this long idle

    @field_validator("path")
    @classmethod
    def _path_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("required: the file to read")
        return value


def is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


class FileHandler(Protocol[T_co]):
    """What a ``FollowedFile`` drives; a text handler implements ``feed_lines``, a binary one
    ``feed_bytes``."""

    def new_file(self, path: Path) -> None: ...
    def feed_lines(self, lines: list[bytes], first_line: int) -> list[T_co]: ...
    def feed_bytes(self, data: bytes) -> list[T_co]: ...
    def end_of_file(self, complete: bool) -> list[T_co]: ...


class FollowedFile(Generic[T]):
    """``path`` followed for ``handler``. ``successor(current)`` names the file that follows
    the current one once it is done (a glob's next file), or None; ``on_error`` is told of a
    read that failed (once per distinct error, then retried)."""

    def __init__(self, path: Path, handler: FileHandler[T], *, binary: bool = False,
                 successor: Callable[[Path], Path | None] | None = None,
                 on_error: Callable[[Path, OSError], object] | None = None,
                 read_size: int = 1 << 20, max_read: int = DEFAULT_MAX_READ):
        self.handler = handler
        self.binary = binary
        self.successor = successor
        self.on_error = on_error
        self.read_size, self.max_read = read_size, max_read
        self.restarts = 0     # rotations, replacements and truncations
        self._error = ""
        self._open(path)

    def _open(self, path: Path) -> None:
        self.path = path
        self.follower = FileFollower(path, self.read_size, max_read=self.max_read)
        self.handler.new_file(path)

    def close(self) -> None:
        self.follower.close()

    def _read(self, final: bool) -> Chunk | ByteChunk | None:
        try:
            chunk = self.follower.read_bytes() if self.binary else \
                self.follower.read_lines(final)
        except OSError as exc:  # e.g. no permission yet: reported once, retried
            if str(exc) != self._error:
                self._error = str(exc)
                if self.on_error is not None:
                    self.on_error(self.path, exc)
            return None
        self._error = ""
        return chunk

    def _take(self, chunk: Chunk | ByteChunk) -> list[T]:
        out: list[T] = []
        if chunk.restarted:  # the old file (its last line included) is complete
            out += self.handler.end_of_file(True)
            self.restarts += 1
            self.handler.new_file(self.path)
        if isinstance(chunk, ByteChunk):
            if chunk.data:
                out += self.handler.feed_bytes(chunk.data)
        elif chunk.lines:
            out += self.handler.feed_lines(chunk.lines, chunk.first_line)
        return out

    def poll(self, final: bool = False) -> tuple[list[T], bool]:
        """What the file gained, and whether anything happened (data, or a new file).
        ``final``: the file is complete, so its unfinished last line is a line."""
        chunk = self._read(final)
        if chunk is None:
            return [], False
        out = self._take(chunk)
        if chunk.content or chunk.restarted:
            return out, True
        following = self.successor(self.path) if self.successor is not None else None
        if following is None:
            return out, False
        out += self.finish(True)  # the current file is done: on to the next one
        self.close()
        self._open(following)
        return out, True

    def finish(self, complete: bool) -> Iterator[T]:
        """The rest of the file (chunk by chunk, as the items are taken), its unfinished last
        line as a line, then ``end_of_file``."""
        while (chunk := self._read(True)) is not None:
            yield from self._take(chunk)
            if not chunk.more:
                break
        yield from self.handler.end_of_file(complete)


class FollowedFileAdapter(Adapter):
    """A vendor file followed while the instrument program writes it (``follow = true``: the
    clock model estimates the instrument clock against the receive time) or read once as a
    replay (``follow = false``: the instrument's own clock, unless the config sets an offset or
    a clock mode). The adapter is its file's ``FileHandler``: subclasses implement
    ``feed_lines`` (or ``feed_bytes`` with ``binary``), and ``new_file`` / ``end_of_file`` as
    needed, or ``poll`` and ``finish`` for a file read another way. With ``globs`` a glob as
    ``path`` reads the matching files one after another, in name order.

    ``stop()`` (or the node's ``request_stop``) ends a follow after the data already read;
    the file's unfinished last line is then handed over too."""

    Config: ClassVar[type[FollowedFileConfig]] = FollowedFileConfig
    config: FollowedFileConfig
    graceful_stop = True
    binary: ClassVar[bool] = False
    globs: ClassVar[bool] = False
    read_size: ClassVar[int] = 1 << 20
    max_read: ClassVar[int] = DEFAULT_MAX_READ

    def __init__(self, stream: str, config: FollowedFileConfig | None = None):
        config = config if config is not None else self.Config()
        super().__init__(stream, replay_clock(config))
        self.path = self.first_path()
        self.file: FollowedFile[Frame] | None = None
        self.rows_read = 0     # data rows (text) or scans (binary) accepted

    # -- the file handler ------------------------------------------------------------------
    def new_file(self, path: Path) -> None:
        """A new file starts (the first, a rotation, replacement or truncation, a glob's
        next): forget the current one."""
        self.path = path

    def feed_lines(self, lines: list[bytes], first_line: int) -> list[Frame]:
        raise NotImplementedError(f"{type(self).__name__} reads no text")

    def feed_bytes(self, data: bytes) -> list[Frame]:
        raise NotImplementedError(f"{type(self).__name__} reads no bytes")

    def end_of_file(self, complete: bool) -> list[Frame]:
        """The current file ends (see ``FollowedFile``); checks of a whole file go here."""
        return []

    # -- reading ---------------------------------------------------------------------------
    def open(self) -> None:
        """At the start of ``frames()``: the file (a glob's current first match)."""
        self.file = FollowedFile(self.first_path(), self, binary=self.binary,
                                 successor=self.next_file if self.globbed else None,
                                 on_error=self.read_failed, read_size=self.read_size,
                                 max_read=self.max_read)

    def poll(self) -> tuple[list[Frame], bool]:
        """The frames from what the file gained, and whether anything arrived."""
        assert self.file is not None
        return self.file.poll()

    def finish(self, complete: bool) -> Iterable[Frame]:
        """The last frames: the rest of the file, then ``end_of_file(complete)``."""
        assert self.file is not None
        return self.file.finish(complete)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def read_failed(self, path: Path, exc: OSError) -> None:
        self.reject(str(path), f"cannot read: {exc}")

    def stop(self) -> None:
        """Ends ``frames()`` at the next poll (after the data already read)."""
        self.request_stop()

    async def frames(self) -> AsyncIterator[Frame]:
        c = self.config
        if not c.follow and not self.first_path().exists():
            self.reject(str(self.first_path()), "file not found")
            return
        self.open()
        try:
            idle = 0.0
            while not self.stop_requested:
                frames, active = self.poll()
                for frame in frames:
                    yield frame
                if active:
                    idle = 0.0
                    await asyncio.sleep(0)
                    continue
                if not c.follow or (c.idle_timeout_s is not None and idle >= c.idle_timeout_s):
                    break
                if await self.sleep_or_stop(c.poll_s):
                    break
                idle += c.poll_s
            # a replay or follow that ran out: the file is whole; a stop: it may still grow
            for frame in self.finish(complete=not self.stop_requested):
                yield frame
        finally:
            self.close()

    # -- helpers ---------------------------------------------------------------------------
    def frame_on(self, stream: str, kind: str, instrument_t0_ns: int,
                 arrays: dict[str, np.ndarray], units: dict[str, str],
                 meta: dict[str, Any]) -> Frame:
        """``make_frame`` for a stream other than the adapter's own (one file, two streams)."""
        frame = self.make_frame(kind, instrument_t0_ns, arrays, units, meta)
        frame.stream = stream
        return frame

    def counters(self) -> dict[str, int]:
        restarts = self.file.restarts if self.file is not None else 0
        return {**super().counters(), "rows": self.rows_read, "file_restarts": restarts}

    # -- globs -----------------------------------------------------------------------------
    @property
    def globbed(self) -> bool:
        return self.globs and is_glob(self.config.path)

    def first_path(self) -> Path:
        files = self._matching()
        return files[0] if files else Path(self.config.path)

    def _matching(self) -> list[Path]:
        if not self.globbed:
            return [Path(self.config.path)]
        return sorted(Path(p) for p in glob.glob(self.config.path))

    def next_file(self, current: Path) -> Path | None:
        """The file after ``current`` in name order (the first match if ``current`` is not
        one of them, e.g. the glob itself while no file exists yet)."""
        files = self._matching()
        if current not in files:
            return files[0] if files else None
        later = files[files.index(current) + 1:]
        return later[0] if later else None


class TextFileAdapter(FollowedFileAdapter):
    """A followed text file that starts with a header. Subclasses parse the header
    (``read_header``: None while more lines are needed; raises ``InputError`` for a file it
    cannot be), set up for it (``start_file``: False refuses the file)
    and turn decoded data lines into frames (``rows``). A refused or broken file is skipped
    until a new one replaces it."""

    def __init__(self, stream: str, config: FollowedFileConfig | None, encoding: str):
        super().__init__(stream, config)
        self.encoding = encoding
        self.new_file(self.path)

    def new_file(self, path: Path) -> None:
        super().new_file(path)
        self.header: Any = None
        self._head: list[str] = []
        self._dead = False

    def read_header(self, lines: list[str]) -> Any:
        raise NotImplementedError

    def start_file(self, header: Any) -> bool:
        return True

    def rows(self, lines: list[str], first_line: int) -> list[Frame]:
        raise NotImplementedError

    def feed_lines(self, lines: list[bytes], first_line: int) -> list[Frame]:
        return self.feed([line.decode(self.encoding, errors="replace") for line in lines],
                         first_line)

    def feed(self, lines: list[str], first_line: int) -> list[Frame]:
        """Frames from decoded lines; ``first_line`` is the 1-based number of the first (the
        header is read from line 1 on)."""
        if self._dead:
            return []
        if self.header is None:
            self._head.extend(lines)
            try:
                header = self.read_header(self._head)
            except InputError as exc:
                self.reject_error(exc)
                self._dead = True
                return []
            if header is None:
                return []
            first_line = header.data_start_line
            lines, self._head = self._head[first_line - 1:], []
            if not self.start_file(header):
                self._dead = True
                return []
            self.header = header
        return self.rows(lines, first_line)

    def end_of_file(self, complete: bool) -> list[Frame]:
        """Checks once the file is complete (subclasses add theirs)."""
        if complete and self.header is None and self._head and not self._dead:
            self.reject(f"{self.path}: line {len(self._head)}",
                        "the file ends inside its header (truncated?)")
        return []
