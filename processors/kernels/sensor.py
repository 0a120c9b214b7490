"""Per-channel sensor-fault detectors: dropout, out of range, stuck value and spikes.

Each channel carries one state row (layout below) between blocks. ``monitor`` runs the enabled
detectors over a block in O(1) per sample and channel, and returns one row per event:
[state row, kind, onset t, detection t, e1..e4].
The evidence e1..e4 per kind is listed at ``EVIDENCE`` in ``processors/sensor_faults.py``.

A missing sample (NaN/inf) feeds only the dropout detector. A sample outside the range limits
does not feed the stuck detector (a value pinned at 1e9 is out of range, not also stuck), but
does feed the spike detector, where only an isolated one counts (a lasting one is a level
shift): so each fault is reported by its own detector.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

DROPOUT, OUT_OF_RANGE, STUCK, SPIKES = range(4)

# global parameters
(P_DROPOUT_S, P_DROPOUT_PERIODS, P_RANGE_S, P_RANGE_N, P_STUCK_S, P_STUCK_N, P_STUCK_ALPHA,
 P_STUCK_MAX_UNCHANGED, P_STUCK_LOG_SIG, P_STUCK_WARMUP, P_SPIKE_Z, P_SPIKE_Z_RETURN,
 P_SPIKE_ALPHA, P_SPIKE_WARMUP, P_SPIKE_MAX_BURST, P_SPIKE_COUNT, P_SPIKE_WINDOW_S,
 P_SPIKE_REL_FLOOR, P_REARM_S) = range(19)
N_PARAM = 19
# per-channel parameters
C_LOW, C_HIGH, C_HYST, C_ZERO_OK, C_RESOLUTION = range(5)
N_CHAN = 5

MAX_BURST, MAX_COUNT, MAX_WARMUP = 8, 16, 64
MAD_TO_MEAN_ABS = 0.7979 / 0.6745   # Gaussian: mean |x - mu| over median |x - mu|
MEAN_ABS_TO_SIGMA = 1.2533          # Gaussian: sigma over mean |x - mu|

# state row
(D_T_LAST, D_T_GOOD, D_PERIOD, D_NAN_SINCE, D_NAN_N, D_ARMED, D_CLEAR,
 R_SINCE, R_N, R_ARMED, R_CLEAR, R_EXTREME,
 S_PREV, S_PREV_T, S_RUN_T0, S_RUN_N, S_P_UNCHANGED, S_STEP, S_LEARNED, S_ARMED, S_CLEAR,
 S_FIRED,
 K_LEVEL, K_SCALE, K_RUNNING, K_WARM_N, K_BURST_N, K_BURST_SPIKES, K_BURST_Z, K_BURST_X, K_PREV,
 K_ARMED, K_LAST_SPIKE, K_RING_N, K_RING_POS, K_Z) = range(36)
K_BURST_T = 36                      # times of the spikes in the open burst
K_RING = K_BURST_T + MAX_BURST      # times of the last ``count`` spikes
K_WARM = K_RING + MAX_COUNT         # warm-up samples
N_STATE = K_WARM + MAX_WARMUP

_NAN_FIELDS = (D_T_LAST, D_T_GOOD, D_PERIOD, D_NAN_SINCE, D_CLEAR, R_SINCE, R_CLEAR, S_PREV,
               S_PREV_T, S_RUN_T0, S_CLEAR, K_PREV, K_LAST_SPIKE, K_Z)


def new_state(n_channels: int) -> np.ndarray:
    state = np.zeros((n_channels, N_STATE))
    state[:, list(_NAN_FIELDS)] = np.nan
    state[:, [D_ARMED, R_ARMED, S_ARMED, K_ARMED]] = 1.0
    state[:, S_P_UNCHANGED] = 1.0  # nothing learned yet: not known to be noisy
    return state


@nb.njit(cache=True)
def _rearm(s: np.ndarray, armed: int, clear: int, t: float, rearm_s: float) -> None:
    """Clear condition seen at ``t``: re-arm once it has held for ``rearm_s``."""
    if s[armed] == 0.0:
        if math.isnan(s[clear]):
            s[clear] = t
        if t - s[clear] >= rearm_s:
            s[armed] = 1.0


@nb.njit(cache=True)
def dropout_step(s: np.ndarray, t: float, x: float, p: np.ndarray, ev: np.ndarray) -> bool:
    """Missing data: no finite sample for more than max(dropout_s, periods x sample period).
    The sample period is learned: an EWMA of the time steps that follows longer steps faster
    than shorter ones, gaps (over 3 periods) left out."""
    per = s[D_PERIOD]
    if not math.isnan(s[D_T_LAST]):
        dt = t - s[D_T_LAST]
        if dt > 0.0:
            if math.isnan(per):
                per = dt
            elif dt < 3.0 * per:  # up quickly, down slowly: bursts of fast logging at a
                per += (0.05 if dt > per else 0.005) * (dt - per)  # step change are no rate
            s[D_PERIOD] = per
    s[D_T_LAST] = t
    if math.isnan(s[D_T_GOOD]):
        s[D_T_GOOD] = t  # the stream's first sample is the reference
    finite = math.isfinite(x)
    if not finite:
        if math.isnan(s[D_NAN_SINCE]):
            s[D_NAN_SINCE] = t
        s[D_NAN_N] += 1.0
    limit = p[P_DROPOUT_S]
    if not math.isnan(per):
        limit = max(limit, p[P_DROPOUT_PERIODS] * per)
    missing = t - s[D_T_GOOD]
    fired = False
    if not finite or missing > limit:
        s[D_CLEAR] = np.nan
        if s[D_ARMED] == 1.0 and missing > limit:
            s[D_ARMED] = 0.0
            onset = s[D_NAN_SINCE]
            if math.isnan(onset):  # a time gap: the first sample that should have come
                onset = s[D_T_GOOD] + (0.0 if math.isnan(per) else per)
            ev[0], ev[1], ev[2], ev[3] = onset, missing, per, s[D_NAN_N]
            ev[4] = 1.0 if s[D_NAN_N] > 0.0 else 0.0
            fired = True
    else:
        _rearm(s, D_ARMED, D_CLEAR, t, p[P_REARM_S])
    if finite:
        s[D_T_GOOD] = t
        s[D_NAN_SINCE] = np.nan
        s[D_NAN_N] = 0.0
    return fired


@nb.njit(cache=True)
def skip_lost(state: np.ndarray, rows: np.ndarray, t: float) -> None:
    """Frames lost in transport (a gap in ``seq``) came before the sample at ``t``: the sensor
    did not drop out, the link did, and the sequence tracker counts that. The dropout clock of
    each channel moves on by the time the lost frames covered (beyond one sample period), so
    only received time counts as missing; a NaN run keeps its onset."""
    for c in range(rows.shape[0]):
        s = state[rows[c]]
        last, per = s[D_T_LAST], s[D_PERIOD]
        if math.isnan(last) or math.isnan(per) or math.isnan(s[D_T_GOOD]):
            continue
        lost = t - last - per
        if lost > 0.0:
            s[D_T_GOOD] += lost


@nb.njit(cache=True)
def range_step(s: np.ndarray, t: float, x: float, low: float, high: float, hyst: float,
               p: np.ndarray, ev: np.ndarray) -> int:
    """Outside [low, high] for at least range_s and range_n samples; re-armed after rearm_s
    inside [low + hyst, high - hyst]. Returns 0 in range, 1 out, 2 out and fired."""
    if x < low or x > high:
        dist = x - high if x > high else low - x
        ext = s[R_EXTREME]
        if math.isnan(s[R_SINCE]):
            s[R_SINCE] = t
            s[R_N] = 0.0
            s[R_EXTREME] = x
        elif dist > (ext - high if ext > high else low - ext):
            s[R_EXTREME] = x
        s[R_N] += 1.0
        s[R_CLEAR] = np.nan
        if s[R_ARMED] == 1.0 and s[R_N] >= p[P_RANGE_N] and t - s[R_SINCE] >= p[P_RANGE_S]:
            s[R_ARMED] = 0.0
            ev[0], ev[1], ev[2], ev[3], ev[4] = s[R_SINCE], s[R_EXTREME], low, high, t - s[R_SINCE]
            return 2
        return 1
    s[R_SINCE] = np.nan
    s[R_N] = 0.0
    if low + hyst <= x <= high - hyst:
        _rearm(s, R_ARMED, R_CLEAR, t, p[P_REARM_S])
    else:
        s[R_CLEAR] = np.nan  # in the hysteresis band: not yet clear
    return 0


@nb.njit(cache=True)
def stuck_step(s: np.ndarray, t: float, x: float, p: np.ndarray, zero_ok: bool,
               resolution: float, ev: np.ndarray) -> bool:
    """A value that does not move by more than ``resolution`` for at least stuck_s and stuck_n
    samples, on a channel that normally moves: the learned fraction of unchanged steps
    p_u (EWMA over changed samples, runs folded in when they end) is below max_unchanged, and
    a run of n unchanged steps is unlikely, n log p_u < log(significance). With ``zero_ok``
    a run of exact zeros is a legitimate state (a cycler's current at rest), never stuck.
    NaN breaks the run."""
    if math.isnan(x):
        s[S_PREV] = np.nan
        s[S_RUN_N] = 0.0
        s[S_FIRED] = 0.0
        return False
    prev, prev_t = s[S_PREV], s[S_PREV_T]
    s[S_PREV], s[S_PREV_T] = x, t
    if math.isnan(prev):
        return False
    if zero_ok and x == 0.0 and prev == 0.0:
        s[S_RUN_N] = 0.0
        s[S_FIRED] = 0.0
        return False
    step = abs(x - prev)
    if step <= resolution:
        if s[S_RUN_N] == 0.0:
            s[S_RUN_T0] = prev_t
        s[S_RUN_N] += 1.0
        n = s[S_RUN_N]
        if n >= p[P_STUCK_N]:
            s[S_CLEAR] = np.nan
        pu = s[S_P_UNCHANGED]
        if (s[S_ARMED] == 1.0 and s[S_LEARNED] >= p[P_STUCK_WARMUP]
                and pu < p[P_STUCK_MAX_UNCHANGED] and n >= p[P_STUCK_N]
                and t - s[S_RUN_T0] >= p[P_STUCK_S]
                and (pu <= 0.0 or n * math.log(pu) < p[P_STUCK_LOG_SIG])):
            s[S_ARMED] = 0.0
            s[S_FIRED] = 1.0
            ev[0], ev[1], ev[2], ev[3], ev[4] = s[S_RUN_T0], x, t - s[S_RUN_T0], n + 1.0, s[S_STEP]
            return True
        return False
    a = p[P_STUCK_ALPHA]
    pu = s[S_P_UNCHANGED]
    if s[S_RUN_N] > 0.0 and s[S_FIRED] == 0.0:  # fold the run in; a stuck run is not learned
        pu = 1.0 - (1.0 - pu) * (1.0 - a) ** s[S_RUN_N]
    s[S_P_UNCHANGED] = (1.0 - a) * pu
    s[S_RUN_N] = 0.0
    s[S_FIRED] = 0.0
    # typical step, for the evidence; clipped so that spikes do not inflate it
    if s[S_LEARNED] == 0.0:
        s[S_STEP] = step
    else:
        s[S_STEP] += a * (min(step, 4.0 * s[S_STEP]) - s[S_STEP])
    s[S_LEARNED] += 1.0
    _rearm(s, S_ARMED, S_CLEAR, t, p[P_REARM_S])
    return False


@nb.njit(cache=True)
def _median(values: np.ndarray) -> float:
    v = np.sort(values)
    h = v.shape[0] // 2
    return v[h] if v.shape[0] % 2 else 0.5 * (v[h - 1] + v[h])


@nb.njit(cache=True)
def _start_level(s: np.ndarray, n: int) -> None:
    """End of warm-up: level = median, scale from the median absolute deviation."""
    buf = s[K_WARM:K_WARM + n]
    level = _median(buf)
    dev = np.abs(buf - level)
    scale = _median(dev) * MAD_TO_MEAN_ABS
    if scale == 0.0:  # coarse quantisation: more than half the samples on the median
        scale = np.mean(dev)
    s[K_LEVEL], s[K_SCALE], s[K_RUNNING] = level, scale, 1.0
    s[K_BURST_N], s[K_BURST_SPIKES], s[K_BURST_Z] = 0.0, 0.0, 0.0


@nb.njit(cache=True)
def _count_spike(s: np.ndarray, ts: float, p: np.ndarray, ev: np.ndarray) -> bool:
    """Record a spike at ``ts``; fire when the last ``count`` spikes lie within window_s."""
    m = int(p[P_SPIKE_COUNT])
    pos = int(s[K_RING_POS])
    s[K_RING + pos] = ts
    pos = (pos + 1) % m
    s[K_RING_POS] = pos
    s[K_RING_N] = min(s[K_RING_N] + 1.0, m)
    s[K_LAST_SPIKE] = ts
    oldest = s[K_RING + pos]
    if s[K_ARMED] == 1.0 and s[K_RING_N] >= m and ts - oldest <= p[P_SPIKE_WINDOW_S]:
        s[K_ARMED] = 0.0
        ev[0], ev[1], ev[2], ev[3], ev[4] = oldest, m, s[K_BURST_Z], s[K_LEVEL], s[K_BURST_X]
        return True
    return False


@nb.njit(cache=True)
def spike_step(s: np.ndarray, t: float, x: float, p: np.ndarray, ev: np.ndarray) -> bool:
    """Isolated outliers. Robust z = |x - L| / sigma with L an EWMA of the level and sigma from
    an EWMA of |x - L| (MAD-like), both updated only by samples with z <= z_return, and started
    from the median / median absolute deviation of a warm-up. Samples beyond z_return open a
    burst; a burst that ends (a sample back within z_return) after at most max_burst samples
    was isolated, and its samples beyond z are spikes. A longer burst is a level shift: warm up
    again. Repeated values (x equal to the last) do not update the scale. Fires when ``count``
    spikes fall within window_s; re-armed after a spike-free window. NaN is ignored."""
    if math.isnan(x):
        return False
    repeat = x == s[K_PREV]
    s[K_PREV] = x
    if s[K_ARMED] == 0.0 and t - s[K_LAST_SPIKE] > max(p[P_SPIKE_WINDOW_S], p[P_REARM_S]):
        s[K_ARMED] = 1.0
    if s[K_RUNNING] == 0.0:
        s[K_Z] = np.nan
        if not repeat:
            w = int(s[K_WARM_N])
            s[K_WARM + w] = x
            s[K_WARM_N] = w + 1
            if w + 1 >= p[P_SPIKE_WARMUP]:
                _start_level(s, w + 1)
        return False
    level, scale = s[K_LEVEL], s[K_SCALE]
    sigma = max(MEAN_ABS_TO_SIGMA * scale, p[P_SPIKE_REL_FLOOR] * abs(level), 1e-300)
    z = abs(x - level) / sigma
    s[K_Z] = z
    if z <= p[P_SPIKE_Z_RETURN]:
        fired = False
        for j in range(int(s[K_BURST_SPIKES])):
            if _count_spike(s, s[K_BURST_T + j], p, ev):
                fired = True
        s[K_BURST_N], s[K_BURST_SPIKES], s[K_BURST_Z] = 0.0, 0.0, 0.0
        a = p[P_SPIKE_ALPHA]
        s[K_LEVEL] = level + a * (x - level)
        if not repeat:
            s[K_SCALE] = scale + a * (abs(x - level) - scale)
        return fired
    s[K_BURST_N] += 1.0
    if z > p[P_SPIKE_Z] and s[K_BURST_SPIKES] < MAX_BURST:
        s[K_BURST_T + int(s[K_BURST_SPIKES])] = t
        s[K_BURST_SPIKES] += 1.0
        if z > s[K_BURST_Z]:
            s[K_BURST_Z], s[K_BURST_X] = z, x
    if s[K_BURST_N] > p[P_SPIKE_MAX_BURST]:  # not isolated: the level moved
        s[K_RUNNING] = 0.0
        s[K_WARM] = x
        s[K_WARM_N] = 1.0
    return False


@nb.njit(cache=True)
def decreases(t: np.ndarray) -> bool:
    """True if some sample time is below the one before it."""
    for k in range(1, t.shape[0]):  # noqa: SIM110 - numba compiles this loop, not any()
        if t[k] < t[k - 1]:
            return True
    return False


@nb.njit(cache=True)
def _push(events: np.ndarray, m: int, row: int, kind: int, t: float,
          ev: np.ndarray) -> np.ndarray:
    if m == events.shape[0]:
        grown = np.empty((2 * m, 8))
        grown[:m] = events
        events = grown
    events[m, 0], events[m, 1], events[m, 2], events[m, 3] = row, kind, ev[0], t
    events[m, 4:8] = ev[1:5]
    return events


@nb.njit(cache=True)
def monitor(t: np.ndarray, x: np.ndarray, rows: np.ndarray, state: np.ndarray,
            chan: np.ndarray, p: np.ndarray, enabled: np.ndarray) -> np.ndarray:
    """Run the enabled detectors (``enabled[kind]``) over a block: ``x`` is (channels,
    samples), ``rows[c]`` the state/chan row of channel c. Returns the events as rows
    [row, kind, onset t, detection t, e1, e2, e3, e4], in order of detection (then channel)."""
    events = np.empty((8, 8))
    m = 0
    ev = np.zeros(5)
    do_dropout, do_range = enabled[DROPOUT], enabled[OUT_OF_RANGE]
    do_stuck, do_spikes = enabled[STUCK], enabled[SPIKES]
    for c in range(x.shape[0]):
        r = rows[c]
        s = state[r]
        low, high, hyst = chan[r, C_LOW], chan[r, C_HIGH], chan[r, C_HYST]
        zero_ok, resolution = chan[r, C_ZERO_OK] != 0.0, chan[r, C_RESOLUTION]
        for k in range(t.shape[0]):
            tk = t[k]
            xv = x[c, k]
            if do_dropout and dropout_step(s, tk, xv, p, ev):
                events = _push(events, m, r, DROPOUT, tk, ev)
                m += 1
            in_range = math.isfinite(xv)
            if in_range and do_range:
                code = range_step(s, tk, xv, low, high, hyst, p, ev)
                if code == 2:
                    events = _push(events, m, r, OUT_OF_RANGE, tk, ev)
                    m += 1
                in_range = code == 0
            if do_stuck and stuck_step(s, tk, xv if in_range else np.nan, p, zero_ok,
                                       resolution, ev):
                events = _push(events, m, r, STUCK, tk, ev)
                m += 1
            # an isolated sample beyond the limits is a spike; a lasting one is a level shift
            if do_spikes and spike_step(s, tk, xv, p, ev):
                events = _push(events, m, r, SPIKES, tk, ev)
                m += 1
    return _by_time(events[:m])


@nb.njit(cache=True)
def _by_time(events: np.ndarray) -> np.ndarray:
    """Rows in order of detection time, stable (channel order at a tie): insertion sort, as
    a block has few events."""
    for i in range(1, events.shape[0]):
        row = events[i].copy()
        j = i - 1
        while j >= 0 and events[j, 3] > row[3]:
            events[j + 1] = events[j]
            j -= 1
        events[j + 1] = row
    return events
