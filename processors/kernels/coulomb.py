"""Coulomb counting with half-cycle segmentation."""

from __future__ import annotations

import numba as nb
import numpy as np

# Layout of the state vector carried between blocks.
Q_HALF, E_HALF, Q_TOTAL, SIGN, T_PREV, I_PREV, V_PREV = range(7)


def new_state() -> np.ndarray:
    state = np.zeros(7)
    state[T_PREV] = np.nan
    return state


@nb.njit(cache=True)
def coulomb_count(t: np.ndarray, current: np.ndarray, voltage: np.ndarray, i_threshold: float,
                  state: np.ndarray, interval_mean: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Charge (Ah) and energy (Wh), streaming over one block; updates ``state``.

    Instantaneous currents are integrated by the trapezoid rule. With ``interval_mean`` each
    current is the mean over the interval that ends at its sample (EC-Lab's ``<I>``), so
    dq = I_k * (t_k - t_(k-1)) exactly.

    A half-cycle ends at the first sample whose current has the other sign (|I| above
    ``i_threshold``); rests do not end it. Returns the cumulative charge per sample, and one row
    per half-cycle closed in this block: [sample index, sign, charge Ah, energy Wh].
    """
    n = t.shape[0]
    q_total = np.empty(n)
    ends = np.empty((n, 4))
    n_ends = 0
    q, e, qt, sign = state[Q_HALF], state[E_HALF], state[Q_TOTAL], int(state[SIGN])
    tp, ip, vp = state[T_PREV], state[I_PREV], state[V_PREV]
    for k in range(n):
        ik = current[k]
        s = 0
        if ik > i_threshold:
            s = 1
        elif ik < -i_threshold:
            s = -1
        if s != 0 and sign != 0 and s != sign:
            ends[n_ends, 0] = k
            ends[n_ends, 1] = sign
            ends[n_ends, 2] = q
            ends[n_ends, 3] = e
            n_ends += 1
            q = 0.0
            e = 0.0
        if not np.isnan(tp):
            dt = t[k] - tp
            if interval_mean:
                dq = ik * dt / 3600.0
                de = ik * voltage[k] * dt / 3600.0
            else:
                dq = 0.5 * (ik + ip) * dt / 3600.0
                de = 0.5 * (ik * voltage[k] + ip * vp) * dt / 3600.0
            q += dq
            qt += dq
            e += de
        if s != 0:
            sign = s
        q_total[k] = qt
        tp, ip, vp = t[k], ik, voltage[k]
    state[Q_HALF], state[E_HALF], state[Q_TOTAL], state[SIGN] = q, e, qt, sign
    state[T_PREV], state[I_PREV], state[V_PREV] = tp, ip, vp
    return q_total, ends[:n_ends]
