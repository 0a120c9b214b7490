"""ixdat CSV exports (``Measurement.export``): EC-MS data with one time column per series.

Layout: ``key = value`` header lines (among them ``tstamp`` = epoch seconds of time 0 and
``N_header_lines`` = the line number of the column row), ``timecol '<time>' for: '<a>' and
'<b>'`` lines that say which time column each value column uses, then the column row and data
rows, both separated by ``,`` plus a tab. Shorter series are padded with empty cells.

Output: ``echem`` (``t``, ``voltage`` V, ``current`` A, ``selector``) and ``ms.ion_current``
(``t``, ``m<mz>`` A, ``t_m<mz>``) frames with ``t0_ns`` on the export's time base (``tstamp``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.frame import Frame

from .zilien import RaggedTable, SeriesLayout, TableError, ion_current_frame

_TIMECOL = re.compile(r"^timecol '([^']*)' for: (.*)$")
_QUOTED = re.compile(r"'([^']*)'")
_MASS = re.compile(r"^M(\d+(?:\.\d+)?)$")
SEPARATOR = ","
# ixdat EC column -> (opmon name, factor to SI)
EC_COLUMNS = {"Ewe/V": ("voltage", 1.0), "<I>/mA": ("current", 1e-3), "I/mA": ("current", 1e-3),
              "selector": ("selector", 1.0), "cycle number": ("cycle", 1.0)}


@dataclass
class IxdatHeader:
    path: Path
    fields: dict[str, str]              # the key = value lines
    timecols: dict[str, list[str]]      # time column -> the value columns that use it
    columns: list[str]
    data_start_line: int                # 1-based

    @property
    def tstamp_ns(self) -> int:
        try:
            return round(float(self.fields["tstamp"]) * 1e9)
        except (KeyError, ValueError):
            raise TableError(self.path, None, "no numeric 'tstamp = <epoch s>' header line") \
                from None

    def aliases(self) -> dict[str, Any]:
        try:
            return json.loads(self.fields.get("aliases", "{}"))
        except json.JSONDecodeError:
            return {}

    def layout(self) -> list[SeriesLayout]:
        index = {name: i for i, name in enumerate(self.columns)}
        out = []
        for time_column, values in self.timecols.items():
            for name in [time_column, *values]:
                if name not in index:
                    raise TableError(self.path, self.data_start_line - 1,
                                     f"column {name!r} named in a timecol line is missing")
            out.append(SeriesLayout(time_column, index[time_column],
                                    {v: index[v] for v in values}))
        return out

    def new_table(self) -> RaggedTable:
        return RaggedTable(self.path, self.columns, self.layout(), SEPARATOR)


def parse_header(path: Path | str, lines: list[str]) -> IxdatHeader:
    """The header of an ixdat CSV from its first lines (at least ``N_header_lines``)."""
    path = Path(path)
    fields: dict[str, str] = {}
    timecols: dict[str, list[str]] = {}
    n_header = None
    for number, line in enumerate(lines, start=1):
        if n_header is not None and number >= n_header:
            break
        match = _TIMECOL.match(line.strip())
        if match:
            timecols[match.group(1)] = _QUOTED.findall(match.group(2))
        elif " = " in line:
            key, value = line.split(" = ", 1)
            fields[key.strip()] = value.strip()
            if key.strip() == "N_header_lines":
                try:
                    n_header = int(value)
                except ValueError:
                    raise TableError(path, number, f"N_header_lines is not an integer: "
                                     f"{value.strip()!r}") from None
        elif line.strip():
            raise TableError(path, number, "header line is neither 'key = value' nor 'timecol'")
    if n_header is None:
        raise TableError(path, len(lines), "no 'N_header_lines = N' line: not an ixdat CSV")
    if len(lines) < n_header:
        raise TableError(path, len(lines), f"the header ends at line {n_header}; the file has "
                         f"{len(lines)} lines (truncated?)")
    if not timecols:
        raise TableError(path, n_header, "no 'timecol ... for: ...' lines")
    columns = [c.strip() for c in lines[n_header - 1].split(SEPARATOR)]
    return IxdatHeader(path, fields, timecols, columns, n_header + 1)


@dataclass
class IxdatCsv:
    header: IxdatHeader
    table: RaggedTable

    @property
    def path(self) -> Path:
        return self.header.path

    def series_of(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(time, values) of one value column, on the export's time base (s after tstamp)."""
        for time_column, values in self.header.timecols.items():
            if column in values:
                t, data = self.table.series(time_column)
                return t, data[column]
        raise KeyError(f"{self.path}: no column {column!r}; have {self.header.columns}")

    def mass_columns(self) -> dict[float, str]:
        """m/z -> column name, for the ``M<mz>`` columns."""
        out = {}
        for values in self.header.timecols.values():
            for v in values:
                match = _MASS.match(v)
                if match:
                    out[float(match.group(1))] = v
        return dict(sorted(out.items()))

    def echem_frame(self, stream: str, seq: int = 0) -> Frame:
        ec = [c for c in EC_COLUMNS if any(c in v for v in self.header.timecols.values())]
        if not {"voltage", "current"} <= {EC_COLUMNS[c][0] for c in ec}:
            raise TableError(self.path, self.header.data_start_line - 1,
                             "needs Ewe/V and <I>/mA (or I/mA) columns")
        t = self.series_of(ec[0])[0]
        arrays: dict[str, np.ndarray] = {"t": t - t[0]}
        for column in ec:
            name, factor = EC_COLUMNS[column]
            arrays.setdefault(name, self.series_of(column)[1] * factor)
        units = {"t": "s", "voltage": "V", "current": "A"}
        kind = "interval_mean" if "<I>/mA" in ec else "instantaneous"
        return Frame(stream, "echem", seq, self.header.tstamp_ns + round(float(t[0]) * 1e9),
                     arrays, units, {"source": self.path.name, "current_kind": kind,
                                     "export_tstamp_ns": self.header.tstamp_ns})

    def ms_frame(self, stream: str, seq: int = 0) -> Frame:
        """The ``M<mz>`` columns as one ``ms.ion_current`` frame (see ``ion_current_frame``)."""
        channels = {mz: self.series_of(c) for mz, c in self.mass_columns().items()}
        if not channels:
            raise TableError(self.path, self.header.data_start_line - 1, "no M<mz> columns")
        return ion_current_frame(channels, stream, seq, self.header.tstamp_ns, {
            "source": self.path.name, "export_tstamp_ns": self.header.tstamp_ns})


def read_ixdat_csv(path: str | Path) -> IxdatCsv:
    path = Path(path)
    with path.open("r", encoding="utf-8", newline="") as f:
        lines = f.read().splitlines()
    header = parse_header(path, lines)
    table = header.new_table()
    table.add_lines(lines[header.data_start_line - 1:], header.data_start_line)
    return IxdatCsv(header, table)
