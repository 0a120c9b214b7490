"""A folder of detector images written by a beamline: TIFF, CBF, EDF (through fabio) and HDF5
stacks (through h5py), watched by polling.

A file is read once it has settled: its size and mtime unchanged for ``settle_s`` (by our own
polls, or by the age of its mtime). It must then be complete: fabio pads some cut TIFFs (whole
rows missing) and every cut EDF, decodes a CBF cut in its data with only a logged checksum
mismatch, and never returns on a CBF cut inside its binary header. So the TIFF layout
(directories, strips and tiles inside the file) and the CBF binary section (data start,
``X-Binary-Size`` bytes, ``Content-MD5``) are checked before fabio reads, and fabio's own
"incomplete" flags and a missing image after; an HDF5 file that does not open is not complete
either. Such a file is tried again after another ``settle_s``, up to ``retries`` times; a file
that still does not parse is rejected with the reason and tried again only if it changes. A file
that changes while it is being waited for starts its wait and its tries afresh; a removed file
is forgotten.

Files are published in order (by name, numbers compared as numbers, or by mtime); a file still
being written holds back the ones after it. Each file is published once; an HDF5 file that grows
(more images appended to the stack) publishes the new images when it settles again.

Time base: the instrument time of an image is its file's mtime. Watching live (``follow``), the
clock model estimates the file system's offset against the host; a one-pass read of existing
files (``follow = false``, a replay) keeps the mtimes as they are unless the config sets a clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import mmap
import os
import re
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from stream.frame import ALLOWED_DTYPES, Frame

from .base import Adapter, AdapterConfig, InputError
from .timebase import replay_clock

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
CBF_BINARY_SECTION = b"--CIF-BINARY-FORMAT-SECTION--"
CBF_DATA_START = b"\x0c\x1a\x04\xd5"   # the bytes that start a CBF binary section's data
_CBF_SIZE = re.compile(rb"X-Binary-Size:\s*(\d+)")
_CBF_MD5 = re.compile(rb"Content-MD5:\s*(\S+)")
_HEADER_VALUE_MAX = 200  # header values longer than this are left out of the meta
_HEADER_KEYS_MAX = 64
_BATCH_BYTES = 256 << 20  # HDF5 images read per pass, at most this many bytes


class IncompleteImage(InputError):
    """A file that does not (yet) parse completely; ``where`` names the file (and image)."""


@dataclass
class _Image:
    data: np.ndarray
    index: int
    header: dict[str, str]
    in_stack: bool = False   # one of several images in its file (an HDF5 stack, multi-frame EDF)


@dataclass
class _Watched:
    path: Path
    signature: tuple[int, int]       # (size, mtime_ns) when last seen
    changed_at: float                # monotonic time the signature last changed
    due_at: float = 0.0              # monotonic time of the next try
    tries: int = 0
    done: tuple[int, int] | None = None   # signature when published or rejected
    images: int = 0                  # images published from this file (HDF5 stacks grow)
    final: bool = False              # later changes are ignored (published, or there at start)


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _short_header(header: Any, keys: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in dict(header or {}).items():
        if keys is not None and key not in keys:
            continue
        text = str(value)
        if len(text) <= _HEADER_VALUE_MAX:
            out[str(key)] = text
        if len(out) >= _HEADER_KEYS_MAX:
            break
    return out


def _check_image(data: Any, where: str) -> np.ndarray:
    if data is None:
        raise IncompleteImage(where, "no image data (truncated?)")
    data = np.asarray(data)
    if data.ndim != 2 or data.size == 0:
        raise IncompleteImage(where, f"shape {list(data.shape)} is not a 2-D image")
    if data.dtype.str not in ALLOWED_DTYPES:
        if data.dtype.kind not in "fiub":
            raise IncompleteImage(where, f"dtype {data.dtype.str} is not numeric")
        data = data.astype(data.dtype.newbyteorder("<"))
    return data


def cbf_problem(path: Path) -> str | None:
    """Why a CBF file is not complete, or None. fabio (2026.6) waits forever for the data start
    of a CBF cut inside its binary-section header, and decodes one cut inside the data (or
    garbled) with only a logged checksum mismatch, so both are checked first: the data start,
    ``X-Binary-Size`` bytes after it and the ``Content-MD5`` of those bytes."""
    with open(path, "rb") as f:
        if path.suffix.lower() != ".cbf" and f.read(6) != b"###CBF":
            return None
        if os.fstat(f.fileno()).st_size == 0:
            return None   # fabio refuses an empty file by itself
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            start = m.find(CBF_DATA_START)
            if start < 0:
                return "CBF ends before its binary data (truncated?)"
            head = m[max(0, start - 4096):start]
            head = head[head.rfind(CBF_BINARY_SECTION):]
            size = _CBF_SIZE.search(head)
            if size is None:
                return None   # fabio decides
            begin, end = start + len(CBF_DATA_START), start + len(CBF_DATA_START) + int(size[1])
            if end > len(m):
                return f"CBF binary data has {len(m) - begin} of {int(size[1])} bytes (truncated?)"
            md5 = _CBF_MD5.search(head)
            if md5 and base64.b64encode(hashlib.md5(m[begin:end]).digest()) != md5[1]:
                return "CBF binary data does not match its Content-MD5 (garbled or rewritten?)"
    return None


_TIFF_DATA_TAGS = ((273, 279), (324, 325))   # (strip offsets, byte counts), (tile ...)
_TIFF_INT = {3: "H", 4: "I"}                   # SHORT, LONG


def tiff_problem(path: Path) -> str | None:
    """Why a classic TIFF is not complete, or None: a directory or a strip or tile of image data
    beyond the end of the file. fabio pads such a file when the short data happens to be a whole
    number of rows, so the layout is checked first (BigTIFF is left to fabio)."""
    with open(path, "rb") as f, contextlib.ExitStack() as stack:
        order = {b"II*\0": "<", b"MM\0*": ">"}.get(f.read(4))
        if order is None:
            return None
        m = stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        if len(m) < 8:
            return "TIFF header cut short (truncated?)"
        size, ifd, seen = len(m), struct.unpack_from(order + "I", m, 4)[0], set()
        while ifd and ifd not in seen:
            seen.add(ifd)
            if ifd + 2 > size:
                return "TIFF directory beyond the end of the file (truncated?)"
            (n,) = struct.unpack_from(order + "H", m, ifd)
            if ifd + 2 + 12 * n + 4 > size:
                return "TIFF directory cut short (truncated?)"
            tags: dict[int, tuple[int, int, int]] = {}
            for k in range(n):
                tag, kind, count, value = struct.unpack_from(order + "HHII", m, ifd + 2 + 12 * k)
                tags[tag] = (kind, count, value)
            for offsets_tag, counts_tag in _TIFF_DATA_TAGS:
                if offsets_tag in tags and counts_tag in tags:
                    offsets, counts = (_tiff_values(m, order, ifd + 2 + 12 * list(tags).index(t),
                                                    *tags[t]) for t in (offsets_tag, counts_tag))
                    if offsets is None or counts is None:
                        return "TIFF strip table beyond the end of the file (truncated?)"
                    if any(o + c > size for o, c in zip(offsets, counts, strict=False)):
                        return "TIFF image data beyond the end of the file (truncated?)"
            (ifd,) = struct.unpack_from(order + "I", m, ifd + 2 + 12 * n)
    return None


def _tiff_values(m: mmap.mmap, order: str, entry: int, kind: int, count: int,
                 value: int) -> list[int] | None:
    """The integers of one IFD entry (inline when they fit in 4 bytes), None if out of file."""
    code = _TIFF_INT.get(kind)
    if code is None:
        return []
    width = struct.calcsize(code) * count
    start = entry + 8 if width <= 4 else value
    if start + width > len(m):
        return None
    return list(struct.unpack_from(f"{order}{count}{code}", m, start))


def read_fabio(path: Path, header_keys: list[str] | None = None) -> list[_Image]:
    """Every frame of an image file fabio reads (TIFF, CBF, EDF, ...). Raises IncompleteImage."""
    import fabio

    problem = cbf_problem(path) or tiff_problem(path)
    if problem is not None:
        raise IncompleteImage(str(path), problem)
    try:
        img = fabio.open(str(path))
    except Exception as exc:  # noqa: BLE001 - fabio raises anything on a partial file
        raise IncompleteImage(str(path), f"fabio cannot read it ({type(exc).__name__}: "
                                         f"{exc})") from None
    out = []
    count = max(1, int(getattr(img, "nframes", 1) or 1))
    for index in range(count):
        try:
            frame = img if index == 0 else img.getframe(index)
            data = frame.data
        except Exception as exc:  # noqa: BLE001
            raise IncompleteImage(f"{path} frame {index}",
                                  f"{type(exc).__name__}: {exc}") from None
        if getattr(frame, "incomplete_file", False) or getattr(frame, "incomplete_data", False):
            raise IncompleteImage(f"{path} frame {index}", "data stream incomplete")
        out.append(_Image(_check_image(data, f"{path} frame {index}"), index,
                          _short_header(frame.header, header_keys), count > 1))
    return out


def read_hdf5(path: Path, dataset: str, start: int, max_bytes: int = _BATCH_BYTES
              ) -> tuple[list[_Image], int]:
    """Images ``start``... of a 2-D image or 3-D stack (at most ``max_bytes`` of them), and
    the number of images in the file. Raises IncompleteImage."""
    import h5py

    with contextlib.suppress(ImportError):
        import hdf5plugin  # noqa: F401 - registers the bitshuffle/LZ4 filters of Eiger files
    try:
        # swmr: a file writer in SWMR mode may hold the file open while we read
        with h5py.File(path, "r", swmr=True, locking=False) as f:
            if dataset not in f:
                raise IncompleteImage(str(path), f"no dataset {dataset!r}")
            ds = f[dataset]
            ds_ndim = ds.ndim
            if ds.ndim == 2:
                count, images = 1, ([ds[()]] if start == 0 else [])
            elif ds.ndim == 3:
                count = ds.shape[0]
                per_image = max(1, ds.shape[1] * ds.shape[2] * ds.dtype.itemsize)
                stop = min(count, start + max(1, max_bytes // per_image))
                images = list(ds[start:stop]) if stop > start else []
            else:
                raise IncompleteImage(f"{path}:{dataset}", f"shape {list(ds.shape)} is "
                                      "neither an image nor a stack of images")
    except (IncompleteImage, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, ... mid-write
        raise IncompleteImage(str(path), f"h5py cannot read it ({type(exc).__name__}: "
                                         f"{exc})") from None
    out = [_Image(_check_image(data, f"{path}:{dataset}[{start + i}]"), start + i, {},
                  ds_ndim == 3) for i, data in enumerate(images)]
    return out, count


class ImageFolderConfig(AdapterConfig):
    directory: str = "."                  # the folder the detector writes into
    pattern: str = "*"                    # glob of the files to read (e.g. "*.cbf", "scan_*.h5")
    ignore: list[str] = Field(default_factory=lambda: [".*", "*.tmp", "*.part", "*~"])
                                          # globs never read (files being written under a temporary name)
    order: Literal["name", "mtime"] = "name"   # publishing order; names compare numbers as numbers
    start_from: Literal["existing", "now"] = "existing"   # "now": skip the files already there
    follow: bool = True                   # keep watching; false: read the files there once, stop
    poll_s: float = Field(0.5, gt=0)      # time between directory scans
    settle_s: float = Field(1.0, ge=0)    # size and mtime unchanged this long before reading
    retries: int = Field(3, ge=0)         # tries after the first for a file that does not parse
    h5_dataset: str = "/entry/data/data"  # the image or stack (images, rows, columns) in HDF5 files
    header_keys: list[str] | None = None  # header entries copied to meta; None: all short ones


class ImageFolderAdapter(Adapter):
    """Publishes one ``image`` frame (array ``image``, the file's dtype) per image in a file."""

    type_name = "detector.folder"
    Config = ImageFolderConfig

    def __init__(self, stream: str, config: ImageFolderConfig | None = None):
        # a replay of files on disk: their mtimes are the time base
        super().__init__(stream, replay_clock(config if config is not None else self.Config()))
        cfg = self.config
        self.directory = Path(cfg.directory)
        self.watched: dict[str, _Watched] = {}
        self.files = 0
        self.images = 0
        self.retries = 0   # tries of files that did not parse yet

    # -- scanning -------------------------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        cfg = self.config
        return fnmatch.fnmatch(name, cfg.pattern) and not any(
            fnmatch.fnmatch(name, p) for p in cfg.ignore)

    def scan(self, now: float | None = None) -> None:
        """Note new files, changes and removals since the last scan. A removed file is
        forgotten: it holds nothing back, and a new file of that name is read again."""
        now = time.monotonic() if now is None else now
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        present = {entry.name for entry in entries}
        for name in [n for n in self.watched if n not in present]:
            del self.watched[name]
        for entry in entries:
            if not self._wanted(entry.name):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue
            signature = (st.st_size, st.st_mtime_ns)
            w = self.watched.get(entry.name)
            if w is None:
                self.watched[entry.name] = _Watched(Path(entry.path), signature, now)
            elif w.final:
                w.signature = w.done = signature
            elif w.signature != signature:
                w.signature, w.changed_at, w.tries = signature, now, 0

    def _settled(self, w: _Watched, now: float) -> bool:
        settle = self.config.settle_s
        age_s = (time.time_ns() - w.signature[1]) * 1e-9
        return now - w.changed_at >= settle or age_s >= settle

    def _ordered(self) -> list[_Watched]:
        pending = [w for w in self.watched.values() if w.done != w.signature]
        if self.config.order == "mtime":
            return sorted(pending, key=lambda w: (w.signature[1], _natural_key(w.path.name)))
        return sorted(pending, key=lambda w: _natural_key(w.path.name))

    def ready(self, now: float | None = None) -> Iterator[_Watched]:
        """Pending files in order, up to the first that is still being written."""
        now = time.monotonic() if now is None else now
        for w in self._ordered():
            if self.config.follow and not (self._settled(w, now) and now >= w.due_at):
                return
            yield w

    # -- reading --------------------------------------------------------------------------------
    async def _read(self, w: _Watched) -> AsyncIterator[Frame]:
        """The frames of one settled file; a file that does not parse is retried or rejected."""
        signature = w.signature
        is_hdf5 = w.path.suffix.lower() in HDF5_SUFFIXES
        try:
            while True:
                if is_hdf5:
                    images, count = await asyncio.to_thread(
                        read_hdf5, w.path, self.config.h5_dataset, w.images)
                else:
                    images = await asyncio.to_thread(read_fabio, w.path, self.config.header_keys)
                    count = len(images)
                for image in images:
                    yield self._frame(w, image, count, signature[1])
                    w.images = image.index + 1
                if not is_hdf5 or w.images >= count or not images:
                    break
        except FileNotFoundError:   # removed since the scan: forget it
            self.watched.pop(w.path.name, None)
            return
        except IncompleteImage as exc:
            w.tries += 1
            if self.config.follow and w.tries <= self.config.retries:
                w.due_at = time.monotonic() + self.config.settle_s
                self.retries += 1
                return
            self.reject(exc.where, f"{exc.reason} (after {w.tries} tries)")
        else:
            self.files += 1
            w.final = not is_hdf5   # an image file is published once; stacks may grow
        w.done, w.tries = signature, 0

    def _frame(self, w: _Watched, image: _Image, count: int, mtime_ns: int) -> Frame:
        meta: dict[str, Any] = {"file": w.path.name}
        if image.in_stack:
            meta.update(index=image.index, images=count)
        if image.header:
            meta["header"] = image.header
        if w.path.suffix.lower() in HDF5_SUFFIXES:
            meta["dataset"] = self.config.h5_dataset
        self.images += 1
        return self.make_frame("image", mtime_ns, {"image": image.data}, {"image": "counts"},
                               meta)

    async def frames(self) -> AsyncIterator[Frame]:
        cfg = self.config
        self.scan()
        if cfg.start_from == "now":
            for w in self.watched.values():
                w.done, w.final = w.signature, True
        while True:
            for w in list(self.ready()):
                async for frame in self._read(w):
                    yield frame
                if w.done != w.signature:   # waiting for a retry holds back the files after it
                    break
            if not cfg.follow:
                return
            await asyncio.sleep(cfg.poll_s)
            self.scan()

    def counters(self) -> dict[str, int]:
        return {"rejects": self.rejects, "files": self.files, "images": self.images,
                "retries": self.retries}
