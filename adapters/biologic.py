"""BioLogic EC-Lab ASCII exports (``.mpt``).

Header: ``EC-Lab ASCII FILE`` then ``Nb header lines : N``; line N holds the tab-separated column
names (``quantity/unit``). The text is cp1252 (a µ appears in column names). Numbers use the
writer's locale: a decimal comma is accepted. Rows that cannot be parsed are reported with their
line and column, and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ENCODING = "cp1252"
_HEADER_COUNT = re.compile(r"Nb header lines\s*:\s*(\d+)")

# EC-Lab column -> (standard name, unit, factor to SI-ish units used in frames)
STANDARD_COLUMNS = {
    "time/s": ("t", "s", 1.0),
    "Ewe/V": ("voltage", "V", 1.0),
    "<Ewe>/V": ("voltage", "V", 1.0),
    "<I>/mA": ("current", "A", 1e-3),
    "I/mA": ("current", "A", 1e-3),
    "Ece/V": ("counter_voltage", "V", 1.0),
    "Temperature/°C": ("temperature", "degC", 1.0),
    "cycle number": ("cycle", "", 1.0),
    "half cycle": ("half_cycle", "", 1.0),
    "Ns": ("step", "", 1.0),
    "Q charge/mA.h": ("q_charge_Ah", "Ah", 1e-3),
    "Q discharge/mA.h": ("q_discharge_Ah", "Ah", 1e-3),
}


class MptError(ValueError):
    pass


@dataclass
class MptData:
    path: Path
    header: list[str]
    columns: list[str]
    data: dict[str, np.ndarray]
    errors: list[str] = field(default_factory=list)

    def standard(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Arrays under opmon's names and units (current in A, charge in Ah)."""
        arrays, units = {}, {}
        for column, (name, unit, factor) in STANDARD_COLUMNS.items():
            if column in self.data and name not in arrays:
                arrays[name] = self.data[column] * factor
                if unit:
                    units[name] = unit
        return arrays, units


def _number(text: str) -> float:
    return float(text.replace(",", ".")) if text.strip() else float("nan")


def read_mpt(path: str | Path) -> MptData:
    path = Path(path)
    with path.open("r", encoding=ENCODING, newline="") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].startswith("EC-Lab ASCII FILE"):
        raise MptError(f"{path}: line 1: not an EC-Lab ASCII file")
    match = _HEADER_COUNT.search(lines[1]) if len(lines) > 1 else None
    if match is None:
        raise MptError(f"{path}: line 2: no 'Nb header lines : N'")
    n_header = int(match.group(1))
    if n_header > len(lines):
        raise MptError(f"{path}: header claims {n_header} lines, file has {len(lines)}")
    columns = [c for c in lines[n_header - 1].rstrip("\t").split("\t")]
    rows, errors = [], []
    for number, line in enumerate(lines[n_header:], start=n_header + 1):
        if not line.strip():
            continue
        fields = line.rstrip("\t").split("\t")
        if len(fields) != len(columns):
            errors.append(f"{path}: line {number}: {len(fields)} fields, {len(columns)} columns")
            continue
        try:
            rows.append([_number(x) for x in fields])
        except ValueError:
            bad = next(i for i, x in enumerate(fields) if not _is_number(x))
            errors.append(f"{path}: line {number}, column {columns[bad]!r}: "
                          f"not a number: {fields[bad]!r}")
    table = np.array(rows, dtype=np.float64).reshape(-1, len(columns))
    return MptData(path, lines[:n_header - 1], columns,
                   {c: table[:, i] for i, c in enumerate(columns)}, errors)


def _is_number(text: str) -> bool:
    try:
        _number(text)
    except ValueError:
        return False
    return True
