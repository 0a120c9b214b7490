"""State of charge by coulomb counting between anchors.

SOC = SOC_anchor + (Q - Q_anchor) / capacity, with Q the cumulative charge (Ah, + on charge).
Anchors:
- full charge (SOC = 1): charging at the upper cut-off (V >= v_full - tol) with the current
  tapered to at most ``taper_C`` x capacity (a CV phase near its end). While the CV goes on the
  anchor is renewed, so it ends where the cycler stops the CV.
- full discharge (SOC = 0): discharging at the lower cut-off (V <= v_empty + tol). If a full
  charge came before it, the charge between the two is the new capacity.
- OCV (optional): after ``ocv_rest_s`` of rest, SOC = OCV^-1(V) from a table, once per rest.
Before the capacity is known (no nominal value, no full discharge yet) the taper is judged
against the largest charge current since the last discharge, taken as 1C, and SOC is NaN.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .resistance import TIME_EPS

# Layout of the state vector carried between blocks.
Q_ANCHOR, SOC_ANCHOR, CAPACITY, Q_FULL, I_CHARGE_MAX, REST_START, OCV_DONE = range(7)


def new_state(capacity_Ah: float | None) -> np.ndarray:
    state = np.full(7, np.nan)
    state[CAPACITY] = np.nan if capacity_Ah is None else capacity_Ah
    state[I_CHARGE_MAX] = 0.0
    state[OCV_DONE] = 0.0
    return state


@nb.njit(cache=True)
def track_soc(t: np.ndarray, voltage: np.ndarray, current: np.ndarray, charge: np.ndarray,
              state: np.ndarray, i_threshold: float, v_full: float, v_empty: float, v_tol: float,
              taper_C: float, ocv_v: np.ndarray, ocv_soc: np.ndarray,
              ocv_rest_s: float) -> np.ndarray:
    """SOC per sample over one block (NaN until anchored with a known capacity); updates
    ``state``. ``v_full``/``v_empty`` NaN disable those anchors; an empty ``ocv_v`` the OCV one.
    ``charge`` is the cumulative charge of each sample (Ah)."""
    n = t.shape[0]
    soc = np.empty(n)
    use_ocv = ocv_v.shape[0] > 1
    for k in range(n):
        i, v, q = current[k], voltage[k], charge[k]
        if i > i_threshold:
            state[REST_START] = np.nan
            state[I_CHARGE_MAX] = max(state[I_CHARGE_MAX], i)
            one_c = state[CAPACITY] if state[CAPACITY] > 0 else state[I_CHARGE_MAX]
            if v >= v_full - v_tol and i <= taper_C * one_c:
                state[Q_ANCHOR], state[SOC_ANCHOR], state[Q_FULL] = q, 1.0, q
        elif i < -i_threshold:
            state[REST_START] = np.nan
            state[I_CHARGE_MAX] = 0.0
            if v <= v_empty + v_tol:
                if state[Q_FULL] - q > 0:
                    state[CAPACITY] = state[Q_FULL] - q
                state[Q_FULL] = np.nan
                state[Q_ANCHOR], state[SOC_ANCHOR] = q, 0.0
        else:
            if np.isnan(state[REST_START]):
                state[REST_START], state[OCV_DONE] = t[k], 0.0
            rested = t[k] - state[REST_START] >= ocv_rest_s - TIME_EPS
            if use_ocv and state[OCV_DONE] == 0.0 and rested:
                state[Q_ANCHOR], state[SOC_ANCHOR] = q, np.interp(v, ocv_v, ocv_soc)
                state[OCV_DONE] = 1.0
        soc[k] = state[SOC_ANCHOR] + (q - state[Q_ANCHOR]) / state[CAPACITY]
    return soc
