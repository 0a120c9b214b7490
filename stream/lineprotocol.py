"""InfluxDB line protocol for frames: one measurement per kind, tags from the stream key.

Measurement = kind with '.' replaced by '_' (``result.cycle`` -> ``result_cycle``). Tags:
``experiment``, ``cell``, ``instrument`` plus ``gas``/``peak`` from ``meta["tags"]``; never seq or
time. Fields: every array with one value per sample (``t`` excluded); float fields as shortest
round-trip repr, integers with the ``i`` suffix. Timestamps in ns: ``t0_ns + t * 1e9``.
Event and alert frames also carry their scalar ``meta`` entries as fields.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .frame import Frame

ALLOWED_EXTRA_TAGS = ("gas", "peak")
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_MEAS_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_STR_ESCAPES = str.maketrans({'"': r"\"", "\\": r"\\", "\n": r"\n"})


def escape_tag(s: str) -> str:
    """Escaping for tag keys, tag values and field keys."""
    return s.replace("\\", "\\\\").translate(_TAG_ESCAPES)


def escape_measurement(s: str) -> str:
    return s.replace("\\", "\\\\").translate(_MEAS_ESCAPES)


def string_field(s: str) -> str:
    return '"' + s.translate(_STR_ESCAPES) + '"'


def measurement_for(kind: str) -> str:
    return kind.replace(".", "_")


_SERIES_CACHE: dict[tuple, str] = {}
_FIELD_KEYS: dict[str, str] = {}


def series_key(frame: Frame) -> str:
    tags = frame.meta.get("tags")
    cache_key = (frame.stream, frame.kind,
                 tuple(sorted(tags.items())) if isinstance(tags, dict) else None)
    key = _SERIES_CACHE.get(cache_key)
    if key is None:
        if len(_SERIES_CACHE) > 100_000:
            _SERIES_CACHE.clear()
        key = _SERIES_CACHE[cache_key] = _series_key(frame)
    return key


def _field_key(name: str) -> str:
    key = _FIELD_KEYS.get(name)
    if key is None:
        key = _FIELD_KEYS[name] = escape_tag(name)
    return key


def _series_key(frame: Frame) -> str:
    experiment, cell, instrument = frame.stream.split("/")
    tags = {"experiment": experiment, "cell": cell, "instrument": instrument}
    extra = frame.meta.get("tags") if isinstance(frame.meta.get("tags"), dict) else {}
    for key in ALLOWED_EXTRA_TAGS:
        if key in extra:
            tags[key] = str(extra[key])
    tag_str = ",".join(f"{k}={escape_tag(v)}" for k, v in sorted(tags.items()) if v != "")
    return f"{escape_measurement(measurement_for(frame.kind))},{tag_str}"


def _format_column(arr: np.ndarray) -> list[str | None]:
    if arr.dtype.kind in "iu":
        return [f"{v}i" for v in arr.tolist()]
    if arr.dtype.kind == "b":
        return ["true" if v else "false" for v in arr.tolist()]
    return [repr(v) if math.isfinite(v) else None for v in arr.astype(np.float64).tolist()]


def _meta_fields(meta: dict[str, Any]) -> list[str]:
    out = []
    for key, value in sorted(meta.items()):
        if isinstance(value, bool):
            out.append(f"{escape_tag(key)}={'true' if value else 'false'}")
        elif isinstance(value, int):
            out.append(f"{escape_tag(key)}={value}i")
        elif isinstance(value, float) and math.isfinite(value):
            out.append(f"{escape_tag(key)}={value!r}")
        elif isinstance(value, str):
            out.append(f"{escape_tag(key)}={string_field(value)}")
    return out


def encode_frame(frame: Frame) -> list[str]:
    """Line-protocol lines for one frame (empty if it has no per-sample fields)."""
    n = frame.n_samples
    columns = [(_field_key(name), _format_column(np.ravel(arr)))
               for name, arr in frame.arrays.items()
               if name != "t" and arr.ndim <= 1 and arr.size == n]
    extra = _meta_fields(frame.meta) if frame.kind in ("event", "alert") else []
    if not columns and not extra:
        return []
    prefix = series_key(frame) + " "
    times = frame.times_ns().tolist()
    lines = []
    for k in range(n):
        fields = [f"{name}={col[k]}" for name, col in columns if col[k] is not None] + extra
        if fields:
            lines.append(f"{prefix}{','.join(fields)} {times[k]}")
    return lines
