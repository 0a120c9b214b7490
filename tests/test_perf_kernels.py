"""Kernels that replaced per-sample Python loops, each against a slow numpy/scipy reference."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from scipy.optimize import nnls

from processors.kernels import gas_rates as R
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
