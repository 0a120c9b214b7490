"""Peak fitting: bounded Levenberg–Marquardt with analytic Jacobians, for several Gaussian,
Lorentzian or pseudo-Voigt peaks on a polynomial baseline.

Parameter vector: four per peak, (position, FWHM, area, eta), then the baseline coefficients
b_0..b_deg of sum_j b_j·t^j with t = (x − x_mid)/x_half, the window mapped onto [−1, 1] so the
baseline columns stay well conditioned. Profiles are area-normalised, as in the simulator:

    PV(x) = area·(eta·L(x) + (1 − eta)·G(x)),  u = 2(x − position)/FWHM
    L = (2/(π·FWHM))/(1 + u²),  G = (2·sqrt(ln2/π)/FWHM)·exp(−ln2·u²)

A Gaussian is eta = 0, a Lorentzian eta = 1 (both fixed); only the pseudo-Voigt fits eta.

The minimiser is Marquardt's (damping lambda·diag(JᵀJ), i.e. lambda·I on the unit-diagonal
scaled normal matrix). Box bounds: every trial point is clipped into the box, and parameters
sitting on a bound whose gradient pushes outward are held for that step (a projected active
set). Convergence is measured in standard errors: the undamped Gauss–Newton step δ has length
sqrt(δᵀ·JᵀJ·δ / chi2_red). The fit stops when that is below ``tol_sigma`` (default 1e-3), or
below 0.1 while the contraction since the previous point predicts the step after it below
``tol_sigma``; the last step is then taken without another evaluation. So the result lies
within about ``tol_sigma`` standard errors of the least-squares minimum, and a warm start one
standard error away typically takes two evaluations. Standard errors are scipy
``curve_fit``'s with ``absolute_sigma=False``: cov = (JᵀWJ)⁻¹·chi2/(n − n_free).

The Gaussian is evaluated as 2^(−u²) by a polynomial that vectorises (relative error < 3e-14)
and taken as 0 beyond u² = 64 (below 1e-19 of its maximum).

``fit_guarded`` adds the divergence guard: a fit from the warm start (the previous frame's
parameters) that ends non-finite, unconverged, with a position or FWHM pinned at a bound, or
with a reduced chi2 above ``blowup`` times the previous one is redone from a cold start built
from the data (``cold_start``); the better of the two is kept.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

GAUSSIAN, LORENTZIAN, PSEUDO_VOIGT = 0, 1, 2
SHAPES = {"gaussian": GAUSSIAN, "lorentzian": LORENTZIAN, "pseudo_voigt": PSEUDO_VOIGT}
POS, FWHM, AREA, ETA = range(4)  # offsets within a peak's block of parameters
N_PEAK = 4
# Layout of the info vector the fits return.
CHI2, CHI2_RED, ITERATIONS, CONVERGED, COLD_START, AT_BOUND = range(6)
N_INFO = 6

_LN2 = math.log(2.0)
G_NORM = 2.0 * math.sqrt(_LN2 / math.pi)  # Gaussian of unit area and FWHM 1 at its centre
L_NORM = 2.0 / math.pi                     # Lorentzian of unit area and FWHM 1 at its centre
_LAMBDA0, _LAMBDA_MAX = 1e-6, 1e16
_G_CUT = 64.0  # u² beyond which the Gaussian (< 1e-19 of its maximum) is taken as 0
_FINAL_STEP = 0.1  # standard errors: the largest Gauss–Newton step taken unevaluated at the end
# Let LLVM reorder sums so the dot products vectorise, and fuse multiply-adds; NaN/inf
# semantics stay exact.
_REASSOC = {"reassoc", "contract"}
_FMA = {"contract"}  # fused multiply-add only


def n_params(n_peaks: int, degree: int) -> int:
    """Length of the parameter vector: 4 per peak plus degree + 1 baseline terms (degree −1 =
    no baseline)."""
    return N_PEAK * n_peaks + degree + 1


@nb.njit(cache=True)
def peak_height(fwhm: float, area: float, eta: float) -> float:
    """Maximum of an area-normalised pseudo-Voigt."""
    return area / fwhm * (eta * L_NORM + (1.0 - eta) * G_NORM)


@nb.njit(cache=True)
def _axis(x: np.ndarray) -> tuple[float, float]:
    """(x_mid, x_half): the baseline's t = (x − x_mid)/x_half spans [−1, 1]."""
    lo, hi = x.min(), x.max()
    half = 0.5 * (hi - lo)
    return 0.5 * (hi + lo), half if half > 0.0 else 1.0


@nb.njit(cache=True)
def _shape_eta(shape: int, eta: float) -> float:
    if shape == GAUSSIAN:
        return 0.0
    if shape == LORENTZIAN:
        return 1.0
    return eta


# exp(−z) by its Taylor series to z^13 (truncation error < 1e-17 for z < ln2/2)
(_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12,
 _E13) = ((-1.0) ** k / math.factorial(k) for k in range(14))


@nb.njit(cache=True, inline="always", fastmath=_FMA)
def _half_powers(u2: float) -> float:
    """2^(−u²) = exp(−ln2·u²) for 0 ≤ u² < _G_CUT, else 0, in arithmetic that vectorises
    (math.exp does not without SVML): exp(−ln2·u²/128) by a Taylor polynomial, squared seven
    times. Relative error below 3e-14."""
    z = u2 * (_LN2 / 128.0)
    e = (((((((((((((_E13 * z + _E12) * z + _E11) * z + _E10) * z + _E9) * z + _E8) * z + _E7)
                 * z + _E6) * z + _E5) * z + _E4) * z + _E3) * z + _E2) * z + _E1) * z + _E0)
    e *= e
    e *= e
    e *= e
    e *= e
    e *= e
    e *= e
    e *= e
    return e if u2 < _G_CUT else 0.0


@nb.njit(cache=True, error_model="numpy", fastmath=_FMA)
def _subtract_peak(x: np.ndarray, c: float, fw: float, a: float, eta: float,
                   resid: np.ndarray) -> None:
    """resid −= area·(eta·L + (1 − eta)·G): one vectorised pass."""
    s = 4.0 / (fw * fw)
    l_norm, g_norm = L_NORM / fw, G_NORM / fw
    for i in range(x.size):
        d = x[i] - c
        u2 = s * d * d
        prof = eta * l_norm / (1.0 + u2) + (1.0 - eta) * g_norm * _half_powers(u2)
        resid[i] -= a * prof


@nb.njit(cache=True, error_model="numpy", fastmath=_FMA)
def _subtract_peak_jac(x: np.ndarray, w: np.ndarray, c: float, fw: float, a: float, eta: float,
                       resid: np.ndarray, jp: np.ndarray, jw: np.ndarray, ja: np.ndarray,
                       je: np.ndarray) -> None:
    """``_subtract_peak`` plus the weighted derivatives by position, FWHM, area and eta:
    ∂L/∂c = L·q·2sd, ∂G/∂c = G·2ln2·sd, ∂L/∂w = L·q·(u² − 1)/w, ∂G/∂w = G·(2ln2·u² − 1)/w with
    u² = s·d², s = 4/w², d = x − c, q = 1/(1 + u²)."""
    s = 4.0 / (fw * fw)
    l_norm, g_norm = L_NORM / fw, G_NORM / fw
    for i in range(x.size):
        d = x[i] - c
        u2 = s * d * d
        q = 1.0 / (1.0 + u2)
        lor = l_norm * q
        gau = g_norm * _half_powers(u2)
        prof = eta * lor + (1.0 - eta) * gau
        resid[i] -= a * prof
        wa = w[i] * a
        jp[i] = wa * (eta * lor * q + (1.0 - eta) * _LN2 * gau) * 2.0 * s * d
        jw[i] = wa / fw * (eta * lor * q * (u2 - 1.0) + (1.0 - eta) * gau * (2.0 * _LN2 * u2 - 1.0))
        ja[i] = w[i] * prof
        je[i] = wa * (lor - gau)


@nb.njit(cache=True, error_model="numpy", fastmath=_FMA)
def _evaluate(x: np.ndarray, y: np.ndarray, w: np.ndarray, shapes: np.ndarray, n_base: int,
              powers: np.ndarray, p: np.ndarray, rows: np.ndarray, jt: np.ndarray,
              resid: np.ndarray, with_jac: bool) -> float:
    """Weighted residuals w·(y − f) into ``resid`` and, with ``with_jac``, the weighted peak
    Jacobian w·∂f/∂p transposed into ``jt`` (parameter j in row rows[j]; fixed parameters go to
    a scratch last row). ``powers`` holds t^b for the baseline; the baseline rows of ``jt`` are
    constant and written by the caller. Returns chi2 = Σ resid².

    The loops run over the samples innermost and without branches, so they vectorise: both
    profile parts are always computed, a Gaussian being eta = 0 and a Lorentzian eta = 1."""
    n = x.size
    resid[:] = y
    for k in range(shapes.size):
        j = N_PEAK * k
        c, fw, a = p[j + POS], p[j + FWHM], p[j + AREA]
        eta = _shape_eta(shapes[k], p[j + ETA])
        if with_jac:
            _subtract_peak_jac(x, w, c, fw, a, eta, resid, jt[rows[j + POS]],
                               jt[rows[j + FWHM]], jt[rows[j + AREA]], jt[rows[j + ETA]])
        else:
            _subtract_peak(x, c, fw, a, eta, resid)
    b0 = N_PEAK * shapes.size
    for b in range(n_base):
        coef = p[b0 + b]
        tb = powers[b]
        for i in range(n):
            resid[i] -= coef * tb[i]
    chi2 = 0.0
    for i in range(n):
        r = w[i] * resid[i]
        resid[i] = r
        chi2 += r * r
    return chi2


@nb.njit(cache=True)
def _powers(x: np.ndarray, n_base: int) -> np.ndarray:
    """t^b, b = 0..n_base − 1, with t = (x − x_mid)/x_half in [−1, 1]."""
    mid, half = _axis(x)
    out = np.empty((n_base, x.size))
    for i in range(x.size):
        t = (x[i] - mid) / half
        tp = 1.0
        for b in range(n_base):
            out[b, i] = tp
            tp *= t
    return out


@nb.njit(cache=True)
def _rows(shapes: np.ndarray, n_base: int, free: np.ndarray, lower: np.ndarray,
          upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each fitted parameter in the transposed Jacobian (fixed ones: the scratch row
    nf), and the parameter of each row. Eta is fitted for pseudo-Voigts only; a parameter with
    lower == upper is fixed."""
    m = N_PEAK * shapes.size + n_base
    rows = np.empty(m, dtype=np.int64)
    index = np.empty(m, dtype=np.int64)
    nf = 0
    for j in range(m):
        fixed = not free[j] or lower[j] >= upper[j]
        if j < N_PEAK * shapes.size and j % N_PEAK == ETA and shapes[j // N_PEAK] != PSEUDO_VOIGT:
            fixed = True
        rows[j] = -1 if fixed else nf
        if not fixed:
            index[nf] = j
            nf += 1
    for j in range(m):
        if rows[j] < 0:
            rows[j] = nf
    return rows, index[:nf]


@nb.njit(cache=True)
def _jacobian_buffer(x: np.ndarray, n_base: int, powers: np.ndarray, w: np.ndarray,
                     rows: np.ndarray, nf: int, n_peak_params: int) -> np.ndarray:
    """A transposed-Jacobian buffer (nf + 1 scratch row) with the constant baseline rows."""
    jt = np.zeros((nf + 1, x.size))
    for b in range(n_base):
        jt[rows[n_peak_params + b]] = w * powers[b]
    return jt


@nb.njit(cache=True)
def model(x: np.ndarray, shapes: np.ndarray, n_base: int, p: np.ndarray) -> np.ndarray:
    """The fitted curve f(x) for parameters ``p`` (baseline scaled over this x)."""
    resid = np.empty(x.size)
    rows = np.zeros(p.size, dtype=np.int64)
    _evaluate(x, np.zeros(x.size), np.ones(x.size), shapes, n_base, _powers(x, n_base), p,
              rows, np.empty((1, x.size)), resid, False)
    return -resid


@nb.njit(cache=True)
def jacobian(x: np.ndarray, shapes: np.ndarray, n_base: int, p: np.ndarray) -> np.ndarray:
    """∂f/∂p for every parameter (n × len(p)); eta columns of Gaussians/Lorentzians are zero."""
    m = p.size
    free = np.ones(m, dtype=np.bool_)
    rows, index = _rows(shapes, n_base, free, np.full(m, -np.inf), np.full(m, np.inf))
    powers = _powers(x, n_base)
    w = np.ones(x.size)
    jt = _jacobian_buffer(x, n_base, powers, w, rows, index.size, m - n_base)
    _evaluate(x, np.zeros(x.size), w, shapes, n_base, powers, p, rows, jt, np.empty(x.size),
              True)
    out = np.zeros((x.size, m))
    for r in range(index.size):
        out[:, index[r]] = jt[r]
    return out


@nb.njit(cache=True)
def _cholesky_solve(a: np.ndarray, lam: float, active: np.ndarray, b: np.ndarray,
                    chol: np.ndarray, out: np.ndarray) -> bool:
    """Solve (a + lam·I)·out = b over the ``active`` rows (inactive entries of out are 0).
    ``a`` has a unit diagonal. False if the matrix is not numerically positive definite."""
    m = a.shape[0]
    for j in range(m):
        if not active[j]:
            continue
        s = a[j, j] + lam
        for k in range(j):
            if active[k]:
                s -= chol[j, k] * chol[j, k]
        if not s > 1e-13 * (1.0 + lam):
            return False
        d = math.sqrt(s)
        chol[j, j] = d
        for i in range(j + 1, m):
            if active[i]:
                s = a[i, j]
                for k in range(j):
                    if active[k]:
                        s -= chol[i, k] * chol[j, k]
                chol[i, j] = s / d
    for i in range(m):  # forward: L·z = b
        if not active[i]:
            out[i] = 0.0
            continue
        s = b[i]
        for k in range(i):
            if active[k]:
                s -= chol[i, k] * out[k]
        out[i] = s / chol[i, i]
    for i in range(m - 1, -1, -1):  # backward: Lᵀ·out = z
        if not active[i]:
            continue
        s = out[i]
        for k in range(i + 1, m):
            if active[k]:
                s -= chol[k, i] * out[k]
        out[i] = s / chol[i, i]
    return True


@nb.njit(cache=True)
def _clip(p: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
    for j in range(p.size):
        p[j] = min(max(p[j], lower[j]), upper[j])


@nb.njit(cache=True, fastmath=_REASSOC, error_model="numpy")
def _normal_equations(jt: np.ndarray, resid: np.ndarray, nf: int, a: np.ndarray, g: np.ndarray,
                      scale: np.ndarray) -> None:
    """JᵀJ into ``a`` and Jᵀr into ``g``, scaled to a unit diagonal; ``scale`` = 1/sqrt(diag)
    (0 for an all-zero column: an unidentifiable parameter gets no step)."""
    n = resid.size
    for r in range(nf):
        jr = jt[r]
        acc = 0.0
        for i in range(n):
            acc += jr[i] * resid[i]
        g[r] = acc
        c = 0
        while c + 4 <= r + 1:  # four columns per pass over the samples
            j0, j1, j2, j3 = jt[c], jt[c + 1], jt[c + 2], jt[c + 3]
            s0 = s1 = s2 = s3 = 0.0
            for i in range(n):
                v = jr[i]
                s0 += v * j0[i]
                s1 += v * j1[i]
                s2 += v * j2[i]
                s3 += v * j3[i]
            a[r, c], a[r, c + 1], a[r, c + 2], a[r, c + 3] = s0, s1, s2, s3
            c += 4
        for rest in range(c, r + 1):
            jc = jt[rest]
            acc = 0.0
            for i in range(n):
                acc += jr[i] * jc[i]
            a[r, rest] = acc
    for r in range(nf):
        scale[r] = 1.0 / math.sqrt(a[r, r]) if a[r, r] > 0.0 else 0.0
    for r in range(nf):
        g[r] *= scale[r]
        for c in range(r + 1):
            a[r, c] *= scale[r] * scale[c]
            a[c, r] = a[r, c]
        if scale[r] == 0.0:
            a[r, r] = 1.0


@nb.njit(cache=True)
def fit_peaks(x: np.ndarray, y: np.ndarray, w: np.ndarray, shapes: np.ndarray, n_base: int,
              p0: np.ndarray, lower: np.ndarray, upper: np.ndarray, free: np.ndarray,
              max_iter: int = 100, tol_sigma: float = 1e-3
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounded Levenberg–Marquardt fit of ``shapes`` peaks plus an ``n_base``-term baseline to
    (x, y) with weights ``w`` (1/sigma). ``p0``, ``lower``, ``upper``, ``free`` cover the whole
    parameter vector (see the module docstring).

    Returns (p, cov, info): cov is n_params × n_params (zero rows/columns for fixed parameters,
    NaN unless converged), info holds chi2, reduced chi2, iterations (model + Jacobian
    evaluations) and converged (1/0: the step criterion was met and JᵀJ is non-singular, so
    the data determine every fitted parameter); the cold-start and at-bound flags are left 0
    (see ``fit_guarded``). chi2 and the covariance are those at the last evaluated point; the
    final unevaluated step (< 0.1 standard errors) lowers chi2 by its predicted decrement.
    """
    m = p0.size
    n = x.size
    rows, index = _rows(shapes, n_base, free, lower, upper)
    nf = index.size
    n_pk = N_PEAK * shapes.size
    p = p0.copy()
    for k in range(shapes.size):
        p[N_PEAK * k + ETA] = _shape_eta(shapes[k], p[N_PEAK * k + ETA])
    _clip(p, lower, upper)
    powers = _powers(x, n_base)
    jt = _jacobian_buffer(x, n_base, powers, w, rows, nf, n_pk)
    jt_t = _jacobian_buffer(x, n_base, powers, w, rows, nf, n_pk)
    resid, resid_t = np.empty(n), np.empty(n)
    a, chol = np.empty((nf, nf)), np.empty((nf, nf))
    g, scale, step = np.empty(nf), np.empty(nf), np.empty(nf)
    active = np.ones(nf, dtype=np.bool_)
    p_t = np.empty(m)
    dof = max(n - nf, 1)
    signal = 0.0
    for i in range(n):
        signal += (w[i] * y[i]) ** 2
    chi2_floor = 1e-20 * signal / n + 1e-300  # rounding level: chi2 below this counts as 0
    chi2 = _evaluate(x, y, w, shapes, n_base, powers, p, rows, jt, resid, True)
    evaluations = 1
    converged = False
    lam = _LAMBDA0
    last_decrement = np.inf
    if math.isfinite(chi2):
        while True:
            _normal_equations(jt, resid, nf, a, g, scale)
            # hold parameters on a bound that the gradient pushes outward
            for r in range(nf):
                j = index[r]
                active[r] = not ((p[j] <= lower[j] and g[r] < 0.0)
                                 or (p[j] >= upper[j] and g[r] > 0.0))
            # Converged when the Gauss–Newton step is below tol_sigma standard errors, or below
            # _FINAL_STEP and the contraction since the last point predicts the step after it
            # below tol_sigma. That last step is taken without another evaluation; chi2 then
            # drops by the decrement (exactly so for a model linear over the step).
            if _cholesky_solve(a, 0.0, active, g, chol, step):
                decrement = 0.0
                for r in range(nf):
                    decrement += step[r] * g[r]
                unit = max(chi2 / dof, chi2_floor)  # one standard error, squared, in chi2
                tol2 = tol_sigma * tol_sigma * unit
                if decrement <= tol2 or (decrement <= _FINAL_STEP * _FINAL_STEP * unit
                                         and decrement * decrement <= tol2 * last_decrement):
                    for r in range(nf):
                        p[index[r]] += step[r] * scale[r]
                    _clip(p, lower, upper)
                    chi2 -= max(decrement, 0.0)
                    converged = True
                    break
                last_decrement = decrement
            accepted = False
            while evaluations < max_iter and lam < _LAMBDA_MAX:
                if not _cholesky_solve(a, lam, active, g, chol, step):
                    lam *= 10.0
                    continue
                p_t[:] = p
                for r in range(nf):
                    p_t[index[r]] += step[r] * scale[r]
                _clip(p_t, lower, upper)
                chi2_t = _evaluate(x, y, w, shapes, n_base, powers, p_t, rows, jt_t, resid_t,
                                   True)
                evaluations += 1
                if math.isfinite(chi2_t) and chi2_t < chi2:
                    accepted = True
                    p[:] = p_t
                    chi2 = chi2_t
                    jt, jt_t = jt_t, jt
                    resid, resid_t = resid_t, resid
                    lam = max(0.1 * lam, 1e-12)
                    break
                lam *= 10.0
            if not accepted:
                break
    info = np.zeros(N_INFO)
    info[CHI2] = chi2
    info[CHI2_RED] = chi2 / (n - nf) if n > nf else np.nan
    info[ITERATIONS] = evaluations
    info[CONVERGED] = 1.0 if converged else 0.0
    # covariance (JᵀJ)⁻¹·chi2_red, from the normal equations at p (scaled: a = S·JᵀJ·S)
    cov = np.zeros((m, m))
    active[:] = True
    unit = np.zeros(nf)
    for c in range(nf):
        unit[:] = 0.0
        unit[c] = 1.0
        if not (converged and n > nf and scale[c] > 0.0
                and _cholesky_solve(a, 0.0, active, unit, chol, step)):
            for r in range(nf):
                cov[index[r], index] = np.nan
            info[CONVERGED] = 0.0  # a parameter the data do not determine: no valid fit
            break
        for r in range(nf):
            cov[index[r], index[c]] = step[r] * scale[r] * scale[c] * info[CHI2_RED]
    return p, cov, info


@nb.njit(cache=True)
def cold_start(x: np.ndarray, y: np.ndarray, shapes: np.ndarray, n_base: int,
               guess: np.ndarray, search_lo: np.ndarray, search_hi: np.ndarray,
               lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Initial parameters from the data: a straight baseline through the medians of the first
    and last tenth of the samples; then, highest first, each peak at the highest point of what
    is left within [search_lo[k], search_hi[k]], with its FWHM and eta from ``guess`` and its
    area from the height there; its profile is subtracted before the next peak is placed. A
    peak whose search range holds no sample keeps its guessed position and area 0. Clipped into
    the bounds."""
    n = x.size
    p = guess.copy()
    edge = max(1, n // 10)
    x_a, y_a = np.median(x[:edge]), np.median(y[:edge])
    x_b, y_b = np.median(x[n - edge:]), np.median(y[n - edge:])
    slope = (y_b - y_a) / (x_b - x_a) if x_b != x_a else 0.0
    mid, half = _axis(x)
    b0 = N_PEAK * shapes.size
    p[b0:] = 0.0
    if n_base >= 1:
        p[b0] = y_a + slope * (mid - x_a) if n_base >= 2 else 0.5 * (y_a + y_b)
    if n_base >= 2:
        p[b0 + 1] = slope * half
    rest = y.copy()  # the data less the baseline, then less each peak placed
    for i in range(n):
        if n_base >= 1:
            rest[i] -= p[b0]
        if n_base >= 2:
            rest[i] -= p[b0 + 1] * (x[i] - mid) / half
    placed = np.zeros(shapes.size, dtype=np.bool_)
    for k in range(shapes.size):
        p[N_PEAK * k + ETA] = _shape_eta(shapes[k], guess[N_PEAK * k + ETA])
        p[N_PEAK * k + AREA] = 0.0
    for _ in range(shapes.size):
        best, best_k, best_i = -np.inf, -1, -1
        for k in range(shapes.size):
            for i in range(n):
                if not placed[k] and search_lo[k] <= x[i] <= search_hi[k] and rest[i] > best:
                    best, best_k, best_i = rest[i], k, i
        if best_k < 0:
            break
        placed[best_k] = True
        j = N_PEAK * best_k
        c, fw, eta, height = x[best_i], p[j + FWHM], p[j + ETA], max(best, 0.0)
        p[j + POS] = c
        p[j + AREA] = height * fw / (eta * L_NORM + (1.0 - eta) * G_NORM)
        for i in range(n):  # subtract the placed peak (unit-height pseudo-Voigt times height)
            u2 = 4.0 * ((x[i] - c) / fw) ** 2
            rest[i] -= height * (eta / (1.0 + u2) + (1.0 - eta) * math.exp(-_LN2 * u2))
    _clip(p, lower, upper)
    return p


@nb.njit(cache=True)
def _pinned(p: np.ndarray, shapes: np.ndarray, lower: np.ndarray, upper: np.ndarray,
            free: np.ndarray) -> bool:
    """A fitted position or FWHM sitting on its bound."""
    for k in range(shapes.size):
        for j in (N_PEAK * k + POS, N_PEAK * k + FWHM):
            if free[j] and lower[j] < upper[j] and (p[j] <= lower[j] or p[j] >= upper[j]):
                return True
    return False


@nb.njit(cache=True)
def _rank(p: np.ndarray, info: np.ndarray) -> int:
    """0 good, 1 converged but pinned at a bound, 2 failed."""
    ok = info[CONVERGED] == 1.0 and math.isfinite(info[CHI2])
    for j in range(p.size):
        ok = ok and math.isfinite(p[j])
    return (0 if ok else 2) + int(info[AT_BOUND])


@nb.njit(cache=True)
def fit_guarded(x: np.ndarray, y: np.ndarray, w: np.ndarray, shapes: np.ndarray, n_base: int,
                p_warm: np.ndarray, guess: np.ndarray, search_lo: np.ndarray,
                search_hi: np.ndarray, lower: np.ndarray, upper: np.ndarray, free: np.ndarray,
                chi2_ref: float, blowup: float, max_iter: int = 100, tol_sigma: float = 1e-3
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``fit_peaks`` from ``p_warm`` with the divergence guard; a ``p_warm`` holding NaN means
    no warm start. The refit starts from ``cold_start(..., guess, search_lo, search_hi, ...)``.
    info[COLD_START] is 1 when the cold fit was made, info[AT_BOUND] 1 when a position or FWHM
    of the kept fit is pinned at a bound. ``chi2_ref`` (NaN: none) is the last good reduced
    chi2 of this fit; above ``blowup`` times it the warm result is distrusted."""
    have_warm = True
    p, cov, info = p_warm, np.empty((0, 0)), np.zeros(N_INFO)
    for j in range(p_warm.size):
        have_warm = have_warm and math.isfinite(p_warm[j])
    if have_warm:
        p, cov, info = fit_peaks(x, y, w, shapes, n_base, p_warm, lower, upper, free, max_iter,
                                 tol_sigma)
        info[AT_BOUND] = 1.0 if _pinned(p, shapes, lower, upper, free) else 0.0
        blew_up = chi2_ref > 0.0 and info[CHI2_RED] > blowup * chi2_ref
        if _rank(p, info) == 0 and not blew_up:
            return p, cov, info
    p0 = cold_start(x, y, shapes, n_base, guess, search_lo, search_hi, lower, upper)
    pc, covc, infoc = fit_peaks(x, y, w, shapes, n_base, p0, lower, upper, free, max_iter,
                                tol_sigma)
    infoc[AT_BOUND] = 1.0 if _pinned(pc, shapes, lower, upper, free) else 0.0
    infoc[COLD_START] = 1.0
    if have_warm:
        infoc[ITERATIONS] += info[ITERATIONS]
        rank_w, rank_c = _rank(p, info), _rank(pc, infoc)
        if rank_w < rank_c or (rank_w == rank_c and info[CHI2] < infoc[CHI2]):
            info[COLD_START] = 1.0
            info[ITERATIONS] = infoc[ITERATIONS]
            return p, cov, info
    return pc, covc, infoc
