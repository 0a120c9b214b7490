"""Gas processor kernels: non-negative deconvolution of ion currents with cached pseudo-inverses,
a sliding least-squares slope on a ring buffer, and one call per frame for the whole chain
(ion currents -> mole fractions -> rates and amounts).

The sliding slope keeps running sums over the last ``window_s`` seconds with times taken relative
to an anchor (re-anchored every 1e4 s, so the sums stay well conditioned); its arithmetic is that
of ``processors.gas.SlidingSlope`` operation for operation.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .echem_events import EW, ew_update

# sliding-slope scalars: time anchor (NaN: none yet), count, sum u, sum u^2, ring head, ring length
T_REF, N, ST, STT, HEAD, COUNT = range(6)
N_SLOPE = 6
# gas stream scalars after the slope's: the last time (NaN: none), first amount taken (0/1)
G_LAST_T, G_HAVE_N0 = N_SLOPE, N_SLOPE + 1
N_GAS_STATE = N_SLOPE + 2
# gas parameters
(P_AR, P_FLOW, P_AR_FRACTION, P_N_TOTAL, P_Q_MOLAR, P_TAU, P_WINDOW, P_SHIFT, P_BASE) = range(9)
N_GAS_PARAM = 9
# status of gas_block
OK, NON_FINITE, NO_STANDARD = range(3)
MAX_CACHED_SPECIES = 12   # pseudo-inverses cached per passive set up to this many species
NNLS_TOL = 1e-12


def new_slope_state() -> np.ndarray:
    s = np.zeros(N_GAS_STATE)
    s[T_REF] = np.nan
    s[G_LAST_T] = np.nan
    return s


def grow_ring(s: np.ndarray, buf_t: np.ndarray, buf_x: np.ndarray, room: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ring buffer with space for ``room`` more samples (unrolled to head 0 when grown)."""
    count, cap = int(s[COUNT]), buf_t.shape[0]
    if count + room <= cap:
        return buf_t, buf_x
    new_cap = max(2 * cap, count + room, 16)
    order = (int(s[HEAD]) + np.arange(count)) % cap if cap else np.zeros(0, dtype=np.int64)
    new_t = np.zeros(new_cap)
    new_x = np.zeros((new_cap, buf_x.shape[1]))
    new_t[:count] = buf_t[order]
    new_x[:count] = buf_x[order]
    s[HEAD] = 0.0
    return new_t, new_x


@nb.njit(cache=True)
def _slope_add(s: np.ndarray, sums: np.ndarray, t: float, x: np.ndarray, sign: float) -> None:
    u = t - s[T_REF]
    s[N] += sign
    s[ST] += sign * u
    s[STT] += sign * u * u
    for j in range(x.shape[0]):
        sums[0, j] += sign * x[j]
        sums[1, j] += sign * u * x[j]


@nb.njit(cache=True)
def slope_update(s: np.ndarray, sums: np.ndarray, buf_t: np.ndarray, buf_x: np.ndarray,
                 t: float, x: np.ndarray, window_s: float, out: np.ndarray) -> None:
    """Add sample (t, x) and write the least-squares slope of every component over the samples
    of the last ``window_s`` seconds to ``out`` (zeros below 3 samples). ``sums`` = [sum x,
    sum u x]; the ring (``buf_t``, ``buf_x``) must have room for one more sample."""
    cap = buf_t.shape[0]
    if math.isnan(s[T_REF]) or t - s[T_REF] > 1e4:  # re-anchor now and then
        s[T_REF] = t
        s[N], s[ST], s[STT] = 0.0, 0.0, 0.0
        sums[:, :] = 0.0
        for i in range(int(s[COUNT])):
            k = (int(s[HEAD]) + i) % cap
            _slope_add(s, sums, buf_t[k], buf_x[k], 1.0)
    k = (int(s[HEAD]) + int(s[COUNT])) % cap
    buf_t[k] = t
    buf_x[k, :] = x
    s[COUNT] += 1.0
    _slope_add(s, sums, t, x, 1.0)
    head = int(s[HEAD])
    while s[COUNT] > 0.0 and buf_t[head] < t - window_s:
        _slope_add(s, sums, buf_t[head], buf_x[head], -1.0)
        head = (head + 1) % cap
        s[COUNT] -= 1.0
    s[HEAD] = head
    n = s[N]
    denom = n * s[STT] - s[ST] * s[ST]
    if n < 3 or denom <= 0:
        out[:] = 0.0
        return
    for j in range(out.shape[0]):
        out[j] = (n * sums[1, j] - s[ST] * sums[0, j]) / denom


@nb.njit(cache=True)
def pairwise_sum(v: np.ndarray) -> float:
    """numpy's pairwise summation of a contiguous row (as ``ndarray.sum`` does it), so that
    results are bit-identical to numpy's."""
    n = v.shape[0]
    if n < 8:
        res = -0.0
        for i in range(n):
            res += v[i]
        return res
    if n <= 128:
        r = v[:8].copy()
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += v[i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += v[i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return pairwise_sum(v[:half]) + pairwise_sum(v[half:])


@nb.njit(cache=True)
def nnls_cached(a: np.ndarray, scale_a: float, b: np.ndarray, pinv: np.ndarray,
                have: np.ndarray, out: np.ndarray) -> None:
    """min ||A x - b|| subject to x >= 0 by Lawson & Hanson's active set, with ``a`` = A /
    ``scale_a`` (its largest |element| is 1). Each unconstrained sub-problem on the passive set
    P is solved with the pseudo-inverse of A_P, computed once per P and kept in ``pinv[mask]``
    (``have[mask]`` set), so a steady stream of samples costs matrix-vector products only.
    With more species than ``pinv`` can index, least squares is solved every time."""
    m, n = a.shape
    scale_b = np.abs(b).max()
    if scale_a == 0.0 or scale_b == 0.0:
        out[:] = 0.0
        return
    b = b / scale_b
    cached = have.shape[0] == 1 << n
    x = np.zeros(n)
    passive = np.zeros(n, dtype=np.bool_)
    w = a.T @ (b - a @ x)
    for _ in range(3 * n):
        best, j = NNLS_TOL, -1
        for i in range(n):
            if not passive[i] and w[i] > best:
                best, j = w[i], i
        if j < 0:
            break
        passive[j] = True
        while True:
            idx = np.flatnonzero(passive)
            if cached:
                mask = 0
                for q in range(idx.size):
                    mask |= 1 << idx[q]
                if not have[mask]:
                    pinv[mask, :idx.size, :] = np.linalg.pinv(np.ascontiguousarray(a[:, idx]))
                    have[mask] = True
                z_sub = np.zeros(idx.size)
                for q in range(idx.size):
                    for i in range(m):
                        z_sub[q] += pinv[mask, q, i] * b[i]
            else:
                z_sub = np.linalg.lstsq(np.ascontiguousarray(a[:, idx]), b)[0]
            if np.all(z_sub > NNLS_TOL):
                x[:] = 0.0
                x[idx] = z_sub
                break
            alpha = 1.0
            for q in range(idx.size):
                if z_sub[q] <= NNLS_TOL:
                    denom = x[idx[q]] - z_sub[q]
                    if denom > 0:
                        alpha = min(alpha, x[idx[q]] / denom)
            for q in range(idx.size):
                x[idx[q]] += alpha * (z_sub[q] - x[idx[q]])
            for i in range(n):
                if passive[i] and x[i] <= NNLS_TOL:
                    passive[i] = False
                    x[i] = 0.0
        w = a.T @ (b - a @ x)
    for i in range(n):
        out[i] = x[i] * (scale_b / scale_a)


def new_pinv_cache(n_channels: int, n_species: int) -> tuple[np.ndarray, np.ndarray]:
    """Storage for ``nnls_cached``: pseudo-inverses per passive set, and which are computed."""
    if n_species > MAX_CACHED_SPECIES:
        return np.zeros((1, 1, 1)), np.zeros(1, dtype=np.bool_)
    return (np.zeros((1 << n_species, n_species, n_channels)),
            np.zeros(1 << n_species, dtype=np.bool_))


@nb.njit(cache=True)
def gas_block(signals: np.ndarray, t: np.ndarray, a: np.ndarray, scale_a: float,
              pinv: np.ndarray, have: np.ndarray, p: np.ndarray, s: np.ndarray,
              sums: np.ndarray, buf_t: np.ndarray, buf_x: np.ndarray, acc: np.ndarray,
              x_out: np.ndarray, rate_out: np.ndarray, t_out: np.ndarray) -> int:
    """One frame of the gas processor. ``signals`` (samples, channels) are deconvolved into
    fractions, normalised by the internal standard (species ``p[P_AR]``, -1: none; flow: to
    its known fraction, closed: to a sum of one), and turned into rates (closed: n_total times
    the sliding slope; flow: Q (x + tau dx/dt)). ``acc`` holds the first amount (closed) or the
    integrated amount (flow). Writes ``x_out`` and ``rate_out`` (species, samples) and the sample
    times on the stream's base (``p[P_BASE]`` + t - shift) to ``t_out``; returns ``OK`` or, with
    no state changed, ``NON_FINITE`` / ``NO_STANDARD``."""
    n_samples, n_species = signals.shape[0], a.shape[1]
    for k in range(n_samples):
        for i in range(signals.shape[1]):
            if not math.isfinite(signals[k, i]):
                return NON_FINITE
    x = np.empty((n_samples, n_species))
    for k in range(n_samples):
        nnls_cached(a, scale_a, np.ascontiguousarray(signals[k]), pinv, have, x[k])
    ar = int(p[P_AR])
    flow = p[P_FLOW] != 0.0
    if ar >= 0:
        for k in range(n_samples):
            if x[k, ar] <= 0:
                return NO_STANDARD
        for k in range(n_samples):
            if flow:
                f = p[P_AR_FRACTION] / x[k, ar]
                for j in range(n_species):
                    x[k, j] = x[k, j] * f
            else:
                total = pairwise_sum(x[k])
                for j in range(n_species):
                    x[k, j] = x[k, j] / total
    slope = np.empty(n_species)
    for k in range(n_samples):
        tk = (p[P_BASE] + t[k]) - p[P_SHIFT]
        t_out[k] = tk
        slope_update(s, sums, buf_t, buf_x, tk, x[k], p[P_WINDOW], slope)
        for j in range(n_species):
            x_out[j, k] = x[k, j]
            if flow:
                rate_out[j, k] = p[P_Q_MOLAR] * (x[k, j] + p[P_TAU] * slope[j])
            else:
                rate_out[j, k] = slope[j] * p[P_N_TOTAL]
    last = n_samples - 1
    if flow:
        dt = 0.0 if math.isnan(s[G_LAST_T]) else t_out[last] - s[G_LAST_T]
        for j in range(n_species):
            acc[j] = acc[j] + rate_out[j, last] * dt
    elif s[G_HAVE_N0] == 0.0:
        for j in range(n_species):
            acc[j] = x[0, j] * p[P_N_TOTAL]
        s[G_HAVE_N0] = 1.0
    s[G_LAST_T] = t_out[last]
    return OK


# -- gas events: gassing onsets and accelerating gas, per gas ---------------------------------
# state of one gas: sample and block baselines (mean, var, n), the open block, the CUSUM, the
# fast path, arming, the last time, the start of the run at alarm level, the EW regression of
# log(rate) and a ring of its history
(O_S_MEAN, O_S_VAR, O_S_N, O_B_MEAN, O_B_VAR, O_B_N, O_BLOCK_SUM, O_BLOCK_N, O_BLOCK_T0,
 O_CUSUM, O_LEFT_ZERO_T, O_FAST_SINCE, O_ARMED, O_ALARMED, O_QUIET_SINCE, O_LAST_T,
 O_HIST_HEAD, O_HIST_LEN, O_HIGH_SINCE) = range(19)
O_GROWTH = 19
HISTORY = 256
O_HIST_T = O_GROWTH + EW
O_HIST_G = O_HIST_T + HISTORY
N_ONSET = O_HIST_G + HISTORY
# parameters
(Q_BLOCK_S, Q_WARMUP_BLOCKS, Q_BASELINE_TAU, Q_CUSUM_K, Q_CUSUM_H, Q_FAST_Z, Q_FAST_HOLD,
 Q_MIN_RATE, Q_ALARM_RATE, Q_REARM_S, Q_GROWTH_TIME, Q_GROWTH_TAU, Q_GROWTH_LAG) = range(13)
N_ONSET_PARAM = 13
# event rows: sample index, onset time, statistic, rate, block baseline, sample sigma
N_ONSET_EVIDENCE = 6
# per-sample growth codes
SKIPPED, OFF, ON = -1, 0, 1


def new_onset_state() -> np.ndarray:
    st = np.zeros(N_ONSET)
    st[[O_BLOCK_T0, O_LEFT_ZERO_T, O_FAST_SINCE, O_QUIET_SINCE, O_LAST_T, O_HIGH_SINCE]] = np.nan
    st[O_ARMED] = 1.0
    return st


@nb.njit(cache=True)
def _learn(st: np.ndarray, base: int, x: float, weight: float, warm: float) -> None:
    """EWMA mean and variance at st[base:base + 3] = (mean, var, n), a running mean for the
    first ``warm`` values."""
    n = st[base + 2]
    a = weight
    if n < warm:
        first = 1.0 / (n + 1)
        if first > a:
            a = first
    diff = x - st[base]
    st[base] += a * diff
    st[base + 1] = (1 - a) * (st[base + 1] + a * diff * diff)
    st[base + 2] = n + 1


@nb.njit(cache=True)
def _rearm_onset(st: np.ndarray, t: float, quiet: bool, rearm_s: float) -> None:
    if st[O_ARMED] == 1.0:
        return
    if not quiet:
        st[O_QUIET_SINCE] = np.nan
    elif math.isnan(st[O_QUIET_SINCE]):
        st[O_QUIET_SINCE] = t
    elif t - st[O_QUIET_SINCE] >= rearm_s:
        st[O_ARMED], st[O_ALARMED], st[O_CUSUM] = 1.0, 0.0, 0.0


@nb.njit(cache=True)
def onset_step(st: np.ndarray, t: float, rate: float, dt: float, p: np.ndarray,
               ev: np.ndarray) -> bool:
    """One rate sample through the two onset paths (see processors/gas_events.py): a CUSUM over
    block means and a sample ``fast_z`` sigmas up for ``fast_hold_s``. On an onset, writes
    (onset time, statistic) to ev[0:2], disarms and returns True.

    The alarm-level run is the run of samples at half the alarm rate or more. An onset at the
    alarm rate is placed where that run began when it is later than where the excursion began:
    a burst on top of everyday gassing starts at the burst. A fast excursion that is in an
    alarm-level run fires once the run has held ``fast_hold_s`` too (or when the rate falls
    back below it), so that one burst makes one event at its severity. After an onset at the
    alarm rate, block means back below half of it for ``rearm_s`` re-arm the detector as a
    return to the baseline does, so that everyday gassing after a burst does not hide the
    next one."""
    alarm = p[Q_ALARM_RATE]
    if rate >= 0.5 * alarm:
        if math.isnan(st[O_HIGH_SINCE]):
            st[O_HIGH_SINCE] = t
    else:
        st[O_HIGH_SINCE] = np.nan
    high_since = st[O_HIGH_SINCE]
    high = math.isfinite(high_since)
    high_held = high and t - high_since >= p[Q_FAST_HOLD]
    warm = st[O_B_N] >= p[Q_WARMUP_BLOCKS] and st[O_B_VAR] > 0 and st[O_S_VAR] > 0
    z = (rate - st[O_S_MEAN]) / math.sqrt(st[O_S_VAR]) if warm else 0.0
    found = False
    if warm and z > p[Q_FAST_Z]:
        if math.isnan(st[O_FAST_SINCE]):
            st[O_FAST_SINCE] = t
        onset = st[O_FAST_SINCE]
        if rate >= alarm and high_since > onset:
            onset = high_since
        if st[O_ARMED] == 1.0:
            ready = t - st[O_FAST_SINCE] >= p[Q_FAST_HOLD] and (not high or high_held)
        else:  # an episode of gassing below the alarm rate escalates when a burst above it comes
            ready = st[O_ALARMED] == 0.0 and high_held and rate >= alarm
        if ready and rate > p[Q_MIN_RATE]:
            found = True
            ev[0], ev[1] = onset, z
    else:
        st[O_FAST_SINCE] = np.nan
    if math.isnan(st[O_BLOCK_T0]):
        st[O_BLOCK_T0] = t
    st[O_BLOCK_SUM] += rate
    st[O_BLOCK_N] += 1
    if t - st[O_BLOCK_T0] >= p[Q_BLOCK_S]:
        mean = st[O_BLOCK_SUM] / st[O_BLOCK_N]
        st[O_BLOCK_SUM], st[O_BLOCK_N], st[O_BLOCK_T0] = 0.0, 0.0, t
        if warm:
            zb = (mean - st[O_B_MEAN]) / math.sqrt(st[O_B_VAR])
            if st[O_CUSUM] == 0.0:
                st[O_LEFT_ZERO_T] = t - p[Q_BLOCK_S]
            cusum = st[O_CUSUM] + zb - p[Q_CUSUM_K]
            st[O_CUSUM] = cusum if cusum > 0.0 else 0.0
            if st[O_ARMED] == 1.0 and st[O_CUSUM] > p[Q_CUSUM_H] and mean > p[Q_MIN_RATE] \
                    and not found:
                found = True
                onset = st[O_LEFT_ZERO_T]
                if rate >= alarm and high_since > onset:
                    onset = high_since
                ev[0], ev[1] = onset, st[O_CUSUM]
            quiet, typical = zb < 0.5, abs(zb) < 3.0
            if st[O_ALARMED] == 1.0 and mean < 0.5 * alarm:
                quiet = True  # the burst is over
        else:
            quiet = typical = True
        if st[O_ARMED] == 1.0 and typical:
            _learn(st, O_B_MEAN, mean, 1.0 - math.exp(-p[Q_BLOCK_S] / p[Q_BASELINE_TAU]),
                   p[Q_WARMUP_BLOCKS])
        _rearm_onset(st, t, quiet, p[Q_REARM_S])
    if not warm or (st[O_ARMED] == 1.0 and abs(z) < 3.0):
        _learn(st, O_S_MEAN, rate, 1.0 - math.exp(-dt / p[Q_BASELINE_TAU]) if dt > 0 else 0.0,
               1e9 if not warm else 0.0)
    if found:
        st[O_ARMED] = 0.0
        st[O_QUIET_SINCE] = np.nan
    return found


@nb.njit(cache=True)
def growth_step(st: np.ndarray, t: float, rate: float, dt: float, p: np.ndarray
                ) -> tuple[int, float]:
    """Accelerating gas: the EW slope of log(rate) above 1/growth_time_s, above the onset level
    (baseline + 4 sigma) after warm-up, keeping half of it over ``growth_lag_s``. Returns
    (ON or OFF, the slope)."""
    level = st[O_S_MEAN] + 4.0 * math.sqrt(st[O_S_VAR])
    if st[O_B_N] < p[Q_WARMUP_BLOCKS] or rate <= level or rate <= 0:
        st[O_GROWTH:O_GROWTH + EW] = 0.0
        st[O_HIST_HEAD], st[O_HIST_LEN] = 0.0, 0.0
        return OFF, np.nan
    growth = ew_update(st[O_GROWTH:O_GROWTH + EW], dt, math.log(rate), p[Q_GROWTH_TAU])
    head, n = int(st[O_HIST_HEAD]), int(st[O_HIST_LEN])
    if n == HISTORY:  # full: the oldest goes
        head = (head + 1) % HISTORY
        n -= 1
    slot = (head + n) % HISTORY
    st[O_HIST_T + slot], st[O_HIST_G + slot] = t, growth
    n += 1
    while n > 1 and st[O_HIST_T + head] < t - p[Q_GROWTH_LAG]:
        head = (head + 1) % HISTORY
        n -= 1
    st[O_HIST_HEAD], st[O_HIST_LEN] = head, n
    # an exponential keeps its growth rate; a step through a first-order instrument loses it
    earlier_t, earlier = st[O_HIST_T + head], st[O_HIST_G + head]
    on = (math.isfinite(growth) and growth > 1.0 / p[Q_GROWTH_TIME]
          and t - earlier_t >= 0.5 * p[Q_GROWTH_LAG] and growth >= 0.5 * earlier)
    return (ON if on else OFF), growth


@nb.njit(cache=True)
def onset_block(ts: np.ndarray, rates: np.ndarray, st: np.ndarray, p: np.ndarray,
                report: bool, runaway: bool, events: np.ndarray, codes: np.ndarray,
                growth: np.ndarray) -> tuple[int, int, int]:
    """The rate samples of one frame of one gas. Samples that are not finite or not after the
    last one are skipped (codes SKIPPED). Onsets go to ``events`` rows [sample, onset t,
    statistic, rate, block baseline, sample sigma]; a reported (``report``) onset at or above
    the alarm rate marks the episode alarmed. With ``runaway`` the growth indicator's code
    (ON/OFF) and value are written per sample. Returns the numbers of onsets, of samples with
    growth ON and of samples used."""
    m = n_on = n_used = 0
    ev = np.empty(2)
    for k in range(ts.shape[0]):
        t, rate = ts[k], rates[k]
        codes[k] = SKIPPED
        growth[k] = np.nan
        last = st[O_LAST_T]
        if not math.isfinite(rate) or (math.isfinite(last) and t <= last):
            continue
        dt = 0.0 if math.isnan(last) else t - last
        st[O_LAST_T] = t
        if onset_step(st, t, rate, dt, p, ev) and report:
            events[m, 0], events[m, 1], events[m, 2], events[m, 3] = k, ev[0], ev[1], rate
            events[m, 4], events[m, 5] = st[O_B_MEAN], math.sqrt(st[O_S_VAR])
            m += 1
            if rate >= p[Q_ALARM_RATE]:
                st[O_ALARMED] = 1.0
        codes[k] = OFF
        n_used += 1
        if runaway:
            codes[k], growth[k] = growth_step(st, t, rate, dt, p)
            if codes[k] == ON:
                n_on += 1
    return m, n_on, n_used


@nb.njit(cache=True)
def slope_indicator(ts: np.ndarray, xs: np.ndarray, fit: np.ndarray, tau: float,
                    limit: float, codes: np.ndarray, slopes: np.ndarray) -> tuple[int, int]:
    """EW slope of a signal per sample (``fit`` = EW regression sums, then the last time):
    codes ON where the slope is finite and above ``limit``, OFF below, SKIPPED for samples not
    finite or not after the last one. Returns the numbers ON and used (ON or OFF)."""
    n_on = n_used = 0
    for k in range(ts.shape[0]):
        t, x = ts[k], xs[k]
        last = fit[EW]
        codes[k] = SKIPPED
        slopes[k] = np.nan
        if not math.isfinite(x) or (math.isfinite(last) and t <= last):
            continue
        dt = 0.0 if math.isnan(last) else t - last
        fit[EW] = t
        slope = ew_update(fit, dt, x, tau)
        slopes[k] = slope
        n_used += 1
        if math.isfinite(slope) and slope > limit:
            codes[k] = ON
            n_on += 1
        else:
            codes[k] = OFF
    return n_on, n_used
