"""Any delimited text table, through a declarative column mapping: the adapter for an instrument
that is not on the list but writes (or exports) a CSV-like file.

The config says where the column names are, how the time column reads (seconds, ``h:mm:ss``,
an ISO or ``strptime`` timestamp, or a Unix time), and which columns become which arrays, with
a scale and offset to opmon's units. The file is followed as it grows, or read once.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stream.frame import ARRAY_NAME_RE, is_known_kind

from .tabular import Column, TableFormat, TableHeader, TabularAdapter, TabularConfig, TabularError

# published unit of the standard names; a mapping must publish them in these units
STANDARD_UNITS = {"voltage": "V", "current": "A", "counter_voltage": "V", "temperature": "degC",
                  "pressure": "Pa"}
# names each kind needs (ms.ion_current needs at least one m<mz>)
KIND_NEEDS = {"echem": ("voltage", "current"), "pressure": ("pressure",),
              "temperature": ("temperature",)}
TIME_FORMATS = ("seconds", "hms", "iso", "epoch")


def standard_unit(name: str) -> str | None:
    if name in STANDARD_UNITS:
        return STANDARD_UNITS[name]
    if name.startswith("m") and name[1:].replace(".", "", 1).isdigit():
        return "A"  # ion current m<mz>
    if name.startswith("q_") and name.endswith("_Ah"):
        return "Ah"
    return None


class ColumnMap(BaseModel):
    """``columns.<name>``: one published array (or meta value) from one file column."""

    model_config = ConfigDict(extra="forbid")
    column: str | int                # the file's column name, or its 1-based position
    scale: float = 1.0               # published value = cell * scale + offset
    offset: float = 0.0
    unit: str = ""                   # unit of the published value (standard names: implied)
    required: bool = False           # reject rows without a value here (the kind's own are)
    integer: bool = False            # publish as int32 (counters: step, cycle)
    values: dict[str, float] = {}    # text cells as numbers: {"Rest" = 0, "CC Chg" = 1}
    meta: bool = False               # not an array: its changes start frames, value in meta


class TimeMap(BaseModel):
    """``time``: the column that gives each row's time."""

    model_config = ConfigDict(extra="forbid")
    column: str | int = 1            # the file's column name, or its 1-based position
    # seconds (a number, relative), hms (h:mm:ss, relative), iso (ISO 8601 timestamp),
    # epoch (Unix time), or a strptime format such as "%d.%m.%Y %H:%M:%S"
    format: str = "seconds"
    scale: float = Field(1.0, gt=0)  # seconds/hms/epoch: seconds per unit (60: minutes, 1e-3: ms)

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in TIME_FORMATS and "%" not in value:
            raise ValueError(f"use one of {TIME_FORMATS} or a strptime format with '%'")
        return value


class CsvConfig(TabularConfig):
    kind: str = "echem"              # frame kind: echem, pressure, temperature, ms.ion_current...
    time: TimeMap = Field(default_factory=TimeMap)
    columns: dict[str, ColumnMap] = {}  # array name -> its column
    delimiter: str = ","             # field separator; "tab" or "\t" for tabs
    quote: str = ""                  # quote character if fields are quoted ('"'); "" = none
    header_row: int = Field(1, ge=0)  # line of the column names; 0: none (columns by position)
    units_row: int = Field(0, ge=0)  # a line of units to skip (0: none)
    data_row: int = Field(0, ge=0)   # first data line (0: right after the header and units)
    comment: str = ""                # data lines starting with this are skipped
    split_on: list[str] = []         # arrays whose change starts a new frame (e.g. ["step"])

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        value = "\t" if value == "tab" else value
        if len(value) != 1:
            raise ValueError("one character (or 'tab')")
        return value

    @model_validator(mode="after")
    def _check(self) -> CsvConfig:
        if not is_known_kind(self.kind):
            raise ValueError(f"kind {self.kind!r} is not a registered frame kind")
        if self.decimal == "," and self.delimiter == ",":
            raise ValueError("decimal ',' needs another delimiter (';' or tab)")
        for name, spec in self.columns.items():
            if name == "t" or not ARRAY_NAME_RE.match(name):
                raise ValueError(f"columns.{name}: not a valid array name ('t' is the time)")
            want = standard_unit(name)
            if want is not None and spec.unit not in ("", want):
                raise ValueError(f"columns.{name}: published in {want}, not {spec.unit!r}; "
                                 f"convert with scale (e.g. mA -> A: scale = 1e-3)")
            if isinstance(spec.column, int) and spec.column < 1:
                raise ValueError(f"columns.{name}.column: positions start at 1")
            if isinstance(spec.column, str) and self.header_row == 0:
                raise ValueError(f"columns.{name}.column: header_row = 0, refer to columns "
                                 "by position")
        needs = KIND_NEEDS.get(self.kind, ())
        missing = [n for n in needs if n not in self.columns or self.columns[n].meta]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs columns {missing}")
        if self.kind == "ms.ion_current" and not any(standard_unit(n) == "A"
                                                     for n in self.columns):
            raise ValueError("kind 'ms.ion_current' needs at least one m<mz> column")
        return self

    @property
    def first_data_row(self) -> int:
        return self.data_row or max(self.header_row, self.units_row) + 1


class CsvFormat(TableFormat):

    def __init__(self, config: CsvConfig):
        self.config = config
        self.separator = config.delimiter
        self.quote = config.quote
        self.comment = config.comment

    def _fields(self, line: str) -> list[str]:
        if self.quote:
            return next(csv.reader([line], delimiter=self.separator, quotechar=self.quote))
        return line.split(self.separator)

    def header(self, path: Path, lines: list[str]) -> TableHeader | None:
        c = self.config
        data_line = c.first_data_row
        if c.header_row:
            if len(lines) < max(c.header_row, data_line - 1):
                return None
            columns = [name.strip() for name in self._fields(lines[c.header_row - 1])]
        else:  # no names: as many columns as the first data line has
            if len(lines) < data_line:
                return None
            columns = [f"column {i + 1}" for i in range(len(self._fields(lines[data_line - 1])))]
        return TableHeader(columns, data_line)

    def _index(self, path: Path, header: TableHeader, key: str, column: str | int) -> int | None:
        """0-based index of a mapped column; None (and a problem) when the file lacks it."""
        if isinstance(column, int):
            if column <= len(header.columns):
                return column - 1
            reason = f"{key}: column {column} asked for, the file has {len(header.columns)}"
        elif column in header.columns:
            return header.columns.index(column)
        else:
            reason = f"{key}: no column {column!r} (the file has {header.columns[:12]})"
        header.problems.append(TabularError(path, self.config.header_row or None, reason))
        return None

    def columns(self, path: Path, header: TableHeader) -> list[Column]:
        c = self.config
        needs = set(KIND_NEEDS.get(c.kind, ()))
        index = self._index(path, header, "time", c.time.column)
        if index is None:
            raise header.problems.pop()
        out = [self._time_column(index, header.columns[index])]
        for name, spec in c.columns.items():
            index = self._index(path, header, f"columns.{name}", spec.column)
            required = spec.required or name in needs
            if index is None:
                if required:
                    raise header.problems.pop()
                continue
            out.append(Column(
                name, index, header.columns[index], spec.unit or standard_unit(name) or "",
                spec.scale, spec.offset, "text" if spec.values or spec.meta else "number",
                values=spec.values or None, required=required, integer=spec.integer,
                role="meta" if spec.meta else "array"))
        return out

    def _time_column(self, index: int, source: str) -> Column:
        fmt = self.config.time.format
        scale = self.config.time.scale
        if fmt == "seconds":
            return Column("t", index, source, "s", scale, required=True)
        if fmt == "hms":
            return Column("t", index, source, "s", scale, parse="duration", required=True)
        return Column("t", index, source, "s", scale, parse="datetime", fmt=fmt, required=True)


class CsvAdapter(TabularAdapter):
    """A delimited text file read through ``CsvConfig``'s mapping, as frames of ``kind``."""

    type_name = "csv"
    Config: ClassVar[type[CsvConfig]] = CsvConfig

    def __init__(self, stream: str, config: CsvConfig | None = None):
        super().__init__(stream, config)
        self.kind = self.config.kind

    def make_format(self) -> CsvFormat:
        return CsvFormat(self.config)
