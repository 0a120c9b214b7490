"""Neware BTS CSV exports (the record table): followed while BTS writes them, or read once.

Layout: one header line of comma-separated column names with the unit in brackets
(``Current(A)``, ``Voltage(V)``, ``Capacity(Ah)``), then one row per record. Time comes as the
test time ``Cumulative Time`` (``h:mm:ss``, hours past 24) and the wall clock ``Date``
(``yyyy-mm-dd hh:mm:ss``, the cycler's local time); the step time ``Time`` restarts every step.
The step type (``Rest``, ``CC Chg``, ``CC DChg`` ...) is text.

By default ``t`` is the test time and t = 0 is placed at ``Date - Cumulative Time`` of the first
row, so coulomb counting follows the cycler's own clock; ``time_source = "date"`` uses the wall
clock of every row instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from .tabular import (
    NAT,
    Column,
    TableFormat,
    TableHeader,
    TabularAdapter,
    TabularConfig,
    TabularError,
)

_NAME_UNIT = re.compile(r"^\s*(.*?)\s*(?:\(([^()]*)\))?\s*$")

# Neware column (lower case, without the unit) -> opmon key
COLUMN_KEYS = {
    "voltage": "voltage",
    "current": "current",
    "cycle index": "cycle",
    "step index": "step",
    "step type": "mode",
    "cumulative time": "cumulative",
    "total time": "cumulative",
    "date": "date",
    "realtime": "date",
    "capacity": "q_step_Ah",
    "chg. cap.": "q_charge_Ah",
    "dchg. cap.": "q_discharge_Ah",
    "temperature": "temperature",
    "t1": "temperature",
}
# unit in brackets -> (published unit, factor)
UNITS = {
    "V": ("V", 1.0), "mV": ("V", 1e-3),
    "A": ("A", 1.0), "mA": ("A", 1e-3), "uA": ("A", 1e-6), "µA": ("A", 1e-6),
    "Ah": ("Ah", 1.0), "mAh": ("Ah", 1e-3),
    "°C": ("degC", 1.0), "℃": ("degC", 1.0), "degC": ("degC", 1.0),
}
REQUIRED = ("voltage", "current")
INTEGER = ("cycle", "step")


def split_name(column: str) -> tuple[str, str]:
    """``'Current(mA)'`` -> ``('Current', 'mA')``."""
    match = _NAME_UNIT.match(column)
    assert match is not None  # the pattern matches any text
    return match.group(1), match.group(2) or ""


class NewareFormat(TableFormat):

    def __init__(self, separator: str = ",", time_source: str = "cumulative",
                 column_names: dict[str, str] | None = None):
        self.separator = separator
        self.time_source = time_source
        self.column_names = dict(column_names or {})

    def header(self, path: Path, lines: list[str]) -> TableHeader | None:
        columns = [c.strip() for c in lines[0].split(self.separator)]
        keys = {self._key(c) for c in columns}
        if not {"voltage", "current"} <= keys:
            raise TabularError(path, 1, "not a Neware record export: no Voltage(...) and "
                                        f"Current(...) columns in {columns[:8]}")
        return TableHeader(columns, 2)

    def _key(self, column: str) -> str | None:
        for key, name in self.column_names.items():
            if name == column:
                return key
        return COLUMN_KEYS.get(split_name(column)[0].lower())

    def columns(self, path: Path, header: TableHeader) -> list[Column]:
        found: dict[str, tuple[int, str]] = {}
        for i, column in enumerate(header.columns):
            key = self._key(column)
            if key is not None and key not in found:
                found[key] = (i, column)
        for key, name in self.column_names.items():
            if key not in found:
                header.problems.append(TabularError(path, 1, f"column_names: no column "
                                                             f"{name!r} for {key!r}"))
        time_key = "date" if self.time_source == "date" else "cumulative"
        for key in (time_key, *REQUIRED):
            if key not in found:
                raise TabularError(path, 1, f"no column for {key!r} (time_source = "
                                            f"{self.time_source!r})")
        out = [self._time_column(found)]
        if time_key == "cumulative" and "date" in found:  # for t = 0 on the wall clock
            out.append(Column("date", found["date"][0], found["date"][1], parse="datetime",
                              fmt="iso", role="hidden"))
        for key, (index, source) in found.items():
            if key in ("cumulative", "date"):
                continue
            if key == "mode":
                out.append(Column("mode", index, source, parse="text", role="meta"))
                continue
            unit, factor = UNITS.get(split_name(source)[1], ("", 1.0))
            if not unit and key not in INTEGER:
                problem = TabularError(path, 1, f"unit not understood (expected one of "
                                                f"{sorted(UNITS)})", index + 1, source)
                if key in REQUIRED:
                    raise problem
                header.problems.append(problem)  # counted; that column is not published
                continue
            out.append(Column(key, index, source, unit, factor, required=key in REQUIRED,
                              integer=key in INTEGER))
        return out

    def _time_column(self, found: dict[str, tuple[int, str]]) -> Column:
        if self.time_source == "date":
            index, source = found["date"]
            return Column("t", index, source, "s", parse="datetime", fmt="iso", required=True)
        index, source = found["cumulative"]
        return Column("t", index, source, "s", parse="duration", required=True)

    def origin(self, header: TableHeader, values: dict[str, np.ndarray]
               ) -> tuple[int, str] | None:
        dates = values.get("date")
        if dates is None or not np.any(dates != NAT):
            return None
        i = int(np.argmax(dates != NAT))
        return int(dates[i]) - int(round(float(values["t"][i]) * 1e9)), "Date - Cumulative Time"


class NewareConfig(TabularConfig):
    delimiter: str = ","             # the export's field separator
    time_source: Literal["cumulative", "date"] = "cumulative"  # t from test time or wall clock
    column_names: dict[str, str] = {}  # other header names: {voltage = "Voltage(V)", ...}


class NewareCsvAdapter(TabularAdapter):
    """A Neware BTS record export as ``echem`` blocks (step, cycle, capacities; the step type
    in ``meta["mode"]``)."""

    type_name = "neware.csv"
    kind = "echem"
    Config: ClassVar[type[NewareConfig]] = NewareConfig

    def make_format(self) -> NewareFormat:
        c = self.config
        return NewareFormat(c.delimiter, c.time_source, c.column_names)
