"""InfluxDB line protocol for frames, vectorised: whole columns rendered by a numba kernel.

Schema. Measurement = kind with '.' replaced by '_' (``result.cycle`` -> ``result_cycle``).
Tags, sorted: ``experiment``, ``cell``, ``instrument`` from the stream key plus ``gas`` and
``peak`` from ``meta["tags"]``; nothing else (never seq or time); empty values are left out.
Fields, sorted by name: every array with one value per sample (``t`` excluded; complex arrays
skipped); event and alert frames also carry their scalar ``meta`` entries (an array of the same
name wins). Timestamps in ns: ``t0_ns + round(t * 1e9)``.

Values, byte for byte as influxdb-client's ``Point.to_line_protocol()`` writes them: floats as
Python's shortest repr with a trailing ``.0`` dropped (``2.0`` -> ``2``, ``-0.0`` -> ``-0``,
``1e+16``); integers with the ``i`` suffix; bools ``true``/``false``; strings in double quotes
with ``"`` and ``\\`` escaped. NaN and infinite values cannot be stored: the field is left out of
that line, and a line left without fields is not written (counted as ``empty``).

Escaping: measurement ``,`` and space; tag keys, tag values and field keys ``,``, ``=`` and space.
Names InfluxDB cannot store unchanged are refused with a ``LineProtocolError`` naming them
(influxdb-client would write them altered): empty keys, a measurement starting with ``#``, a
newline, carriage return or tab in a name, a field key ``time``, and an odd run of backslashes
before a character that needs escaping or at the end of a name (InfluxDB reads that backslash as
an escape).

Unique points. Within a frame, samples that share a nanosecond are moved apart (a tie becomes
+1 ns, +2 ns ...). Across frames, ``LineEncoder`` remembers the last ``window`` timestamps of
every series and moves a sample that would land on one of them 1 ns later until it is free.
Results of different processors never meet: the instrument tag is the processor's name. Every
move is counted in ``LineEncoder.nudged``.
"""

from __future__ import annotations

import collections
import gc
import operator
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .frame import Frame
from .influx import numfmt

ALLOWED_EXTRA_TAGS = ("gas", "peak")
ALLOWED_TAGS = ("experiment", "cell", "instrument", *ALLOWED_EXTRA_TAGS)
_META_FIELD_KINDS = frozenset(("event", "alert"))  # their scalar meta are fields too

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEAS_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_STR_ESCAPES = str.maketrans({'"': r"\"", "\\": r"\\"})
_CONTROL = re.compile(r"[\n\r\t]")
# an odd run of backslashes (not preceded by another) right before an escapable character or
# the end: InfluxDB would take its last backslash as an escape and cut or merge the name
_ODD_BACKSLASHES = {
    "measurement": re.compile(r"(?<!\\)\\(?:\\\\)*(?=[, ]|$)"),
    "tag": re.compile(r"(?<!\\)\\(?:\\\\)*(?=[,= ]|$)"),
    "field": re.compile(r'(?<!\\)\\(?:\\\\)*(?=[,= "]|$)'),
}


class LineProtocolError(ValueError):
    """A name or value that InfluxDB cannot store as given."""

    def __init__(self, what: str, name: str, reason: str):
        self.what, self.name, self.reason = what, name, reason
        super().__init__(f"{what} {name!r}: {reason}")


def check_name(name: str, what: str) -> str:
    """Raise LineProtocolError unless InfluxDB stores ``name`` unchanged. ``what`` is one of
    measurement, tag key, tag value, field key."""
    if not name and what != "tag value":
        raise LineProtocolError(what, name, "empty")
    if _CONTROL.search(name):
        raise LineProtocolError(what, name, "contains a newline, carriage return or tab")
    kind = what.split()[0]
    if _ODD_BACKSLASHES[kind].search(name):
        raise LineProtocolError(what, name, "a backslash before ',', '=', ' ' "
                                f"{'or quote ' if kind == 'field' else ''}or at the end")
    if what == "measurement" and name.startswith("#"):
        raise LineProtocolError(what, name, "starts with '#' (a comment line)")
    if what == "field key" and name == "time":
        raise LineProtocolError(what, name, "InfluxDB rejects a field named time")
    if what == "tag key" and name in ("time", "_field", "_measurement"):
        raise LineProtocolError(what, name, "reserved")
    return name


def escape_tag(s: str) -> str:
    """Escaping for tag keys, tag values and field keys."""
    return s.translate(_TAG_ESCAPES)


def escape_measurement(s: str) -> str:
    return s.translate(_MEAS_ESCAPES)


def string_field(s: str) -> str:
    return '"' + s.translate(_STR_ESCAPES) + '"'


def format_float(v: float) -> str | None:
    """One float as influxdb-client writes it (None when not finite)."""
    if v != v or v in (float("inf"), float("-inf")):
        return None
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def format_scalar(v: Any) -> str | None:
    """A scalar field value in line protocol (None for NaN, inf and unsupported types)."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return f"{int(v)}i"
    if isinstance(v, (float, np.floating)):
        return format_float(float(v))
    if isinstance(v, str):
        return string_field(v)
    return None


def measurement_for(kind: str) -> str:
    return kind.replace(".", "_")


def series_prefix(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,k=v,...`` with tags sorted by key and empty values left out."""
    check_name(measurement, "measurement")
    parts = [escape_measurement(measurement)]
    for key, value in sorted(tags.items()):
        value = "" if value is None else str(value)
        if value == "":
            continue
        parts.append(f"{escape_tag(check_name(key, 'tag key'))}="
                     f"{escape_tag(check_name(value, 'tag value'))}")
    return ",".join(parts)


def frame_tags(frame: Frame) -> dict[str, str]:
    experiment, cell, instrument = frame.stream.split("/")
    tags = {"experiment": experiment, "cell": cell, "instrument": instrument}
    extra = frame.meta.get("tags")
    if isinstance(extra, dict):
        for key in ALLOWED_EXTRA_TAGS:
            if extra.get(key) is not None:
                tags[key] = str(extra[key])
    return tags


_SERIES_CACHE: dict[tuple, str] = {}


def series_key(frame: Frame) -> str:
    """The measurement and tag part of every line of ``frame`` (cached per stream, kind, tags)."""
    tags = frame.meta.get("tags")
    cache_key = (frame.stream, frame.kind, tags.get("gas"), tags.get("peak")) \
        if type(tags) is dict else (frame.stream, frame.kind, None, None)
    key = _SERIES_CACHE.get(cache_key)
    if key is None:
        key = series_prefix(measurement_for(frame.kind), frame_tags(frame))
        if len(_SERIES_CACHE) > 100_000:
            _SERIES_CACHE.clear()
        _SERIES_CACHE[cache_key] = key
    return key


def frame_fields(frame: Frame) -> dict[str, Any]:
    """The fields of a frame: arrays with one value per sample (any shape when the frame has
    one sample), plus the scalar meta entries of events and alerts."""
    n = frame.n_samples
    fields: dict[str, Any] = {}
    if frame.kind in _META_FIELD_KINDS:
        fields.update({k: v for k, v in frame.meta.items()
                       if isinstance(v, (bool, int, float, str)) and k != "tags"})
    for name, arr in frame.arrays.items():
        if name != "t" and arr.size == n and (n == 1 or arr.ndim == 1):
            fields[name] = arr.reshape(n)
    return fields


# -- columns ----------------------------------------------------------------------------------
_FIELD_KEYS: dict[str, str] = {}
_INT64_MAX = np.iinfo(np.int64).max


def _field_key(name: str) -> str:
    key = _FIELD_KEYS.get(name)
    if key is None:
        key = escape_tag(check_name(name, "field key"))
        if len(_FIELD_KEYS) < 100_000:
            _FIELD_KEYS[name] = key
    return key


class _MixedGroup(Exception):
    """Frames grouped together that cannot share columns (encoded one by one instead)."""


@dataclass(slots=True)
class _Column:
    """One field: numbers (FLOAT float64, INT int64, BOOL bool) or TEXT, the value text of
    each row (None where absent) or ``const``, the same text on every row."""
    key: str
    kind: int
    values: np.ndarray | None = None
    texts: list[str | None] | None = None
    const: str | None = None

    def take(self, rows: np.ndarray) -> _Column:
        if self.values is not None:
            return _Column(self.key, self.kind, self.values[rows])
        if self.texts is not None:
            return _Column(self.key, self.kind, texts=[self.texts[i] for i in rows.tolist()])
        return self

    def present(self) -> np.ndarray | None:
        """Rows with a value; None = every row."""
        if self.kind == numfmt.FLOAT:
            finite = np.isfinite(self.values)
            return None if finite.all() else finite
        if self.texts is not None and None in self.texts:
            return np.array([t is not None for t in self.texts])
        return None


def _array_column(name: str, arr: np.ndarray) -> _Column | None:
    kind = arr.dtype.kind
    if kind == "f":
        return _Column(_field_key(name), numfmt.FLOAT, arr.astype(np.float64, copy=False))
    if kind == "i" or (kind == "u" and (arr.size == 0 or int(arr.max()) <= _INT64_MAX)):
        return _Column(_field_key(name), numfmt.INT, arr.astype(np.int64, copy=False))
    if kind == "u":  # beyond int64: written as it is (InfluxDB refuses it, dead letter)
        return _Column(_field_key(name), numfmt.TEXT, texts=[f"{v}i" for v in arr.tolist()])
    if kind == "b":
        return _Column(_field_key(name), numfmt.BOOL, arr.astype(bool, copy=False))
    if kind in "OUS":
        return _Column(_field_key(name), numfmt.TEXT,
                       texts=[string_field(str(v)) for v in arr.tolist()])
    return None  # complex: not storable


def _scalar_column(name: str, value: Any) -> _Column | None:
    text = format_scalar(value)
    return None if text is None else _Column(_field_key(name), numfmt.TEXT, const=text)


def _scalars_column(name: str, values: list) -> _Column | None:
    """A column from Python scalars (one per single-sample frame), all of one type."""
    types = set(map(type, values))
    if len(types) != 1:
        raise _MixedGroup(name)
    kind = types.pop()
    if kind is float:
        return _Column(_field_key(name), numfmt.FLOAT, np.array(values, dtype=np.float64))
    if kind is bool:
        return _Column(_field_key(name), numfmt.BOOL, np.array(values, dtype=bool))
    if kind is int:
        try:
            return _Column(_field_key(name), numfmt.INT, np.array(values, dtype=np.int64))
        except OverflowError:
            return _Column(_field_key(name), numfmt.TEXT, texts=[f"{v}i" for v in values])
    if kind is str:
        return _Column(_field_key(name), numfmt.TEXT, texts=[string_field(v) for v in values])
    return None


def columns_for(fields: dict[str, Any], n: int) -> list[_Column]:
    """Columns sorted by field name: arrays of ``n`` values, or scalars repeated on each line."""
    out = []
    for name in sorted(fields):
        value = fields[name]
        if isinstance(value, (list, tuple)) and len(value) == n:
            value = np.asarray(value)
        if isinstance(value, np.ndarray) and value.ndim == 1 and value.shape[0] == n:
            col = _array_column(name, value)
        elif isinstance(value, np.ndarray) and value.size == 1 and n == 1:
            col = _array_column(name, value.reshape(1))
        elif np.isscalar(value):
            col = _scalar_column(name, value)
        else:
            col = None
        if col is not None:
            out.append(col)
    return out


def _rows_with_fields(columns: list[_Column]) -> np.ndarray | None:
    """Rows with at least one field (None = every row)."""
    has = None
    for c in columns:
        present = c.present()
        if present is None:
            return None
        has = present if has is None else has | present
    return None if has is None or has.all() else has


def _render(prefix: str, columns: list[_Column], ts: np.ndarray) -> bytes:
    """Every row as a newline-terminated line, by ``numfmt.render_lines``."""
    n = ts.shape[0]
    kinds = np.array([c.kind for c in columns], dtype=np.int8)
    keys = [(c.key + "=").encode() for c in columns]
    key_end = np.cumsum([len(k) for k in keys], dtype=np.int64)
    index = np.zeros(len(columns), dtype=np.int64)
    floats_, ints_, texts = [], [], []
    for j, c in enumerate(columns):
        group = floats_ if c.kind == numfmt.FLOAT else texts if c.kind == numfmt.TEXT else ints_
        index[j] = len(group)
        group.append(c)
    floats = np.empty((n, len(floats_)), dtype=np.float64)
    for j, c in enumerate(floats_):
        floats[:, j] = c.values
    ints = np.empty((n, len(ints_)), dtype=np.int64)
    for j, c in enumerate(ints_):
        ints[:, j] = c.values
    pieces, text_start, text_end, offset = [], np.full((len(texts), n), -1, dtype=np.int64), \
        np.full((len(texts), n), -1, dtype=np.int64), 0
    for j, c in enumerate(texts):
        if c.const is not None:
            data = c.const.encode()
            pieces.append(data)
            text_start[j], text_end[j] = offset, offset + len(data)
            offset += len(data)
            continue
        for r, text in enumerate(c.texts):
            if text is not None:
                data = text.encode()
                pieces.append(data)
                text_start[j, r], text_end[j, r] = offset, offset + len(data)
                offset += len(data)
    blob = np.frombuffer(b"".join(pieces), dtype=np.uint8) if offset else np.zeros(0, np.uint8)
    prefix_bytes = np.frombuffer(prefix.encode(), dtype=np.uint8)
    text_bytes = int((text_end - text_start).sum()) if texts else 0
    size = n * (prefix_bytes.shape[0] + int(key_end[-1]) + 27 * len(columns) + 24) + text_bytes
    buf = np.empty(size, dtype=np.uint8)
    used, _ = numfmt.render_lines(buf, prefix_bytes, np.frombuffer(b"".join(keys), np.uint8),
                                  key_end, kinds, index, floats, ints, blob, text_start,
                                  text_end, ts)
    return buf[:used].tobytes()


def strictly_increasing(ts: np.ndarray) -> tuple[np.ndarray, int]:
    """Move samples sharing a nanosecond apart: the returned timestamps are all different, a
    tie becomes +1 ns, +2 ns, ...; samples out of order keep their place. Also the number moved."""
    if ts.shape[0] < 2:
        return ts, 0
    step = np.diff(ts)
    if (step > 0).all():
        return ts, 0
    if (step >= 0).all():
        idx = np.arange(ts.shape[0], dtype=np.int64)
        fixed = np.maximum.accumulate(ts - idx) + idx
    else:  # out of order within the frame: resolve ties one by one (rare)
        fixed = ts.copy()
        seen: set[int] = set()
        for i, t in enumerate(ts.tolist()):
            while t in seen:
                t += 1
            seen.add(t)
            fixed[i] = t
    return fixed, int(np.count_nonzero(fixed != ts))


def encode_points(measurement: str, tags: dict[str, str], fields: dict[str, Any],
                  times_ns: np.ndarray | list[int]) -> bytes:
    """Line protocol (newline-terminated lines) for ``len(times_ns)`` points of one series:
    ``fields`` maps names to arrays (one value per point) or scalars (the same on every line).
    Timestamps are written as given (no uniqueness step)."""
    ts = np.asarray(times_ns, dtype=np.int64).reshape(-1)
    columns = columns_for(fields, ts.shape[0])
    if not columns or ts.shape[0] == 0:
        return b""
    return _render(series_prefix(measurement, tags), columns, ts)


# -- frames -----------------------------------------------------------------------------------
def _scalar_fields(fields: dict[str, Any]) -> str | None:
    """The field set of one line from scalars (a single-sample frame), without numpy."""
    parts = []
    for name in sorted(fields):
        value = fields[name]
        if isinstance(value, np.ndarray):
            value = value.item(0)
        text = format_scalar(value)
        if text is not None:
            parts.append(f"{_field_key(name)}={text}")
    return ",".join(parts) if parts else None


class _Recent:
    """The last ``window`` timestamps written to one series and the largest ever written
    (a small deque: searched only when a timestamp is not past the largest)."""
    __slots__ = ("last", "order")

    def __init__(self, window: int):
        self.order: collections.deque[int] = collections.deque(maxlen=window)
        self.last = -(2**63)

    def add(self, ts: list[int], largest: int) -> None:
        self.order.extend(ts)
        self.last = max(self.last, largest)


_T0 = operator.attrgetter("t0_ns")
_ITEM = np.ndarray.item


class LineEncoder:
    """Encodes frames and keeps their points unique per series and nanosecond (see module doc).

    ``encode`` takes one frame; ``encode_many`` takes a batch and renders the frames of each
    series and array layout as one set of columns (the fast path for many single-sample
    results). Counters: ``lines`` written, ``empty`` samples without any storable field,
    ``nudged`` samples moved by a nanosecond or more."""

    def __init__(self, window: int = 16, max_series: int = 200_000):
        self.window = max(1, int(window))
        self.max_series = max_series
        self._recent: dict[str, _Recent] = {}
        self.lines = 0
        self.empty = 0
        self.nudged = 0

    # -- one frame ------------------------------------------------------------------------
    def encode(self, frame: Frame, max_lines: int | None = None) -> list[tuple[bytes, int]]:
        """Line protocol for ``frame`` (newline-terminated lines) in chunks of at most
        ``max_lines`` lines: a list of (bytes, line count). Raises LineProtocolError for names
        InfluxDB cannot store."""
        prefix = series_key(frame)
        n = frame.n_samples
        if n == 1:
            fields = frame_fields(frame)
            text = _scalar_fields(fields)
            if text is None:
                self.empty += 1 if fields else 0
                return []
            t = frame.t0_ns if "t" not in frame.arrays else int(frame.times_ns()[0])
            t = self._unique_one(prefix, t)
            self.lines += 1
            return [(f"{prefix} {text} {t}\n".encode(), 1)]
        columns = columns_for(frame_fields(frame), n)
        if not columns or n == 0:
            return []
        return self._encode_columns(prefix, columns, frame.times_ns(), max_lines)

    def _encode_columns(self, prefix: str, columns: list[_Column], ts: np.ndarray,
                        max_lines: int | None = None) -> list[tuple[bytes, int]]:
        written = _rows_with_fields(columns)
        if written is not None:
            self.empty += int(ts.shape[0] - np.count_nonzero(written))
            rows = np.flatnonzero(written)
            columns, ts = [c.take(rows) for c in columns], ts[rows]
        n = ts.shape[0]
        if n == 0:
            return []
        ts = self._unique(prefix, ts)
        self.lines += n
        step = max_lines or n
        if step >= n:
            return [(_render(prefix, columns, ts), n)]
        out = []
        for lo in range(0, n, step):
            rows = np.arange(lo, min(lo + step, n))
            out.append((_render(prefix, [c.take(rows) for c in columns], ts[rows]),
                        rows.shape[0]))
        return out

    # -- many frames ----------------------------------------------------------------------
    def encode_many(self, frames: list[Frame]
                    ) -> tuple[bytes, int, list[tuple[Frame, LineProtocolError]]]:
        """Encode a batch: (line protocol, line count, frames refused with their error).

        Frames of the same stream, kind, tags and array names share columns: single-sample
        frames have their values taken out as Python scalars in one pass, blocks are
        concatenated. Events and alerts (meta fields) and frames that do not fit a group are
        encoded one by one. Lines come out grouped, each group in arrival order.

        The cyclic garbage collector is paused meanwhile: encoding makes only acyclic
        temporaries (freed by reference counting), and full collections triggered by them
        would scan every live frame of the process, doubling the time."""
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._encode_many(frames)
        finally:
            if paused:
                gc.enable()

    def _encode_many(self, frames: list[Frame]
                     ) -> tuple[bytes, int, list[tuple[Frame, LineProtocolError]]]:
        # one pass, no numpy: single-sample frames put their values, as Python scalars, in
        # their group's flat list; frames with several samples go to the blocks
        groups: dict[tuple, tuple[list, list[int], list[Frame]]] = {}
        blocks: dict[tuple, list[Frame]] = {}
        singles: list[Frame] = []
        find, item, meta_kinds = groups.get, _ITEM, _META_FIELD_KINDS
        for f in frames:
            kind, arrays = f.kind, f.arrays
            if kind in meta_kinds:
                singles.append(f)
                continue
            tags = f.meta.get("tags")
            if type(tags) is dict:  # only gas and peak become tags
                key = (f.stream, kind, tags.get("gas"), tags.get("peak"), *arrays)
            else:
                key = (f.stream, kind, None, None, *arrays)
            group = find(key)
            if group is None:
                group = groups[key] = ([], [], [])
            values = group[0]
            start = len(values)
            try:
                values.extend(map(item, arrays.values()))
            except ValueError:  # an array with several values
                del values[start:]
                blocks.setdefault(key, []).append(f)
                continue
            group[1].append(f.t0_ns)
            group[2].append(f)
        parts: list[bytes] = []
        n_lines = 0
        refused: list[tuple[Frame, LineProtocolError]] = []
        jobs = [(self._encode_scalars, g, g[2]) for g in groups.values() if g[2]] + \
            [(self._encode_block_group, g, g) for g in blocks.values()]
        for encode, group, members in jobs:
            try:
                chunks = encode(group)
            except (_MixedGroup, LineProtocolError):
                singles.extend(members)  # one by one: a bad frame does not spoil the others
                continue
            for data, k in chunks:
                parts.append(data)
                n_lines += k
        for f in singles:
            try:
                chunks = self.encode(f)
            except LineProtocolError as exc:
                refused.append((f, exc))
                continue
            for data, k in chunks:
                parts.append(data)
                n_lines += k
        return b"".join(parts), n_lines, refused

    def _encode_scalars(self, group: tuple[list, list[int], list[Frame]]
                        ) -> list[tuple[bytes, int]]:
        """Single-sample frames of one series and array layout: ``values`` holds their
        arrays' values frame after frame; a column is every k-th of them."""
        values, t0, members = group
        names = list(members[0].arrays)
        k = len(names)
        by_name = {name: values[j::k] for j, name in enumerate(names)}
        t = by_name.pop("t", None)
        columns = [c for c in (_scalars_column(name, by_name[name]) for name in sorted(by_name))
                   if c is not None]
        if not columns:
            return []
        ts = np.array(t0, dtype=np.int64)
        if t is not None:
            ts = ts + np.round(np.array(t, dtype=np.float64) * 1e9).astype(np.int64)
        return self._encode_columns(series_key(members[0]), columns, ts)

    def _encode_block_group(self, group: list[Frame]) -> list[tuple[bytes, int]]:
        """Frames of one series and array layout with several samples each: concatenated
        columns."""
        first = group[0]
        count = len(group)
        rows = [tuple(f.arrays.values()) for f in group]
        by_name = dict(zip(first.arrays, zip(*rows, strict=True), strict=True))
        t_arrays = by_name.pop("t", None)
        if t_arrays is None:
            raise _MixedGroup("t")  # several values but no sample times: not per-sample
        try:
            lengths = np.fromiter(map(len, t_arrays), np.int64, count)
        except TypeError:  # a 0-d array
            raise _MixedGroup("t") from None
        total = int(lengths.sum())
        fields: dict[str, np.ndarray] = {}
        for name, arrays in by_name.items():
            dtype = arrays[0].dtype
            if not all(a.dtype is dtype for a in arrays) and \
                    not all(a.dtype == dtype for a in arrays):
                raise _MixedGroup(name)
            try:
                sizes = np.fromiter(map(len, arrays), np.int64, count)
                column = np.concatenate(arrays)
            except (TypeError, ValueError):  # 0-d arrays, or arrays of different ndim
                raise _MixedGroup(name) from None
            per_sample = sizes == lengths
            if per_sample.all() and column.ndim == 1:
                fields[name] = column
            elif per_sample.any() and column.ndim == 1:
                raise _MixedGroup(name)  # one value per sample in some frames only
        columns = columns_for(fields, total)
        if not columns:
            return []
        t0 = np.fromiter(map(_T0, group), np.int64, count)
        t = np.concatenate(t_arrays).astype(np.float64)
        ts = np.repeat(t0, lengths) + np.round(t * 1e9).astype(np.int64)
        return self._encode_columns(series_key(first), columns, ts)

    # -- unique timestamps ----------------------------------------------------------------
    def _recent_of(self, prefix: str) -> _Recent:
        recent = self._recent.get(prefix)
        if recent is None:
            if len(self._recent) >= self.max_series:
                self._recent.clear()
            recent = self._recent[prefix] = _Recent(self.window)
        return recent

    def _unique_one(self, prefix: str, t: int) -> int:
        recent = self._recent_of(prefix)
        if t <= recent.last and t in recent.order:
            while t in recent.order:
                t += 1
            self.nudged += 1
        recent.add([t], t)
        return t

    def _unique(self, prefix: str, ts: np.ndarray) -> np.ndarray:
        ts, moved = strictly_increasing(ts)
        recent = self._recent_of(prefix)
        if int(ts.min()) <= recent.last:  # may land on a point already written
            used = set(ts.tolist())
            out = ts.copy()
            for i in np.flatnonzero(ts <= recent.last).tolist():
                t = int(ts[i])
                if t in recent.order:
                    t += 1
                    while t in recent.order or t in used:
                        t += 1
                    used.add(t)
                    out[i] = t
                    moved += 1
            ts = out
        recent.add(ts[-self.window:].tolist(), int(ts.max()))
        self.nudged += moved
        return ts


def encode_frame(frame: Frame) -> str:
    """Line protocol for one frame ("" if it has no storable field); samples sharing a
    nanosecond within the frame are moved apart, nothing is remembered across frames."""
    return "".join(data.decode() for data, _ in LineEncoder().encode(frame))


def split_lines(body: bytes) -> list[bytes]:
    """Split a line-protocol body into lines the way InfluxDB does (``scanLine`` in its models
    package): a newline inside a quoted string field does not end the line. Empty lines and
    comments are dropped."""
    if b'"' not in body:
        return [line for line in body.split(b"\n") if line.strip() and not line.startswith(b"#")]
    out, start, i, n = [], 0, 0, len(body)
    quoted = fields = False
    equals = commas = 0
    while i < n:
        c = body[i]
        if c == 0x5C and i + 2 < n:  # backslash: skip the escaped byte
            i += 2
            continue
        if c == 0x20:
            fields = True
        if fields:
            if not quoted and c == 0x3D:
                equals += 1
            elif not quoted and c == 0x2C:
                commas += 1
            elif c == 0x22 and equals > commas:
                quoted = not quoted
        if c == 0x0A and not quoted:
            out.append(body[start:i])
            start = i + 1
            quoted = fields = False
            equals = commas = 0
        i += 1
    out.append(body[start:])
    return [line for line in out if line.strip() and not line.startswith(b"#")]
