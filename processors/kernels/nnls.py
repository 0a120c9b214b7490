"""Non-negative least squares (Lawson–Hanson active set) for small systems, batched over time:
the deconvolution of overlapping m/z signals through a cracking-pattern matrix."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def nnls_kernel(a: np.ndarray, b: np.ndarray, max_iter: int = 0, tol: float = 1e-12
                ) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0, for one right-hand side (Lawson & Hanson 1974).
    The problem is scaled to unit size first, so ``tol`` is relative (ion currents are ~1e-9)."""
    m, n = a.shape
    scale_a = np.abs(a).max()
    scale_b = np.abs(b).max()
    if scale_a == 0.0 or scale_b == 0.0:
        return np.zeros(n)
    a = a / scale_a
    b = b / scale_b
    if max_iter == 0:
        max_iter = 3 * n
    x = np.zeros(n)
    passive = np.zeros(n, dtype=np.bool_)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        best, j = tol, -1
        for i in range(n):
            if not passive[i] and w[i] > best:
                best, j = w[i], i
        if j < 0:
            break
        passive[j] = True
        while True:
            idx = np.flatnonzero(passive)
            sub = np.ascontiguousarray(a[:, idx])
            z_sub = np.linalg.lstsq(sub, b)[0]
            if np.all(z_sub > tol):
                x[:] = 0.0
                x[idx] = z_sub
                break
            alpha = 1.0
            for q in range(idx.size):
                if z_sub[q] <= tol:
                    denom = x[idx[q]] - z_sub[q]
                    if denom > 0:
                        alpha = min(alpha, x[idx[q]] / denom)
            for q in range(idx.size):
                x[idx[q]] += alpha * (z_sub[q] - x[idx[q]])
            for i in range(n):
                if passive[i] and x[i] <= tol:
                    passive[i] = False
                    x[i] = 0.0
        w = a.T @ (b - a @ x)
    return x * (scale_b / scale_a)


@nb.njit(cache=True)
def nnls_many(a: np.ndarray, signals: np.ndarray) -> np.ndarray:
    """Row by row: ``signals`` (samples, channels) -> fluxes (samples, species)."""
    out = np.empty((signals.shape[0], a.shape[1]))
    for t in range(signals.shape[0]):
        out[t] = nnls_kernel(a, np.ascontiguousarray(signals[t]))
    return out
