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
                z_sub = pinv[mask, :idx.size, :] @ b
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
