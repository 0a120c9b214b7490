"""Change detectors and NNLS against textbook values and scipy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from processors.kernels.changepoint import (
    Cusum,
    Ewma,
    PageHinkley,
    cusum_kernel,
    ewma_kernel,
    page_hinkley_kernel,
    run_lengths,
)
from processors.kernels.nnls import nnls_kernel, nnls_many


def _mean_run_length(detector, n_samples: int, seed: int) -> float:
    x = np.random.default_rng(seed).standard_normal(n_samples)
    alarms = detector.update_many(x)
    return float(run_lengths(alarms).mean())


@pytest.mark.parametrize("h, arl0", [(4.0, 168.0), (5.0, 465.0)])
def test_cusum_in_control_run_length_matches_the_textbook(h: float, arl0: float) -> None:
    # ~40,000 run lengths: the standard error of the mean is ~0.5 %
    arl = _mean_run_length(Cusum(k=0.5, h=h), int(arl0 * 40_000), seed=int(h))
    assert arl == pytest.approx(arl0, rel=0.03)


def test_cusum_detects_a_one_sigma_shift_quickly() -> None:
    # Montgomery table 9.3: ARL1 ~ 10.4 for a 1-sigma shift at h = 5
    x = np.random.default_rng(1).standard_normal(2_000_000) + 1.0
    rl = run_lengths(Cusum(k=0.5, h=5.0).update_many(x))
    assert rl.mean() == pytest.approx(10.4, rel=0.05)


def test_ewma_in_control_run_length() -> None:
    # Montgomery table 9.11: lambda = 0.1, L = 2.814 (asymptotic limits) gives ARL0 = 500
    arl = _mean_run_length(Ewma(lam=0.1, width=2.814, exact_limits=False), 10_000_000, seed=3)
    assert arl == pytest.approx(500.0, rel=0.04)
    # exact (time-varying) limits are tighter early in each run: false alarms come sooner
    assert _mean_run_length(Ewma(lam=0.1, width=2.814), 5_000_000, seed=3) < arl


def test_kernels_equal_slow_python_references() -> None:
    x = np.random.default_rng(4).standard_normal(20_000) * 1.3 + 0.2
    # CUSUM
    hi = lo = 0.0
    ref = []
    for i, v in enumerate(x):
        z = (v - 0.2) / 1.3
        hi, lo = max(0.0, hi + z - 0.5), max(0.0, lo - z - 0.5)
        if hi > 4 or lo > 4:
            ref.append(i)
            hi = lo = 0.0
    got = cusum_kernel(x, 0.2, 1.3, 0.5, 4.0, np.zeros(2))
    assert got.tolist() == ref
    # Page-Hinkley
    mean = n = cum = low = 0.0
    ref = []
    for i, v in enumerate(x):
        n += 1
        mean += (v - mean) / n
        cum += v - mean - 0.05
        low = min(low, cum)
        if cum - low > 20:
            ref.append(i)
            mean = n = cum = low = 0.0
    assert page_hinkley_kernel(x, 0.05, 20.0, 1.0, np.zeros(4)).tolist() == ref
    # EWMA with exact limits
    z, t, ref = 0.0, 0, []
    for i, v in enumerate(x):
        t += 1
        z = 0.2 * (v - 0.2) + 0.8 * z
        if abs(z) > 2.5 * 1.3 * np.sqrt(0.2 / 1.8 * (1 - 0.8 ** (2 * t))):
            ref.append(i)
            z, t = 0.0, 0
    assert ewma_kernel(x, 0.2, 1.3, 0.2, 2.5, True, np.zeros(2)).tolist() == ref


def test_update_one_by_one_equals_update_many() -> None:
    x = np.random.default_rng(5).standard_normal(5000)
    a, b = Cusum(h=3.0), Cusum(h=3.0)
    one = [i for i, v in enumerate(x) if a.update(v)]
    assert one == b.update_many(x).tolist()
    ph = PageHinkley(delta=0.01, threshold=5.0)
    shifted = np.concatenate([np.zeros(500), np.ones(200)])
    assert ph.update_many(shifted)[0] >= 500


def test_nnls_recovers_the_known_gas_mix() -> None:
    # C2H4, CO, CO2 fluxes 1, 2, 3 with primary F = 1 give S26..S44 = 0.530, 0.624, 3.294, 3.0
    a = np.array([[0.530, 0.0, 0.0], [0.624, 0.0, 0.0], [1.0, 1.0, 0.098], [0.0, 0.0, 1.0]])
    s = np.array([0.530, 0.624, 3.294, 3.0])
    np.testing.assert_allclose(nnls_kernel(a, s), [1.0, 2.0, 3.0], rtol=1e-10)


def test_nnls_matches_scipy_on_random_problems() -> None:
    rng = np.random.default_rng(6)
    for _ in range(200):
        m, n = rng.integers(3, 9), rng.integers(2, 6)
        a = rng.random((m, n))
        b = rng.standard_normal(m)
        ref, _ = nnls(a, b)
        got = nnls_kernel(a, b)
        assert np.linalg.norm(a @ got - b) == pytest.approx(np.linalg.norm(a @ ref - b),
                                                            abs=1e-9)
        np.testing.assert_allclose(got, ref, atol=1e-8)
    signals = rng.random((50, 4))
    a = rng.random((4, 3))
    np.testing.assert_allclose(nnls_many(a, signals),
                               np.array([nnls(a, s)[0] for s in signals]), atol=1e-8)


def test_nnls_is_scale_free() -> None:
    a = np.array([[0.530, 0.0, 0.0], [0.624, 0.0, 0.0], [1.0, 1.0, 0.098], [0.0, 0.0, 1.0]])
    s = np.array([0.530, 0.624, 3.294, 3.0])
    for scale in (1e-12, 1e-9, 1.0, 1e6):
        np.testing.assert_allclose(nnls_kernel(a * scale, s * scale * 1e-3),
                                   [1e-3, 2e-3, 3e-3], rtol=1e-9)
