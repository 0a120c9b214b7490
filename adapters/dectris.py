"""DECTRIS SIMPLON detector stream: a ZeroMQ PULL consumer of stream v1 and stream v2 messages.

Stream v1 (the "legacy" interface, port 9999) sends multipart messages whose first part is a JSON
object naming its ``htype``:

- ``dheader-1.0`` {series, header_detail}: ``basic`` and ``all`` add the detector config as a
  JSON part; ``all`` adds three (JSON, blob) pairs: flatfield, pixel mask, count-rate table.
- ``dimage-1.0`` {series, frame, hash}, then ``dimage_d-1.0`` {shape [x, y], type, encoding,
  size}, the data blob, and ``dconfig-1.0`` {start_time, stop_time, real_time} in ns; an
  optional appendix part may follow.
- ``dseries_end-1.0`` {series}.

Encodings ``<`` / ``>`` (raw), ``lz4<`` (one LZ4 block) and ``bs8/bs16/bs32-lz4<``
(bitshuffle + LZ4 in the HDF5 filter's framing). Raw blobs are published zero-copy: the image is
``np.frombuffer`` on the received ZeroMQ frame.

Stream v2 (SIMPLON 1.8+, port 31001) sends one CBOR message per event, a map starting with
``type``: ``start``, ``image`` (``data``: channel -> RFC 8746 multi-dimensional array
[[rows, cols], typed array]) and ``end``. A typed array's bytes may be wrapped in the DECTRIS
compression tag 56500 ["bslz4" | "lz4", element size, bytes] (HDF5 filter framing). cbor2 copies
byte strings, so v2 images cost one copy. Messages are told apart by their first bytes (v2 starts
with the self-described CBOR tag), so one consumer takes either.

Out-of-order or inconsistent messages (an image outside a series, a series id that changes, a
frame number that goes back, a blob that is not shape x dtype, an unknown htype, garbage) are
rejected with an error naming the message and part, counted, and the consumer keeps going. A
frame number that skips ahead is counted as a reject (the missing frames are named) and the
image is still published.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
import lz4.block
import numba as nb
import numpy as np
import zmq
import zmq.asyncio
from pydantic import Field

from stream.frame import ALLOWED_DTYPES, Frame

from .base import Adapter, AdapterConfig, InputError

CBOR_MAGIC = b"\xd9\xd9\xf7"       # self-described CBOR (tag 55799): every v2 message
TAG_MULTI_DIM = 40                 # RFC 8746 multi-dimensional array, row-major
TAG_COMPRESSED = 56500             # DECTRIS compressed byte string
_V1_TYPES = {"uint8": "u1", "uint16": "u2", "uint32": "u4", "int8": "i1", "int16": "i2",
             "int32": "i4", "float32": "f4"}
_V1_ENCODING = re.compile(r"^(?:bs(8|16|32)-)?(lz4)?([<>])$")
# RFC 8746 typed-array tags whose dtype a frame may carry
_TYPED_ARRAYS = {tag: np.dtype(dt) for tag, dt in {
    64: "u1", 65: ">u2", 66: ">u4", 68: "u1", 69: "<u2", 70: "<u4", 72: "i1", 73: ">i2",
    74: ">i4", 77: "<i2", 78: "<i4", 81: ">f4", 82: ">f8", 85: "<f4", 86: "<f8"}.items()
    if np.dtype(dt).str in ALLOWED_DTYPES}
_V1_HEADER_PARTS = {"none": 1, "basic": 2, "all": 8}
_V1_HEADER_BLOBS = ((2, "dflatfield-1.0"), (4, "dpixelmask-1.0"), (6, "dcountrate_table-1.0"))
_BURST = 64       # messages taken without a trip through the event loop


class MessageError(InputError):
    """A message that cannot be used; ``where`` names the message (htype, series, frame, part)."""


# -- decompression (HDF5 filter framing: u64 BE total bytes, u32 BE block bytes, blocks) --------

@nb.njit(cache=True)
def _bitunshuffle(src: np.ndarray, dst: np.ndarray, n: int, elem_size: int) -> None:
    """Undo bitshuffle on one block of ``n`` elements (n % 8 == 0) into zeroed ``dst``: row
    8*j + k of ``src`` holds bit k of byte j of every element, eight elements per byte."""
    row_bytes = n // 8
    for j in range(elem_size):
        for k in range(8):
            row = (8 * j + k) * row_bytes
            bit = np.uint8(1 << k)
            for g in range(row_bytes):
                b = src[row + g]
                if b:
                    base = 8 * g * elem_size + j
                    for m in range(8):
                        if (b >> m) & 1:
                            dst[base + m * elem_size] |= bit


def _framing(blob: memoryview) -> tuple[int, int]:
    if blob.nbytes < 12:
        raise ValueError(f"{blob.nbytes} bytes, shorter than the 12-byte header")
    total, block = struct.unpack_from(">QI", blob, 0)
    if total and not block:
        raise ValueError("block size 0")
    return total, block


def _blocks(blob: memoryview, total: int, block: int) -> Iterator[tuple[int, int, memoryview]]:
    """(offset, uncompressed size, compressed bytes) of each block after the header."""
    pos, done = 12, 0
    while done < total:
        size = min(block, total - done)
        if pos + 4 > blob.nbytes:
            raise ValueError(f"truncated before block at byte {done} of {total}")
        (c,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if pos + c > blob.nbytes:
            raise ValueError(f"block at byte {done}: {c} compressed bytes, "
                             f"{blob.nbytes - pos} left")
        yield done, size, blob[pos:pos + c]
        pos += c
        done += size
    if pos != blob.nbytes:
        raise ValueError(f"{blob.nbytes - pos} bytes after the last block")


def bslz4_decompress(blob: memoryview | bytes, elem_size: int) -> np.ndarray:
    """Bitshuffle + LZ4 in the HDF5 filter's framing (v1 ``bs*-lz4``, v2 ``bslz4``): uint8."""
    blob = memoryview(blob).cast("B")
    total, block = _framing(blob)
    if block % (8 * elem_size):
        raise ValueError(f"block size {block} is not a multiple of 8 x {elem_size} bytes")
    leftover = total % (8 * elem_size)   # trailing elements are stored as they are
    out = np.zeros(total, np.uint8)
    for done, size, data in _blocks(blob[:blob.nbytes - leftover], total - leftover, block):
        raw = np.frombuffer(lz4.block.decompress(data, uncompressed_size=size), np.uint8)
        if raw.size != size:
            raise ValueError(f"block at byte {done}: {raw.size} bytes, expected {size}")
        _bitunshuffle(raw, out[done:done + size], size // elem_size, elem_size)
    if leftover:
        out[total - leftover:] = np.frombuffer(blob[blob.nbytes - leftover:], np.uint8)
    return out


def lz4_hdf5_decompress(blob: memoryview | bytes) -> np.ndarray:
    """LZ4 blocks in the HDF5 LZ4 filter's framing (v2 ``lz4``); a block whose compressed size
    equals its size is stored raw. Returns uint8."""
    blob = memoryview(blob).cast("B")
    total, block = _framing(blob)
    out = np.empty(total, np.uint8)
    for done, size, data in _blocks(blob, total, block):
        if data.nbytes == size:
            out[done:done + size] = np.frombuffer(data, np.uint8)
            continue
        raw = lz4.block.decompress(data, uncompressed_size=size)
        if len(raw) != size:
            raise ValueError(f"block at byte {done}: {len(raw)} bytes, expected {size}")
        out[done:done + size] = np.frombuffer(raw, np.uint8)
    return out


# -- message content --------------------------------------------------------------------------

# meta key -> (config keys in v1 / v2, factor to SI). Only unit conversion, no physics.
_DETECTOR_META = {
    "wavelength_m": (("wavelength", "incident_wavelength"), 1e-10),     # Å
    "energy_eV": (("photon_energy", "incident_energy"), 1.0),
    "distance_m": (("detector_distance",), 1.0),
    "count_time_s": (("count_time",), 1.0),
    "frame_time_s": (("frame_time",), 1.0),
}
_DETECTOR_PAIRS = {
    "beam_center_px": (("beam_center_x",), ("beam_center_y",)),
    "pixel_size_m": (("x_pixel_size", "pixel_size_x"), ("y_pixel_size", "pixel_size_y")),
}
_DETECTOR_TEXT = {"detector": ("description", "detector_description"),
                  "serial": ("detector_number", "detector_serial_number")}


def _value(config: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        v = config.get(key)
        if isinstance(v, Mapping):   # SIMPLON config parameters read as {"value": ...}
            v = v.get("value")
        if v is not None:
            return v
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def detector_meta(config: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a v1 header config or v2 start message that image frames carry."""
    out: dict[str, Any] = {}
    for name, (keys, factor) in _DETECTOR_META.items():
        v = _number(_value(config, keys))
        if v is not None:
            out[name] = v * factor
    for name, (xkeys, ykeys) in _DETECTOR_PAIRS.items():
        x, y = _number(_value(config, xkeys)), _number(_value(config, ykeys))
        if x is not None and y is not None:
            out[name] = [x, y]
    for name, keys in _DETECTOR_TEXT.items():
        v = _value(config, keys)
        if isinstance(v, str) and v:
            out[name] = v[:200]
    return out


def _epoch_ns(v: Any) -> int | None:
    """An ISO 8601 date (naive: UTC) or a datetime, as epoch ns."""
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(v, datetime):
        return None
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    delta = v - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _rational_s(v: Any) -> float | None:
    """A v2 Rational [numerator, denominator] in seconds."""
    if (isinstance(v, Sequence) and len(v) == 2 and all(isinstance(x, int) for x in v)
            and v[1] > 0):
        return v[0] / v[1]
    return None


def _part_buffer(part: Any) -> memoryview:
    return part.buffer if isinstance(part, zmq.Frame) else memoryview(part)


def _part_bytes(part: Any) -> bytes:
    return part.bytes if isinstance(part, zmq.Frame) else bytes(part)


@dataclass
class _Compressed:
    algorithm: Any
    elem_size: Any
    data: Any


@dataclass
class _TypedArray:
    tag: int
    payload: Any


@dataclass
class _MultiDim:
    dims: Any
    array: Any


def _tag_hook(*args: Any) -> Any:
    """cbor2 passes (decoder, tag) in 5.x and (tag, immutable) in 6.x."""
    tag = args[0] if isinstance(args[0], cbor2.CBORTag) else args[1]
    if tag.tag == TAG_COMPRESSED:
        v = tag.value
        return _Compressed(*v) if isinstance(v, Sequence) and len(v) == 3 else tag
    if 64 <= tag.tag <= 87:
        return _TypedArray(tag.tag, tag.value)
    if tag.tag == TAG_MULTI_DIM:
        v = tag.value
        return _MultiDim(*v) if isinstance(v, Sequence) and len(v) == 2 else tag
    return tag


@dataclass
class _Series:
    version: int
    id: Any
    origin_ns: int                     # epoch ns that image start times count from
    meta: dict[str, Any]               # detector config subset for the image frames
    unique_id: str | None = None
    shape: tuple[int, int] | None = None
    next_frame: int | None = None
    images: int = 0


class DectrisStreamConfig(AdapterConfig):
    endpoint: str = "tcp://127.0.0.1:9999"   # the detector's stream: tcp://<DCU>:9999 (v1), :31001 (v2)
    bind: bool = False                        # bind instead of connecting (a relay pushes to us)
    rcvhwm: int = Field(16, ge=1)             # messages queued before the detector is held back
    channels: list[str] | None = None         # v2: channels (thresholds) to publish; None: all


class DectrisStreamAdapter(Adapter):
    """Publishes one ``image`` frame per detector image (per channel in v2), array ``image``."""

    type_name = "dectris.stream"
    Config = DectrisStreamConfig

    def __init__(self, stream: str, config: DectrisStreamConfig | None = None):
        super().__init__(stream, config)
        self.series: _Series | None = None
        self.messages = 0
        self.images = 0
        self.series_count = 0

    # -- the socket ---------------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[Frame]:
        cfg = self.config
        sock = zmq.asyncio.Context.instance().socket(zmq.PULL)
        sock.rcvhwm = cfg.rcvhwm
        sock.linger = 0
        if cfg.bind:
            sock.bind(cfg.endpoint)
        else:
            sock.connect(cfg.endpoint)
        nowait = zmq.Socket.shadow(sock.underlying)
        burst = 0
        try:
            while True:
                try:   # take what is queued already without a trip through the event loop
                    parts = nowait.recv_multipart(zmq.NOBLOCK, copy=False)
                    burst += 1
                    if burst % _BURST == 0:
                        await asyncio.sleep(0)
                except zmq.Again:
                    parts = await sock.recv_multipart(copy=False)
                for frame in self.process_message(parts, time.time_ns()):
                    yield frame
        finally:
            sock.close()

    # -- messages -----------------------------------------------------------------------------
    def process_message(self, parts: Sequence[Any], host_ns: int | None = None) -> list[Frame]:
        """The frames one message gives (``parts``: zmq Frames or bytes). A bad message is
        rejected, counted and logged, and gives no frame."""
        self.messages += 1
        host_ns = time.time_ns() if host_ns is None else host_ns
        try:
            if not parts:
                raise MessageError(f"message {self.messages}", "no parts")
            first = _part_buffer(parts[0])
            if len(parts) == 1 and first[:3] == CBOR_MAGIC:
                return self._v2(first, host_ns)
            return self._v1(parts, host_ns)
        except MessageError as exc:
            self.reject_error(exc)
            return []

    def _json(self, part: Any, where: str) -> dict[str, Any]:
        try:
            obj = json.loads(_part_bytes(part))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MessageError(where, f"not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise MessageError(where, f"not a JSON object but {type(obj).__name__}")
        return obj

    def _open(self, series: _Series, where: str) -> None:
        if self.series is not None:
            self.reject(where, f"series {self.series.id!r} was not ended "
                                f"({self.series.images} images); starting series {series.id!r}")
        self.series = series
        self.series_count += 1

    def _current(self, series_id: Any, where: str, unique_id: str | None = None) -> _Series:
        s = self.series
        if s is None:
            raise MessageError(where, "no open series (no header / start message before it)")
        if series_id != s.id or (unique_id is not None and s.unique_id is not None
                                 and unique_id != s.unique_id):
            raise MessageError(where, f"series {series_id!r} inside series {s.id!r}")
        return s

    def _check_frame(self, s: _Series, number: Any, where: str) -> None:
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise MessageError(where, f"frame number {number!r} is not a non-negative integer")
        expected = s.next_frame
        if expected is not None and number < expected:
            raise MessageError(where, f"frame {number} after frame {expected - 1} (out of order "
                                      "or repeated)")
        s.next_frame = number + 1
        if expected is not None and number > expected:
            missing = f"{expected}" if number == expected + 1 else f"{expected}..{number - 1}"
            self.reject(where, f"frames {missing} missing (skipped to {number})")

    def _image_frame(self, s: _Series, image: np.ndarray, instrument_ns: int, host_ns: int,
                     meta: dict[str, Any]) -> Frame:
        s.images += 1
        self.images += 1
        return self.make_frame("image", instrument_ns, {"image": image}, {"image": "counts"},
                               {**s.meta, **meta}, host_ns)

    # -- stream v1 ----------------------------------------------------------------------------
    def _v1(self, parts: Sequence[Any], host_ns: int) -> list[Frame]:
        where = f"message {self.messages}"
        head = self._json(parts[0], f"{where} part 1")
        htype = head.get("htype")
        where = f"{where} ({htype})" if isinstance(htype, str) else where
        if htype == "dimage-1.0":
            return self._v1_image(head, parts, where, host_ns)
        if htype == "dheader-1.0":
            self._v1_header(head, parts, where, host_ns)
        elif htype == "dseries_end-1.0":
            self._current(head.get("series"), f"{where} series {head.get('series')!r}")
            self.series = None
        else:
            raise MessageError(f"{where} part 1", f"unknown htype {htype!r}")
        return []

    def _v1_header(self, head: dict[str, Any], parts: Sequence[Any], where: str,
                   host_ns: int) -> None:
        series_id, detail = head.get("series"), head.get("header_detail")
        if isinstance(series_id, bool) or not isinstance(series_id, int):
            raise MessageError(f"{where} part 1", f"series {series_id!r} is not an integer")
        where = f"{where} series {series_id}"
        config: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        needed = _V1_HEADER_PARTS.get(detail)
        if needed is None:
            problems.append((f"{where} part 1", f"header_detail {detail!r} is not "
                                                "none, basic or all"))
        elif len(parts) < needed:
            problems.append((where, f"{len(parts)} parts, header_detail {detail!r} has "
                                    f"{needed}"))
        else:
            if needed >= 2:
                try:
                    config = self._json(parts[1], f"{where} part 2")
                except MessageError as exc:
                    problems.append((exc.where, exc.reason))
            for index, htype in _V1_HEADER_BLOBS[:max(0, needed - 2) // 2]:
                try:
                    got = self._json(parts[index], f"{where} part {index + 1}").get("htype")
                except MessageError as exc:
                    problems.append((exc.where, exc.reason))
                    continue
                if got != htype:
                    problems.append((f"{where} part {index + 1}", f"htype {got!r}, expected "
                                                                  f"{htype!r}"))
        origin = _epoch_ns(_value(config, ("data_collection_date",)))
        self._open(_Series(1, series_id, host_ns if origin is None else origin,
                           detector_meta(config)), where)
        for place, reason in problems:   # the series still opens: its images are usable
            self.reject(place, reason)

    def _v1_image(self, head: dict[str, Any], parts: Sequence[Any], where: str,
                  host_ns: int) -> list[Frame]:
        series_id, number = head.get("series"), head.get("frame")
        where = f"{where} series {series_id!r} frame {number!r}"
        s = self._current(series_id, where)
        self._check_frame(s, number, where)
        if len(parts) not in (4, 5):
            raise MessageError(where, f"{len(parts)} parts, expected 4 (or 5 with an appendix)")
        desc = self._json(parts[1], f"{where} part 2")
        if desc.get("htype") != "dimage_d-1.0":
            raise MessageError(f"{where} part 2", f"htype {desc.get('htype')!r}, expected "
                                                  "'dimage_d-1.0'")
        dconfig = self._json(parts[3], f"{where} part 4")
        if dconfig.get("htype") != "dconfig-1.0":
            raise MessageError(f"{where} part 4", f"htype {dconfig.get('htype')!r}, expected "
                                                  "'dconfig-1.0'")
        start = _number(dconfig.get("start_time"))
        if start is None:
            raise MessageError(f"{where} part 4", f"start_time {dconfig.get('start_time')!r} "
                                                  "is not a number")
        image = self._v1_decode(desc, _part_buffer(parts[2]), where)
        meta: dict[str, Any] = {"series": series_id, "frame": number,
                                "encoding": desc["encoding"]}
        real = _number(dconfig.get("real_time"))
        if real is not None:
            meta["real_time_s"] = real * 1e-9
        return [self._image_frame(s, image, s.origin_ns + int(start), host_ns, meta)]

    def _v1_decode(self, desc: dict[str, Any], blob: memoryview, where: str) -> np.ndarray:
        shape, kind, encoding = desc.get("shape"), desc.get("type"), desc.get("encoding")
        if (not isinstance(shape, list) or len(shape) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                           for v in shape)):
            raise MessageError(f"{where} part 2", f"shape {shape!r} is not [x, y]")
        if kind not in _V1_TYPES:
            raise MessageError(f"{where} part 2", f"type {kind!r} not supported "
                                                  f"({', '.join(_V1_TYPES)})")
        m = _V1_ENCODING.match(encoding) if isinstance(encoding, str) else None
        if m is None:
            raise MessageError(f"{where} part 2", f"encoding {encoding!r} not supported "
                                                  "('<', '>', 'lz4<', 'bs8/16/32-lz4<')")
        bits, compressed, order = m.groups()
        dtype = np.dtype(_V1_TYPES[kind]).newbyteorder(order)
        size = desc.get("size")
        if size is not None and size != blob.nbytes:
            raise MessageError(f"{where} part 3", f"{blob.nbytes} bytes, dimage_d says size "
                                                  f"{size!r}")
        x, y = shape
        nbytes = x * y * dtype.itemsize
        if bits and int(bits) != 8 * dtype.itemsize:
            raise MessageError(f"{where} part 2", f"encoding {encoding!r} does not match type "
                                                  f"{kind!r}")
        try:
            if bits:
                data = bslz4_decompress(blob, dtype.itemsize)
            elif compressed:
                data = np.frombuffer(lz4.block.decompress(blob, uncompressed_size=nbytes),
                                     np.uint8)
            else:
                data = np.frombuffer(blob, np.uint8)   # zero-copy: a view of the zmq frame
        except (ValueError, lz4.block.LZ4BlockError) as exc:
            raise MessageError(f"{where} part 3", f"cannot decode {encoding!r}: {exc}") from None
        if data.nbytes != nbytes:
            raise MessageError(f"{where} part 3", f"{data.nbytes} bytes of image data, "
                                                  f"shape [{x}, {y}] {kind} needs {nbytes}")
        return data.view(dtype).reshape(y, x)

    # -- stream v2 ----------------------------------------------------------------------------
    def _v2(self, buffer: memoryview, host_ns: int) -> list[Frame]:
        where = f"message {self.messages} (cbor)"
        try:
            msg = cbor2.loads(buffer, tag_hook=_tag_hook)
        except Exception as exc:  # noqa: BLE001 - cbor2 raises many types on garbage
            raise MessageError(where, f"not CBOR ({type(exc).__name__}: {exc})") from None
        if not isinstance(msg, Mapping):
            raise MessageError(where, f"not a CBOR map but {type(msg).__name__}")
        kind = msg.get("type")
        series_id, unique_id = msg.get("series_id"), msg.get("series_unique_id")
        where = f"message {self.messages} ({kind}) series {series_id!r}"
        if kind == "start":
            if isinstance(series_id, bool) or not isinstance(series_id, int):
                raise MessageError(where, f"series_id {series_id!r} is not an integer")
            origin = _epoch_ns(msg.get("arm_date"))
            sx, sy = msg.get("image_size_x"), msg.get("image_size_y")
            shape = (sy, sx) if isinstance(sx, int) and isinstance(sy, int) else None
            self._open(_Series(2, series_id, host_ns if origin is None else origin,
                               detector_meta(msg), unique_id if isinstance(unique_id, str)
                               else None, shape), where)
            return []
        if kind == "end":
            self._current(series_id, where, unique_id)
            self.series = None
            return []
        if kind != "image":
            raise MessageError(where, f"unknown message type {kind!r}")
        return self._v2_image(msg, where, host_ns)

    def _v2_image(self, msg: Mapping[str, Any], where: str, host_ns: int) -> list[Frame]:
        number = msg.get("image_id")
        where = f"{where} image {number!r}"
        s = self._current(msg.get("series_id"), where, msg.get("series_unique_id"))
        self._check_frame(s, number, where)
        data = msg.get("data")
        if not isinstance(data, Mapping) or not data:
            raise MessageError(where, "no 'data' map of channels")
        origin = _epoch_ns(msg.get("series_date"))
        start = _rational_s(msg.get("start_time"))
        instrument_ns = (s.origin_ns if origin is None else origin) + \
            (0 if start is None else int(round(start * 1e9)))
        meta: dict[str, Any] = {"series": s.id, "frame": number}
        real = _rational_s(msg.get("real_time"))
        if real is not None:
            meta["real_time_s"] = real
        wanted = self.config.channels
        out = []
        for channel, array in data.items():
            if wanted is not None and channel not in wanted:
                continue
            image = self._v2_decode(array, s.shape, f"{where} channel {channel!r}")
            out.append(self._image_frame(s, image, instrument_ns, host_ns,
                                         {**meta, "channel": channel}))
        return out

    def _v2_decode(self, array: Any, shape: tuple[int, int] | None, where: str) -> np.ndarray:
        if not isinstance(array, _MultiDim) or not isinstance(array.array, _TypedArray):
            raise MessageError(where, "not a multi-dimensional typed array (tag 40)")
        dims = array.dims
        if (not isinstance(dims, Sequence) or len(dims) != 2
                or not all(isinstance(v, int) and v > 0 for v in dims)):
            raise MessageError(where, f"dimensions {dims!r} are not [rows, columns]")
        if shape is not None and tuple(dims) != shape:
            raise MessageError(where, f"dimensions {list(dims)} differ from the start message's "
                                      f"image size {list(shape)}")
        dtype = _TYPED_ARRAYS.get(array.array.tag)
        if dtype is None:
            raise MessageError(where, f"typed-array tag {array.array.tag} not supported")
        payload = array.array.payload
        if isinstance(payload, bytes):
            raw = np.frombuffer(payload, np.uint8)
        elif not isinstance(payload, _Compressed) or not isinstance(payload.data, bytes):
            raise MessageError(where, f"typed array holds {type(payload).__name__}, not bytes")
        elif payload.algorithm not in ("bslz4", "lz4") or (
                payload.algorithm == "bslz4" and payload.elem_size != dtype.itemsize):
            raise MessageError(where, f"compression {payload.algorithm!r} with element size "
                                      f"{payload.elem_size!r} not supported for {dtype.str}")
        else:
            try:
                raw = (bslz4_decompress(payload.data, dtype.itemsize)
                       if payload.algorithm == "bslz4" else lz4_hdf5_decompress(payload.data))
            except (ValueError, lz4.block.LZ4BlockError) as exc:
                raise MessageError(where, f"cannot decompress {payload.algorithm!r}: "
                                          f"{exc}") from None
        rows, cols = dims
        if raw.nbytes != rows * cols * dtype.itemsize:
            raise MessageError(where, f"{raw.nbytes} bytes of image data, [{rows}, {cols}] "
                                      f"{dtype.str} needs {rows * cols * dtype.itemsize}")
        return raw.view(dtype).reshape(rows, cols)

    def counters(self) -> dict[str, int]:
        return {"rejects": self.rejects, "messages": self.messages, "images": self.images,
                "series": self.series_count}
