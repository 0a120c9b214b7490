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
# ion-current spikes, seen in the mole fraction: the last fraction and its time, the fraction
# before a suspect run and the run's first step, the mean |step| of the fraction and its
# count, the length of the suspect run, the time of the last spike, whether the open block
# holds a rate a spike disturbed, the last rate and the time the suspect run began
(O_X_PREV, O_X_T_PREV, O_X_REF, O_X_JUMP, O_X_SCALE, O_X_N, O_SUSPECT, O_SPIKE_T,
 O_BLOCK_DIRTY, O_R_PREV, O_X_T_RUN) = range(19, 30)
O_GROWTH = 30
HISTORY = 256
O_HIST_T = O_GROWTH + EW
O_HIST_G = O_HIST_T + HISTORY
N_ONSET = O_HIST_G + HISTORY
# parameters
(Q_BLOCK_S, Q_WARMUP_BLOCKS, Q_BASELINE_TAU, Q_CUSUM_K, Q_CUSUM_H, Q_FAST_Z, Q_FAST_HOLD,
 Q_MIN_RATE, Q_ALARM_RATE, Q_REARM_S, Q_GROWTH_TIME, Q_GROWTH_TAU, Q_GROWTH_LAG,
 Q_SPIKE_VETO) = range(14)
N_ONSET_PARAM = 14
SPIKE_K = 10.0       # a fraction step this many mean |steps| is suspect ...
SPIKE_ALPHA = 0.05   # ... against an EWMA of |step| (weight per sample)
SPIKE_WARMUP = 16    # steps learnt before suspects are judged
SPIKE_MAX_BURST = 5  # a suspect run back within this many samples was a spike
# event rows: sample index, onset time, statistic, rate, block baseline, sample sigma
N_ONSET_EVIDENCE = 6
# per-sample growth codes
SKIPPED, OFF, ON = -1, 0, 1


def new_onset_state() -> np.ndarray:
    st = np.zeros(N_ONSET)
    st[[O_BLOCK_T0, O_LEFT_ZERO_T, O_FAST_SINCE, O_QUIET_SINCE, O_LAST_T, O_HIGH_SINCE,
        O_X_PREV, O_X_T_PREV, O_SPIKE_T, O_X_T_RUN]] = np.nan
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
def _learn_step(st: np.ndarray, step: float) -> None:
    """The mean |step| of the mole fraction: a running mean over the warm-up, then an EWMA of
    steps clipped at 3 means, so a spike missed does not raise it (a noisier signal still
    does, by up to a tenth per sample)."""
    n = st[O_X_N]
    if n < SPIKE_WARMUP:
        st[O_X_SCALE] += (step - st[O_X_SCALE]) / (n + 1.0)
    else:
        st[O_X_SCALE] += SPIKE_ALPHA * (min(step, 3.0 * st[O_X_SCALE]) - st[O_X_SCALE])
    st[O_X_N] = n + 1.0


@nb.njit(cache=True)
def spike_step(st: np.ndarray, t: float, x: float, rate: float, p: np.ndarray
               ) -> tuple[bool, bool, float]:
    """Ion-current spikes, seen in the gas's mole fraction ``x`` (NaN: not given). A sample is
    suspect when the fraction steps by more than ``SPIKE_K`` mean |steps| and the rate jumps
    with it by ``fast_z`` sample sigmas (a spike too small to start an onset is left alone);
    so are the next ones, up to ``SPIKE_MAX_BURST``, until the fraction is back within half
    the step of where it was: then they were a spike (a burst of them). Gas reaches the
    instrument through a headspace or a flow cell, which smooth it: only a sensor jumps up
    and back within seconds. A spike disturbs every rate computed over a window that holds
    it: the rates of the next ``spike_veto_s`` (the gas processor's slope window). Returns
    (suspect, disturbed, since) for this sample. A run that stays is a level change and is
    learnt: it is judged a few samples late, from ``since``, the time the run began (NaN
    otherwise)."""
    suspect = False
    since = np.nan
    if math.isfinite(x):
        prev = st[O_X_PREV]
        if math.isfinite(prev):
            step = abs(x - prev)
            run = st[O_SUSPECT]
            sigma = math.sqrt(st[O_S_VAR])
            if run > 0.0:
                if abs(x - st[O_X_REF]) < 0.5 * st[O_X_JUMP]:  # back: the run was a spike
                    st[O_SPIKE_T] = st[O_X_T_PREV]
                    st[O_BLOCK_DIRTY] = 1.0
                    run = 0.0
                elif run < SPIKE_MAX_BURST:
                    run += 1.0
                    suspect = True
                else:  # it stayed: a level change
                    _learn_step(st, st[O_X_JUMP])
                    run = 0.0
                    since = st[O_X_T_RUN]
            elif st[O_X_N] >= SPIKE_WARMUP and step > SPIKE_K * st[O_X_SCALE] \
                    and sigma > 0 and abs(rate - st[O_R_PREV]) > p[Q_FAST_Z] * sigma:
                run = 1.0
                suspect = True
                st[O_X_REF], st[O_X_JUMP], st[O_X_T_RUN] = prev, step, t
            else:
                _learn_step(st, step)
            st[O_SUSPECT] = run
        st[O_X_PREV], st[O_X_T_PREV] = x, t
    st[O_R_PREV] = rate
    return suspect, t - st[O_SPIKE_T] <= p[Q_SPIKE_VETO], since


@nb.njit(cache=True)
def onset_step(st: np.ndarray, t: float, rate: float, dt: float, p: np.ndarray,
               ev: np.ndarray, suspect: bool, disturbed: bool, since: float) -> bool:
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
    next one.

    ``suspect``, ``disturbed`` and ``since`` come from ``spike_step``: a suspect sample starts
    nothing and fires nothing (its block closes one sample later), and a fast excursion or an
    alarm-level run that starts when a suspect run turned out to be a level change starts
    where that run began; a disturbed sample ends them, and its block is not judged, learnt
    or counted towards a re-arm."""
    alarm = p[Q_ALARM_RATE]
    if disturbed:
        st[O_BLOCK_DIRTY] = 1.0
    start = since if math.isfinite(since) else t
    if rate >= 0.5 * alarm and not disturbed:
        if math.isnan(st[O_HIGH_SINCE]) and not suspect:
            st[O_HIGH_SINCE] = start
    else:
        st[O_HIGH_SINCE] = np.nan
    high_since = st[O_HIGH_SINCE]
    high = math.isfinite(high_since)
    high_held = high and t - high_since >= p[Q_FAST_HOLD]
    warm = st[O_B_N] >= p[Q_WARMUP_BLOCKS] and st[O_B_VAR] > 0 and st[O_S_VAR] > 0
    z = (rate - st[O_S_MEAN]) / math.sqrt(st[O_S_VAR]) if warm else 0.0
    found = False
    if suspect:
        pass  # judged with the next sample
    elif warm and z > p[Q_FAST_Z] and not disturbed:
        if math.isnan(st[O_FAST_SINCE]):
            st[O_FAST_SINCE] = start
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
    if t - st[O_BLOCK_T0] >= p[Q_BLOCK_S] and not suspect:
        mean = st[O_BLOCK_SUM] / st[O_BLOCK_N]
        st[O_BLOCK_SUM], st[O_BLOCK_N], st[O_BLOCK_T0] = 0.0, 0.0, t
        dirty = st[O_BLOCK_DIRTY] == 1.0
        st[O_BLOCK_DIRTY] = 0.0
        if dirty:
            st[O_QUIET_SINCE] = np.nan  # a spike's block says nothing about the gas
        elif warm:
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
        if not dirty:
            if st[O_ARMED] == 1.0 and typical:
                _learn(st, O_B_MEAN, mean, 1.0 - math.exp(-p[Q_BLOCK_S] / p[Q_BASELINE_TAU]),
                       p[Q_WARMUP_BLOCKS])
            _rearm_onset(st, t, quiet, p[Q_REARM_S])
    if suspect or disturbed:
        pass  # not learnt
    elif not warm or (st[O_ARMED] == 1.0 and abs(z) < 3.0):
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
def onset_block(ts: np.ndarray, rates: np.ndarray, xs: np.ndarray, st: np.ndarray,
                p: np.ndarray, report: bool, runaway: bool, events: np.ndarray,
                codes: np.ndarray, growth: np.ndarray) -> tuple[int, int, int]:
    """The rate samples of one frame of one gas, with its mole fractions ``xs`` (NaN where not
    given), which reveal ion-current spikes. Samples that are not finite or not after the
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
        suspect, disturbed, since = spike_step(st, t, xs[k], rate, p)
        if onset_step(st, t, rate, dt, p, ev, suspect, disturbed, since) and report:
            events[m, 0], events[m, 1], events[m, 2], events[m, 3] = k, ev[0], ev[1], rate
            events[m, 4], events[m, 5] = st[O_B_MEAN], math.sqrt(st[O_S_VAR])
            m += 1
            if rate >= p[Q_ALARM_RATE]:
                st[O_ALARMED] = 1.0
        codes[k] = OFF
        n_used += 1
        if runaway:
            if disturbed:  # a spike's rates say nothing about acceleration
                st[O_GROWTH:O_GROWTH + EW] = 0.0
                st[O_HIST_HEAD], st[O_HIST_LEN] = 0.0, 0.0
                continue
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
