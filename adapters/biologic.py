"""BioLogic EC-Lab files: ASCII exports (``.mpt``), followed live or read once, and the binary
``.mpr`` files (through galvani).

``.mpt`` layout: ``EC-Lab ASCII FILE`` then ``Nb header lines : N``; line N holds the
tab-separated column names (``quantity/unit``) and the data starts on line N + 1. A full header
(N > 3) names the technique on line 4, gives ``Acquisition started on : mm/dd/yyyy hh:mm:ss[.f]``
(EC-Lab's wall clock at ``time/s`` = 0) and, for looped techniques, ``Number of loops`` with the
point range of each loop. The text is cp1252 (a µ appears in column names); numbers follow the
writer's locale (a decimal comma is detected). Rows that cannot be parsed are reported with
their line and column, and skipped.

``.mpr`` files hold the raw channel data. When they have no current column (GCPL stores the
charge ``dq`` per point), the current is EC-Lab's own interval mean ``<I> = dq / dt``, which is
what the ``.mpt`` export writes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from galvani.BioLogic import MPRfile
from pydantic import field_validator

from stream.frame import ARRAY_NAME_RE, Frame

from .tabular import (
    MISSING_INT,
    Column,
    Rows,
    RowsAdapter,
    RowsConfig,
    TableFormat,
    TableHeader,
    TableReader,
    TabularAdapter,
    TabularConfig,
    TabularError,
    datetime_ns,
    parse_start_time,
)

ENCODING = "cp1252"
MAGIC = "EC-Lab ASCII FILE"
MAX_HEADER_LINES = 100_000   # a larger 'Nb header lines' is garbage
_HEADER_COUNT = re.compile(r"Nb header lines\s*:\s*(\d+)")
_ACQUISITION = re.compile(r"Acquisition started on\s*:\s*(.+?)\s*$")
_LOOP = re.compile(r"Loop\s+(\d+)\s+from point number\s+(\d+)\s+to\s+(\d+)")
_TIME_FORMATS = ("%m/%d/%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S", "%m.%d.%Y %H:%M:%S",
                 "%m-%d-%Y %H:%M:%S")

# EC-Lab column -> (standard name, unit, factor to the units used in frames); the first column
# of a name in this order wins
STANDARD_COLUMNS = {
    "time/s": ("t", "s", 1.0),
    "Ewe/V": ("voltage", "V", 1.0),
    "<Ewe>/V": ("voltage", "V", 1.0),
    "<I>/mA": ("current", "A", 1e-3),
    "I/mA": ("current", "A", 1e-3),
    "Ece/V": ("counter_voltage", "V", 1.0),
    "<Ece>/V": ("counter_voltage", "V", 1.0),
    "Temperature/°C": ("temperature", "degC", 1.0),
    "cycle number": ("cycle", "", 1.0),
    "half cycle": ("half_cycle", "", 1.0),
    "Ns": ("step", "", 1.0),
    "Q charge/mA.h": ("q_charge_Ah", "Ah", 1e-3),
    "Q discharge/mA.h": ("q_discharge_Ah", "Ah", 1e-3),
    "(Q-Qo)/mA.h": ("q_Ah", "Ah", 1e-3),
    "(Q-Qo)/C": ("q_Ah", "Ah", 1 / 3600),
}
REQUIRED = ("t", "voltage", "current")
INTEGER = ("step", "cycle", "half_cycle")


class MptError(TabularError):
    """A file that is not a readable EC-Lab ASCII export."""


def standard_arrays(data: Mapping[str, np.ndarray],
                    mapping: Mapping[str, tuple[str, str, float]] | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Columns under opmon's names and units through ``mapping`` (column -> (name, unit,
    factor); default the EC-Lab columns: current in A, charge in Ah). The first column of a
    name in the mapping's order wins."""
    arrays, units = {}, {}
    for column, (name, unit, factor) in (mapping or STANDARD_COLUMNS).items():
        if column in data and name not in arrays:
            arrays[name] = data[column] * factor
            if unit:
                units[name] = unit
    return arrays, units


@dataclass
class MptData:
    path: Path
    header: list[str]
    columns: list[str]
    data: dict[str, np.ndarray]
    errors: list[str] = field(default_factory=list)

    def standard(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Arrays under opmon's names and units (current in A, charge in Ah)."""
        return standard_arrays(self.data)


def acquisition_start(lines: list[str]) -> datetime | None:
    """The header's 'Acquisition started on' (EC-Lab's wall clock, naive), if it parses."""
    for line in lines:
        match = _ACQUISITION.search(line)
        if match:
            for fmt in _TIME_FORMATS:
                try:
                    return datetime.strptime(match.group(1), fmt)
                except ValueError:
                    pass
    return None


def _technique(lines: list[str]) -> str | None:
    """The technique's name: the first line of the header's second section."""
    for line in lines:
        text = line.strip()
        if text:
            return None if ":" in text else text
    return None


def _current_kind(columns: list[str]) -> str:
    """'interval_mean' when the current is EC-Lab's <I> (an average over the point)."""
    for column in STANDARD_COLUMNS:
        if column in columns and STANDARD_COLUMNS[column][0] == "current":
            return "interval_mean" if column.startswith("<") else "instantaneous"
    return "instantaneous"


class MptFormat(TableFormat):
    """The EC-Lab ASCII layout. ``raw``: every column as a float under its own name (for
    ``read_mpt``); otherwise the standard columns plus ``carry`` (file column -> array)."""

    separator = "\t"

    def __init__(self, raw: bool = False, carry: Mapping[str, str] | None = None,
                 utc_offset_h: float | None = None):
        self.raw = raw
        self.carry = dict(carry or {})
        self.utc_offset_h = utc_offset_h

    def header(self, path: Path, lines: list[str]) -> TableHeader | None:
        if not lines[0].startswith(MAGIC):
            raise MptError(path, 1, f"not an EC-Lab ASCII file (line 1 is not {MAGIC!r})")
        if len(lines) < 2:
            return None
        match = _HEADER_COUNT.search(lines[1])
        if match is None:
            raise MptError(path, 2, "no 'Nb header lines : N'")
        n = int(match.group(1))
        if not 3 <= n <= MAX_HEADER_LINES:
            raise MptError(path, 2, f"'Nb header lines : {n}': the column names are on line N, "
                                    f"at least 3 (and at most {MAX_HEADER_LINES})")
        if len(lines) < n:
            return None
        columns = lines[n - 1].rstrip("\t").split("\t")
        meta: dict[str, Any] = {"current_kind": _current_kind(columns)}
        technique = _technique(lines[2:n - 1])
        if technique:
            meta["technique"] = technique
        start = acquisition_start(lines[:n - 1])
        origin = None if start is None else datetime_ns(start, self.utc_offset_h)
        loops = sorted((int(m.group(1)), int(m.group(2)))
                       for m in map(_LOOP.search, lines[:n - 1]) if m)
        return TableHeader(columns, n + 1, origin, "header 'Acquisition started on'", meta,
                           {"lines": lines[:n - 1], "loop_starts": [a for _, a in loops]})

    def columns(self, path: Path, header: TableHeader) -> list[Column]:
        if self.raw:
            return [Column(name, i, name) for i, name in enumerate(header.columns)]
        mapped: dict[str, Column] = {}
        for i, source in enumerate(header.columns):
            if source in STANDARD_COLUMNS and STANDARD_COLUMNS[source][0] not in mapped:
                name, unit, factor = STANDARD_COLUMNS[source]
                mapped[name] = Column(name, i, source, unit, factor, required=name in REQUIRED,
                                      integer=name in INTEGER)
        names_line = header.data_line - 1
        for name in REQUIRED:
            if name not in mapped:
                wanted = [c for c, spec in STANDARD_COLUMNS.items() if spec[0] == name]
                raise MptError(path, names_line, f"no column for {name!r} (one of {wanted})")
        for source, name in self.carry.items():
            if source not in header.columns:
                header.problems.append(MptError(path, names_line, "carry_columns: the file "
                                                f"has no column {source!r}"))
                continue
            unit = source.rsplit("/", 1)[1] if "/" in source else ""
            mapped[name] = Column(name, header.columns.index(source), source, unit)
        return list(mapped.values())

    def segments(self, header: TableHeader, lines: np.ndarray) -> dict[str, np.ndarray]:
        starts = header.extra.get("loop_starts")
        if not starts:
            return {}
        point = lines - header.data_line  # EC-Lab counts points from 0
        return {"loop": np.searchsorted(np.array(starts), point, "right") - 1}


def read_mpt(path: str | Path) -> MptData:
    """A whole .mpt file: every column as float64 under its EC-Lab name; bad rows in
    ``errors`` (file, line, column). Raises MptError when the header is not readable."""
    path = Path(path)
    reader = TableReader(MptFormat(raw=True), path, ENCODING)
    lines = path.read_bytes().split(b"\n")
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    parts = [reader.feed(lines[:-1], 1), reader.finish(lines[-1], len(lines))]
    if reader.header is None:
        first = reader.errors[0] if reader.errors else MptError(path, 1, "empty file")
        raise MptError(first.path, first.line, first.reason, first.column, first.column_name)
    rows = [r for r in parts if r is not None]
    columns = reader.header.columns
    data = {c: np.concatenate([r.arrays[c] for r in rows]) if rows else np.zeros(0)
            for c in columns}
    return MptData(path, reader.header.extra["lines"], columns, data,
                   [str(e) for e in reader.errors])


# -- the .mpt adapter ---------------------------------------------------------------------------

def _array_names(value: dict[str, str]) -> dict[str, str]:
    for name in value.values():
        if not ARRAY_NAME_RE.match(name) or name in {s[0] for s in STANDARD_COLUMNS.values()}:
            raise ValueError(f"{name!r} is not a free array name (letters, digits, '_', '.', "
                             "'-'; not a standard name)")
    return value


class BiologicMptConfig(TabularConfig):
    encoding: str = ENCODING         # EC-Lab writes cp1252
    carry_columns: dict[str, str] = {}  # more EC-Lab columns to publish: {"P/W" = "power"}

    _carry_names = field_validator("carry_columns")(_array_names)


class BiologicMptAdapter(TabularAdapter):
    """An EC-Lab ``.mpt`` file as ``echem`` blocks: followed as EC-Lab writes it, or read once."""

    type_name = "biologic.mpt"
    kind = "echem"
    Config: ClassVar[type[BiologicMptConfig]] = BiologicMptConfig

    def make_format(self) -> MptFormat:
        return MptFormat(carry=self.config.carry_columns, utc_offset_h=self.config.utc_offset_h)


# -- .mpr through galvani -----------------------------------------------------------------------

@dataclass
class MprData:
    path: Path
    columns: list[str]
    data: dict[str, np.ndarray]       # float64 per column, flags (mode, ox/red...) included
    start: datetime | None            # the LOG module's timestamp (wall clock), if any
    start_date: date | None           # the settings module's date
    loop_starts: list[int]
    derived: list[str] = field(default_factory=list)  # columns computed here (<I>/mA)

    def standard(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        return standard_arrays(self.data)


def read_mpr(path: str | Path) -> MprData:
    """A whole .mpr file through galvani. Raises ValueError (or galvani's errors) when the file
    is not readable."""
    path = Path(path)
    with path.open("rb") as fh:
        mpr = MPRfile(fh)
    data = {name: np.asarray(mpr.data[name], dtype=np.float64)
            for name in mpr.data.dtype.names if name != "flags"}
    for flag in mpr.flags_dict:
        data[flag] = mpr.get_flag(flag).astype(np.float64)
    derived = []
    if not any(c in data for c in ("<I>/mA", "I/mA")) and "dq/mA.h" in data and "time/s" in data:
        data["<I>/mA"] = _interval_mean_current(data["time/s"], data["dq/mA.h"])
        derived.append("<I>/mA")
    loops = [] if mpr.loop_index is None else [int(i) for i in mpr.loop_index]
    return MprData(path, list(data), data, getattr(mpr, "timestamp", None), mpr.startdate,
                   loops, derived)


def _interval_mean_current(t: np.ndarray, dq_mAh: np.ndarray) -> np.ndarray:
    """EC-Lab's <I> in mA: the charge of each point over its interval (0 at the first point;
    NaN where time does not advance but charge was counted)."""
    dt = np.diff(t, prepend=t[:1])
    with np.errstate(divide="ignore", invalid="ignore"):
        current = np.where(dt > 0, dq_mAh * 3600.0 / np.where(dt > 0, dt, 1.0), np.nan)
    current[(dt <= 0) & (dq_mAh == 0)] = 0.0
    return current


class BiologicMprConfig(RowsConfig):
    follow: bool = False             # true: re-read the file as EC-Lab grows it, publish new points
    poll_s: float = 2.0              # how often a followed file's size is checked


class BiologicMprAdapter(RowsAdapter):
    """An EC-Lab ``.mpr`` file as ``echem`` blocks. Replayed once by default; followed, it is
    re-read whenever it changes and the points not yet published are sent."""

    type_name = "biologic.mpr"
    kind = "echem"
    Config: ClassVar[type[BiologicMprConfig]] = BiologicMprConfig

    def __init__(self, stream: str, config: BiologicMprConfig | None = None):
        super().__init__(stream, config)
        c = self.config
        self.start_ns = parse_start_time(c.start_time, c.utc_offset_h) if c.start_time else None
        self.open()

    # the file is re-read whole whenever its size or mtime changes
    def open(self) -> None:
        self._seen, self._signature, self._failure = 0, None, None
        self._origin: tuple[int, str] | None = None

    def close(self) -> None:
        pass

    def poll(self) -> tuple[list[Frame], bool]:
        try:
            st = os.stat(self.path)
            now = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            now = None
        if now is None or now == self._signature:
            return [], False
        self._signature = now
        try:
            mpr = read_mpr(self.path)
        except (OSError, ValueError, AssertionError, KeyError,
                NotImplementedError) as exc:  # galvani: unknown column ids
            self._failure = exc  # while following: EC-Lab may be mid-write, retried
            return [], True
        self._failure = None
        if len(mpr.data["time/s"]) < self._seen:  # a new, shorter file: start again
            self._seen, self._origin = 0, None
        rows = self._rows(mpr, self._seen)
        self._seen = len(mpr.data["time/s"])
        return (self.publish(rows) if rows is not None else []), True

    def finish(self, complete: bool) -> Iterable[Frame]:
        """A file still unreadable (or never found) at the end is counted once."""
        if self._failure is not None or self._signature is None:
            reason = "file not found" if self._signature is None else \
                f"not readable: {self._failure!r}"
            self.reject(str(self.path), reason)
        return []

    def _rows(self, mpr: MprData, seen: int) -> Rows | None:
        """The points after the first ``seen`` under opmon's names; points without time,
        voltage or current are rejected by record and column."""
        arrays, units = mpr.standard()
        missing = [name for name in REQUIRED if name not in arrays]
        if missing:
            self.reject(str(mpr.path), f"no column for {missing}")
            return None
        arrays = {k: v[seen:] for k, v in arrays.items()}
        records = np.arange(seen + 1, seen + 1 + arrays["t"].size)
        ok = np.ones(records.size, dtype=bool)
        for name in REQUIRED:
            source = next(c for c, s in STANDARD_COLUMNS.items() if s[0] == name and c in mpr.data)
            for i in np.flatnonzero(~np.isfinite(arrays[name]) & ok):
                ok[i] = False
                self.reject(f"{mpr.path}: record {records[i]}, column {source!r}",
                            "no value (NaN)")
        if not ok.any():
            return None
        arrays = {k: v[ok] for k, v in arrays.items()}
        for name in INTEGER:
            if name in arrays:
                v = arrays[name]
                arrays[name] = np.where(np.isfinite(v), v, MISSING_INT).astype(np.int32)
        segments = {}
        if mpr.loop_starts:
            segments["loop"] = np.searchsorted(np.array(mpr.loop_starts), records[ok] - 1,
                                               "right") - 1
        if self._origin is None:
            self._origin = self._resolve_origin(mpr, float(arrays["t"][0]))
        meta = {"source": mpr.path.name, "start_source": self._origin[1],
                "current_kind": _current_kind(mpr.columns)}
        if mpr.derived:
            meta["derived_columns"] = mpr.derived
        return Rows(arrays, segments, records[ok], self._origin[0], units, meta, "records")

    def _resolve_origin(self, mpr: MprData, t_first: float) -> tuple[int, str]:
        offset = self.config.utc_offset_h
        if mpr.start is not None:
            return datetime_ns(mpr.start, offset), "mpr LOG module timestamp"
        if self.start_ns is not None:
            return self.start_ns, "config start_time"
        if mpr.start_date is not None:
            midnight = datetime.combine(mpr.start_date, datetime.min.time())
            return datetime_ns(midnight, offset), "mpr settings date (time of day unknown)"
        return time.time_ns() - int(round(t_first * 1e9)), "first read"
