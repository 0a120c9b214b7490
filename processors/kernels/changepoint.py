"""Streaming change detectors: two-sided CUSUM, EWMA control chart and Page–Hinkley.

Each detector is an object whose state lives on it (River style): ``update(x)`` is O(1) and
returns True on an alarm; ``update_many(xs)`` runs the same recursion over an array in a numba
kernel and returns the alarm indices. After an alarm the statistic restarts from zero, so run
lengths can be counted. Inputs are standardised by the detector's in-control mean and sigma.

References: Page, Biometrika 41 (1954) 100 (CUSUM, Page–Hinkley); Montgomery, *Introduction to
Statistical Quality Control*, 7th ed., tables 9.3 and 9.11 (two-sided CUSUM ARL0 with k = 0.5:
168 at h = 4, 465 at h = 5; EWMA ARL0 of 500 at lambda = 0.1, L = 2.814); Lucas & Saccucci,
Technometrics 32 (1990) 1 (EWMA).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def cusum_kernel(x: np.ndarray, mu: float, sigma: float, k: float, h: float,
                 state: np.ndarray) -> np.ndarray:
    """Two-sided tabular CUSUM; ``state`` = [S+, S-] is updated. Returns alarm indices."""
    alarms = np.empty(x.shape[0], dtype=np.int64)
    n = 0
    hi, lo = state[0], state[1]
    inv = 1.0 / sigma
    for i in range(x.shape[0]):
        z = (x[i] - mu) * inv
        hi = max(0.0, hi + z - k)
        lo = max(0.0, lo - z - k)
        if hi > h or lo > h:
            alarms[n] = i
            n += 1
            hi = 0.0
            lo = 0.0
    state[0], state[1] = hi, lo
    return alarms[:n]


@nb.njit(cache=True)
def ewma_kernel(x: np.ndarray, mu: float, sigma: float, lam: float, width: float,
                exact_limits: bool, state: np.ndarray) -> np.ndarray:
    """EWMA chart; ``state`` = [z, q] with q = (1-lam)^(2t), t the samples since the last reset
    (q = 1 at the start). Alarm when |z - mu| > width * sigma * sqrt(lam/(2-lam) * (1 - q));
    without ``exact_limits`` the asymptotic limit (q -> 0) is used, as in the ARL tables."""
    alarms = np.empty(x.shape[0], dtype=np.int64)
    n = 0
    z, q = state[0], state[1]
    if q == 0.0 and z == 0.0:
        q = 1.0  # a fresh state
    limit2 = width * width * sigma * sigma * lam / (2.0 - lam)
    decay = (1.0 - lam) * (1.0 - lam)
    for i in range(x.shape[0]):
        q *= decay
        z = lam * (x[i] - mu) + (1.0 - lam) * z
        bound = limit2 * (1.0 - q) if exact_limits else limit2
        if z * z > bound:
            alarms[n] = i
            n += 1
            z = 0.0
            q = 1.0
    state[0], state[1] = z, q
    return alarms[:n]


@nb.njit(cache=True)
def page_hinkley_kernel(x: np.ndarray, delta: float, threshold: float, alpha: float,
                        state: np.ndarray) -> np.ndarray:
    """Page–Hinkley test for an increase of the mean (River's form, with forgetting ``alpha``);
    ``state`` = [mean, n, cumulative sum, minimum]."""
    alarms = np.empty(x.shape[0], dtype=np.int64)
    n_alarms = 0
    mean, n, cum, low = state[0], state[1], state[2], state[3]
    for i in range(x.shape[0]):
        n += 1.0
        mean += (x[i] - mean) / n
        cum = alpha * cum + (x[i] - mean - delta)
        low = min(low, cum)
        if cum - low > threshold:
            alarms[n_alarms] = i
            n_alarms += 1
            mean, n, cum, low = 0.0, 0.0, 0.0, 0.0
    state[0], state[1], state[2], state[3] = mean, n, cum, low
    return alarms[:n_alarms]


class _Detector:
    def __init__(self, size: int):
        self.state = np.zeros(size)

    def reset(self) -> None:
        self.state[:] = 0.0

    def update(self, x: float) -> bool:
        return self.update_many(np.array([x], dtype=np.float64)).size > 0

    def update_many(self, xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Cusum(_Detector):
    """Two-sided CUSUM with reference value ``k`` and decision interval ``h`` (in sigmas)."""

    def __init__(self, mu: float = 0.0, sigma: float = 1.0, k: float = 0.5, h: float = 5.0):
        super().__init__(2)
        self.mu, self.sigma, self.k, self.h = mu, sigma, k, h

    def update_many(self, xs: np.ndarray) -> np.ndarray:
        return cusum_kernel(np.ascontiguousarray(xs, dtype=np.float64), self.mu, self.sigma,
                            self.k, self.h, self.state)


class Ewma(_Detector):
    """EWMA control chart with smoothing ``lam`` and limits at ``width`` sigmas."""

    def __init__(self, mu: float = 0.0, sigma: float = 1.0, lam: float = 0.1,
                 width: float = 2.814, exact_limits: bool = True):
        super().__init__(2)
        self.mu, self.sigma, self.lam, self.width = mu, sigma, lam, width
        self.exact_limits = exact_limits

    def update_many(self, xs: np.ndarray) -> np.ndarray:
        return ewma_kernel(np.ascontiguousarray(xs, dtype=np.float64), self.mu, self.sigma,
                           self.lam, self.width, self.exact_limits, self.state)


class PageHinkley(_Detector):
    """Page–Hinkley test for an upward change of the mean by more than ``delta``."""

    def __init__(self, delta: float = 0.005, threshold: float = 50.0, alpha: float = 1.0):
        super().__init__(4)
        self.delta, self.threshold, self.alpha = delta, threshold, alpha

    def update_many(self, xs: np.ndarray) -> np.ndarray:
        return page_hinkley_kernel(np.ascontiguousarray(xs, dtype=np.float64), self.delta,
                                   self.threshold, self.alpha, self.state)


def run_lengths(alarms: np.ndarray) -> np.ndarray:
    """Samples between consecutive alarms, the first counted from the start; the unfinished run
    after the last alarm is not included."""
    if alarms.size == 0:
        return np.empty(0, dtype=np.int64)
    return np.diff(np.concatenate([[-1], alarms]))
