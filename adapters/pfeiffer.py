"""Pfeiffer mass spectrometry files: QUADSTAR ``.sac`` "scan analog" binaries and PV MassSpec
``.dat`` exports. Each mass scan becomes one ``spectrum`` frame (``mass`` in amu,
``ion_current`` in A; ``meta.x = "mass"``, ``meta.y = "ion_current"``).

``.sac`` layout (little-endian; as documented by yadg's ``extractors/quadstar/sac.py`` and
checked against a real file, parsed here with ``struct``):

- general header at 0x00: data index (i2), software id (i4), version major, minor (u1 each),
  the local start time as second, minute, hour, day, month, year - 1900 (u1 each), the author
  (86 bytes), the number of scans (i4 at 0x64), the number of traces (i2 at 0x68) and the
  length of one scan block in bytes (i4 at 0x6a);
- at 0xc2 the UTC start (u4 s, u2 tenths of ms), at 0xc8 one 9-byte record per trace: type
  (u1; 0x11 holds a mass scan), the position of its 137-byte info record and of its data in
  the first scan block;
- trace info: data format (u2), y title and unit, a byte, x title and unit (13 bytes each), a
  comment (59), two unknown u4, the first mass (f4), the scan width in amu (u2), values per amu
  (u1), zoom start and end (f4);
- scan block k starts 6 bytes before the first trace's data + k * block length: its time
  (u4 s, u2 tenths of ms after the UTC start), then per trace a point count (u4, unreliable), the
  full-scale range exponent (i2: FSR = 10**e A) and scan width * values per amu float32 values.

A value above the full-scale range (the electrometer saturated: QUADSTAR writes float32 max,
and the points next to such a run read just above full scale) is published as NaN, counted in
``meta.saturated`` and reported once per scan. A growing file gains whole scan blocks; a partial
trailing block waits for its remaining bytes.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from stream.frame import Frame

from .base import InputError
from .followed import FollowedFileAdapter, FollowedFileConfig, TextFileAdapter
from .tabular import TabularError

# -- QUADSTAR .sac --------------------------------------------------------------------------

_GENERAL = struct.Struct("<hiBB6B86sihi")          # 0x00 .. 0x6e
_START = struct.Struct("<IH")                      # 0xc2: UTC start; also each scan's time
_TRACE = struct.Struct("<Bii")                     # 0xc8 + 9 * n
_INFO = struct.Struct("<H13s13sB13s13s59sIIfHBff")  # 137 bytes at info_position
_TRACE_DATA = struct.Struct("<Ih")                 # per trace and scan: count, FSR exponent
START_OFFSET = 0xC2
TRACES_OFFSET = 0xC8
MASS_SCAN = 0x11
MAX_TRACES = 256
MAX_HEADER_BYTES = 1 << 20
MAX_SCAN_BYTES = 1 << 26
FSR_EXPONENTS = range(-20, 7)   # 1e-20 .. 1e6 A: anything else is a garbled block


class SacError(InputError):
    """Bad input in a .sac file: names the file, the byte offset and the field or scan."""

    def __init__(self, path: Path | str, where: str, reason: str):
        super().__init__(f"{path}: {where}", reason)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


@dataclass(frozen=True)
class SacTrace:
    index: int
    data_offset: int          # of its data within a scan block
    first_mass: float
    scan_width: int           # amu
    values_per_mass: int
    y_title: str
    y_unit: str
    x_title: str
    x_unit: str
    comment: str
    mass: np.ndarray = field(compare=False, repr=False)  # the axis, shared by its frames

    @property
    def n_points(self) -> int:
        return self.scan_width * self.values_per_mass


@dataclass(frozen=True)
class SacHeader:
    path: Path
    software_id: int
    version: str
    local_start: str | None   # the header's wall-clock start (ISO), None if not a valid date
    author: str
    n_scans: int              # as the header says (may lag a file still being written)
    scan_bytes: int
    first_scan_offset: int
    start_ns: int             # UTC start, epoch ns
    traces: tuple[SacTrace, ...]

    def meta(self) -> dict[str, Any]:
        return {"source": self.path.name, "software_id": self.software_id,
                "software_version": self.version, "header_local_start": self.local_start,
                "author": self.author}


def _stamp_ns(raw_s: int, tenths_ms: int) -> int:
    return raw_s * 1_000_000_000 + tenths_ms * 100_000


def parse_sac_header(path: Path | str, data: bytes) -> SacHeader | None:
    """The header from the first bytes of a .sac file; None while more bytes are needed.
    Raises SacError for a header that cannot be right."""
    path = Path(path)
    if len(data) < TRACES_OFFSET:
        return None
    (_, software_id, major, minor, sec, minute, hour, day, month, year, author, n_scans,
     n_traces, scan_bytes) = _GENERAL.unpack_from(data, 0)
    if not 1 <= n_traces <= MAX_TRACES:
        raise SacError(path, "byte 0x68 (n_traces)", f"{n_traces} traces")
    if n_scans < 0:
        raise SacError(path, "byte 0x64 (n_scans)", f"{n_scans} scans")
    if not _START.size < scan_bytes <= MAX_SCAN_BYTES:
        raise SacError(path, "byte 0x6a (scan length)", f"{scan_bytes} bytes per scan")
    start_s, start_tenths = _START.unpack_from(data, START_OFFSET)
    if start_tenths >= 10_000:
        raise SacError(path, f"byte {START_OFFSET + 4:#x} (start time)",
                       f"{start_tenths} tenths of a millisecond")
    table_end = TRACES_OFFSET + _TRACE.size * n_traces
    if len(data) < table_end:
        return None
    records = [_TRACE.unpack_from(data, TRACES_OFFSET + _TRACE.size * k) for k in range(n_traces)]
    scans = [(k, info, pos) for k, (kind, info, pos) in enumerate(records) if kind == MASS_SCAN]
    if not scans:
        raise SacError(path, f"bytes {TRACES_OFFSET:#x}-{table_end:#x} (trace table)",
                       "no mass-scan trace (type 0x11)")
    first_scan = min(pos for _, _, pos in scans) - _START.size
    if not table_end <= first_scan <= MAX_HEADER_BYTES:
        raise SacError(path, "trace table", f"first scan data at {first_scan + 6:#x}, outside "
                       f"{table_end:#x}..{MAX_HEADER_BYTES:#x}")
    if len(data) < first_scan:
        return None
    traces = []
    for k, info_at, pos in scans:
        where = f"trace {k} info at {info_at:#x}"
        if not table_end <= info_at <= first_scan - _INFO.size:
            raise SacError(path, where, "outside the header")
        (_, y_title, y_unit, _, x_title, x_unit, comment, _, _, first_mass, width, per_mass,
         _, _) = _INFO.unpack_from(data, info_at)
        if width < 1 or per_mass < 1 or not math.isfinite(first_mass):
            raise SacError(path, where, f"mass axis from {first_mass} amu, {width} amu wide, "
                           f"{per_mass} values per amu")
        mass = first_mass + np.arange(width * per_mass) / per_mass
        mass.flags.writeable = False
        trace = SacTrace(k, pos - first_scan, first_mass, width, per_mass, _text(y_title),
                         _text(y_unit), _text(x_title), _text(x_unit), _text(comment), mass)
        if trace.data_offset + _TRACE_DATA.size + 4 * trace.n_points > scan_bytes:
            raise SacError(path, where, f"{trace.n_points} points at {pos:#x} do not fit a "
                           f"{scan_bytes}-byte scan block")
        traces.append(trace)
    try:
        local = datetime(1900 + year, month, day, hour, minute, sec).isoformat()
    except ValueError:
        local = None
    return SacHeader(path, software_id, f"{major}.{minor}", local, _text(author), n_scans,
                     scan_bytes, first_scan, _stamp_ns(start_s, start_tenths), tuple(traces))


@dataclass
class SacSpectrum:
    """One trace of one scan."""

    scan: int
    trace: SacTrace
    time_ns: int
    mass: np.ndarray
    ion_current: np.ndarray      # saturated points are NaN
    full_scale_A: float
    saturated: np.ndarray        # indices of the saturated points


def parse_scan(header: SacHeader, block: bytes | memoryview, index: int) -> list[SacSpectrum]:
    """The traces of scan ``index`` from its block of ``header.scan_bytes`` bytes."""
    at = header.first_scan_offset + index * header.scan_bytes
    offset_s, tenths = _START.unpack_from(block, 0)
    if tenths >= 10_000:
        raise SacError(header.path, f"scan {index} at byte {at:#x} (time)",
                       f"{tenths} tenths of a millisecond")
    time_ns = header.start_ns + _stamp_ns(offset_s, tenths)
    out = []
    for trace in header.traces:
        _, exponent = _TRACE_DATA.unpack_from(block, trace.data_offset)
        if exponent not in FSR_EXPONENTS:
            raise SacError(header.path, f"scan {index} trace {trace.index} at byte "
                           f"{at + trace.data_offset + 4:#x} (full-scale range)",
                           f"exponent {exponent}")
        full_scale = 10.0 ** exponent
        with np.errstate(invalid="ignore"):  # a signalling NaN in a garbled scan: judged below
            values = np.frombuffer(block, "<f4", trace.n_points,
                                   trace.data_offset + _TRACE_DATA.size).astype(np.float64)
        saturated = np.flatnonzero(~(np.abs(values) <= full_scale))
        values[saturated] = np.nan
        out.append(SacSpectrum(index, trace, time_ns, trace.mass, values, full_scale,
                               saturated))
    return out


class SacReader:
    """A .sac file fed in chunks of bytes (any size): the header once it is complete, then
    every complete scan block, as spectra of the ``traces`` wanted (None: all). Bad input and
    saturated points go to ``bad(where, reason)`` in file order; a bad header makes the reader
    skip the file (``dead``) until ``restart``."""

    def __init__(self, path: Path | str, bad: Callable[[str, str], object],
                 traces: list[int] | None = None):
        self.path = Path(path)
        self.bad = bad
        self.traces = traces
        self.restart()

    def restart(self) -> None:
        self.header: SacHeader | None = None
        self.dead = False
        self.next_scan = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[SacSpectrum]:
        if self.dead:
            return []
        self._buf += data
        if self.header is None:
            try:
                self.header = parse_sac_header(self.path, bytes(self._buf[:MAX_HEADER_BYTES]))
            except SacError as exc:
                self.bad(exc.where, exc.reason)
                self.dead = True
                return []
            if self.header is None:
                return []
            del self._buf[:self.header.first_scan_offset]
        size = self.header.scan_bytes
        n = len(self._buf) // size
        view = memoryview(self._buf)
        out = []
        for k in range(n):
            try:
                spectra = parse_scan(self.header, view[k * size:(k + 1) * size], self.next_scan)
            except SacError as exc:
                self.bad(exc.where, exc.reason)
                spectra = []
            self.next_scan += 1
            for sp in spectra:
                if self.traces is None or sp.trace.index in self.traces:
                    self._report_saturated(sp)
                    out.append(sp)
        view.release()
        del self._buf[:n * size]
        return out

    def _report_saturated(self, sp: SacSpectrum) -> None:
        if sp.saturated.size:
            first = int(sp.saturated[0])
            self.bad(f"{self.path}: scan {sp.scan} trace {sp.trace.index} point {first} "
                     f"({sp.mass[first]:g} {sp.trace.x_unit})",
                     f"{sp.saturated.size} points above the full-scale range "
                     f"{sp.full_scale_A:g} A: published as NaN")

    def finish(self) -> None:
        """End of the file: a partial last scan, fewer scans than the header says."""
        h = self.header
        if self.dead:
            return
        if h is None:
            self.bad(f"{self.path}: byte {len(self._buf)}", "the file ends inside its header")
            return
        at = h.first_scan_offset + self.next_scan * h.scan_bytes
        if self._buf:
            self.bad(f"{self.path}: scan {self.next_scan} at byte {at:#x}",
                     f"truncated: {len(self._buf)} of {h.scan_bytes} bytes")
        if self.next_scan < h.n_scans:
            self.bad(f"{self.path}: byte 0x64 (n_scans)",
                     f"the header says {h.n_scans} scans, the file holds {self.next_scan}")


class SacConfig(FollowedFileConfig):
    traces: list[int] | None = None   # trace indices to publish (None: every mass-scan trace)


def spectrum_meta(scan: int, **extra: Any) -> dict[str, Any]:
    """The meta every Pfeiffer ``spectrum`` frame carries."""
    return {"x": "mass", "y": "ion_current", "scan": scan, **extra}


class QuadstarSacAdapter(FollowedFileAdapter):
    """A QUADSTAR .sac file, followed while it grows by whole scans or read once: one
    ``spectrum`` frame per scan and trace."""

    type_name = "pfeiffer.sac"
    Config = SacConfig
    config: SacConfig
    binary = True

    def __init__(self, stream: str, config: SacConfig | None = None):
        super().__init__(stream, config)
        self.reader = SacReader(self.path, self.reject, self.config.traces)

    def new_file(self, path: Path) -> None:
        super().new_file(path)
        self.reader.restart()

    def end_of_file(self, complete: bool) -> list[Frame]:
        """A whole file: a partial last scan, fewer scans than the header says."""
        if complete:
            self.reader.finish()
        return []

    def feed_bytes(self, data: bytes) -> list[Frame]:
        """Frames from the bytes the file gained."""
        spectra = self.reader.feed(data)
        if not spectra:
            return []
        self.rows_read += len({s.scan for s in spectra})
        assert self.reader.header is not None
        file_meta = self.reader.header.meta()
        frames = []
        for s in spectra:
            t = s.trace
            meta = spectrum_meta(s.scan, saturated=int(s.saturated.size), trace=t.index,
                                 full_scale_A=s.full_scale_A, first_mass=t.first_mass,
                                 scan_width_amu=t.scan_width, values_per_mass=t.values_per_mass,
                                 y_title=t.y_title, comment=t.comment, **file_meta)
            units = {"mass": t.x_unit or "amu", "ion_current": t.y_unit or "A"}
            frames.append(self.make_frame("spectrum", s.time_ns,
                                          {"mass": s.mass, "ion_current": s.ion_current},
                                          units, meta))
        return frames


# -- PV MassSpec .dat -------------------------------------------------------------------------

DAT_TIME_COLUMNS = ("Time Relative (sec)", "Time Absolute (UTC)", "Time Absolute (Date_Time)",
                    "Step")
MAX_DAT_HEADER_LINES = 64
MAX_EPOCH_S = 1e11
_DAT_RANGE = re.compile(r"From\s+(\S+)\s+to\s+(\S+)\s+with\s+(\d+)\s+points per amu")
_DAT_POINTS = re.compile(r"^(\d+)\s+TimePoints")
_DAT_DATE = re.compile(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}$")


@dataclass
class DatHeader:
    path: Path
    software: str
    fields: dict[str, Any]       # sensor, run, start_local, scan_range, points_per_amu
    n_timepoints: int | None
    masses: np.ndarray
    data_start_line: int         # 1-based

    def meta(self) -> dict[str, Any]:
        return {"source": self.path.name, "software": self.software, **self.fields}


def parse_dat_header(path: Path | str, lines: list[str]) -> DatHeader | None:
    """The header of a PV MassSpec export from its first lines; None while its column row has
    not arrived. Raises TabularError (naming the line and column) for anything else."""
    path = Path(path)
    if not lines:
        return None
    if not lines[0].startswith("PV MassSpec"):
        raise TabularError(path, 1, "not a PV MassSpec export (no 'PV MassSpec' first line)")
    fields: dict[str, Any] = {}
    n_points = None
    for number, line in enumerate(lines[:MAX_DAT_HEADER_LINES], start=1):
        text = line.strip()
        if text.startswith(DAT_TIME_COLUMNS[0]):
            columns = line.rstrip("\r\n").split("\t")
            for k, name in enumerate(DAT_TIME_COLUMNS):
                if k >= len(columns) or columns[k].strip() != name:
                    raise TabularError(path, number, f"expected column {name!r}", k + 1,
                                     columns[k] if k < len(columns) else None)
            masses = []
            for k, name in enumerate(columns[len(DAT_TIME_COLUMNS):], len(DAT_TIME_COLUMNS)):
                try:
                    masses.append(float(name))
                except ValueError:
                    raise TabularError(path, number, "unknown column: not a mass in amu", k + 1,
                                     name) from None
            if not masses or not np.all(np.isfinite(masses)):
                raise TabularError(path, number, "no mass columns")
            return DatHeader(path, lines[0].strip(), fields, n_points, np.array(masses),
                             number + 1)
        if match := _DAT_RANGE.search(text):
            fields["scan_range"] = text
            fields["points_per_amu"] = int(match.group(3))
        elif match := _DAT_POINTS.match(text):
            n_points = int(match.group(1))
        elif _DAT_DATE.match(text):
            fields["start_local"] = text
        elif text.startswith("SensorID:"):
            fields["sensor"] = text.split(":", 1)[1].strip()
        elif text.startswith("Run Path and Name:"):
            fields["run"] = text.split(":", 1)[1].strip()
    if len(lines) >= MAX_DAT_HEADER_LINES:
        raise TabularError(path, MAX_DAT_HEADER_LINES, f"no '{DAT_TIME_COLUMNS[0]}' column row "
                         f"in the first {MAX_DAT_HEADER_LINES} lines")
    return None


@dataclass
class DatScan:
    line: int
    time_relative_s: float
    time_ns: int
    step: int
    ion_current: np.ndarray


def parse_dat_row(header: DatHeader, line: str, number: int) -> DatScan:
    """One scan row; raises TabularError naming the line and column (a NaN row included)."""
    cells = line.rstrip("\r\n").split("\t")
    n_columns = len(DAT_TIME_COLUMNS) + header.masses.size
    if len(cells) != n_columns:
        raise TabularError(header.path, number, f"{len(cells)} fields, expected {n_columns} "
                         "(truncated row?)")
    parsed: list[Any] = []
    # relative s, epoch s (Decimal: exact to the ns), step
    for k, convert in ((0, float), (1, Decimal), (3, int)):
        try:
            parsed.append(convert(cells[k].strip()))
        except (ValueError, InvalidOperation):
            raise TabularError(header.path, number, f"not a number: {cells[k].strip()[:40]!r}",
                             k + 1, DAT_TIME_COLUMNS[k]) from None
    relative, absolute, step = parsed
    if not (math.isfinite(relative) and absolute.is_finite() and abs(absolute) < MAX_EPOCH_S):
        raise TabularError(header.path, number, f"times {cells[0].strip()!r}, "
                         f"{cells[1].strip()!r} s out of range", 2, DAT_TIME_COLUMNS[1])
    values_text = cells[len(DAT_TIME_COLUMNS):]
    try:
        values = np.array(values_text, dtype=np.float64)
    except ValueError:
        k = next(k for k, text in enumerate(values_text) if not _is_number(text))
        raise TabularError(header.path, number, f"not a number: {values_text[k].strip()[:40]!r}",
                         k + 1 + len(DAT_TIME_COLUMNS), f"{header.masses[k]:g} amu") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        k = int(bad[0])
        raise TabularError(header.path, number, f"NaN row: {bad.size} of {values.size} values "
                         f"are {values_text[k].strip()!r}; the scan is dropped",
                         k + 1 + len(DAT_TIME_COLUMNS), f"{header.masses[k]:g} amu")
    return DatScan(number, relative, int(absolute * 1_000_000_000), step, values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class DatConfig(FollowedFileConfig):
    encoding: str = "latin-1"   # text encoding of the export (the run path may hold any byte)


class PvMassSpecDatAdapter(TextFileAdapter):
    """A PV MassSpec ``.dat`` export, followed or read once: one ``spectrum`` frame per valid
    scan row; NaN rows and garbled rows are rejected with the file and line."""

    type_name = "pfeiffer.dat"
    Config = DatConfig
    config: DatConfig

    def __init__(self, stream: str, config: DatConfig | None = None):
        config = config or DatConfig()
        super().__init__(stream, config, config.encoding)

    def new_file(self, path: Path) -> None:
        super().new_file(path)
        self.rows_seen = 0          # scan rows of this file, rejected ones included

    def read_header(self, lines: list[str]) -> DatHeader | None:
        return parse_dat_header(self.path, lines)

    def rows(self, lines: list[str], first_line: int) -> list[Frame]:
        header = self.header
        frames = []
        for number, line in enumerate(lines, start=first_line):
            if not line.strip():
                continue
            self.rows_seen += 1
            try:
                scan = parse_dat_row(header, line, number)
            except TabularError as exc:
                self.reject_error(exc)
                continue
            self.rows_read += 1
            meta = spectrum_meta(self.rows_seen - 1, line=number, step=scan.step,
                                 time_relative_s=scan.time_relative_s, **header.meta())
            frames.append(self.make_frame("spectrum", scan.time_ns,
                                          {"mass": header.masses,
                                           "ion_current": scan.ion_current},
                                          {"mass": "amu", "ion_current": "A"}, meta))
        return frames

    def end_of_file(self, complete: bool) -> list[Frame]:
        """Also, for a whole file: fewer scan rows than the header's TimePoints."""
        frames = super().end_of_file(complete)
        h = self.header
        if complete and h is not None and h.n_timepoints is not None \
                and self.rows_seen != h.n_timepoints:
            self.reject(str(self.path), f"{self.rows_seen} scan rows, the header says "
                        f"{h.n_timepoints} TimePoints (truncated?)")
        return frames
