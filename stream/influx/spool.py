"""The disk spool: a directory with one gzip file of line protocol per batch, written to a
temporary name, fsync'd and renamed (then the directory fsync'd), so a file is either complete
or absent after a crash. Files are named ``<sequence>-<lines>.lp.gz`` and replayed oldest first.
A lock file keeps two processes from sharing a spool."""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import threading
from pathlib import Path

_NAME = re.compile(r"^(\d{20})-(\d+)\.lp\.gz$")


class SpoolFullError(RuntimeError):
    pass


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int, gzip_level: int = 1):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.gzip_level = gzip_level
        self._lock = threading.Lock()
        self._lock_file = open(self.dir / "spool.lock", "a+")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise RuntimeError(f"spool {self.dir} is in use by another process") from None
        for tmp in self.dir.glob(".tmp-*"):  # a write cut short by a crash
            tmp.unlink(missing_ok=True)
        self._files: list[tuple[int, int, int, Path]] = []  # (seq, lines, bytes, path)
        for path in self.dir.iterdir():
            m = _NAME.match(path.name)
            if m:
                self._files.append((int(m[1]), int(m[2]), path.stat().st_size, path))
        self._files.sort()
        self._next = self._files[-1][0] + 1 if self._files else 0
        self.bytes = sum(f[2] for f in self._files)

    # -- state ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._files)

    @property
    def lines(self) -> int:
        return sum(f[1] for f in self._files)

    def has_room(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes or not self._files

    # -- files ----------------------------------------------------------------------------
    def put(self, gz: bytes, n_lines: int, force: bool = False) -> Path:
        """Store one gzip'd batch durably. Raises SpoolFullError when it would pass the bound
        (unless ``force``: close() spools what is left even beyond it)."""
        with self._lock:
            if not force and not self.has_room(len(gz)):
                raise SpoolFullError(f"spool {self.dir} holds {self.bytes} of "
                                     f"{self.max_bytes} bytes")
            seq = self._next
            self._next += 1
            path = self.dir / f"{seq:020d}-{n_lines}.lp.gz"
            tmp = self.dir / f".tmp-{path.name}"
            with open(tmp, "wb") as f:
                f.write(gz)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            self._fsync_dir()
            self._files.append((seq, n_lines, len(gz), path))
            self.bytes += len(gz)
            return path

    def oldest(self) -> tuple[Path, int] | None:
        with self._lock:
            return (self._files[0][3], self._files[0][1]) if self._files else None

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def remove(self, path: Path, keep_as: Path | None = None) -> None:
        """Forget a delivered batch (delete its file, or rename it to ``keep_as``)."""
        with self._lock:
            for i, entry in enumerate(self._files):
                if entry[3] == path:
                    del self._files[i]
                    self.bytes -= entry[2]
                    break
            if keep_as is None:
                path.unlink(missing_ok=True)
            else:
                os.rename(path, keep_as)
            self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def compress(self, raw: bytes) -> bytes:
        return gzip.compress(raw, self.gzip_level, mtime=0)

    def close(self) -> None:
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
