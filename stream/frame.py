"""The frame: a versioned, self-describing header plus named numpy arrays.

Everything that moves through opmon is a frame: raw instrument blocks, processor results, events,
alerts and the runtime's own health counters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._fast import all_finite

ENVELOPE_VERSION = 1

# Kinds a frame may carry. "result.<name>" is open-ended; anything else must be registered.
_KINDS: set[str] = {
    "echem",           # potentiostat / cycler: t, voltage, current, ...
    "ms.ion_current",  # OEMS/DEMS ion currents per m/z
    "pressure",        # pressure cell: pressure, temperature
    "temperature",
    "spectrum",        # 1-D spectrum (Raman): x axis plus intensities
    "pattern",         # 1-D diffraction pattern
    "image",           # 2-D area-detector frame
    "event",           # detector output: onset, short, ...
    "alert",           # alert state change
    "health",          # runtime counters
}
RESULT_PREFIX = "result."

# Dtypes allowed on the wire: fixed-size numeric and bool. Never objects.
ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in ("<f8", "<f4", "<f2", ">f8", ">f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2",
              "|u1", ">i4", ">i2", ">u2", ">u4", "|b1", "<c8", "<c16")
)

_NAME_PART = r"[A-Za-z0-9_.\-]+"
STREAM_RE = re.compile(rf"^{_NAME_PART}/{_NAME_PART}/{_NAME_PART}$")
ARRAY_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
MAX_ARRAYS = 256
MAX_NDIM = 4


class FrameError(ValueError):
    """A frame that cannot be accepted. Names the stream and the field at fault."""

    def __init__(self, stream: str | None, field: str, reason: str):
        self.stream = stream
        self.field = field
        self.reason = reason
        where = f"stream {stream!r}" if stream else "stream <unknown>"
        super().__init__(f"{where}: field {field!r}: {reason}")

    def __reduce__(self) -> tuple:  # picklable, so errors cross process boundaries
        return (type(self), (self.stream, self.field, self.reason))


def register_kind(kind: str) -> None:
    """Make a new kind acceptable to every codec in this process."""
    if not re.fullmatch(r"[a-z][a-z0-9_.]*", kind):
        raise ValueError(f"kind {kind!r}: use lower case letters, digits, '_' and '.'")
    _KINDS.add(kind)


def is_known_kind(kind: str) -> bool:
    if kind in _KINDS:
        return True
    return kind.startswith(RESULT_PREFIX) and re.fullmatch(r"[a-z0-9_]+", kind[7:]) is not None


def known_kinds() -> list[str]:
    return sorted(_KINDS) + [RESULT_PREFIX + "<name>"]


@dataclass(slots=True, eq=False)
class Frame:
    """One block of samples (or one spectrum, image, event...) from one stream.

    ``t0_ns`` is the epoch-ns time of the first sample on the shared time base. An array named
    ``t`` holds sample times in seconds after ``t0_ns``. Frames are treated as immutable once
    published: arrays may be views of receive buffers shared with other consumers.
    """

    stream: str
    kind: str
    seq: int
    t0_ns: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    v: int = ENVELOPE_VERSION

    @property
    def experiment(self) -> str:
        return self.stream.split("/", 1)[0]

    @property
    def cell(self) -> str:
        return self.stream.split("/", 2)[1]

    @property
    def instrument(self) -> str:
        return self.stream.rsplit("/", 1)[1]

    @property
    def n_samples(self) -> int:
        t = self.arrays.get("t")
        return int(t.shape[0]) if t is not None and t.ndim else 1

    def times_ns(self) -> np.ndarray:
        """Absolute sample times (epoch ns), from ``t0_ns`` and the ``t`` array when present."""
        t = self.arrays.get("t")
        if t is None:
            return np.array([self.t0_ns], dtype=np.int64)
        return self.t0_ns + np.round(np.asarray(t, dtype=np.float64) * 1e9).astype(np.int64)

    def header(self) -> dict[str, Any]:
        """The header as a plain dict, as documented in the README."""
        return {
            "v": self.v,
            "stream": self.stream,
            "kind": self.kind,
            "seq": self.seq,
            "t0_ns": self.t0_ns,
            "arrays": [array_spec(n, a) for n, a in self.arrays.items()],
            "units": self.units,
            "meta": self.meta,
        }

    def validate(self) -> Frame:
        """Check a frame built in-process; raises FrameError. Returns self."""
        validate_identity(self.stream, self.kind, self.v)
        check_seq_t0(self.stream, self.seq, self.t0_ns)
        if len(self.arrays) > MAX_ARRAYS:
            raise FrameError(self.stream, "arrays", f"more than {MAX_ARRAYS} arrays")
        for name, arr in self.arrays.items():
            if not isinstance(arr, np.ndarray):
                raise FrameError(self.stream, f"arrays.{name}", "not a numpy array")
            if not ARRAY_NAME_RE.match(name):
                raise FrameError(self.stream, f"arrays.{name}", "invalid array name")
            if arr.dtype.str not in ALLOWED_DTYPES:
                raise FrameError(self.stream, f"arrays.{name}.dtype",
                                 f"dtype {arr.dtype.str} not allowed")
            if arr.ndim > MAX_NDIM:
                raise FrameError(self.stream, f"arrays.{name}.shape", f"more than {MAX_NDIM} dims")
        check_sample_times(self.stream, self.arrays.get("t"))
        return self


def array_spec(name: str, arr: np.ndarray) -> dict[str, Any]:
    return {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)}


_VALID_IDENTITIES: set[tuple[str, str]] = set()


def validate_identity(stream: Any, kind: Any, version: Any) -> None:
    if version == ENVELOPE_VERSION and (stream, kind) in _VALID_IDENTITIES:
        return
    _check_identity(stream, kind, version)
    if len(_VALID_IDENTITIES) < 100_000:
        _VALID_IDENTITIES.add((stream, kind))


def _check_identity(stream: Any, kind: Any, version: Any) -> None:
    if version != ENVELOPE_VERSION:
        raise FrameError(stream if isinstance(stream, str) else None, "v",
                         f"envelope version {version!r} not supported (expected {ENVELOPE_VERSION})")
    if not isinstance(stream, str) or not STREAM_RE.match(stream):
        raise FrameError(None, "stream",
                         f"{stream!r} is not '<experiment>/<cell>/<instrument>' "
                         "(letters, digits, '_', '.', '-')")
    if not isinstance(kind, str) or not is_known_kind(kind):
        raise FrameError(stream, "kind",
                         f"unknown kind {kind!r}; known: {', '.join(known_kinds())}")


def check_seq_t0(stream: str, seq: Any, t0_ns: Any) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0 or seq >= 2**63:
        raise FrameError(stream, "seq", f"{seq!r} is not a non-negative 64-bit integer")
    if isinstance(t0_ns, float) and not math.isfinite(t0_ns):
        raise FrameError(stream, "t0_ns", f"non-finite timestamp {t0_ns!r}")
    if isinstance(t0_ns, bool) or not isinstance(t0_ns, int) or not -(2**63) <= t0_ns < 2**63:
        raise FrameError(stream, "t0_ns", f"{t0_ns!r} is not an integer epoch-ns timestamp")


def check_sample_times(stream: str, t: np.ndarray | None) -> None:
    if t is None:
        return
    if t.dtype.kind not in "fiu":
        raise FrameError(stream, "arrays.t", f"sample times must be numeric, got {t.dtype.str}")
    if t.ndim != 1:
        raise FrameError(stream, "arrays.t", f"sample times must be 1-D, got shape {t.shape}")
    if t.dtype.kind == "f" and not all_finite(t):
        bad = int(np.flatnonzero(~np.isfinite(t))[0])
        raise FrameError(stream, "arrays.t", f"non-finite timestamp at index {bad}")
