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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from adapters.biologic import MptData, read_mpt
from stream.frame import Frame

OFFSET_SOURCE_RECORDED = "recorded metadata 'offset (time - EC-Lab time)'"
OFFSET_SOURCE_CLOCKS = "absolute clocks (Zilien start vs .mpt 'Acquisition started on')"
_FILE_NAME_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}_\d{2}_\d{2})")
_MASS_SERIES = re.compile(r"^C\d+M(\d+(?:\.\d+)?)$")
_ACQUISITION = re.compile(r"Acquisition started on\s*:\s*(\S+ \S+)")


class TableError(ValueError):
    """Bad input in a text table; names the file, the 1-based line and, where known, the
    column (1-based index and name)."""

    def __init__(self, path: Path | str, line: int | None, reason: str,
                 column: int | None = None, column_name: str | None = None):
        self.path, self.line, self.column, self.column_name = Path(path), line, column, column_name
        where = f"{path}"
        if line is not None:
            where += f": line {line}"
        if column is not None:
            where += f", column {column}" + (f" ({column_name!r})" if column_name else "")
        super().__init__(f"{where}: {reason}")


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


class RaggedTable:
    """Rows of a table whose series each have their own time column. A series' cells in a row
    are padding when its time cell is empty or NaN. Feed lines with ``add_lines`` (any chunking)
    and read the arrays with ``series``."""

    def __init__(self, path: Path | str, columns: list[str], series: list[SeriesLayout],
                 separator: str = "\t"):
        self.path = Path(path)
        self.columns = columns
        self.layout = series
        self.separator = separator
        self._rows: dict[str, list[list[float]]] = {s.name: [] for s in series}

    def add_lines(self, lines: Iterable[str], first_line: int) -> None:
        """Parse data lines; ``first_line`` is the 1-based line number of the first one.
        Blank lines are skipped; a short or garbled row raises TableError."""
        n_columns = len(self.columns)
        for number, line in enumerate(lines, start=first_line):
            if not line.strip():
                continue
            cells = line.rstrip("\r\n").split(self.separator)
            if len(cells) < n_columns:
                raise TableError(self.path, number, f"{len(cells)} fields, expected {n_columns} "
                                 "(truncated row?)")
            for s in self.layout:
                t = self._number(cells, s.time_column, number)
                if math.isnan(t):  # padding: the other cells must be padding too
                    for i in s.value_columns.values():
                        if not math.isnan(self._number(cells, i, number)):
                            raise TableError(self.path, number, "value without a time",
                                             i + 1, self.columns[i])
                    continue
                row = [t] + [self._number(cells, i, number) for i in s.value_columns.values()]
                self._rows[s.name].append(row)

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


def mpt_acquisition_start(mpt: MptData) -> datetime | None:
    """The .mpt header's 'Acquisition started on' (EC-Lab's wall clock), if it parses."""
    for line in mpt.header:
        match = _ACQUISITION.search(line)
        if match:
            for fmt in ("%m/%d/%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S"):
                try:
                    return datetime.strptime(match.group(1), fmt)
                except ValueError:
                    pass
    return None


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
    acquired = mpt_acquisition_start(mpt)
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

def ion_current_frame(channels: dict[float, tuple[np.ndarray, np.ndarray]], stream: str,
                      seq: int, origin_ns: int, meta: dict[str, Any]) -> Frame:
    """One ``ms.ion_current`` frame from per-channel (time after ``origin_ns`` in s, current in A):
    ``t`` is each scan's earliest channel time, ``m<mz>`` the ion currents and ``t_m<mz>`` each
    channel's own sample times (all relative to ``t0_ns``). Only complete scans (as many as the
    shortest channel holds) are included."""
    n = min(len(t) for t, _ in channels.values())
    if n == 0:
        raise ValueError(f"{stream}: the mass channels hold no samples")
    t_scan = np.min([t[:n] for t, _ in channels.values()], axis=0)
    t_first = float(t_scan[0])
    arrays: dict[str, np.ndarray] = {"t": t_scan - t_first}
    units = {"t": "s"}
    for mz, (t, current) in channels.items():
        name = f"m{mz:g}"
        arrays[name], arrays[f"t_{name}"] = current[:n], t[:n] - t_first
        units[name], units[f"t_{name}"] = "A", "s"
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
