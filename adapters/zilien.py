"""Spectro Inlets Zilien EC-MS TSV files (file format v1 and v2), and the EC-Lab ``.mpt`` files
recorded beside them, on one time base.

Layout: ``num_header_lines`` metadata lines of 5 tab-separated fields (key, description, series,
type, value), then two header rows: the series names (each written above its first column) and
the column names. Every series has its own time column (its first), and shorter series are padded
with empty or ``NaN`` cells. Mass channels are series named ``C<i>M<mz>`` with a ``mass`` metadata
entry; ``pot`` is Zilien's own potentiostat read-out; v2 may embed the EC-Lab data as a series
``EC-lab`` whose time is already on the Zilien base.

Clocks: Zilien times are seconds after its start (``start_time_unix`` in v2, else the file name
``YYYY-MM-DD hh_mm_ss name``). The metadata line ``offset`` ("The offset (time - EC-Lab time)")
is the offset Zilien measured between the two programs; EC-Lab times are moved onto the Zilien
base with it (``t_zilien = t_eclab + offset``), not with the two absolute clocks, which disagree
(the disagreement is reported).

The row parser (``RaggedTable``) is shared with the ixdat CSV reader: it takes lines in chunks
with their line numbers, so a live follower can feed it the lines appended to a growing file.

``ZilienAdapter`` (type ``zilien.tsv``) follows a TSV as Zilien writes it (or reads it once):
``ms.ion_current`` blocks of complete scans, and ``echem`` blocks from the v2 embedded EC-lab
series, the EC-Lab ``.mpt`` files beside the TSV (followed too, read by ``adapters.biologic``'s
parser and moved by the recorded offset) or Zilien's own read-out. The follow/replay machinery
is ``adapters.followed``, shared with the other file adapters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from stream.frame import Frame

from .biologic import (
    ENCODING,
    STANDARD_COLUMNS,
    MptData,
    MptFormat,
    acquisition_start,
    read_mpt,
    standard_arrays,
)
from .followed import FollowedFile, FollowedFileConfig, TextFileAdapter
from .tabular import TableReader, TabularError

OFFSET_SOURCE_RECORDED = "recorded metadata 'offset (time - EC-Lab time)'"
OFFSET_SOURCE_CLOCKS = "absolute clocks (Zilien start vs .mpt 'Acquisition started on')"
_FILE_NAME_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}_\d{2}_\d{2})")
_MASS_SERIES = re.compile(r"^C\d+M(\d+(?:\.\d+)?)$")

# Bad input in a text table (file, line, column): the table adapters' error, under the name the
# Zilien and ixdat readers have always raised
TableError = TabularError


# -- ragged tables: one time column per series, padding below shorter series ------------------

@dataclass(frozen=True)
class SeriesLayout:
    name: str
    time_column: int                 # 0-based index of the series' time column
    value_columns: dict[str, int]    # column name -> 0-based index


def _cell_number(text: str) -> float:
    """A cell as a float; empty cells are NaN. Raises ValueError on anything else."""
    text = text.strip()
    return float(text) if text else math.nan


MAX_TIME_S = 1e11   # a series time beyond about 3,000 years is garbage


class RaggedTable:
    """Rows of a table whose series each have their own time column. A series' cells in a row
    are padding when its time cell is empty or NaN; each series' times must not go back. Feed
    lines with ``add_lines`` (any chunking) and read the arrays with ``series`` or ``take``."""

    def __init__(self, path: Path | str, columns: list[str], series: list[SeriesLayout],
                 separator: str = "\t"):
        self.path = Path(path)
        self.columns = columns
        self.layout = series
        self.separator = separator
        self._rows: dict[str, list[list[float]]] = {s.name: [] for s in series}
        self._last_time: dict[str, float] = {}

    def add_lines(self, lines: Iterable[str], first_line: int,
                  on_error: Callable[[TableError], None] | None = None) -> int:
        """Parse data lines; ``first_line`` is the 1-based line number of the first one.
        Blank lines are skipped. A short or garbled row raises TableError, or with ``on_error``
        is handed to it and skipped whole (no series keeps a part of it). Returns how many
        rows were taken."""
        taken = 0
        for number, line in enumerate(lines, start=first_line):
            if not line.strip():
                continue
            try:
                rows = self._parse_row(line, number)
            except TableError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            for name, row in rows:
                self._rows[name].append(row)
                self._last_time[name] = row[0]
            taken += 1
        return taken

    def _parse_row(self, line: str, number: int) -> list[tuple[str, list[float]]]:
        n_columns = len(self.columns)
        cells = line.rstrip("\r\n").split(self.separator)
        if len(cells) < n_columns:
            raise TableError(self.path, number, f"{len(cells)} fields, expected {n_columns} "
                             "(truncated row?)")
        rows = []
        for s in self.layout:
            t = self._number(cells, s.time_column, number)
            if math.isnan(t):  # padding: the other cells must be padding too
                for i in s.value_columns.values():
                    if not math.isnan(self._number(cells, i, number)):
                        raise TableError(self.path, number, "value without a time",
                                         i + 1, self.columns[i])
                continue
            if not abs(t) < MAX_TIME_S or t < self._last_time.get(s.name, -math.inf):
                last = self._last_time.get(s.name)
                reason = f"time {t!r} s is out of range" if not abs(t) < MAX_TIME_S else \
                    f"time {t!r} s goes back (the series' previous time is {last!r} s)"
                raise TableError(self.path, number, reason, s.time_column + 1,
                                 self.columns[s.time_column])
            rows.append((s.name, [t] + [self._number(cells, i, number)
                                        for i in s.value_columns.values()]))
        return rows

    def _number(self, cells: list[str], index: int, line: int) -> float:
        try:
            return _cell_number(cells[index])
        except ValueError:
            raise TableError(self.path, line, f"not a number: {cells[index].strip()!r}",
                             index + 1, self.columns[index]) from None

    def count(self, name: str) -> int:
        return len(self._rows[name])

    def series(self, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(time, {column name: values}) of one series."""
        s = next(x for x in self.layout if x.name == name)
        table = np.array(self._rows[name], dtype=np.float64).reshape(-1, 1 + len(s.value_columns))
        return table[:, 0], {c: table[:, k + 1] for k, c in enumerate(s.value_columns)}

    def take(self, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``series(name)`` of the rows added since the last ``take``; they are dropped."""
        out = self.series(name)
        self._rows[name] = []
        return out


def group_columns(names_row: list[str], columns: list[str]) -> list[SeriesLayout]:
    """Series from a header row that names each series above its first column (time first)."""
    starts = [i for i, name in enumerate(names_row[:len(columns)]) if name.strip()]
    out = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(columns)
        out.append(SeriesLayout(names_row[start].strip(), start,
                                {columns[i]: i for i in range(start + 1, end)}))
    return out


# -- Zilien metadata --------------------------------------------------------------------------

@dataclass(frozen=True)
class MetaEntry:
    key: str
    description: str
    series: str
    type: str
    value: Any
    line: int


def _typed(path: Path, line: int, kind: str, text: str) -> Any:
    try:
        if kind == "int":
            return int(text)
        if kind == "double":
            return float(text)
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
    except ValueError:
        raise TableError(path, line, f"{kind} value expected, got {text!r}", 5, "value") from None
    return text


def parse_metadata(path: Path | str, lines: list[str]) -> list[MetaEntry]:
    """The 5-field metadata lines at the top of a Zilien TSV (``lines`` are exactly those)."""
    path = Path(path)
    out = []
    for number, line in enumerate(lines, start=1):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 5:
            raise TableError(path, number, f"metadata line has {len(fields)} fields, expected 5")
        key, description, series, kind, text = fields
        out.append(MetaEntry(key, description, series, kind, _typed(path, number, kind, text),
                             number))
    return out


@dataclass
class ZilienHeader:
    """Everything above the data: metadata and the column layout."""

    path: Path
    metadata: list[MetaEntry]
    columns: list[str]
    series: list[SeriesLayout]
    data_start_line: int          # 1-based line number of the first data row

    def meta(self, key: str, series: str | None = None, default: Any = None) -> Any:
        for e in self.metadata:
            if e.key == key and (series is None or e.series == series):
                return e.value
        return default

    @property
    def version(self) -> int:
        return int(self.meta("file_format_version", default=1))

    def new_table(self) -> RaggedTable:
        return RaggedTable(self.path, self.columns, self.series, "\t")


def parse_header(path: Path | str, lines: list[str]) -> ZilienHeader:
    """The header of a Zilien TSV from its first lines (at least ``num_header_lines`` + 2)."""
    path = Path(path)
    if not lines or not lines[0].startswith("num_header_lines\t"):
        raise TableError(path, 1, "not a Zilien TSV (no 'num_header_lines' line)")
    first = parse_metadata(path, lines[:1])[0]
    n_meta = int(first.value)
    if len(lines) < n_meta + 2:
        raise TableError(path, len(lines), f"header needs {n_meta} metadata lines and 2 column "
                         f"rows; the file ends after {len(lines)} lines (truncated?)")
    metadata = parse_metadata(path, lines[:n_meta])
    names_row = lines[n_meta].rstrip("\r\n").split("\t")
    columns = lines[n_meta + 1].rstrip("\r\n").split("\t")
    while columns and not columns[-1].strip():
        columns.pop()
    series = group_columns(names_row, columns)
    if not series:
        raise TableError(path, n_meta + 1, "no series names in the first column header row")
    return ZilienHeader(path, metadata, columns, series, n_meta + 3)


# -- the file ---------------------------------------------------------------------------------

@dataclass
class ZilienFile:
    header: ZilienHeader
    table: RaggedTable
    start_ns: int                  # epoch ns of Zilien time 0
    start_local: datetime          # the same instant on the lab's wall clock (naive)
    start_source: str
    mass_series: dict[str, float] = field(default_factory=dict)  # series name -> m/z

    @property
    def path(self) -> Path:
        return self.header.path

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def recorded_offset_s(self) -> float | None:
        """The recorded 'offset (time - EC-Lab time)': t_zilien = t_eclab + offset."""
        value = self.header.meta("offset")
        return None if value is None else float(value)

    def series(self, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.table.series(name)

    def mass_channels(self) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """m/z -> (time on the Zilien base in s, ion current in A)."""
        out = {}
        for name, mz in self.mass_series.items():
            t, values = self.series(name)
            out[mz] = (t, next(iter(values.values())))
        return out


def _mass_series(header: ZilienHeader) -> dict[str, float]:
    out = {}
    for s in header.series:
        mass = header.meta("mass", s.name)
        match = _MASS_SERIES.match(s.name)
        if mass is None and match:
            mass = float(match.group(1))
        if mass is not None:
            out[s.name] = float(mass)
    return out


def _zilien_start(header: ZilienHeader, utc_offset_h: float | None
                  ) -> tuple[int, datetime, str]:
    unix = header.meta("start_time_unix")
    local_text = header.meta("start_timestamp")
    if unix is not None and local_text:
        local = datetime.fromisoformat(str(local_text))
        return round(float(unix) * 1e9), local, "metadata start_time_unix"
    match = _FILE_NAME_TIME.match(header.path.name)
    if match is None:
        raise TableError(header.path, None, "no start_time_unix and no 'YYYY-MM-DD hh_mm_ss' "
                         "start time in the file name")
    local = datetime.strptime(match.group(1), "%Y-%m-%d %H_%M_%S")
    tz = timezone(timedelta(hours=utc_offset_h or 0.0))
    source = "file name (local time, UTC%+g h)" % (utc_offset_h or 0.0)
    if utc_offset_h is None:
        source = "file name (local time of unknown zone, read as UTC)"
    return round(local.replace(tzinfo=tz).timestamp() * 1e9), local, source


def read_zilien(path: str | Path, utc_offset_h: float | None = None,
                check_counts: bool = True) -> ZilienFile:
    """Read a whole Zilien TSV. ``utc_offset_h`` places a v1 file-name start time (local wall
    time) on the epoch; v2 files carry ``start_time_unix``. With ``check_counts``, every series
    must hold the number of points its ``<series>_count`` metadata gives (catches truncation)."""
    path = Path(path)
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        lines = f.read().splitlines()
    header = parse_header(path, lines)
    table = header.new_table()
    table.add_lines(lines[header.data_start_line - 1:], header.data_start_line)
    if check_counts:
        for s in header.series:
            expected = header.meta(f"{s.name}_count", s.name)
            if expected is not None and table.count(s.name) != expected:
                raise TableError(path, len(lines), f"series {s.name!r} has {table.count(s.name)} "
                                 f"points, the header says {expected} (truncated file?)",
                                 s.time_column + 1, header.columns[s.time_column])
    start_ns, start_local, source = _zilien_start(header, utc_offset_h)
    return ZilienFile(header, table, start_ns, start_local, source, _mass_series(header))


def find_mpts(path: str | Path) -> list[Path]:
    """The EC-Lab exports Zilien saved beside its TSV (``<stem>_<nn>_..._C01.mpt``), in order."""
    path = Path(path)
    return sorted(p for p in path.parent.glob(f"{glob_escape(path.stem)}_*.mpt"))


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


@dataclass(frozen=True)
class ClockAlignment:
    time_offset_s: float                 # t_zilien = t_eclab + time_offset_s
    offset_source: str
    absolute_clock_offset_s: float | None
    clock_disagreement_s: float | None   # absolute clocks minus the offset applied

    def meta(self) -> dict[str, Any]:
        return {"time_offset_s": self.time_offset_s, "offset_source": self.offset_source,
                "absolute_clock_offset_s": self.absolute_clock_offset_s,
                "clock_disagreement_s": self.clock_disagreement_s}


def clock_alignment(zf: ZilienFile, mpt: MptData) -> ClockAlignment:
    """How EC-Lab times map onto the Zilien base: the recorded offset when the file has one,
    else the two absolute wall clocks."""
    acquired = acquisition_start(mpt.header)
    absolute = None if acquired is None else (acquired - zf.start_local).total_seconds()
    recorded = zf.recorded_offset_s
    if recorded is not None:
        disagreement = None if absolute is None else absolute - recorded
        return ClockAlignment(recorded, OFFSET_SOURCE_RECORDED, absolute, disagreement)
    if absolute is None:
        raise TableError(mpt.path, None, "no recorded offset in the Zilien file and no "
                         "'Acquisition started on' in the .mpt header: cannot align the clocks")
    return ClockAlignment(absolute, OFFSET_SOURCE_CLOCKS, absolute, 0.0)


# -- frames -----------------------------------------------------------------------------------

def ion_current_arrays(channels: dict[float, tuple[np.ndarray, np.ndarray]]
                       ) -> tuple[float, dict[str, np.ndarray], dict[str, str]]:
    """The arrays of an ``ms.ion_current`` block from per-channel (time in s, current in A):
    ``t`` is each scan's earliest channel time, ``m<mz>`` the ion currents and ``t_m<mz>`` each
    channel's own sample times, all relative to the first scan's time, which is returned too.
    Only complete scans (as many as the shortest channel holds) are included."""
    n = min(len(t) for t, _ in channels.values())
    if n == 0:
        raise ValueError("the mass channels hold no samples")
    t_scan = np.min([t[:n] for t, _ in channels.values()], axis=0)
    t_first = float(t_scan[0])
    arrays: dict[str, np.ndarray] = {"t": t_scan - t_first}
    units = {"t": "s"}
    for mz, (t, current) in channels.items():
        name = f"m{mz:g}"
        arrays[name], arrays[f"t_{name}"] = current[:n], t[:n] - t_first
        units[name], units[f"t_{name}"] = "A", "s"
    return t_first, arrays, units


def ion_current_frame(channels: dict[float, tuple[np.ndarray, np.ndarray]], stream: str,
                      seq: int, origin_ns: int, meta: dict[str, Any]) -> Frame:
    """One ``ms.ion_current`` frame (see ``ion_current_arrays``) from per-channel times after
    ``origin_ns``."""
    try:
        t_first, arrays, units = ion_current_arrays(channels)
    except ValueError as exc:
        raise ValueError(f"{stream}: {exc}") from None
    return Frame(stream, "ms.ion_current", seq, origin_ns + round(t_first * 1e9), arrays, units,
                 {**meta, "masses": [float(m) for m in channels]})


def ms_frame(zf: ZilienFile, stream: str, seq: int = 0) -> Frame:
    """The mass channels of a Zilien file as one ``ms.ion_current`` frame (see
    ``ion_current_frame``); ``t0_ns`` on the Zilien base."""
    channels = zf.mass_channels()
    if not channels:
        raise TableError(zf.path, None, "no mass channels (series C<i>M<mz>) in the file")
    return ion_current_frame(channels, stream, seq, zf.start_ns, {
        "source": zf.path.name, "zilien_version": zf.version, "zilien_start_ns": zf.start_ns,
        "start_source": zf.start_source})


def echem_frame(zf: ZilienFile, mpt: MptData, stream: str, seq: int = 0) -> Frame:
    """An ``echem`` frame of an EC-Lab .mpt moved onto the Zilien base with the recorded offset;
    ``meta`` says which offset was applied and how far the absolute clocks disagree."""
    align = clock_alignment(zf, mpt)
    standard, units = mpt.standard()
    if "t" not in standard or "voltage" not in standard or "current" not in standard:
        raise TableError(mpt.path, len(mpt.header) + 1,
                         "needs time/s, Ewe/V and I/mA or <I>/mA columns")
    t = standard["t"] + align.time_offset_s
    arrays = {"t": t - t[0], "voltage": standard["voltage"], "current": standard["current"]}
    if "cycle" in standard:
        arrays["cycle"] = standard["cycle"]
    kind = "interval_mean" if "<I>/mA" in mpt.data else "instantaneous"
    meta = {"source": mpt.path.name, "current_kind": kind, "zilien_start_ns": zf.start_ns,
            "mpt_errors": len(mpt.errors), **align.meta()}
    return Frame(stream, "echem", seq, zf.start_ns + round(float(t[0]) * 1e9), arrays,
                 {k: units.get(k, "") for k in arrays if k in units}, meta)


def zilien_frames(path: str | Path, experiment: str, cell: str,
                  mpt_paths: list[Path] | None = None, utc_offset_h: float | None = None,
                  ms_instrument: str = "ms", ec_instrument: str = "potentiostat") -> list[Frame]:
    """The mass channels and the EC-Lab data of one Zilien recording as opmon frames on the
    Zilien time base: one ``ms.ion_current`` frame, one ``echem`` frame per .mpt (found beside
    the TSV unless given)."""
    zf = read_zilien(path, utc_offset_h)
    frames = [ms_frame(zf, f"{experiment}/{cell}/{ms_instrument}")]
    for seq, mpt_path in enumerate(find_mpts(path) if mpt_paths is None else mpt_paths):
        frames.append(echem_frame(zf, read_mpt(mpt_path), f"{experiment}/{cell}/{ec_instrument}",
                                  seq))
    return frames


# -- EC-Lab files followed beside the TSV -------------------------------------------------------

class MptTail:
    """An EC-Lab ``.mpt`` beside the TSV, followed while EC-Lab writes it: the handler of a
    ``FollowedFile`` that gives the rows read since the last poll as ``MptData`` (every column
    under its EC-Lab name, as ``adapters.biologic.read_mpt`` reads it: cp1252, a decimal comma
    detected). Bad lines go to ``on_error`` and are skipped; once ``dead`` (the file cannot be
    aligned or lacks a column) its lines are skipped until a new file replaces it."""

    def __init__(self, path: Path, on_error: Callable[[TabularError], object]):
        self.reader = TableReader(MptFormat(raw=True), path, ENCODING)
        self.on_error = on_error
        self.new_file(path)

    def new_file(self, path: Path) -> None:
        self.reader.restart(path)
        self.alignment: ClockAlignment | None = None
        self.dead = False

    def feed_lines(self, lines: list[bytes], first_line: int) -> list[MptData]:
        return self._data(None if self.dead else self.reader.feed(lines, first_line))

    def feed_bytes(self, data: bytes) -> list[MptData]:
        raise NotImplementedError("an .mpt is text")

    def end_of_file(self, complete: bool) -> list[MptData]:
        return self._data(self.reader.finish() if complete and not self.dead else None)

    def _data(self, rows: Any) -> list[MptData]:
        for exc in self.reader.errors:
            self.on_error(exc)
        self.reader.errors.clear()
        header = self.reader.header
        if rows is None or header is None:
            return []
        return [MptData(self.reader.path, header.extra["lines"], header.columns, rows.arrays)]


# -- the Zilien adapter ---------------------------------------------------------------------

EMBEDDED_EC_SERIES = "EC-lab"
POT_SERIES = "pot"
# Zilien's own potentiostat read-out -> (opmon name, unit, factor)
POT_COLUMNS = {"Voltage [V]": ("voltage", "V", 1.0), "Current [mA]": ("current", "A", 1e-3),
               "Cycle [n]": ("cycle", "", 1.0)}
OFFSET_SOURCE_EMBEDDED = ("embedded by Zilien: its EC-lab series is on the Zilien base "
                          "(t = t_eclab + the recorded offset)")
SUPPORTED_VERSIONS = (1, 2)
MAX_HEADER_LINES = 100_000   # a larger num_header_lines is garbage


class ZilienConfig(FollowedFileConfig):
    ms_instrument: str | None = None      # instrument id of the ms.ion_current stream
                                          # (None: this adapter's id)
    ec_instrument: str = "potentiostat"   # instrument id of the echem stream
    # echem from: the v2 embedded EC-lab series, the EC-Lab .mpt files beside the TSV, Zilien's
    # own potentiostat read-out (pot), or none; auto: embedded if the file has it, else mpt
    ec_source: Literal["auto", "embedded", "mpt", "pot", "none"] = "auto"
    mpt_paths: list[str] | None = None    # the .mpt files (None: <tsv stem>_*.mpt beside it)
    utc_offset_h: float | None = None     # v1: the zone of the start time in the file name
    block_rows: int = Field(1000, ge=1)   # most samples (MS scans, EC rows) per frame


class ZilienAdapter(TextFileAdapter):
    """A Zilien TSV, followed as Zilien writes it or read once: ``ms.ion_current`` blocks of
    complete scans on the MS stream and ``echem`` blocks on the EC stream, both on the Zilien
    time base (EC-Lab times moved by the recorded offset)."""

    type_name = "zilien.tsv"
    Config = ZilienConfig
    config: ZilienConfig

    def __init__(self, stream: str, config: ZilienConfig | None = None):
        super().__init__(stream, config, "utf-8")
        experiment, cell, instrument = stream.split("/")
        c = self.config
        self.ms_stream = f"{experiment}/{cell}/{c.ms_instrument or instrument}"
        self.ec_stream = f"{experiment}/{cell}/{c.ec_instrument}"

    def new_file(self, path: Path) -> None:
        """A new measurement: forget the old one (its .mpt files too)."""
        super().new_file(path)
        self.close_mpts()
        self.zilien: ZilienFile | None = None
        self._ec_mode = "none"
        self._pending: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._totals: dict[str, int] = {}
        self._last_line = 0
        self._mpts: dict[Path, FollowedFile[MptData]] = {}
        self._meta: dict[str, Any] = {}

    def close_mpts(self) -> None:
        for mpt in getattr(self, "_mpts", {}).values():
            mpt.close()

    def close(self) -> None:
        super().close()
        self.close_mpts()

    # -- input ----------------------------------------------------------------------------
    def poll(self) -> tuple[list[Frame], bool]:
        """The TSV's new lines, then those of the .mpt files beside it."""
        frames, active = super().poll()
        if self._ec_mode == "mpt":
            mpt_frames, mpt_active = self._poll_mpts()
            frames += mpt_frames
            active = active or mpt_active
        return frames, active

    def rows(self, lines: list[str], first_line: int) -> list[Frame]:
        assert self.zilien is not None
        self.rows_read += self.zilien.table.add_lines(lines, first_line, self.reject_error)
        self._last_line = first_line + len(lines) - 1
        return self._emit()

    def read_header(self, head: list[str]) -> ZilienHeader | None:
        """The header once its lines are all in (None before)."""
        if not head:
            return None
        if not head[0].startswith("num_header_lines\t"):
            raise TableError(self.path, 1, "not a Zilien TSV (no 'num_header_lines' line)")
        n_meta = parse_metadata(self.path, head[:1])[0].value
        if not isinstance(n_meta, int) or not 1 <= n_meta <= MAX_HEADER_LINES:
            raise TableError(self.path, 1, f"num_header_lines {n_meta!r} is not a plausible "
                             "line count", 5, "value")
        if len(head) < n_meta + 2:
            return None
        return parse_header(self.path, head[:n_meta + 2])

    def start_file(self, header: ZilienHeader) -> bool:
        """Check the header and set up the streams; False when the file cannot be read."""
        version = header.meta("file_format_version", default=1)
        if version not in SUPPORTED_VERSIONS:
            line = next(e.line for e in header.metadata if e.key == "file_format_version")
            self.reject(f"{self.path}: line {line}, column 5 ('value')",
                     f"file format version {version!r} is not supported (Zilien writes 1 and 2)")
            return False
        try:
            start_ns, start_local, start_source = _zilien_start(header, self.config.utc_offset_h)
            masses = _mass_series(header)
        except TableError as exc:
            self.reject_error(exc)
            return False
        except ValueError as exc:
            self.reject(str(self.path), f"unreadable header: {exc}")
            return False
        for name in [n for n in masses if not self._layout(header, n).value_columns]:
            self.reject(str(self.path), f"mass series {name!r} has no value column; ignored")
            del masses[name]
        if not masses:
            self.reject(str(self.path), "no mass channels (series C<i>M<mz>) in the file")
        self.zilien = ZilienFile(header, header.new_table(), start_ns, start_local, start_source,
                                 masses)
        self._meta = {"source": self.path.name, "zilien_version": int(version),
                      "zilien_start_ns": start_ns, "start_source": start_source}
        self._ec_mode = self._choose_ec(header)
        return True

    @staticmethod
    def _layout(header: ZilienHeader, name: str) -> SeriesLayout:
        return next(s for s in header.series if s.name == name)

    def _choose_ec(self, header: ZilienHeader) -> str:
        names = {s.name for s in header.series}
        mode = self.config.ec_source
        if mode == "auto":
            mode = "embedded" if EMBEDDED_EC_SERIES in names else "mpt"
        if mode not in ("embedded", "pot"):
            return mode
        series = EMBEDDED_EC_SERIES if mode == "embedded" else POT_SERIES
        if series not in names:
            self.reject(str(self.path), f"ec_source {mode!r}: the file has no {series!r} series")
            return "none"
        columns = self._layout(header, series).value_columns
        arrays, _ = standard_arrays(dict.fromkeys(columns, np.zeros(0)), self._ec_mapping(mode))
        if not {"voltage", "current"} <= set(arrays):
            self.reject(str(self.path), f"ec_source {mode!r}: series {series!r} lacks a potential "
                     f"or a current column (has {list(columns)})")
            return "none"
        return mode

    @staticmethod
    def _ec_mapping(mode: str) -> dict[str, tuple[str, str, float]]:
        return POT_COLUMNS if mode == "pot" else STANDARD_COLUMNS

    # -- output ---------------------------------------------------------------------------
    def _emit(self) -> list[Frame]:
        z = self.zilien
        assert z is not None
        taken = {}
        for s in z.header.series:
            t, values = z.table.take(s.name)
            self._totals[s.name] = self._totals.get(s.name, 0) + len(t)
            taken[s.name] = t, values
        frames = self._ms_frames({mz: taken[name] for name, mz in z.mass_series.items()})
        if self._ec_mode in ("embedded", "pot"):
            series = EMBEDDED_EC_SERIES if self._ec_mode == "embedded" else POT_SERIES
            t, values = taken[series]
            arrays, units = standard_arrays(values, self._ec_mapping(self._ec_mode))
            recorded = z.recorded_offset_s
            meta = {"source": self.path.name, "series": series,
                    "current_kind": "interval_mean" if "<I>/mA" in values else "instantaneous",
                    "zilien_start_ns": z.start_ns}
            if self._ec_mode == "embedded":
                meta |= {"time_offset_s": recorded, "offset_source": OFFSET_SOURCE_EMBEDDED}
            frames += self._ec_frames(t, arrays, units, meta)
        return frames

    def _ms_frames(self, new: dict[float, tuple[np.ndarray, dict[str, np.ndarray]]]
                   ) -> list[Frame]:
        """Blocks of complete scans; a scan's channels still missing wait for the next lines."""
        if not new:
            return []
        for mz, (t, values) in new.items():
            current = next(iter(values.values()))
            old_t, old_i = self._pending.get(mz, (np.zeros(0), np.zeros(0)))
            self._pending[mz] = np.concatenate([old_t, t]), np.concatenate([old_i, current])
        n = min(len(t) for t, _ in self._pending.values())
        z = self.zilien
        assert z is not None
        frames = []
        for start in range(0, n, self.config.block_rows):
            end = min(n, start + self.config.block_rows)
            channels = {mz: (t[start:end], i[start:end]) for mz, (t, i) in self._pending.items()}
            t_first, arrays, units = ion_current_arrays(channels)
            frames.append(self.frame_on(self.ms_stream, "ms.ion_current",
                                        z.start_ns + round(t_first * 1e9), arrays, units,
                                        {**self._meta, "masses": list(self._pending)}))
        self._pending = {mz: (t[n:], i[n:]) for mz, (t, i) in self._pending.items()}
        return frames

    def _ec_frames(self, t_zilien: np.ndarray, arrays: dict[str, np.ndarray],
                   units: dict[str, str], meta: dict[str, Any]) -> list[Frame]:
        """``echem`` blocks of samples at ``t_zilien`` (s on the Zilien base)."""
        z = self.zilien
        assert z is not None
        frames = []
        for start in range(0, len(t_zilien), self.config.block_rows):
            end = min(len(t_zilien), start + self.config.block_rows)
            t0 = float(t_zilien[start])
            block = {"t": t_zilien[start:end] - t0,
                     **{name: a[start:end] for name, a in arrays.items()}}
            frames.append(self.frame_on(self.ec_stream, "echem", z.start_ns + round(t0 * 1e9),
                                        block, {"t": "s", **units}, meta))
        return frames

    # -- the EC-Lab files beside the TSV --------------------------------------------------------
    def _mpt_paths(self) -> list[Path]:
        if self.config.mpt_paths is not None:
            return [Path(p) for p in self.config.mpt_paths]
        return find_mpts(self.path)

    def _poll_mpts(self, end: bool = False, complete: bool = True
                   ) -> tuple[list[Frame], bool]:
        """The new rows of the .mpt files; ``end``: the TSV's measurement ended (``complete``:
        whole), so are the .mpt files."""
        z = self.zilien
        if z is None:
            return [], False
        frames, active = [], False
        paths = self._mpt_paths()
        for k, path in enumerate(paths):
            mpt_file = self._mpts.get(path)
            if mpt_file is None:
                mpt_file = self._mpts[path] = FollowedFile(
                    path, MptTail(path, self.reject_error), on_error=self.read_failed)
            if end:
                data, got = mpt_file.finish(complete), True
            else:  # EC-Lab ends a file without a newline: it is complete once the next exists
                data, got = mpt_file.poll(final=any(p.exists() for p in paths[k + 1:]))
            active = active or got
            for mpt in data:
                frames += self._mpt_frames(mpt_file.handler, mpt)
        return frames, active

    def _mpt_frames(self, tail: Any, mpt: MptData) -> list[Frame]:
        """``echem`` blocks of new .mpt rows, moved onto the Zilien base."""
        z = self.zilien
        assert z is not None
        if tail.alignment is None:
            try:
                tail.alignment = clock_alignment(z, mpt)
            except TableError as exc:
                self.reject_error(exc)
                tail.dead = True
                return []
        arrays, units = mpt.standard()
        if not {"t", "voltage", "current"} <= set(arrays):
            self.reject(f"{mpt.path}: line {len(mpt.header) + 1}",
                        "needs time/s, Ewe/V and I/mA or <I>/mA columns")
            tail.dead = True
            return []
        t = arrays.pop("t") + tail.alignment.time_offset_s
        units.pop("t", None)
        meta = {"source": mpt.path.name,
                "current_kind": "interval_mean" if "<I>/mA" in mpt.data else "instantaneous",
                "zilien_start_ns": z.start_ns, **tail.alignment.meta()}
        return self._ec_frames(t, arrays, units, meta)

    def end_of_file(self, complete: bool) -> list[Frame]:
        """The measurement ends: its .mpt files are complete too; a whole file is checked for
        series shorter than the header says."""
        frames = self._poll_mpts(end=True, complete=complete)[0] \
            if self._ec_mode == "mpt" else []
        super().end_of_file(complete)
        z = self.zilien
        if not complete or z is None:
            return frames
        for s in z.header.series:
            expected = z.header.meta(f"{s.name}_count", s.name)
            got = self._totals.get(s.name, 0)
            if isinstance(expected, int) and got != expected:
                self.reject(f"{self.path}: line {self._last_line}, column {s.time_column + 1} "
                            f"({z.header.columns[s.time_column]!r})",
                            f"series {s.name!r} has {got} points, the header says {expected} "
                            "(truncated file or rejected rows)")
        if self.config.ec_source == "mpt" and not self._mpts:
            self.reject(str(self.path), "ec_source 'mpt': no .mpt files found")
        return frames
