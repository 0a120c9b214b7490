"""Kernels that replaced per-sample Python loops, each against a slow numpy/scipy reference."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from scipy.optimize import nnls

from processors.gas_events import GasEventsConfig, onset_params
from processors.kernels import gas_rates as R
from processors.kernels.echem_events import EW
from processors.mass_spec import cracking_matrix

GASES = ["H2", "CO", "CO2", "C2H4", "O2", "SO2", "Ar"]
CHANNELS = [2, 12, 16, 20, 26, 27, 28, 32, 40, 44, 48, 64]


def window_slopes(t: np.ndarray, x: np.ndarray, window_s: float) -> np.ndarray:
    """Reference: np.polyfit over the samples within window_s of each sample (0 below 3)."""
    out = np.zeros_like(x)
    for k in range(t.size):
        m = (t >= t[k] - window_s) & (t <= t[k])
        if m.sum() >= 3:
            out[k] = [np.polyfit(t[m] - t[m][0], x[m, j], 1)[0] for j in range(x.shape[1])]
    return out


def test_sliding_slope_kernel_matches_polyfit_through_growth_and_re_anchoring() -> None:
    rng = np.random.default_rng(1)
    # irregular sampling, a burst of fast samples (the ring grows) and a jump past 1e4 s
    dt = np.concatenate([rng.uniform(0.5, 1.5, 300), np.full(200, 0.05), [2e4],
                         rng.uniform(0.5, 1.5, 200)])
    t = np.cumsum(dt) + 1e6
    x = np.column_stack([3e-3 * (t - 1e6) + rng.normal(0, 1, t.size), -2e-9 * (t - 1e6),
                         np.sin(t / 50.0)])
    s, sums = R.new_slope_state(), np.zeros((2, 3))
    buf_t, buf_x = np.zeros(0), np.zeros((0, 3))
    got = np.empty_like(x)
    for k in range(t.size):
        buf_t, buf_x = R.grow_ring(s, buf_t, buf_x, 1)
        R.slope_update(s, sums, buf_t, buf_x, t[k], x[k], 20.0, got[k])
    assert buf_t.size >= 200  # the ring grew through the 0.05 s burst
    # running sums lose ~1e-5 relative just after the 2e4 s jump (old samples added and removed
    # at u = -2e4 s), as the Python version did
    np.testing.assert_allclose(got, window_slopes(t, x, 20.0), rtol=1e-4, atol=1e-13)
    # the same arithmetic as the deque-of-samples version it replaced: bit for bit
    ref = DequeSlope(3, 20.0)
    assert np.array_equal(got, np.array([ref.update(t[k], x[k]) for k in range(t.size)]))


class DequeSlope:
    """The per-sample Python sliding slope that the kernel replaced (running sums over a deque,
    re-anchored every 1e4 s)."""

    def __init__(self, width: int, window_s: float):
        self.window_s = window_s
        self.samples: deque[tuple[float, np.ndarray]] = deque()
        self.t_ref: float | None = None
        self.n = 0
        self.st = self.stt = 0.0
        self.sx = np.zeros(width)
        self.stx = np.zeros(width)

    def _add(self, t: float, x: np.ndarray, sign: float) -> None:
        u = t - self.t_ref
        self.n += int(sign)
        self.st += sign * u
        self.stt += sign * u * u
        self.sx += sign * x
        self.stx += sign * u * x

    def update(self, t: float, x: np.ndarray) -> np.ndarray:
        if self.t_ref is None or t - self.t_ref > 1e4:
            self.t_ref = t
            self.n, self.st, self.stt = 0, 0.0, 0.0
            self.sx[:] = 0.0
            self.stx[:] = 0.0
            for ts, xs in self.samples:
                self._add(ts, xs, 1.0)
        self.samples.append((t, x))
        self._add(t, x, 1.0)
        while self.samples[0][0] < t - self.window_s:
            ts, xs = self.samples.popleft()
            self._add(ts, xs, -1.0)
        denom = self.n * self.stt - self.st * self.st
        if self.n < 3 or denom <= 0:
            return np.zeros_like(x)
        return (self.n * self.stx - self.st * self.sx) / denom


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 127, 128, 129, 300, 1000])
def test_pairwise_sum_is_bit_identical_to_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    rows = rng.random((50, n)) * 10.0 ** rng.uniform(-12, 0, (50, n))
    expected = rows.sum(axis=1)
    got = np.array([R.pairwise_sum(r) for r in rows])
    assert np.array_equal(got, expected)


def test_cached_nnls_matches_scipy_with_active_constraints() -> None:
    rng = np.random.default_rng(2)
    a = cracking_matrix(CHANNELS, GASES) * 1e-9
    scale = float(np.abs(a).max())
    pinv, have = R.new_pinv_cache(len(CHANNELS), len(GASES))
    out = np.empty(len(GASES))
    for trial in range(300):
        x = rng.uniform(0, 1, len(GASES)) * 10.0 ** rng.uniform(-6, 0, len(GASES))
        x[rng.random(len(GASES)) < 0.3] = 0.0
        b = a @ x * (1 + rng.normal(0, 0.01, len(CHANNELS))) + rng.normal(0, 1e-14,
                                                                            len(CHANNELS))
        if trial % 7 == 0:
            b -= 3e-10  # forces negative unconstrained solutions
        R.nnls_cached(a / scale, scale, b, pinv, have, out)
        ref = nnls(a / scale, b / scale)[0]
        np.testing.assert_allclose(out, ref, rtol=1e-8, atol=1e-12 * np.abs(ref).max())
        assert np.all(out >= 0.0)
    assert 1 < have.sum() < have.size  # sub-problems were cached, not every passive set


def test_nnls_without_cache_above_the_species_limit() -> None:
    rng = np.random.default_rng(3)
    n = R.MAX_CACHED_SPECIES + 1
    a = rng.uniform(0, 1, (20, n))
    pinv, have = R.new_pinv_cache(20, n)
    assert have.size == 1
    out = np.empty(n)
    b = a @ np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0, 1, n))
    R.nnls_cached(a, 1.0, b, pinv, have, out)
    np.testing.assert_allclose(out, nnls(a, b)[0], atol=1e-9)


def gas_reference(signals: np.ndarray, t: np.ndarray, a: np.ndarray, ar: int, flow: bool,
                  ar_fraction: float, n_total: float, q_molar: float, tau: float,
                  window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Fractions and rates the slow way: scipy nnls, normalisation, polyfit slopes."""
    x = np.array([nnls(a, b)[0] for b in signals])
    x = x * (ar_fraction / x[:, ar:ar + 1]) if flow else x / x.sum(axis=1, keepdims=True)
    slope = window_slopes(t, x, window_s)
    rate = q_molar * (x + tau * slope) if flow else slope * n_total
    return x, rate


@pytest.mark.parametrize("flow", [False, True])
def test_gas_block_matches_reference_in_blocks(flow: bool) -> None:
    rng = np.random.default_rng(4)
    a = cracking_matrix(CHANNELS, GASES) * 1e-9
    n, ar = 240, GASES.index("Ar")
    t = np.arange(n, dtype=np.float64)
    frac = np.zeros((n, len(GASES)))
    frac[:, ar] = 0.97
    frac[:, 0] = 1e-3 + 2e-6 * t            # H2 rising
    frac[:, 2] = 5e-4 * (t > 100)           # CO2 step
    frac[:, 3] = 2e-3
    signals = frac @ a.T * (1 + rng.normal(0, 0.003, (n, len(CHANNELS))))
    params = np.zeros(R.N_GAS_PARAM)
    params[[R.P_AR, R.P_FLOW, R.P_AR_FRACTION, R.P_N_TOTAL, R.P_Q_MOLAR, R.P_TAU, R.P_WINDOW,
            R.P_SHIFT]] = [ar, flow, 0.01, 4e-4, 4e-7, 30.0, 30.0, 4.0 if flow else 0.0]
    scale = float(np.abs(a).max())
    pinv, have = R.new_pinv_cache(len(CHANNELS), len(GASES))
    s, sums, acc = R.new_slope_state(), np.zeros((2, len(GASES))), np.zeros(len(GASES))
    buf_t, buf_x = np.zeros(0), np.zeros((0, len(GASES)))
    xs, rates, times = [], [], []
    for k in range(0, n, 17):  # blocks of 17 samples, the last one shorter
        blk = slice(k, min(k + 17, n))
        m = blk.stop - blk.start
        buf_t, buf_x = R.grow_ring(s, buf_t, buf_x, m)
        x_out, r_out, t_out = np.empty((len(GASES), m)), np.empty((len(GASES), m)), np.empty(m)
        params[R.P_BASE] = float(k)
        status = R.gas_block(np.ascontiguousarray(signals[blk]), t[blk] - k, a / scale, scale,
                             pinv, have, params, s, sums, buf_t, buf_x, acc, x_out, r_out, t_out)
        assert status == R.OK
        xs.append(x_out.T)
        rates.append(r_out.T)
        times.append(t_out)
    x_ref, rate_ref = gas_reference(signals, t, a, ar, flow, 0.01, 4e-4, 4e-7, 30.0, 30.0)
    np.testing.assert_allclose(np.concatenate(times), t - (4.0 if flow else 0.0))
    np.testing.assert_allclose(np.vstack(xs), x_ref, rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(np.vstack(rates), rate_ref, rtol=1e-6,
                               atol=1e-9 * np.abs(rate_ref).max())
    if flow:  # the amount: the last rate of each block times the time since the last block
        last = np.r_[np.arange(16, n, 17), n - 1]
        span = np.diff(np.r_[t[last[0]], t[last]])
        np.testing.assert_allclose(acc, (rate_ref[last] * span[:, None]).sum(axis=0),
                                   rtol=1e-6, atol=1e-9 * np.abs(acc).max())
    else:
        np.testing.assert_allclose(acc, x_ref[0] * 4e-4, rtol=1e-7)


def test_gas_block_rejects_without_touching_the_state() -> None:
    a = cracking_matrix(CHANNELS, GASES)
    params = np.zeros(R.N_GAS_PARAM)
    params[[R.P_AR, R.P_WINDOW, R.P_N_TOTAL]] = [GASES.index("Ar"), 30.0, 1.0]
    pinv, have = R.new_pinv_cache(len(CHANNELS), len(GASES))
    s, sums, acc = R.new_slope_state(), np.zeros((2, len(GASES))), np.zeros(len(GASES))
    buf_t, buf_x = R.grow_ring(s, np.zeros(0), np.zeros((0, len(GASES))), 4)
    before = s.copy()
    outs = (np.empty((len(GASES), 1)), np.empty((len(GASES), 1)), np.empty(1))
    bad = np.full((1, len(CHANNELS)), 1e-9)
    bad[0, 3] = np.nan
    assert R.gas_block(bad, np.zeros(1), a, 1.0, pinv, have, params, s, sums, buf_t, buf_x,
                       acc, *outs) == R.NON_FINITE
    no_ar = (a[:, [0]] * 1e-3).T.copy()  # only H2: no Ar signal
    assert R.gas_block(no_ar, np.zeros(1), a, 1.0, pinv, have, params, s, sums, buf_t, buf_x,
                       acc, *outs) == R.NO_STANDARD
    assert np.array_equal(s, before, equal_nan=True) and not sums.any() and not acc.any()


# -- gas events ----------------------------------------------------------------------------


def ew_reference(sums: list[float], dt: float, y: float, tau: float) -> float:
    """The exponentially weighted regression step of kernels.echem_events.ew_update, in plain
    Python: sums [S0, Sx, Sxx, Sy, Sxy] with x = t - t_now."""
    decay = math.exp(-dt / tau) if dt > 0 else 1.0
    s0, sx, sxx, sy, sxy = sums
    sxx = decay * (sxx - 2.0 * dt * sx + dt * dt * s0)
    sx = decay * (sx - dt * s0)
    sxy = decay * (sxy - dt * sy)
    s0 = decay * s0 + 1.0
    sy = decay * sy + y
    sums[:] = [s0, sx, sxx, sy, sxy]
    det = s0 * sxx - sx * sx
    if s0 < 1.5 or det <= 1e-12 * s0 * sxx:
        return math.nan
    return (s0 * sxy - sx * sy) / det


class SpikeReference:
    """Ion-current spikes seen in one gas's mole fraction, as kernels.gas_rates.spike_step
    documents them, in plain Python. A fraction step of more than SPIKE_K mean |steps| that
    comes with a rate jump of fast_z sample sigmas starts a suspect run; the run's next
    samples (up to SPIKE_MAX_BURST in all) are suspect too, until the fraction is back within
    half the step of where it was: the run was a spike, and rates until spike_veto_s after its
    last sample are disturbed. A run that stays is a level change, learnt, and reported (as
    ``since``) with the time it began. The mean |step| is a running mean over SPIKE_WARMUP
    steps, then an EWMA of steps clipped at three means."""

    def __init__(self, c: GasEventsConfig):
        self.c = c
        self.x_prev = self.x_prev_t = math.nan   # the last fraction given, and its time
        self.mean_step, self.n_steps = 0.0, 0
        self.run = 0                             # samples in the suspect run (0: none)
        self.run_from = self.run_jump = 0.0      # fraction before the run, its first step
        self.run_t0 = math.nan                   # when the run began
        self.spike_t = math.nan                  # the last sample of the last spike
        self.rate_prev = 0.0
        self.n_spikes = self.n_level_changes = 0

    def learn_step(self, step: float) -> None:
        if self.n_steps < R.SPIKE_WARMUP:
            self.mean_step += (step - self.mean_step) / (self.n_steps + 1.0)
        else:
            self.mean_step += R.SPIKE_ALPHA * (min(step, 3.0 * self.mean_step) - self.mean_step)
        self.n_steps += 1

    def step(self, t: float, x: float, rate: float, sigma: float
             ) -> tuple[bool, bool, bool, float]:
        """(suspect, the spike just ended, disturbed, since) for one used rate sample."""
        suspect, ended, since = False, False, math.nan
        if math.isfinite(x) and math.isfinite(self.x_prev):
            step = abs(x - self.x_prev)
            if self.run > 0:
                if abs(x - self.run_from) < 0.5 * self.run_jump:  # back: it was a spike
                    self.spike_t = self.x_prev_t
                    self.run, ended = 0, True
                    self.n_spikes += 1
                elif self.run < R.SPIKE_MAX_BURST:
                    self.run += 1
                    suspect = True
                else:  # it stayed: a level change
                    self.learn_step(self.run_jump)
                    self.run, since = 0, self.run_t0
                    self.n_level_changes += 1
            elif (self.n_steps >= R.SPIKE_WARMUP and step > R.SPIKE_K * self.mean_step
                  and sigma > 0 and abs(rate - self.rate_prev) > self.c.fast_z * sigma):
                self.run, suspect = 1, True
                self.run_from, self.run_jump, self.run_t0 = self.x_prev, step, t
            else:
                self.learn_step(step)
        if math.isfinite(x):
            self.x_prev, self.x_prev_t = x, t
        self.rate_prev = rate
        disturbed = t - self.spike_t <= self.c.spike_veto_s  # False while there was none
        return suspect, ended, disturbed, since


# the kernel's state that OnsetReference.state() gives, in that order
KERNEL_STATE = [R.O_S_MEAN, R.O_S_VAR, R.O_S_N, R.O_B_MEAN, R.O_B_VAR, R.O_B_N, R.O_CUSUM,
                R.O_LEFT_ZERO_T, R.O_FAST_SINCE, R.O_HIGH_SINCE, R.O_ARMED, R.O_ALARMED,
                R.O_QUIET_SINCE, R.O_BLOCK_DIRTY, R.O_X_SCALE, R.O_X_N, R.O_SUSPECT, R.O_SPIKE_T]


class OnsetReference:
    """Gassing onset (block CUSUM and fast path, with the alarm-level run and the spike veto)
    and the growth indicator, per sample, in plain Python from the rules documented in
    kernels.gas_rates (onset_step, spike_step, onset_block)."""

    def __init__(self, c: GasEventsConfig):
        self.c = c
        self.spikes = SpikeReference(c)
        self.sample = [0.0, 0.0, 0]   # mean, var, n
        self.block = [0.0, 0.0, 0]
        self.block_sum, self.block_n, self.block_t0 = 0.0, 0, math.nan
        self.block_dirty = False      # the open block holds a rate a spike disturbed
        self.cusum, self.left_zero_t, self.fast_since = 0.0, math.nan, math.nan
        self.high_since = math.nan    # start of the run at half the alarm rate or more
        self.armed, self.alarmed, self.quiet_since = True, False, math.nan
        self.last_t = math.nan
        self.growth = [0.0] * 5
        self.history: deque = deque(maxlen=256)

    @staticmethod
    def learn(b: list, x: float, weight: float, warm: int) -> None:
        a = max(weight, 1.0 / (b[2] + 1)) if b[2] < warm else weight
        diff = x - b[0]
        b[0] += a * diff
        b[1] = (1 - a) * (b[1] + a * diff * diff)
        b[2] += 1

    def onset(self, t: float, rate: float, dt: float, suspect: bool = False,
              disturbed: bool = False, since: float = math.nan) -> tuple[float, float] | None:
        c = self.c
        alarm = c.alarm_rate_mol_s
        # what starts now starts where a suspect run that stayed began
        start = since if math.isfinite(since) else t
        if disturbed:
            self.block_dirty = True
        # the alarm-level run: a disturbed sample ends it, a suspect one starts none
        if rate < 0.5 * alarm or disturbed:
            self.high_since = math.nan
        elif math.isnan(self.high_since) and not suspect:
            self.high_since = start
        in_high_run = not math.isnan(self.high_since)
        high_run_held = in_high_run and t - self.high_since >= c.fast_hold_s

        def placed(onset_t: float) -> float:
            """An alarm-rate onset starts where the alarm-level run began, if that is later."""
            if rate >= alarm and in_high_run and self.high_since > onset_t:
                return self.high_since
            return onset_t

        warm = self.block[2] >= c.warmup_blocks and self.block[1] > 0 and self.sample[1] > 0
        z = (rate - self.sample[0]) / math.sqrt(self.sample[1]) if warm else 0.0
        found = None
        if suspect:
            pass  # neither starts nor ends nor fires: judged with the next sample
        elif warm and z > c.fast_z and not disturbed:
            if math.isnan(self.fast_since):
                self.fast_since = start
            if self.armed:  # held fast_hold_s, and so has the alarm-level run if in one
                ready = t - self.fast_since >= c.fast_hold_s and (
                    high_run_held or not in_high_run)
            else:  # an episode below the alarm rate escalates once a burst above it has held
                ready = not self.alarmed and high_run_held and rate >= alarm
            if ready and rate > c.min_rate_mol_s:
                found = (placed(self.fast_since), z)
        else:
            self.fast_since = math.nan
        if math.isnan(self.block_t0):
            self.block_t0 = t
        self.block_sum += rate
        self.block_n += 1
        if t - self.block_t0 >= c.block_s and not suspect:  # a suspect sample's block waits
            mean = self.block_sum / self.block_n
            self.block_sum, self.block_n, self.block_t0 = 0.0, 0, t
            dirty, self.block_dirty = self.block_dirty, False
            if dirty:  # not judged, not learnt, and the quiet time for a re-arm restarts
                self.quiet_since = math.nan
            else:
                if warm:
                    zb = (mean - self.block[0]) / math.sqrt(self.block[1])
                    if self.cusum == 0.0:
                        self.left_zero_t = t - c.block_s
                    self.cusum = max(0.0, self.cusum + zb - c.cusum_k)
                    if self.armed and self.cusum > c.cusum_h and mean > c.min_rate_mol_s \
                            and found is None:
                        found = (placed(self.left_zero_t), self.cusum)
                    # back at the baseline, or (after a warning) below half the alarm rate
                    quiet = zb < 0.5 or (self.alarmed and mean < 0.5 * alarm)
                    typical = abs(zb) < 3.0
                else:
                    quiet = typical = True
                if self.armed and typical:
                    self.learn(self.block, mean, 1.0 - math.exp(-c.block_s / c.baseline_tau_s),
                               c.warmup_blocks)
                if not self.armed:
                    if not quiet:
                        self.quiet_since = math.nan
                    elif math.isnan(self.quiet_since):
                        self.quiet_since = t
                    elif t - self.quiet_since >= c.rearm_s:
                        self.armed, self.alarmed, self.cusum = True, False, 0.0
        learnt = not warm or (self.armed and abs(z) < 3.0)
        if learnt and not suspect and not disturbed:
            self.learn(self.sample, rate,
                       1.0 - math.exp(-dt / c.baseline_tau_s) if dt > 0 else 0.0,
                       10 ** 9 if not warm else 0)
        if found is not None:
            self.armed = False
            self.quiet_since = math.nan
        return found

    def state(self) -> list[float]:
        """What the detectors have learnt and where they are, in KERNEL_STATE's order."""
        sp = self.spikes
        return [*self.sample, *self.block, self.cusum, self.left_zero_t, self.fast_since,
                self.high_since, self.armed, self.alarmed, self.quiet_since, self.block_dirty,
                sp.mean_step, sp.n_steps, sp.run, sp.spike_t]

    def reset_growth(self) -> None:
        self.growth = [0.0] * 5
        self.history.clear()

    def grow(self, t: float, rate: float, dt: float) -> tuple[bool, float]:
        c = self.c
        level = self.sample[0] + 4.0 * math.sqrt(self.sample[1])
        if self.block[2] < c.warmup_blocks or rate <= level or rate <= 0:
            self.reset_growth()
            return False, math.nan
        g = ew_reference(self.growth, dt, math.log(rate), c.growth_tau_s)
        self.history.append((t, g))
        while self.history[0][0] < t - c.growth_lag_s:
            self.history.popleft()
        t0, earlier = self.history[0]
        return (math.isfinite(g) and g > 1.0 / c.growth_time_s
                and t - t0 >= 0.5 * c.growth_lag_s and g >= 0.5 * earlier), g

    def run(self, ts: np.ndarray, rates: np.ndarray, xs: np.ndarray | None = None
            ) -> tuple[list, list, list]:
        """Events, growth codes and growth values; ``xs`` the mole fractions (None: not
        given)."""
        if xs is None:
            xs = np.full(ts.size, np.nan)
        events, codes, growth = [], [], []
        for k, (t, rate, x) in enumerate(zip(ts.tolist(), rates.tolist(), xs.tolist(),
                                             strict=True)):
            if not math.isfinite(rate) or (math.isfinite(self.last_t) and t <= self.last_t):
                codes.append(R.SKIPPED)
                growth.append(math.nan)
                continue
            dt = 0.0 if math.isnan(self.last_t) else t - self.last_t
            self.last_t = t
            suspect, ended, disturbed, since = self.spikes.step(t, x, rate,
                                                                math.sqrt(self.sample[1]))
            if ended:
                self.block_dirty = True  # the block holds the spike
            found = self.onset(t, rate, dt, suspect, disturbed, since)
            if found is not None:
                events.append([k, *found, rate, self.block[0], math.sqrt(self.sample[1])])
                self.alarmed = self.alarmed or rate >= self.c.alarm_rate_mol_s
            if disturbed:  # a spike's rates say nothing about acceleration
                self.reset_growth()
                on, g = False, math.nan
            else:
                on, g = self.grow(t, rate, dt)
            codes.append(R.ON if on else R.OFF)
            growth.append(g)
        return events, codes, growth


def gassing_rates(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A quiet baseline, then a burst (fast path) or small persistent gassing (block CUSUM),
    then an exponential runaway; with NaN, repeated and out-of-order samples."""
    rng = np.random.default_rng(len(kind))
    t = np.arange(9000, dtype=np.float64)
    rate = 1e-11 + 2e-12 * rng.standard_normal(t.size)
    if kind == "burst":
        rate[3000:3100] += 5e-10
    else:
        rate[3000:5000] += 1e-12
    rate[6000:] += 1e-12 * np.exp((t[6000:] - 6000) / 100.0)
    rate[[100, 4000, 8000]] = np.nan
    t[[2000, 5500]] = t[[1999, 5490]]
    return t, rate


# m2 spikes x21 (one sample, or bursts of two and three), planted while the detector warms up,
# while it is armed (one where a 60-s block closes, two followed by a gap in the data, one that
# decays over two samples), within the veto of another spike, on a burst below the alarm rate,
# on the sample where a warning-level burst fires, and in everyday gassing while disarmed
SPIKES = [[300], [1530], [1800, 1801], [2200, 2201, 2202], [2600], [2615], [3050], [5036],
          [6000]]


def spiky_gassing() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed cell's H2 as the gas processor gives it: the mole fraction (the amount over
    n_total, with noise) and the rate (n_total times its 30-s least-squares slope), with
    ion-current spikes (SPIKES), a spike too small to matter, a level change that stays, a
    burst, two warning-level bursts with everyday gassing between them and a runaway; NaN
    rates and fractions, a gap and a repeated sample."""
    rng = np.random.default_rng(7)
    n, n_total, window = 9000, 4e-4, 31
    t = np.arange(n, dtype=np.float64)

    def burst(t0: float, t1: float, size: float) -> np.ndarray:
        """Gas from t0 to t1 as the instrument sees it, through a 5-s lag."""
        return size * (np.exp(-np.clip(t - t1, 0, None) / 5.0)
                       - np.exp(-np.clip(t - t0, 0, None) / 5.0))

    true = 1e-11 + burst(3000, 3100, 5e-10)   # a burst below the alarm rate
    true += burst(5015, 5200, 3e-9)           # a warning-level burst ...
    true[5200:7000] += 2e-10                  # ... then everyday gassing ...
    true += burst(6500, 6600, 3e-9)           # ... and a burst on top of it
    true[7500:] += 1e-12 * np.exp((t[7500:] - 7500) / 100.0)
    x = 1e-3 + np.cumsum(true) / n_total + 2.5e-6 * rng.standard_normal(n)
    x[4000:] += 1e-4               # a step that stays: a level change
    x[1200] *= 1.04                # a step too small to swing the rate by fast_z sigmas
    for spike in SPIKES:
        x[spike] *= 21.0
    x[2601] = x[2599] + 0.4 * (x[2600] - x[2599])  # within half the step of where it was
    u = np.arange(window) - (window - 1) / 2.0
    weights = u[::-1] / (u * u).sum()  # least-squares slope over the last 31 samples
    rate = np.full(n, np.nan)          # NaN until the window has filled
    rate[window - 1:] = n_total * np.convolve(x, weights, mode="valid")
    rate[[4500, 8000]] = np.nan
    rate[1802:1842] = np.nan           # 40 s without data: the spike has left the window
    x[[700, 4300]] = np.nan
    t[2000] = t[1999]
    return t, rate, x


@pytest.mark.parametrize("kind", ["burst", "small", "spikes"])
def test_onset_block_is_bit_identical_to_the_python_detectors(kind: str) -> None:
    c = GasEventsConfig()
    if kind == "spikes":
        t, rate, x = spiky_gassing()
    else:  # no mole fractions given: no spike is seen
        t, rate = gassing_rates(kind)
        x = np.full(t.size, np.nan)
    reference = OnsetReference(c)
    st, p = R.new_onset_state(), onset_params(c)
    events, codes, growth, ref_events, ref_codes, ref_growth = [], [], [], [], [], []
    for k in range(0, t.size, 7):  # blocks of 7 samples
        n = min(7, t.size - k)
        ev, cd, gr = np.empty((n, R.N_ONSET_EVIDENCE)), np.empty(n, dtype=np.int64), np.empty(n)
        m, n_on, n_used = R.onset_block(t[k:k + n], rate[k:k + n], x[k:k + n], st, p, True,
                                        True, ev, cd, gr)
        assert n_on == (cd == R.ON).sum() and n_used == (cd != R.SKIPPED).sum()
        events += [[row[0] + k, *row[1:]] for row in ev[:m].tolist()]
        codes += cd.tolist()
        growth += gr.tolist()
        ref_ev, ref_cd, ref_gr = reference.run(t[k:k + n], rate[k:k + n], x[k:k + n])
        ref_events += [[row[0] + k, *row[1:]] for row in ref_ev]
        ref_codes += ref_cd
        ref_growth += ref_gr
        # and the same state: learnt baselines, CUSUM, runs, arming, spike tracking
        np.testing.assert_array_equal(st[KERNEL_STATE], reference.state(), err_msg=f"at {k}")
    # the burst (fast path, statistic in sigmas) or the small gassing (CUSUM well above h)
    assert 3000 <= ref_events[0][0] < 3600 and 2800 <= ref_events[0][1] <= 3100
    assert ref_events[0][2] > (c.cusum_h if kind == "small" else c.fast_z)
    assert events == ref_events
    assert codes == ref_codes and R.ON in codes and R.SKIPPED in codes
    np.testing.assert_array_equal(growth, ref_growth)
    if kind == "spikes":  # the veto was exercised: every spike seen, and the level change
        assert reference.spikes.n_spikes == len(SPIKES)
        assert reference.spikes.n_level_changes >= 1  # (the two-sample spike's tail is one)
        # without their fractions, the same rates raise onsets at the spikes
        unvetoed = OnsetReference(c).run(t, rate)[0]
        assert any(e[1] < 3000 for e in unvetoed)


def test_slope_indicator_matches_a_python_loop() -> None:
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.uniform(0.05, 0.2, 3000))
    x = 25.0 + 0.3 * np.maximum(t - 200.0, 0.0) + rng.normal(0, 0.01, t.size)
    x[[50, 51, 900]] = np.nan
    t[700] = t[699]
    fit = np.zeros(EW + 1)
    fit[EW] = np.nan
    codes, slopes = np.empty(t.size, dtype=np.int64), np.empty(t.size)
    n_on, n_used = R.slope_indicator(t, x, fit, 30.0, 0.2, codes, slopes)
    sums, last = [0.0] * 5, math.nan
    for k in range(t.size):
        if not math.isfinite(x[k]) or (math.isfinite(last) and t[k] <= last):
            assert codes[k] == R.SKIPPED
            continue
        dt = 0.0 if math.isnan(last) else t[k] - last
        last = t[k]
        slope = ew_reference(sums, dt, x[k], 30.0)
        assert slopes[k] == slope or (math.isnan(slope) and math.isnan(slopes[k]))
        assert codes[k] == (R.ON if math.isfinite(slope) and slope > 0.2 else R.OFF)
    assert n_used == t.size - 4 and 0 < n_on == (codes == R.ON).sum()
    # and the slope itself: 0.3 degC/s once the ramp has filled the window
    assert slopes[-1] == pytest.approx(0.3, rel=0.05)
