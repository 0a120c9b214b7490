"""Numba kernels against slow numpy references."""

from __future__ import annotations

import numpy as np
from scipy.integrate import cumulative_trapezoid

from processors.kernels.coulomb import Q_TOTAL, coulomb_count, new_state


def _signal(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.uniform(0.05, 0.2, n))
    current = np.where((t // 100) % 2 == 0, 0.05, -0.04) + rng.normal(0, 1e-4, n)
    current[(t % 100) > 90] = 0.0  # rests
    voltage = 3.7 + 0.1 * np.sin(t / 50)
    return t, current, voltage


def test_coulomb_count_matches_trapezoid_in_blocks() -> None:
    t, i, v = _signal()
    state = new_state()
    q = np.concatenate([coulomb_count(t[k:k + 37], i[k:k + 37], v[k:k + 37], 1e-3, state)[0]
                        for k in range(0, len(t), 37)])
    ref = np.concatenate([[0.0], cumulative_trapezoid(i, t)]) / 3600.0
    np.testing.assert_allclose(q, ref, rtol=1e-12, atol=1e-15)
    assert state[Q_TOTAL] == q[-1]


def test_half_cycles_match_reference_segmentation() -> None:
    t, i, v = _signal()
    state = new_state()
    ends = np.vstack([coulomb_count(t[k:k + 50], i[k:k + 50], v[k:k + 50], 1e-3, state)[1] + [k, 0, 0, 0]
                      for k in range(0, len(t), 50)])
    # reference: sign of each non-rest sample; a half-cycle ends where the sign flips
    sign = np.sign(np.where(np.abs(i) > 1e-3, i, 0))
    nz = np.flatnonzero(sign)
    flips = nz[1:][sign[nz[1:]] != sign[nz[:-1]]]
    np.testing.assert_array_equal(ends[:, 0].astype(int), flips)
    # charge of each closed half-cycle = trapezoid from the previous flip to this one
    bounds = np.concatenate([[0], flips])
    for (start, stop), q in zip(zip(bounds[:-1], bounds[1:], strict=True), ends[:, 2], strict=True):
        ref = np.trapezoid(i[max(start - 1, 0):stop], t[max(start - 1, 0):stop]) / 3600.0 \
            if start else np.trapezoid(i[:stop], t[:stop]) / 3600.0
        assert abs(q - ref) < 1e-12
