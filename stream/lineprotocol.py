"""InfluxDB line protocol for frames, vectorised: one ``str.format`` per line over whole columns.

Schema. Measurement = kind with '.' replaced by '_' (``result.cycle`` -> ``result_cycle``).
Tags, sorted: ``experiment``, ``cell``, ``instrument`` from the stream key plus ``gas`` and
``peak`` from ``meta["tags"]``; nothing else (never seq or time); empty values are left out.
Fields, sorted by name: every array with one value per sample (``t`` excluded; complex and
multi-dimensional arrays skipped); event and alert frames also carry their scalar ``meta``
entries (an array of the same name wins). Timestamps in ns: ``t0_ns + round(t * 1e9)``.

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

Unique points. Within a frame, samples that share a nanosecond are moved 1 ns apart (ties become
strictly increasing). Across frames, ``LineEncoder`` remembers the last ``window`` timestamps of
every series and moves a sample that would land on one of them (or on a sample moved earlier) 1 ns
later until it is free. Results of different processors never meet: the instrument tag is the
processor's name. Every move is counted in ``LineEncoder.nudged``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .frame import Frame

ALLOWED_EXTRA_TAGS = ("gas", "peak")
ALLOWED_TAGS = ("experiment", "cell", "instrument", *ALLOWED_EXTRA_TAGS)
MAX_EXACT_INT_FLOAT = 2.0**53  # integral floats below this print as their int

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
    if what.startswith("tag key") and name in ("time", "_field", "_measurement"):
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
    cache_key = (frame.stream, frame.kind,
                 tuple(sorted(tags.items())) if isinstance(tags, dict) else None)
    key = _SERIES_CACHE.get(cache_key)
    if key is None:
        key = series_prefix(measurement_for(frame.kind), frame_tags(frame))
        if len(_SERIES_CACHE) > 100_000:
            _SERIES_CACHE.clear()
        _SERIES_CACHE[cache_key] = key
    return key


# -- columns ----------------------------------------------------------------------------------
_BOOL_TEXT = np.array(["false", "true"], dtype=object)
_FIELD_KEYS: dict[str, str] = {}


def _field_key(name: str) -> str:
    key = _FIELD_KEYS.get(name)
    if key is None:
        key = escape_tag(check_name(name, "field key"))
        if len(_FIELD_KEYS) < 100_000:
            _FIELD_KEYS[name] = key
    return key


@dataclass(slots=True)
class _Column:
    key: str                            # escaped field key
    text: list[str] | None              # the value of each row as text; None for a constant
    suffix: str = ""                    # "i" for integers
    const: str | None = None            # the formatted constant (meta fields)
    finite: np.ndarray | None = None    # rows that have a value; None = every row


def _float_text(a: np.ndarray) -> tuple[list[str], np.ndarray | None]:
    """Floats as influxdb-client prints them: ``str(v)`` without a trailing ``.0``. Integral
    values below 2**53 print as their int (same digits, no ``.0``), negative zero as ``-0``,
    integral values from 2**53 to 1e16 one by one; everything else is ``repr`` in C."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    all_finite = bool(finite.all())
    safe = a if all_finite else np.where(finite, a, 0.5)
    integral = safe == np.trunc(safe)
    if not integral.any():
        return list(map(repr, a.tolist())), None if all_finite else finite
    small = integral & (np.abs(safe) < MAX_EXACT_INT_FLOAT)
    if small.all() and not np.signbit(a).any():
        return list(map(str, a.astype(np.int64).tolist())), None
    values = a.astype(object)
    values[small] = a[small].astype(np.int64).astype(object)
    text = list(map(str, values.tolist()))
    for i in np.flatnonzero((integral & ~small) | (small & (safe == 0) & np.signbit(safe))):
        text[i] = format_float(float(a[i]))  # 2**53 <= |v| < 1e16 and -0.0: rare
    return text, None if all_finite else finite


def _array_column(name: str, arr: np.ndarray) -> _Column | None:
    kind = arr.dtype.kind
    if kind == "f":
        text, finite = _float_text(arr)
        return _Column(_field_key(name), text, "", None, finite)
    if kind in "iu":
        return _Column(_field_key(name), list(map(str, arr.tolist())), "i")
    if kind == "b":
        return _Column(_field_key(name), _BOOL_TEXT[arr.astype(np.intp)].tolist())
    if kind in "OUS":
        return _Column(_field_key(name), [string_field(str(v)) for v in arr.tolist()])
    return None  # complex: not storable


def _const_column(name: str, value: Any) -> _Column | None:
    text = format_scalar(value)
    return None if text is None else _Column(_field_key(name), None, const=text)


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
            col = _const_column(name, value)
        else:
            col = None
        if col is not None:
            out.append(col)
    return out


def _rows_with_fields(columns: list[_Column], n: int) -> np.ndarray | None:
    """Rows with at least one field (None = every row)."""
    if any(c.finite is None for c in columns):
        return None
    has = np.zeros(n, dtype=bool)
    for c in columns:
        has |= c.finite
    return None if has.all() else has


def _take(columns: list[_Column], rows: np.ndarray) -> list[_Column]:
    idx = rows.tolist()
    return [c if c.text is None else
            _Column(c.key, [c.text[i] for i in idx], c.suffix, c.const,
                    None if c.finite is None else c.finite[rows]) for c in columns]


def _slots(prefix: str, columns: list[_Column], n: int) -> list[str | list[str]]:
    """The pieces of every line, in order: a str is the same on each line, a list has one entry
    per line. Fields that a row lacks (NaN) are left out of that row together with their
    separator, which is ' ' before the first field of a row and ',' before the others."""
    slots: list[str | list[str]] = []
    static = prefix
    placed_always = False                 # a field present on every row is already placed
    placed = np.zeros(n, dtype=bool)      # per row: some field already placed
    for c in columns:
        value = c.const if c.text is None else None
        if c.finite is None and (placed_always or not placed.any()):
            static += ("," if placed_always else " ") + c.key + "="
            if value is not None:
                static += value
            else:
                slots += [static, c.text]
                static = ""
            static += c.suffix
            placed_always = True
            placed[:] = True
            continue
        present = np.ones(n, dtype=bool) if c.finite is None else c.finite
        seps = np.where(placed, ",", " ").tolist() if not placed_always else [","] * n
        text = [value] * n if value is not None else c.text
        piece = c.key + "="
        slots += [static, [f"{sep}{piece}{v}{c.suffix}" if ok else ""
                           for sep, v, ok in zip(seps, text, present.tolist(), strict=True)]]
        static = ""
        placed |= present
    slots.append(static + " ")
    return slots


def _render(prefix: str, columns: list[_Column], ts: np.ndarray) -> str:
    """Every row as a line (newline-terminated), joined in one ``str.join``."""
    n = ts.shape[0]
    slots = [s for s in _slots(prefix, columns, n) if s != ""]
    slots += [list(map(str, ts.tolist())), "\n"]
    stride = len(slots)
    pieces: list[str | None] = [None] * (n * stride)
    for j, slot in enumerate(slots):
        pieces[j::stride] = [slot] * n if isinstance(slot, str) else slot
    return "".join(pieces)


def _select(columns: list[_Column], ts: np.ndarray,
            written: np.ndarray | None) -> tuple[list[_Column], np.ndarray]:
    if written is None:
        return columns, ts
    return _take(columns, np.flatnonzero(written)), ts[written]


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
                  times_ns: np.ndarray | list[int]) -> str:
    """Line-protocol text (newline-terminated lines) for ``len(times_ns)`` points of one series:
    ``fields`` maps names to arrays (one value per point) or scalars (the same on every line).
    Timestamps are written as given (no uniqueness step)."""
    ts = np.asarray(times_ns, dtype=np.int64).reshape(-1)
    columns = columns_for(fields, ts.shape[0])
    if not columns:
        return ""
    columns, ts = _select(columns, ts, _rows_with_fields(columns, ts.shape[0]))
    return _render(series_prefix(measurement, tags), columns, ts) if ts.shape[0] else ""


# -- frames -----------------------------------------------------------------------------------
def frame_fields(frame: Frame) -> dict[str, Any]:
    """The field columns of a frame: per-sample arrays, plus scalar meta for events/alerts."""
    n = frame.n_samples
    fields: dict[str, Any] = {}
    if frame.kind in ("event", "alert"):
        fields.update({k: v for k, v in frame.meta.items()
                       if isinstance(v, (bool, int, float, str)) and k != "tags"})
    for name, arr in frame.arrays.items():
        if name != "t" and arr.ndim <= 1 and arr.size == n:
            fields[name] = arr.reshape(n)
    return fields


@dataclass(slots=True)
class _Recent:
    """The last ``window`` timestamps written to one series (a ring) and the largest."""
    ring: np.ndarray
    pos: int = 0
    count: int = 0
    last: int = -(2**63)

    def add(self, ts: np.ndarray) -> None:
        w = self.ring.shape[0]
        if ts.shape[0] >= w:
            self.ring[:] = ts[-w:]
            self.pos, self.count = 0, w
        else:
            end = self.pos + ts.shape[0]
            if end <= w:
                self.ring[self.pos:end] = ts
            else:
                k = w - self.pos
                self.ring[self.pos:] = ts[:k]
                self.ring[:end - w] = ts[k:]
            self.pos = end % w
            self.count = min(w, self.count + ts.shape[0])
        self.last = max(self.last, int(ts.max()))

    def taken(self) -> np.ndarray:
        return self.ring[:self.count] if self.count < self.ring.shape[0] else self.ring


class LineEncoder:
    """Encodes frames and keeps their points unique per series and nanosecond (see module doc).

    Counters: ``lines`` written, ``empty`` samples without any storable field, ``nudged``
    samples moved by a nanosecond or more."""

    def __init__(self, window: int = 64, max_series: int = 200_000):
        self.window = max(1, int(window))
        self.max_series = max_series
        self._recent: dict[str, _Recent] = {}
        self.lines = 0
        self.empty = 0
        self.nudged = 0

    def encode(self, frame: Frame, max_lines: int | None = None) -> list[tuple[str, int]]:
        """Line-protocol text for ``frame`` (newline-terminated lines) in chunks of at most
        ``max_lines`` lines: a list of (text, line count). Raises LineProtocolError for names
        InfluxDB cannot store."""
        prefix = series_key(frame)
        n = frame.n_samples
        columns = columns_for(frame_fields(frame), n)
        if not columns or n == 0:
            return []
        written = _rows_with_fields(columns, n)
        ts = frame.times_ns()
        if written is not None:
            self.empty += int(n - np.count_nonzero(written))
        columns, ts = _select(columns, ts, written)
        if ts.shape[0] == 0:
            return []
        ts = self._unique(prefix, ts)
        self.lines += ts.shape[0]
        step = max_lines or ts.shape[0]
        if step >= ts.shape[0]:
            return [(_render(prefix, columns, ts), ts.shape[0])]
        out = []
        for lo in range(0, ts.shape[0], step):
            rows = np.arange(lo, min(lo + step, ts.shape[0]))
            out.append((_render(prefix, _take(columns, rows), ts[rows]), rows.shape[0]))
        return out

    def _unique(self, prefix: str, ts: np.ndarray) -> np.ndarray:
        ts, moved = strictly_increasing(ts)
        recent = self._recent.get(prefix)
        if recent is None:
            if len(self._recent) >= self.max_series:
                self._recent.clear()
            recent = self._recent[prefix] = _Recent(np.empty(self.window, dtype=np.int64))
        elif int(ts.min()) <= recent.last:  # may land on a point already written
            ts, more = _avoid(ts, recent.taken())
            moved += more
        recent.add(ts)
        self.nudged += moved
        return ts


def _avoid(ts: np.ndarray, taken: np.ndarray) -> tuple[np.ndarray, int]:
    """Move each timestamp that is in ``taken`` (or equal to one moved before it) 1 ns later
    until it is free."""
    clash = np.isin(ts, taken)
    if not clash.any():
        return ts, 0
    used = set(taken.tolist()) | set(ts.tolist())
    out = ts.copy()
    for i in np.flatnonzero(clash).tolist():
        t = int(ts[i]) + 1
        while t in used:
            t += 1
        used.add(t)
        out[i] = t
    return out, int(np.count_nonzero(clash))


def encode_frame(frame: Frame) -> str:
    """Line-protocol text for one frame ("" if it has no storable field); samples sharing a
    nanosecond within the frame are moved apart, nothing is remembered across frames."""
    columns = columns_for(frame_fields(frame), frame.n_samples)
    if not columns or frame.n_samples == 0:
        return ""
    columns, ts = _select(columns, frame.times_ns(), _rows_with_fields(columns, frame.n_samples))
    if ts.shape[0] == 0:
        return ""
    return _render(series_key(frame), columns, strictly_increasing(ts)[0])


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
