"""Internal resistance from current steps: R = dV/dI across a step.

A step is a change of current between consecutive samples larger than both the rest threshold
and a fraction of the largest |I| seen so far (so noise, CV tapers and the small step at the end
of a CV phase do not count). R0 uses the first sample after the step against the last one
before it (ohmic part); R at a delay d uses the first sample at or after d seconds from that
first sample, if it comes within 1.5 d and before the next step (ohmic plus polarisation).
Times are compared to within ``TIME_EPS`` so that a sample exactly d after the step counts
whatever the float rounding of the time base.

With a trend time constant, the voltage before the step is first carried forward to the first
sample after it along the voltage's slope before the step (an exponentially weighted mean of
dV/dt): at a steep part of the OCV curve the drift over one sampling interval is otherwise
counted as resistance (0.3 mV per 0.1 s at 1C near empty on the simulated cell, 8 % of its R0).
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Layout of the state vector carried between blocks; the R values of the pending step follow.
(T_PREV, V_PREV, I_PREV, I_MAX, ACTIVE, T_STEP, V_BEFORE, I_BEFORE, DELTA_I, DT, NEXT,
 SLOPE) = range(12)
N_FIXED = 12
# Layout of an output row: then R0 and one R per delay.
ROW_T, ROW_DI, ROW_I_BEFORE, ROW_V_BEFORE, ROW_DT = range(5)
N_ROW_FIXED = 5
TIME_EPS = 1e-6  # s


def new_state(n_delays: int) -> np.ndarray:
    state = np.zeros(N_FIXED + 1 + n_delays)
    state[T_PREV] = np.nan
    state[SLOPE] = 0.0
    return state


@nb.njit(cache=True)
def _close(state: np.ndarray, rows: np.ndarray, n_rows: int) -> int:
    rows[n_rows, ROW_T] = state[T_STEP]
    rows[n_rows, ROW_DI] = state[DELTA_I]
    rows[n_rows, ROW_I_BEFORE] = state[I_BEFORE]
    rows[n_rows, ROW_V_BEFORE] = state[V_BEFORE]
    rows[n_rows, ROW_DT] = state[DT]
    rows[n_rows, N_ROW_FIXED:] = state[N_FIXED:]
    state[ACTIVE] = 0.0
    return n_rows + 1


@nb.njit(cache=True)
def current_steps(t: np.ndarray, voltage: np.ndarray, current: np.ndarray, min_step_A: float,
                  min_step_fraction: float, delays: np.ndarray, trend_s: float,
                  state: np.ndarray) -> np.ndarray:
    """Streaming step detection over one block; updates ``state``. Returns one row per step
    whose measurements are complete (or cut short by the next step): [t of the first sample
    after the step, dI, I before, V before, sampling interval across the step, R0, R(delays)]
    with NaN where a delayed R could not be measured. The drift correction of R0 applies when
    the sampling interval across the step is at most ``trend_s`` (0 turns it off)."""
    n = t.shape[0]
    nd = delays.shape[0]
    rows = np.empty((n + 1, N_ROW_FIXED + 1 + nd))
    n_rows = 0
    for k in range(n):
        tk, vk, ik = t[k], voltage[k], current[k]
        if abs(ik) > state[I_MAX]:
            state[I_MAX] = abs(ik)
        if not np.isnan(state[T_PREV]):
            di = ik - state[I_PREV]
            dt = tk - state[T_PREV]
            if abs(di) > min_step_A and abs(di) > min_step_fraction * state[I_MAX]:
                if state[ACTIVE] != 0.0:
                    n_rows = _close(state, rows, n_rows)
                state[ACTIVE] = 1.0
                state[T_STEP], state[V_BEFORE] = tk, state[V_PREV]
                state[I_BEFORE], state[DELTA_I] = state[I_PREV], di
                state[DT] = dt
                drift = state[SLOPE] * dt if dt <= trend_s else 0.0
                state[N_FIXED] = (vk - state[V_PREV] - drift) / di
                state[N_FIXED + 1:] = np.nan
                state[NEXT] = 0.0
                state[SLOPE] = 0.0  # the trend restarts at the new current
            else:
                if trend_s > 0.0 and dt > 0.0:
                    alpha = 1.0 - np.exp(-dt / trend_s)
                    state[SLOPE] += alpha * ((vk - state[V_PREV]) / dt - state[SLOPE])
            if state[ACTIVE] != 0.0 and int(state[NEXT]) < nd:
                j = int(state[NEXT])
                while j < nd and tk >= state[T_STEP] + delays[j] - TIME_EPS:
                    if tk <= state[T_STEP] + 1.5 * delays[j] + TIME_EPS:
                        state[N_FIXED + 1 + j] = (vk - state[V_BEFORE]) / state[DELTA_I]
                    j += 1
                state[NEXT] = j
            if state[ACTIVE] != 0.0 and int(state[NEXT]) >= nd:
                n_rows = _close(state, rows, n_rows)
        state[T_PREV], state[V_PREV], state[I_PREV] = tk, vk, ik
    return rows[:n_rows]


@nb.njit(cache=True)
def pending_step(state: np.ndarray, n_delays: int) -> np.ndarray:
    """The step still waiting for its delayed samples, as a row (empty if none); clears it."""
    rows = np.empty((1, N_ROW_FIXED + 1 + n_delays))
    if state[ACTIVE] == 0.0:
        return rows[:0]
    _close(state, rows, 0)
    return rows
