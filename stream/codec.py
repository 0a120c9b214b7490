"""Wire forms of a frame. Never pickle.

Binary header = a fixed 28-byte preamble + a JSON *descriptor*:

    preamble  "<4sHHIqq": magic b"OPMF", envelope version, flags (0), descriptor length,
              seq, t0_ns
    descriptor  {"stream", "kind", "arrays": [{"name", "dtype", "shape"}], "units", "meta"}

Only ``seq`` and ``t0_ns`` change from one frame of a stream to the next, so they live in the
preamble and the descriptor bytes repeat. The decoder validates a descriptor once and caches it;
every frame still has its byte lengths checked against dtype x shape.

- ZeroMQ multipart: ``[topic, header, buf0, buf1, ...]``, zero-copy both ways.
- Single payload (MQTT, recordings): ``header, pad to 8, buf0, pad to 8, buf1, ...`` so that
  ``np.frombuffer`` views are aligned.
- Plain JSON, for frames that carry only scalars or short 1-D blocks: the header dict from the
  README with a ``"data"`` object of lists (NaN and infinities as null).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .frame import (
    ALLOWED_DTYPES,
    ARRAY_NAME_RE,
    ENVELOPE_VERSION,
    MAX_ARRAYS,
    MAX_NDIM,
    Frame,
    FrameError,
    array_spec,
    check_sample_times,
    check_seq_t0,
    validate_identity,
)

MAGIC = b"OPMF"
PREAMBLE = struct.Struct("<4sHHIqq")
FLAG_INLINE = 1  # the arrays follow the header in the same buffer (payload form)
PACK_BELOW_BYTES = 64 * 1024  # ZeroMQ: smaller frames travel packed in one part
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
JSON_MAX_ELEMENTS = 100_000
_DESCRIPTOR_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class _ArraySpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class _Descriptor:
    stream: str
    kind: str
    specs: tuple[_ArraySpec, ...]
    units: dict[str, str]
    meta: dict[str, Any]
    nbytes: int


def _pad8(n: int) -> int:
    return (-n) % 8


_ZEROS = bytes(8)
_json_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


_FLAT_META_TYPES = (str, int, float, bool, type(None))
_ENCODE_CACHE_SIZE = 4096
# (stream, kind, array layout) -> (units copy, meta copy, meta value types, descriptor bytes)
_encode_cache: dict[tuple, tuple[dict, dict, tuple, bytes]] = {}


def _descriptor_bytes(frame: Frame) -> bytes:
    """The JSON descriptor; reused while the stream's layout, units and meta stay the same."""
    layout = tuple((n, a.dtype.str, a.shape) for n, a in frame.arrays.items())
    key = (frame.stream, frame.kind, layout)
    meta = frame.meta
    hit = _encode_cache.get(key)
    # 1 == 1.0 == True, so the value types must match too; nested meta is never cached
    if hit is not None and hit[0] == frame.units and hit[1] == meta and \
            hit[2] == tuple(map(type, meta.values())):
        return hit[3]
    desc = {
        "stream": frame.stream,
        "kind": frame.kind,
        "arrays": [array_spec(n, a) for n, a in frame.arrays.items()],
        "units": frame.units,
        "meta": meta,
    }
    try:
        raw = _json_encode(desc).encode()
    except (TypeError, ValueError) as exc:
        raise FrameError(frame.stream, "meta", f"not JSON-serialisable: {exc}") from exc
    types = tuple(map(type, meta.values()))
    if all(t in _FLAT_META_TYPES for t in types):
        if len(_encode_cache) >= _ENCODE_CACHE_SIZE:
            _encode_cache.clear()
        _encode_cache[key] = (dict(frame.units), dict(meta), types, raw)
    return raw


def _contiguous(frame: Frame) -> list[np.ndarray]:
    return [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in frame.arrays.values()]


def encode_header(frame: Frame, flags: int = 0) -> bytes:
    desc = _descriptor_bytes(frame)
    return PREAMBLE.pack(MAGIC, frame.v, flags, len(desc), frame.seq, frame.t0_ns) + desc


def encode_multipart(frame: Frame, topic: bytes) -> list[Any]:
    """ZeroMQ multipart form. Array parts are the arrays themselves (buffer protocol)."""
    return [topic, encode_header(frame), *_contiguous(frame)]


def encode_parts(frame: Frame) -> list[Any]:
    """A frame's parts in a ZeroMQ message: one packed part (payload form) for small frames,
    header + zero-copy array parts for large ones."""
    if sum(a.nbytes for a in frame.arrays.values()) < PACK_BELOW_BYTES:
        return [encode_payload(frame)]
    return [encode_header(frame), *_contiguous(frame)]


def encode_payload(frame: Frame) -> bytes:
    """Single-payload binary form (MQTT, recordings)."""
    header = encode_header(frame, FLAG_INLINE)
    parts: list[bytes | memoryview] = [header, _ZEROS[: _pad8(len(header))]]
    for arr in _contiguous(frame):
        mv = memoryview(arr).cast("B") if arr.size else b""
        parts.append(mv)
        parts.append(_ZEROS[: _pad8(arr.nbytes)])
    return b"".join(parts)


def is_json_encodable(frame: Frame, max_elements: int = JSON_MAX_ELEMENTS) -> bool:
    total = 0
    for arr in frame.arrays.values():
        if arr.ndim > 1 or arr.dtype.kind not in "fiub":
            return False
        total += arr.size
    return total <= max_elements


def encode_json(frame: Frame) -> bytes:
    """Plain JSON form, readable by Node-RED, Telegraf and mosquitto_sub users."""
    if not is_json_encodable(frame):
        raise FrameError(frame.stream, "arrays", "only scalars and short 1-D blocks travel as JSON")
    doc = frame.header()
    data = {}
    for name, arr in frame.arrays.items():
        if arr.dtype.kind == "f":
            values = arr.astype(np.float64).tolist()
            data[name] = [v if math.isfinite(v) else None for v in values]
        else:
            data[name] = arr.tolist()
    doc["data"] = data
    try:
        return _json_encode(doc).encode()
    except (TypeError, ValueError) as exc:
        raise FrameError(frame.stream, "meta", f"not JSON-serialisable: {exc}") from exc


class FrameDecoder:
    """Decodes and validates frames from any wire form. One per receiver; not thread-safe."""

    def __init__(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD):
        self.max_payload_bytes = max_payload_bytes
        self._cache: dict[tuple[int, bytes], _Descriptor] = {}
        self.flags = 0

    # -- descriptor -----------------------------------------------------------------------
    def _descriptor(self, raw: bytes, version: int) -> _Descriptor:
        desc = self._cache.get((version, raw))
        if desc is not None:
            return desc
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FrameError(None, "header", f"not valid JSON: {exc}") from exc
        desc = _parse_descriptor(doc, version)
        if len(self._cache) >= _DESCRIPTOR_CACHE_SIZE:
            self._cache.clear()
        self._cache[(version, raw)] = desc
        return desc

    def _split_header(self, header: bytes | memoryview) -> tuple[_Descriptor, int, int, int]:
        """Descriptor, seq, t0_ns and the end offset of the header; ``self.flags`` is set."""
        if len(header) < PREAMBLE.size:
            raise FrameError(None, "header", f"{len(header)} bytes is shorter than the preamble")
        magic, version, self.flags, desc_len, seq, t0_ns = PREAMBLE.unpack_from(header)
        if magic != MAGIC:
            raise FrameError(None, "header", f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
        end = PREAMBLE.size + desc_len
        if end > len(header):
            raise FrameError(None, "header", f"descriptor length {desc_len} exceeds the header")
        desc = self._descriptor(bytes(header[PREAMBLE.size:end]), version)
        if seq < 0:
            raise FrameError(desc.stream, "seq", f"{seq} is negative")
        return desc, seq, t0_ns, end

    def _check_size(self, size: int, stream: str | None = None) -> None:
        if size > self.max_payload_bytes:
            raise FrameError(stream, "payload",
                             f"{size} bytes exceeds the limit of {self.max_payload_bytes}")

    # -- wire forms -----------------------------------------------------------------------
    def decode_multipart(self, parts: list[Any]) -> Frame:
        """``parts`` = [header, buf...] (topic already removed); zmq.Frame, bytes or memoryview."""
        frames, error = self.decode_batch(parts)
        if error is not None:
            raise error
        if len(frames) != 1:
            raise FrameError(frames[0].stream, "arrays",
                             f"{len(parts) - 1} buffers sent, more than the header declares")
        return frames[0]

    def decode_batch(self, parts: list[Any]) -> tuple[list[Frame], FrameError | None]:
        """One ZeroMQ message may carry several frames: [header, bufs..., header, bufs...].
        Returns the frames decoded and the error that stopped decoding, if any (the parts after
        a bad frame cannot be aligned, so they are not decoded)."""
        frames: list[Frame] = []
        if not parts:
            return frames, FrameError(None, "header", "empty message")
        # zmq.Frame.buffer is already a flat byte view
        bufs = [p.buffer if hasattr(p, "buffer") else _bytes_view(p) for p in parts]
        try:
            self._check_size(sum([b.nbytes for b in bufs]))
            i, n = 0, len(bufs)
            while i < n:
                header = bufs[i]
                desc, seq, t0_ns, end = self._split_header(header)
                if self.flags & FLAG_INLINE:
                    frames.append(self._inline(header, desc, seq, t0_ns, end))
                    i += 1
                    continue
                if end != header.nbytes:
                    raise FrameError(desc.stream, "header", "trailing bytes after the descriptor")
                n_arrays = len(desc.specs)
                if i + 1 + n_arrays > n:
                    raise FrameError(desc.stream, "arrays",
                                     f"{n_arrays} arrays declared, {n - i - 1} buffers sent")
                arrays = {}
                for k, spec in enumerate(desc.specs, start=i + 1):
                    buf = bufs[k]
                    if buf.nbytes != spec.nbytes:
                        raise FrameError(desc.stream, f"arrays.{spec.name}",
                                         f"byte length {buf.nbytes} != {spec.dtype.str} x "
                                         f"{list(spec.shape)} = {spec.nbytes}")
                    arr = np.frombuffer(buf, dtype=spec.dtype)
                    arrays[spec.name] = arr if len(spec.shape) == 1 else arr.reshape(spec.shape)
                frames.append(_finish(desc, seq, t0_ns, arrays))
                i += 1 + n_arrays
        except FrameError as exc:
            return frames, exc
        return frames, None

    def decode_payload(self, payload: bytes | memoryview) -> Frame:
        """Binary single payload or plain JSON (detected by the first byte)."""
        self._check_size(len(payload))
        if len(payload) and payload[0] in (0x7B, 0x20, 0x0A, 0x0D, 0x09):  # '{' or whitespace
            return self.decode_json(payload)
        desc, seq, t0_ns, offset = self._split_header(payload)
        return self._inline(payload, desc, seq, t0_ns, offset)

    def _inline(self, payload: bytes | memoryview, desc: _Descriptor, seq: int, t0_ns: int,
                offset: int) -> Frame:
        """The arrays that follow the header inside ``payload``, as views."""
        size = len(payload)
        offset += _pad8(offset)
        arrays = {}
        for spec in desc.specs:
            end = offset + spec.nbytes
            if end > size:
                raise FrameError(desc.stream, f"arrays.{spec.name}",
                                 f"payload truncated: needs {spec.nbytes} bytes at offset {offset},"
                                 f" {max(0, size - offset)} present")
            arr = np.frombuffer(payload, dtype=spec.dtype, count=spec.nbytes // spec.dtype.itemsize,
                                offset=offset)
            arrays[spec.name] = arr if len(spec.shape) == 1 else arr.reshape(spec.shape)
            offset = end + _pad8(spec.nbytes)
        if size > offset:
            raise FrameError(desc.stream, "payload",
                             f"{size} bytes, expected {offset} from dtype x shape")
        return _finish(desc, seq, t0_ns, arrays)

    def decode_json(self, payload: bytes | memoryview | str) -> Frame:
        if not isinstance(payload, str):
            self._check_size(len(payload))
        try:
            doc = json.loads(bytes(payload) if isinstance(payload, memoryview) else payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FrameError(None, "header", f"not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise FrameError(None, "header", "JSON frame must be an object")
        stream = doc.get("stream")
        data = doc.get("data", {})
        if not isinstance(data, dict):
            raise FrameError(stream if isinstance(stream, str) else None, "data",
                             "must be an object of lists")
        if "arrays" not in doc:  # hand-written JSON: infer float64 1-D arrays
            doc["arrays"] = [{"name": k, "dtype": "<f8", "shape": [_len(v)]} for k, v in data.items()]
        desc = _parse_descriptor(doc, doc.get("v"))
        check_seq_t0(desc.stream, doc.get("seq"), doc.get("t0_ns"))
        arrays = {}
        for spec in desc.specs:
            if spec.name not in data:
                raise FrameError(desc.stream, f"data.{spec.name}", "declared array missing")
            values = _as_list(data[spec.name])
            if not all(v is None or isinstance(v, (int, float)) for v in values):
                raise FrameError(desc.stream, f"data.{spec.name}",
                                 "values must be numbers, booleans or null")
            try:
                arr = np.array([math.nan if v is None else v for v in values],
                               dtype=spec.dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise FrameError(desc.stream, f"data.{spec.name}", f"bad values: {exc}") from exc
            if arr.size != math.prod(spec.shape):
                raise FrameError(desc.stream, f"data.{spec.name}",
                                 f"{arr.size} values, shape says {list(spec.shape)}")
            arrays[spec.name] = arr.reshape(spec.shape)
        return _finish(desc, doc["seq"], doc["t0_ns"], arrays)


def _bytes_view(buf: Any) -> memoryview:
    mv = memoryview(buf)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _len(v: Any) -> int:
    return len(v) if isinstance(v, list) else 1


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _finish(desc: _Descriptor, seq: int, t0_ns: int, arrays: dict[str, np.ndarray]) -> Frame:
    check_sample_times(desc.stream, arrays.get("t"))
    return Frame(desc.stream, desc.kind, seq, t0_ns, arrays, desc.units, desc.meta)


def _parse_descriptor(doc: Any, version: Any) -> _Descriptor:
    if not isinstance(doc, dict):
        raise FrameError(None, "header", "descriptor must be a JSON object")
    stream, kind = doc.get("stream"), doc.get("kind")
    validate_identity(stream, kind, version)
    specs_doc = doc.get("arrays", [])
    if not isinstance(specs_doc, list) or len(specs_doc) > MAX_ARRAYS:
        raise FrameError(stream, "arrays", f"must be a list of at most {MAX_ARRAYS} specs")
    specs, names, total = [], set(), 0
    for i, spec in enumerate(specs_doc):
        if not isinstance(spec, dict):
            raise FrameError(stream, f"arrays[{i}]", "must be an object")
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or not ARRAY_NAME_RE.match(name) or name in names:
            raise FrameError(stream, f"arrays[{i}].name", f"invalid or repeated name {name!r}")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise FrameError(stream, f"arrays.{name}.dtype", f"dtype {dtype!r} not allowed")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31
                           for s in shape)):
            raise FrameError(stream, f"arrays.{name}.shape",
                             f"{shape!r} is not a list of at most {MAX_NDIM} non-negative ints")
        dt = np.dtype(dtype)
        nbytes = dt.itemsize * math.prod(shape)
        total += nbytes
        names.add(name)
        specs.append(_ArraySpec(name, dt, tuple(shape), nbytes))
    units, meta = doc.get("units", {}), doc.get("meta", {})
    if not isinstance(units, dict) or not all(isinstance(v, str) for v in units.values()):
        raise FrameError(stream, "units", "must be an object of strings")
    if not isinstance(meta, dict):
        raise FrameError(stream, "meta", "must be an object")
    return _Descriptor(stream, kind, tuple(specs), units, meta, total)


__all__ = [
    "ENVELOPE_VERSION", "FrameDecoder", "encode_header", "encode_json", "encode_multipart",
    "encode_payload", "is_json_encodable",
]
