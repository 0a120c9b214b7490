"""Line-based tables that instrument programs write as they measure (EC-Lab ``.mpt``, Neware
CSV, any CSV): follow the file, parse its complete lines, cut the rows into blocks, publish
frames.

The parts, from the bottom up:

- ``TableFormat`` (one per vendor) knows a file's header and how its columns map onto opmon's
  arrays (``Column``): name, unit, scale, how a cell is parsed.
- ``TableReader`` takes the lines of one file in chunks of any size (as ``FileFollower`` reads
  them): header first, then data rows. Bad lines are collected as ``TabularError`` (file, line,
  column) and skipped; the rows come out as ``Rows``, columnar arrays under opmon's names.
- ``RowsAdapter.publish`` cuts ``Rows`` into blocks (a new block at every change of a segment
  key such as the step, and at ``block_rows`` / ``block_s``) and builds the frames.
- ``TabularAdapter`` is the ``adapters.followed`` file adapter that feeds its file's lines to a
  ``TableReader``: it follows a file (or a glob of files written one after another), or reads
  it once as a replay, and re-reads the header whenever the file is rotated, replaced or
  truncated.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from stream.frame import Frame

from .base import InputError
from .followed import FollowedFileAdapter, FollowedFileConfig

log = logging.getLogger(__name__)

MISSING_INT = -1          # integer columns (step, cycle) with an empty cell
NAT = np.iinfo(np.int64).min
_BOM = b"\xef\xbb\xbf"


class TabularError(InputError):
    """Bad input in a text table: names the file, the 1-based line and, where known, the
    1-based column and its name."""

    def __init__(self, path: Path | str, line: int | None, reason: str,
                 column: int | None = None, column_name: str | None = None):
        self.path, self.line = Path(path), line
        self.column, self.column_name = column, column_name
        where = str(self.path)
        if line is not None:
            where += f": line {line}"
        if column is not None:
            where += f", column {column}"
            if column_name:
                where += f" ({column_name!r})"
        super().__init__(where, reason)


# -- column mapping -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """How one column of the file becomes one array (or one meta value) of the frames.

    ``parse``: ``number`` (decimal text), ``duration`` (``h:mm:ss[.f]`` or seconds), ``datetime``
    (absolute: ``fmt`` is ``iso``, ``epoch`` or a ``strptime`` format; only for ``t``) or
    ``text`` (``values`` maps the text onto numbers; as a meta column the text itself). An
    absolute ``t`` becomes seconds after its first row; other datetime columns stay epoch ns.
    The published value is ``cell * scale + offset``. A row whose ``required`` cell is empty,
    NaN or unparseable is rejected; other empty cells become NaN (``MISSING_INT`` if integer).
    ``role``: ``array`` (published), ``meta`` (not published: a change starts a new block and
    the value goes into the frame meta) or ``hidden`` (parsed for the format's own use)."""

    name: str
    index: int                      # 0-based position in the file's rows
    source: str = ""                # the file's column name, for messages
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    parse: Literal["number", "duration", "datetime", "text"] = "number"
    fmt: str = ""
    values: Mapping[str, float] | None = None
    required: bool = False
    integer: bool = False
    role: Literal["array", "meta", "hidden"] = "array"


@dataclass
class TableHeader:
    """What a format read from a file's header."""

    columns: list[str]              # column names, as in the file
    data_line: int                  # 1-based line of the first data row
    origin_ns: int | None = None    # absolute time of t = 0, when the header says
    start_source: str = ""          # where origin_ns came from
    meta: dict[str, Any] = field(default_factory=dict)   # constant for the file
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific (EC-Lab loops)
    problems: list[TabularError] = field(default_factory=list)  # counted; the file is read


class TableFormat(ABC):
    """A vendor's table layout."""

    separator: str = "\t"
    quote: str = ""                 # a quote character, if fields may be quoted
    comment: str = ""               # lines starting with this are skipped

    @abstractmethod
    def header(self, path: Path, lines: list[str]) -> TableHeader | None:
        """The header from the file's first lines, or None while more lines are needed.
        Raises TabularError for a file that is not of this format."""

    @abstractmethod
    def columns(self, path: Path, header: TableHeader) -> list[Column]:
        """The column mapping; raises TabularError (naming the header line) when a required
        column is missing (the file's rows are then skipped); a missing optional column goes
        into ``header.problems``. Must map ``t``."""

    def segments(self, header: TableHeader, lines: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row values derived from the line numbers that split blocks and go into meta."""
        return {}

    def origin(self, header: TableHeader, values: dict[str, np.ndarray]
               ) -> tuple[int, str] | None:
        """The absolute time of t = 0 from the first parsed rows, when the header has none."""
        return None

    def unmapped(self, header: TableHeader, columns: list[Column]) -> list[str]:
        """File columns that are not published (reported once per header)."""
        used = {c.index for c in columns}
        return [name for i, name in enumerate(header.columns) if i not in used]


@dataclass
class Rows:
    """Parsed rows of one file under opmon's names. ``arrays["t"]`` is seconds after
    ``origin_ns`` (instrument clock); ``segments`` holds the per-row meta values."""

    arrays: dict[str, np.ndarray]
    segments: dict[str, np.ndarray]
    lines: np.ndarray
    origin_ns: int
    units: dict[str, str]
    meta: dict[str, Any]
    position: str = "lines"         # what ``lines`` counts, for the frame meta

    def __len__(self) -> int:
        return int(self.lines.size)


# -- cell parsers -------------------------------------------------------------------------------

def parse_number(text: str) -> float:
    """A decimal number; empty is NaN. Raises ValueError, also for what ``float()`` accepts
    but the bulk parser does not (so both read a cell alike)."""
    text = text.strip()
    if not text:
        return math.nan
    if "_" in text or not text.isascii():  # float() takes 1_0 and other scripts' digits
        raise ValueError(text)
    return float(text)


_UNIT_DURATION = re.compile(r"^(?:(\d+(?:\.\d*)?)\s*d)?\s*(?:(\d+(?:\.\d*)?)\s*h)?\s*"
                            r"(?:(\d+(?:\.\d*)?)\s*m)?\s*(?:(\d+(?:\.\d*)?)\s*s)?$")


def parse_duration(text: str) -> float:
    """``[h:]mm:ss[.f]`` (hours may exceed 24), ``1d 2h 3m 4.5s`` or plain seconds, in
    seconds."""
    text = text.strip()
    if not text:
        return math.nan
    if text[-1] in "dhms":
        match = _UNIT_DURATION.match(text)
        if match is None:
            raise ValueError(text)
        d, h, m, s = (float(x) if x else 0.0 for x in match.groups())
        return ((d * 24 + h) * 60 + m) * 60 + s
    parts = text.split(":")
    if len(parts) > 3 or any(not p.strip() for p in parts):
        raise ValueError(text)
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + parse_number(part)
    return seconds


def local_offset_ns(naive: datetime, utc_offset_h: float | None) -> int:
    """UTC offset of a naive wall-clock time: the configured one, else the host's zone."""
    if utc_offset_h is not None:
        return int(round(utc_offset_h * 3600e9))
    offset = naive.astimezone().utcoffset() or timedelta(0)
    return int(offset.total_seconds() * 1e9)


def datetime_ns(moment: datetime, utc_offset_h: float | None) -> int:
    """Epoch ns of a datetime; a naive one is wall-clock time in ``utc_offset_h`` (or local)."""
    if moment.tzinfo is None:
        utc = moment.replace(tzinfo=UTC)
        return _epoch_ns(utc) - local_offset_ns(moment, utc_offset_h)
    return _epoch_ns(moment)


def _epoch_ns(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def parse_start_time(text: str, utc_offset_h: float | None) -> int:
    """A configured start time (ISO 8601, with or without a zone) as epoch ns."""
    return datetime_ns(datetime.fromisoformat(text.strip()), utc_offset_h)


def _datetime_cells(cells: list[str], fmt: str, utc_offset_h: float | None,
                    scale: float = 1.0) -> np.ndarray:
    """Absolute times as int64 epoch ns (``epoch``: a number of ``scale`` seconds); raises
    ValueError at the first bad cell with its index in ``args[1]``."""
    if fmt == "epoch":
        return _per_cell(cells, lambda s: round(parse_number(s) * scale * 1e9))
    if fmt == "iso":
        stripped = [c.strip() for c in cells]
        first = datetime.fromisoformat(stripped[0]) if stripped and stripped[0] else None
        if first is not None and first.tzinfo is None and \
                all(len(c) == len(stripped[0]) for c in stripped):
            try:  # naive ISO of one layout: one C pass, then the first row's wall-clock offset
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # numpy's time-zone warning: per cell
                    ns = np.array(stripped, dtype="datetime64[ns]").view(np.int64)
            except (ValueError, UserWarning):
                pass
            else:
                if ns.size and ns[0] != NAT:
                    ns = np.where(ns == NAT, NAT, ns - local_offset_ns(first, utc_offset_h))
                return ns
        return _per_cell(cells, lambda s: datetime_ns(datetime.fromisoformat(s.strip()),
                                                      utc_offset_h))
    return _per_cell(cells, lambda s: datetime_ns(datetime.strptime(s.strip(), fmt),
                                                  utc_offset_h))


def _per_cell(cells: list[str], convert: Callable[[str], int]) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.int64)
    for i, cell in enumerate(cells):
        if not cell.strip():
            out[i] = NAT
            continue
        try:
            out[i] = convert(cell)
        except (ValueError, OverflowError) as exc:
            raise ValueError(str(exc), i) from None
    return out


# -- the chunk-fed reader -----------------------------------------------------------------------

class TableReader:
    """Parses one file at a time, fed in chunks of complete lines (bytes, without the newline)
    with the 1-based number of the first one. Bad lines become ``errors`` (drained by the
    owner) and are skipped; every non-blank data line is either a row or an error.

    ``decimal``: ``"."``, ``","`` or ``"auto"`` (a comma when the first data line has commas
    and no point, and the separator is not a comma). ``start_ns`` is used when neither the
    header nor the rows give an absolute start; ``now_ns`` stamps the remaining case (the first
    row is placed at the time it was read)."""

    def __init__(self, fmt: TableFormat, path: Path | str, encoding: str = "utf-8",
                 decimal: str = "auto", start_ns: int | None = None,
                 utc_offset_h: float | None = None, now_ns: Callable[[], int] = time.time_ns):
        self.fmt = fmt
        self.encoding = encoding
        self.decimal_setting = decimal
        self.start_ns = start_ns
        self.utc_offset_h = utc_offset_h
        self.now_ns = now_ns
        self.errors: list[TabularError] = []
        self.files = 0                # files read so far (the frames' meta file_number)
        self.restart(path)

    # -- state per file ---------------------------------------------------------------------
    def restart(self, path: Path | str | None = None) -> None:
        """A new file (rotation, replacement, the next file of a sequence): header again."""
        if path is not None:
            self.path = Path(path)
        self.header: TableHeader | None = None
        self.columns: list[Column] = []
        self.broken = False           # the header was bad: skip this file's lines
        self._header_lines: list[str] = []
        self._origin: tuple[int, str] | None = None
        self._decimal = None if self.decimal_setting == "auto" else self.decimal_setting
        self._units: dict[str, str] = {}
        self._needed: list[Column] = []

    def _error(self, line: int | None, reason: str, column: int | None = None) -> None:
        name = None
        if self.header is not None and column is not None and column <= len(self.header.columns):
            name = self.header.columns[column - 1]
        self.errors.append(TabularError(self.path, line, reason, column, name))

    # -- feeding ----------------------------------------------------------------------------
    def feed(self, lines: list[bytes], first_line: int) -> Rows | None:
        """Complete lines of the current file; returns the rows they held (or None)."""
        if self.broken or not lines:
            return None
        if self.header is None:
            used = self._feed_header(lines, first_line)
            lines, first_line = lines[used:], first_line + used
            if self.header is None or not lines:
                return None
        before = len(self.errors)
        rows = self._parse(lines, first_line)
        self.errors[before:] = sorted(self.errors[before:], key=lambda e: e.line or 0)
        return rows

    def finish(self, partial: bytes = b"", line: int = 0) -> Rows | None:
        """End of the current file: its last line had no newline (``partial``, may be empty).
        A header still incomplete is reported."""
        rows = self.feed([partial], line) if partial.strip() else None
        if self.header is None and not self.broken and self._header_lines:
            self._error(len(self._header_lines), "the file ends inside its header")
            self.broken = True
        return rows

    def _feed_header(self, lines: list[bytes], first_line: int) -> int:
        """Header lines until the format has its header; returns how many lines it took."""
        for k, raw in enumerate(lines):
            number = first_line + k
            if not self._header_lines:
                self.files += 1  # a file with content: the n-th one read
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                self._header_lines.append(raw.decode(self.encoding))
            except UnicodeDecodeError as exc:
                self._error(number, f"header not valid {self.encoding}: {exc.reason}")
                self.broken = True
                return len(lines)
            try:
                header = self.fmt.header(self.path, self._header_lines)
                if header is not None:
                    columns = self.fmt.columns(self.path, header)
            except TabularError as exc:
                self.errors.append(exc)
                self.broken = True
                return len(lines)
            if header is not None:
                self._start(header, columns)
                return max(0, header.data_line - first_line)
        return len(lines)

    def _start(self, header: TableHeader, columns: list[Column]) -> None:
        self.header, self.columns = header, columns
        self.errors.extend(header.problems)
        # t first, then the file's order
        self._needed = sorted(columns, key=lambda c: (c.name != "t", c.index))
        self._units = {c.name: c.unit for c in columns if c.role == "array" and c.unit}

    # -- data lines -------------------------------------------------------------------------
    def _parse(self, lines: list[bytes], first_line: int) -> Rows | None:
        assert self.header is not None
        n_cols = len(self.header.columns)
        sep = self.fmt.separator
        good, numbers = self._check_fields(lines, first_line, n_cols, sep.encode())
        if not good:
            return None
        texts, numbers = self._decode(good, numbers, sep)
        if not texts:
            return None
        if self._decimal is None:
            self._decimal = _detect_decimal(texts, sep)
        if self._decimal == ",":
            texts = [t.replace(",", ".") for t in texts]
        values, ok = self._convert(texts, numbers)
        if not ok.all():
            numbers = numbers[ok]
            values = {k: v[ok] for k, v in values.items()}
        if not numbers.size:
            return None
        return self._rows(values, numbers)

    def _check_fields(self, lines: list[bytes], first_line: int, n_cols: int,
                      sep: bytes) -> tuple[list[bytes], list[int] | range]:
        """Lines with the header's number of fields (a trailing separator is allowed)."""
        comment = self.fmt.comment.encode()
        quoted = bool(self.fmt.quote)
        if not quoted and not comment and n_cols > 1:  # the usual case, checked in C
            counts = [raw.count(sep) for raw in lines]
            if counts.count(n_cols - 1) == len(lines) and all(map(bytes.strip, lines)):
                return lines, range(first_line, first_line + len(lines))
        good, numbers = [], []
        for k, raw in enumerate(lines):
            if not raw.strip() or (comment and raw.startswith(comment)):
                continue
            if not quoted:
                count = raw.count(sep) + 1
                if count == n_cols + 1 and raw.endswith(sep):
                    raw, count = raw[:-len(sep)], n_cols
                if count != n_cols:
                    self._field_count_error(first_line + k, count, n_cols)
                    continue
            good.append(raw)
            numbers.append(first_line + k)
        return good, numbers

    def _field_count_error(self, line: int, count: int, n_cols: int) -> None:
        if count < n_cols:
            self._error(line, f"{count} fields, the header has {n_cols} columns "
                              "(truncated row)", count + 1)
        else:
            self._error(line, f"{count} fields, the header has {n_cols} columns "
                              "(unknown column)", n_cols + 1)

    def _decode(self, good: list[bytes], numbers: list[int] | range, sep: str
                ) -> tuple[list[str], np.ndarray]:
        try:
            texts = b"\n".join(good).decode(self.encoding).split("\n")
        except UnicodeDecodeError:
            pass
        else:
            if isinstance(numbers, range):
                return texts, np.arange(numbers.start, numbers.stop, dtype=np.int64)
            return texts, np.array(numbers, dtype=np.int64)
        texts, kept = [], []
        for raw, number in zip(good, numbers, strict=True):
            try:
                texts.append(raw.decode(self.encoding))
                kept.append(number)
            except UnicodeDecodeError as exc:
                column = raw[:exc.start].count(sep.encode()) + 1
                self._error(number, f"not valid {self.encoding} text: {exc.reason}", column)
        return texts, np.array(kept, dtype=np.int64)

    def _convert(self, texts: list[str], numbers: np.ndarray
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Column arrays for every mapped column, and the mask of rows that parsed."""
        ok = np.ones(len(texts), dtype=bool)
        values: dict[str, np.ndarray] = {}
        numeric = [c for c in self._needed if c.parse == "number"]
        bulk = self._bulk_numbers(texts, numeric) if numeric and not self.fmt.quote else None
        cells: list[list[str]] = []
        if bulk is None or len(numeric) < len(self._needed):
            cells = self._split(texts, numbers, ok)
        position = {id(c): k for k, c in enumerate(numeric)}
        for col in self._needed:
            if bulk is not None and col.parse == "number":
                values[col.name] = np.ascontiguousarray(bulk[position[id(col)]])
            else:
                values[col.name] = self._column_cells(cells, col, numbers, ok)
        self._check_required(values, numbers, ok)
        return values, ok

    def _bulk_numbers(self, texts: list[str], numeric: list[Column]) -> np.ndarray | None:
        """All numeric columns in one C pass; None when a cell is bad (the per-cell path then
        finds it)."""
        try:
            return np.loadtxt(texts, delimiter=self.fmt.separator, comments=None, ndmin=2,
                              usecols=[c.index for c in numeric], unpack=True,
                              dtype=np.float64)
        except ValueError:
            return None

    def _split(self, texts: list[str], numbers: np.ndarray, ok: np.ndarray) -> list[list[str]]:
        """The rows' cells. Quoted rows are only counted here: a row with the wrong number of
        fields is reported and its cells are left empty."""
        sep = self.fmt.separator
        if not self.fmt.quote:
            return [t.split(sep) for t in texts]
        n_cols = len(self.header.columns) if self.header else 0
        cells = []
        for i, text in enumerate(texts):
            try:  # one reader per line: an open quote must not run into the next line
                row = next(csv.reader([text], delimiter=sep, quotechar=self.fmt.quote), [])
            except csv.Error as exc:
                ok[i] = False
                self._error(int(numbers[i]), f"not a CSV row: {exc}")
                row = [""] * n_cols
            if ok[i] and len(row) != n_cols:
                ok[i] = False
                self._field_count_error(int(numbers[i]), len(row), n_cols)
            cells.append(row if len(row) == n_cols else [""] * n_cols)
        return cells

    def _column_cells(self, cells: list[list[str]], col: Column, numbers: np.ndarray,
                      ok: np.ndarray) -> np.ndarray:
        """One column parsed cell by cell; a bad cell marks its row in ``ok`` and is reported
        (once per row: the first bad column)."""
        column = [row[col.index] for row in cells]
        if col.parse == "datetime":
            return self._datetimes(column, col, numbers, ok)
        if col.parse == "text" and col.values is None:
            return np.array([c.strip() for c in column], dtype=object)
        convert = {"number": parse_number, "duration": parse_duration}.get(col.parse)
        out = np.empty(len(column), dtype=np.float64)
        for i, cell in enumerate(column):
            try:
                out[i] = convert(cell) if convert else _text_value(cell, col.values)
            except ValueError:
                out[i] = math.nan
                if ok[i]:
                    ok[i] = False
                    what = {"number": "not a number", "duration": "not a duration (h:mm:ss)"}
                    self._error(int(numbers[i]), f"{what.get(col.parse, 'unknown value')}: "
                                                 f"{cell.strip()[:40]!r}", col.index + 1)
        return out

    def _datetimes(self, column: list[str], col: Column, numbers: np.ndarray,
                   ok: np.ndarray) -> np.ndarray:
        while True:
            try:
                return _datetime_cells(column, col.fmt, self.utc_offset_h, col.scale)
            except ValueError as exc:
                i = exc.args[1] if len(exc.args) > 1 else 0
                if ok[i]:
                    ok[i] = False
                    self._error(int(numbers[i]), f"not a time ({col.fmt}): "
                                                 f"{column[i].strip()[:40]!r}", col.index + 1)
                column = column[:i] + [""] + column[i + 1:]

    def _check_required(self, values: dict[str, np.ndarray], numbers: np.ndarray,
                        ok: np.ndarray) -> None:
        for col in self._needed:
            if not col.required:
                continue
            v = values[col.name]
            if v.dtype == object:
                continue
            bad = (v == NAT) if v.dtype == np.int64 else ~np.isfinite(v)
            for i in np.flatnonzero(bad & ok):
                ok[i] = False
                self._error(int(numbers[i]), f"no value (empty or NaN) in required column "
                                             f"{col.name!r}", col.index + 1)

    # -- rows -------------------------------------------------------------------------------
    def _rows(self, values: dict[str, np.ndarray], numbers: np.ndarray) -> Rows:
        assert self.header is not None
        scaled: dict[str, np.ndarray] = {}
        for col in self._needed:
            v = values[col.name]
            if v.dtype == np.float64:
                if col.scale != 1.0 or col.offset != 0.0:
                    v = v * col.scale + col.offset
                if col.integer:
                    v = np.where(np.isfinite(v), v, MISSING_INT).astype(np.int32)
            scaled[col.name] = v
        t = scaled.get("t")
        if t is None:  # a raw reading without a time column (read_mpt)
            self._origin = self._origin or (0, "")
        elif t.dtype == np.int64:  # an absolute time column: t = 0 at its first row
            if self._origin is None:
                self._origin = (int(t[0]), "time column")
            scaled["t"] = (t - self._origin[0]) * 1e-9
        elif self._origin is None:
            self._origin = self._resolve_origin(scaled, float(t[0]))
        arrays: dict[str, np.ndarray] = {}
        segments = self.fmt.segments(self.header, numbers)
        for col in self._needed:
            if col.role == "array":
                arrays[col.name] = scaled[col.name]
            elif col.role == "meta":
                segments[col.name] = scaled[col.name]
        meta = {"source": self.path.name, "file_number": self.files,
                "start_source": self._origin[1], **self.header.meta}
        return Rows(arrays, segments, numbers, self._origin[0], self._units, meta)

    def _resolve_origin(self, values: dict[str, np.ndarray], t_first: float) -> tuple[int, str]:
        assert self.header is not None
        if self.header.origin_ns is not None:
            return self.header.origin_ns, self.header.start_source or "header"
        found = self.fmt.origin(self.header, values)
        if found is not None:
            return found
        if self.start_ns is not None:
            return self.start_ns, "config start_time"
        return self.now_ns() - int(round(t_first * 1e9)), "first read"


def _detect_decimal(texts: list[str], sep: str) -> str | None:
    """The decimal mark of the first line that shows one (None: undecided so far)."""
    if sep == ",":
        return "."
    for text in texts:
        if "." in text:
            return "."
        if "," in text:
            return ","
    return None


def _text_value(cell: str, values: Mapping[str, float] | None) -> float:
    text = cell.strip()
    if not text:
        return math.nan
    if values is None or text not in values:
        raise ValueError(text)
    return float(values[text])


# -- blocks and frames --------------------------------------------------------------------------

class RowsConfig(FollowedFileConfig):
    """Keys shared by the table adapters (see each adapter's documentation); ``path`` may be
    a glob (*, ?, [): the matching files are read one after another."""

    block_rows: int = Field(0, ge=0)  # at most this many rows per frame (0: what each read gave)
    block_s: float = Field(0.0, ge=0)  # at most this span of instrument time per frame (0: any)
    split_on: list[str] = ["step"]   # a new frame starts whenever one of these arrays changes
    start_time: str | None = None    # ISO 8601 start of t = 0 when the file gives none
    utc_offset_h: float | None = None  # zone of the file's wall-clock times (None: the host's)
    meta: dict[str, str | int | float | bool] = {}  # added to every frame's meta

    @field_validator("start_time")
    @classmethod
    def _start_parses(cls, value: str | None) -> str | None:
        if value is not None:
            datetime.fromisoformat(value)
        return value


class TabularConfig(RowsConfig):
    encoding: str = "utf-8"          # text encoding of the file
    decimal: Literal["auto", ".", ","] = "auto"  # decimal mark; auto: detected per file


class RowsAdapter(FollowedFileAdapter):
    """A file adapter that publishes parsed ``Rows`` as blocks of one ``kind``."""

    kind: ClassVar[str] = "echem"
    Config: ClassVar[type[RowsConfig]] = RowsConfig
    config: RowsConfig

    @property
    def rows_published(self) -> int:
        return self.rows_read

    def block_bounds(self, rows: Rows) -> list[tuple[int, int]]:
        """Where ``rows`` is cut into frames: segment changes, then the size limits."""
        n = len(rows)
        cuts = {0, n}
        keys = [rows.segments[k] for k in rows.segments]
        keys += [rows.arrays[k] for k in self.config.split_on if k in rows.arrays]
        for values in keys:
            cuts.update((np.flatnonzero(values[1:] != values[:-1]) + 1).tolist())
        edges = sorted(cuts)
        c = self.config
        if not c.block_rows and not c.block_s:
            return list(zip(edges[:-1], edges[1:], strict=True))
        t = rows.arrays["t"]
        bounds = []
        for start, stop in zip(edges[:-1], edges[1:], strict=True):
            while start < stop:
                end = stop if not c.block_rows else min(stop, start + c.block_rows)
                if c.block_s:
                    end = min(end, max(start + 1, int(np.searchsorted(
                        t[start:end], t[start] + c.block_s, "right")) + start))
                bounds.append((start, end))
                start = end
        return bounds

    def publish(self, rows: Rows, host_ns: int | None = None) -> list[Frame]:
        """``rows`` as frames: t relative to each block's first row, segment values and the
        first and last source line in the meta."""
        host_ns = time.time_ns() if host_ns is None else host_ns
        t = rows.arrays["t"]
        frames = []
        for start, stop in self.block_bounds(rows):
            t0 = float(t[start])
            arrays = {name: (t[start:stop] - t0 if name == "t" else v[start:stop])
                      for name, v in rows.arrays.items()}
            meta: dict[str, Any] = {**rows.meta, **self.config.meta,
                                    rows.position: [int(rows.lines[start]),
                                                    int(rows.lines[stop - 1])]}
            for key, values in rows.segments.items():
                meta[key] = _plain(values[start])
            for key in self.config.split_on:
                if key in rows.arrays:
                    meta[key] = _plain(rows.arrays[key][start])
            frames.append(self.make_frame(self.kind, rows.origin_ns + int(round(t0 * 1e9)),
                                          arrays, rows.units, meta, host_ns))
        self.rows_read += len(rows)
        return frames


def _plain(value: Any) -> Any:
    """A numpy scalar as a plain Python value (meta is JSON)."""
    return value.item() if isinstance(value, np.generic) else value


class TabularAdapter(RowsAdapter):
    """Follows a text table (``config.follow``) or reads it once, through ``make_format()``.

    With a glob as ``path`` the matching files are read in name order, each one to its end,
    and a followed glob moves to the next file once it appears (EC-Lab writes one file per
    technique of a linked experiment)."""

    Config: ClassVar[type[TabularConfig]] = TabularConfig
    config: TabularConfig
    globs = True

    def __init__(self, stream: str, config: TabularConfig | None = None):
        super().__init__(stream, config)
        c = self.config
        start_ns = parse_start_time(c.start_time, c.utc_offset_h) if c.start_time else None
        self.reader = TableReader(self.make_format(), self.path, c.encoding, c.decimal,
                                  start_ns, c.utc_offset_h)
        self._reported_columns: set[tuple[str, ...]] = set()

    @abstractmethod
    def make_format(self) -> TableFormat: ...

    # -- the file handler ------------------------------------------------------------------
    def new_file(self, path: Path) -> None:
        super().new_file(path)
        self.reader.restart(path)

    def feed_lines(self, lines: list[bytes], first_line: int) -> list[Frame]:
        host_ns = time.time_ns()
        rows = self.reader.feed(lines, first_line)
        return self._after_parse(rows, host_ns)

    def end_of_file(self, complete: bool) -> list[Frame]:
        """A whole file that ends inside its header is reported (its last line, without a
        newline, has been fed already)."""
        return self._after_parse(self.reader.finish() if complete else None, time.time_ns())

    def _after_parse(self, rows: Rows | None, host_ns: int) -> list[Frame]:
        for exc in self.reader.errors:
            self.reject_error(exc)
        self.reader.errors.clear()
        self._report_columns()
        return self.publish(rows, host_ns) if rows is not None else []

    def _report_columns(self) -> None:
        """Columns the file has but that are not published: logged once per header."""
        header = self.reader.header
        if header is None:
            return
        unmapped = tuple(self.reader.fmt.unmapped(header, self.reader.columns))
        if unmapped and unmapped not in self._reported_columns:
            self._reported_columns.add(unmapped)
            log.info("%s: %s: columns not published: %s", self.stream, self.reader.path,
                     ", ".join(unmapped))
