"""Mass-spectrometry data shared by the gas processor and the simulator: NIST-style electron-
impact cracking patterns (relative to each gas's base peak) and relative ionisation
sensitivities (N2 = 1, approximate literature values)."""

from __future__ import annotations

import numpy as np

CRACKING: dict[str, dict[int, float]] = {
    "H2": {2: 1.0},
    "CO": {28: 1.0, 12: 0.047, 16: 0.017},
    "CO2": {44: 1.0, 28: 0.098, 16: 0.096, 12: 0.087},
    "C2H4": {28: 1.0, 27: 0.624, 26: 0.530, 25: 0.078},
    "O2": {32: 1.0, 16: 0.218},
    "SO2": {64: 1.0, 48: 0.49, 32: 0.104},
    "Ar": {40: 1.0, 20: 0.146, 36: 0.00337},
}
SENSITIVITY: dict[str, float] = {"H2": 0.44, "CO": 1.05, "CO2": 1.4, "C2H4": 2.3, "O2": 1.0,
                                 "SO2": 2.1, "Ar": 1.2}


def cracking_matrix(channels: list[int], gases: tuple[str, ...] | list[str]) -> np.ndarray:
    """(channels, gases): signal at each m/z per unit mole fraction of each gas, relative
    sensitivities included."""
    m = np.zeros((len(channels), len(gases)))
    for j, gas in enumerate(gases):
        for i, mz in enumerate(channels):
            m[i, j] = CRACKING[gas].get(mz, 0.0) * SENSITIVITY[gas]
    return m
