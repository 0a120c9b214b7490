"""Streaming dQ/dV: charge binned against voltage on a fixed voltage grid.

Between two samples the cell's path is taken as linear in Q(V), so the charge of each interval
is shared among the voltage bins it crosses in proportion to the overlap. On a monotonic path
this is exactly diff(Q(bin edges)); on a noisy one it conserves charge. Charge outside the grid
is dropped. A bin holds Ah; dQ/dV is bins / bin width.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# Layout of the state vector carried between blocks.
V_PREV, Q_PREV, I_MAX = range(3)


def new_state() -> np.ndarray:
    state = np.zeros(3)
    state[V_PREV] = np.nan
    return state


@nb.njit(cache=True)
def deposit(bins: np.ndarray, v_lo: float, width: float, va: float, vb: float,
            dq: float) -> None:
    """Share ``dq`` among the bins between voltages ``va`` and ``vb`` by overlap."""
    n = bins.shape[0]
    lo, hi = min(va, vb), max(va, vb)
    span = hi - lo
    if span <= 0.0:
        k = int(math.floor((lo - v_lo) / width))
        if 0 <= k < n:
            bins[k] += dq
        return
    first = max(int(math.floor((lo - v_lo) / width)), 0)
    last = min(int(math.floor((hi - v_lo) / width)), n - 1)
    for k in range(first, last + 1):
        overlap = min(hi, v_lo + (k + 1) * width) - max(lo, v_lo + k * width)
        if overlap > 0.0:
            bins[k] += dq * overlap / span


@nb.njit(cache=True)
def bin_charge(voltage: np.ndarray, charge: np.ndarray, current: np.ndarray, state: np.ndarray,
               bins: np.ndarray, v_lo: float, width: float, min_current_fraction: float) -> None:
    """Add each interval's charge (from cumulative ``charge`` in Ah) to ``bins``; updates
    ``state``. An interval counts only while |I| at its end is at least
    ``min_current_fraction`` of the largest |I| since the state's I_MAX was reset (drops the
    CV taper and slower follow-up steps of a CC half-cycle)."""
    vp, qp, i_max = state[V_PREV], state[Q_PREV], state[I_MAX]
    for k in range(voltage.shape[0]):
        a = abs(current[k])
        if a > i_max:
            i_max = a
        if not np.isnan(vp) and a > 0.0 and a >= min_current_fraction * i_max:
            deposit(bins, v_lo, width, vp, voltage[k], charge[k] - qp)
        vp, qp = voltage[k], charge[k]
    state[V_PREV], state[Q_PREV], state[I_MAX] = vp, qp, i_max
