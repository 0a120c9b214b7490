"""Peak fits: the numba Levenberg–Marquardt kernel against finite differences and scipy's
curve_fit, its bounds and divergence guard, and the peaks processor on real LaB6, PANalytical
and Raman files and on a simulated charge."""

from __future__ import annotations

import bz2
import math
from pathlib import Path

import numpy as np
import pytest
from pybaselines import Baseline
from scipy.optimize import curve_fit
from scipy.stats import cauchy, norm

from adapters.sim.detectors import (
    _hex_d,
    bragg_two_theta,
    nmc_d003,
    nmc_lattice,
    raman_spectrum,
)
from adapters.sim.experiment import SimExperiment, load_scenario
from processors.kernels.peakfit import (
    AT_BOUND,
    CHI2_RED,
    COLD_START,
    CONVERGED,
    GAUSSIAN,
    ITERATIONS,
    LORENTZIAN,
    PSEUDO_VOIGT,
    cold_start,
    fit_guarded,
    fit_peaks,
    jacobian,
    model,
)
from processors.peaks import PeaksConfig, PeaksProcessor, d_spacing, lattice_parameter
from stream.frame import Frame, FrameError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
LAB6 = REAL / "xrd_1d" / "LaB6_d500_si_psd.xye.bz2"
PANALYTICAL = REAL / "xrd_1d" / "210520step1_30min.xy"
RAMAN = REAL / "spectra_raman" / "VG186_0__X_19996.5__Y_-20032__Time_0.txt"
CU_KA1, CU_KA2 = 1.5405929e-10, 1.5444274e-10   # Hölzer et al. 1997
LAB6_A = 4.1569                                   # NIST SRM 660 series, Å
SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _real(path: Path) -> np.ndarray:
    if not path.exists():
        pytest.skip(f"shared real data missing: {path}")
    return np.loadtxt(bz2.open(path) if path.suffix == ".bz2" else path)


# -- slow references ----------------------------------------------------------------------------

def reference_model(x: np.ndarray, shapes: list[int], degree: int, p: np.ndarray) -> np.ndarray:
    """scipy.stats densities: norm (sigma = FWHM/2.3548) and cauchy (gamma = FWHM/2), and a
    numpy polynomial in t = (x - mid)/half."""
    mid, half = 0.5 * (x.max() + x.min()), 0.5 * (x.max() - x.min())
    base = p[4 * len(shapes):]
    f = np.polynomial.polynomial.polyval((x - mid) / half, base) if degree >= 0 else 0.0 * x
    for k, shape in enumerate(shapes):
        c, w, a, eta = p[4 * k:4 * k + 4]
        eta = {GAUSSIAN: 0.0, LORENTZIAN: 1.0}.get(shape, eta)
        f = f + a * (eta * cauchy.pdf(x, c, w / 2) + (1 - eta) * norm.pdf(x, c, w * SIGMA_PER_FWHM))
    return f


def free_mask(shapes: list[int], degree: int) -> np.ndarray:
    """Which parameters are fitted: eta only for pseudo-Voigts."""
    mask = np.ones(4 * len(shapes) + degree + 1, dtype=bool)
    for k, shape in enumerate(shapes):
        mask[4 * k + 3] = shape == PSEUDO_VOIGT
    return mask


def scipy_fit(x: np.ndarray, y: np.ndarray, shapes: list[int], degree: int, p0: np.ndarray,
              **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """curve_fit of the reference model over the fitted parameters: (p, standard errors)."""
    mask = free_mask(shapes, degree)

    def f(x: np.ndarray, *q: float) -> np.ndarray:
        p = p0.copy()
        p[mask] = q
        return reference_model(x, shapes, degree, p)

    q, cov = curve_fit(f, x, y, p0=p0[mask], **kwargs)
    p, err = p0.copy(), np.zeros(p0.size)
    p[mask], err[mask] = q, np.sqrt(np.diag(cov))
    for k, shape in enumerate(shapes):  # as the kernel reports them
        p[4 * k + 3] = {GAUSSIAN: 0.0, LORENTZIAN: 1.0}.get(shape, p[4 * k + 3])
    return p, err


def unbounded(m: int, shapes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = np.full(m, -np.inf), np.full(m, np.inf)
    for k in range(len(shapes)):
        lower[4 * k + 1] = 1e-6  # FWHM > 0
    return lower, upper


def assert_agree(p: np.ndarray, q: np.ndarray, q_err: np.ndarray, frac: float = 0.01) -> None:
    """Within 1e-6 relative or ``frac`` of curve_fit's standard error, per parameter."""
    tol = np.maximum(1e-6 * np.abs(q), frac * q_err)
    assert np.all(np.abs(p - q) <= tol), (p - q) / np.where(q_err > 0, q_err, 1)


def synthetic(shapes: list[int], degree: int = 1, n: int = 800, seed: int = 0,
              noise: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.linspace(10.0, 20.0, n)
    p = []
    for k in range(len(shapes)):
        p += [13.0 + 3.0 * k, 0.6 + 0.2 * k, 200.0 - 50.0 * k, 0.35]
    p += [30.0, -4.0, 2.0, 1.0][:degree + 1]
    p = np.array(p)
    return x, reference_model(x, shapes, degree, p) + rng.normal(0.0, noise, n), p


SHAPE_CASES = pytest.mark.parametrize("shape", [GAUSSIAN, LORENTZIAN, PSEUDO_VOIGT],
                                      ids=["gaussian", "lorentzian", "pseudo_voigt"])


# -- the kernel ---------------------------------------------------------------------------------

@SHAPE_CASES
def test_model_and_analytic_jacobian_match_reference(shape: int) -> None:
    shapes = [shape, PSEUDO_VOIGT]
    x = np.linspace(0.0, 10.0, 401)
    p = np.array([4.0, 0.7, 50.0, 0.3, 5.2, 1.3, 30.0, 0.6, 5.0, 1.0, 0.5, -0.2])
    shp = np.array(shapes)
    np.testing.assert_allclose(model(x, shp, 4, p), reference_model(x, shapes, 3, p),
                               rtol=1e-12, atol=1e-12)
    jac = jacobian(x, shp, 4, p)
    fd = np.zeros_like(jac)
    mask = free_mask(shapes, 3)
    for j in np.flatnonzero(mask):
        h = 1e-6 * max(1.0, abs(p[j]))
        up, down = p.copy(), p.copy()
        up[j] += h
        down[j] -= h
        fd[:, j] = (reference_model(x, shapes, 3, up) - reference_model(x, shapes, 3, down)) / (2 * h)
    np.testing.assert_allclose(jac, fd, rtol=0, atol=1e-7 * np.abs(fd).max())
    assert not jac[:, ~mask].any()  # eta of a Gaussian/Lorentzian is no parameter


@SHAPE_CASES
def test_fit_matches_curve_fit(shape: int) -> None:
    shapes = [shape, shape]
    x, y, truth = synthetic(shapes, degree=1)
    p0 = truth * np.array([1.01, 1.2, 0.7, 1.0, 0.99, 0.8, 1.3, 1.0, 1.1, 0.5])
    lower, upper = unbounded(p0.size, shapes)
    p, cov, info = fit_peaks(x, y, np.ones_like(x), np.array(shapes), 2, p0, lower, upper,
                             np.ones(p0.size, dtype=np.bool_))
    q, q_err = scipy_fit(x, y, shapes, 1, p0)
    assert info[CONVERGED] == 1
    assert_agree(p, q, q_err)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), q_err, rtol=1e-3)
    resid = y - reference_model(x, shapes, 1, p)
    dof = x.size - free_mask(shapes, 1).sum()
    assert info[CHI2_RED] == pytest.approx(resid @ resid / dof, rel=1e-7)


def test_weights_match_curve_fit_sigma() -> None:
    shapes = [PSEUDO_VOIGT]
    x, y, truth = synthetic(shapes, degree=0, seed=3)
    sigma = np.sqrt(np.maximum(y, 1.0))
    lower, upper = unbounded(truth.size, shapes)
    p, cov, info = fit_peaks(x, y, 1.0 / sigma, np.array(shapes), 1, truth * 1.05, lower, upper,
                             np.ones(truth.size, dtype=np.bool_))
    q, q_err = scipy_fit(x, y, shapes, 0, truth * 1.05, sigma=sigma)
    assert_agree(p, q, q_err)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), q_err, rtol=1e-3)


def test_bounds_are_respected_and_match_bounded_curve_fit() -> None:
    shapes = [PSEUDO_VOIGT]
    x, y, truth = synthetic(shapes, degree=1, seed=1)
    lower, upper = unbounded(truth.size, shapes)
    lower[:4] = [12.0, 0.05, 0.0, 0.0]
    upper[:4] = [12.97, 2.0, 1e4, 1.0]  # the true position, 13.0, is out of bounds
    free = np.ones(truth.size, dtype=np.bool_)
    p, _, info = fit_peaks(x, y, np.ones_like(x), np.array(shapes), 2, truth, lower, upper, free)
    assert info[CONVERGED] == 1 and p[0] == 12.97
    q, q_err = scipy_fit(x, y, shapes, 1, np.clip(truth, lower, upper), bounds=(lower, upper),
                         method="trf", x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12)
    assert q[0] == pytest.approx(12.97, abs=1e-9)
    assert_agree(p[1:], q[1:], q_err[1:])
    # random bad starts never leave the box
    rng = np.random.default_rng(7)
    for _ in range(20):
        start = np.clip(truth * rng.uniform(0.5, 1.5, truth.size), lower, upper)
        p, _, _ = fit_peaks(x, y, np.ones_like(x), np.array(shapes), 2, start, lower, upper, free)
        assert np.all((p >= lower) & (p <= upper))


def test_warm_start_needs_fewer_iterations() -> None:
    shapes = np.array([PSEUDO_VOIGT])
    x = np.linspace(10.0, 20.0, 1024)
    rng = np.random.default_rng(2)
    guess = np.array([15.0, 0.45, 0.0, 0.5, 0.0, 0.0])  # as a config would give it
    lower = np.array([12.0, 0.05, 0.0, 0.0, -np.inf, -np.inf])
    upper = np.array([18.0, 3.0, np.inf, 1.0, np.inf, np.inf])
    free = np.ones(6, dtype=np.bool_)
    lo, hi = np.array([12.0]), np.array([18.0])
    warm_p, warm_it, cold_it = np.full(6, np.nan), [], []
    for k in range(30):
        # frame to frame, the peak moves by about one standard error
        truth = np.array([15.0 + 3e-4 * k, 0.5 + 3e-4 * k, 100.0, 0.4, 10.0, 2.0])
        y = model(x, shapes, 2, truth) + rng.normal(0.0, 1.0, x.size)
        p_cold, _, info_cold = fit_guarded(x, y, np.ones_like(x), shapes, 2, np.full(6, np.nan),
                                           guess, lo, hi, lower, upper, free, np.nan, 4.0)
        p_warm, _, info_warm = fit_guarded(x, y, np.ones_like(x), shapes, 2, warm_p, guess, lo,
                                           hi, lower, upper, free, np.nan, 4.0)
        assert info_cold[CONVERGED] == info_warm[CONVERGED] == 1
        if k:
            assert info_warm[COLD_START] == 0
            warm_it.append(info_warm[ITERATIONS])
            cold_it.append(info_cold[ITERATIONS])
        # both land on the same minimum, well within its standard error
        _, cov, _ = fit_peaks(x, y, np.ones_like(x), shapes, 2, p_cold, lower, upper, free)
        assert np.all(np.abs(p_warm - p_cold) <= 0.05 * np.sqrt(np.diag(cov)))
        warm_p = p_warm
    assert max(warm_it) < min(cold_it)


class TestDivergenceGuard:
    """A big peak at 15 and a small one at 12 (position limits 11.5..16), fitted with one."""

    shapes = np.array([PSEUDO_VOIGT])
    x = np.linspace(10.0, 17.0, 700)
    lower = np.array([11.5, 0.05, 0.0, 0.0, -np.inf, -np.inf])
    upper = np.array([16.0, 2.0, np.inf, 1.0, np.inf, np.inf])
    free = np.ones(6, dtype=np.bool_)
    guess = np.array([15.0, 0.4, 0.0, 0.5, 0.0, 0.0])

    def data(self, small_at: float) -> np.ndarray:
        rng = np.random.default_rng(4)
        truth = np.array([15.0, 0.4, 100.0, 0.5, small_at, 0.3, 10.0, 0.5, 5.0])
        return reference_model(self.x, [PSEUDO_VOIGT, PSEUDO_VOIGT], 0, truth) + \
            rng.normal(0.0, 0.5, self.x.size)

    def fit(self, y: np.ndarray, warm: np.ndarray, chi2_ref: float = np.nan,
            max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
        p, _, info = fit_guarded(self.x, y, np.ones_like(y), self.shapes, 2, warm, self.guess,
                                 self.lower[:1], self.upper[:1], self.lower, self.upper,
                                 self.free, chi2_ref, 4.0, max_iter)
        return p, info

    def cold(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.fit(y, np.full(6, np.nan))

    def test_cold_start_finds_the_big_peak(self) -> None:
        y = self.data(12.0)
        p0 = cold_start(self.x, y, self.shapes, 2, self.guess, self.lower[:1], self.upper[:1],
                        self.lower, self.upper)
        assert abs(p0[0] - 15.0) < 0.05
        p, info = self.cold(y)
        assert info[CONVERGED] == 1 and info[COLD_START] == 1 and abs(p[0] - 15.0) < 0.01

    def test_pinned_at_a_bound(self) -> None:
        y = self.data(11.2)  # outside the position limits: a warm start there gets pinned
        warm = np.array([11.5, 0.3, 10.0, 0.5, 5.0, 0.0])
        p, _, info = fit_peaks(self.x, y, np.ones_like(y), self.shapes, 2, warm, self.lower,
                               self.upper, self.free)
        assert p[0] == 11.5
        p, info = self.fit(y, warm)
        assert info[COLD_START] == 1 and info[AT_BOUND] == 0 and abs(p[0] - 15.0) < 0.01
        np.testing.assert_array_equal(p, self.cold(y)[0])

    def test_chi2_blow_up(self) -> None:
        y = self.data(12.0)
        good, info_good = self.cold(y)
        warm = np.array([12.0, 0.3, 10.0, 0.5, 5.0, 0.0])  # the small peak: a local minimum
        p, info = self.fit(y, warm)
        assert info[COLD_START] == 0 and abs(p[0] - 12.0) < 0.05  # no reference: kept
        p, info = self.fit(y, warm, chi2_ref=info_good[CHI2_RED])
        assert info[COLD_START] == 1 and abs(p[0] - 15.0) < 0.01

    def test_too_many_iterations_and_non_finite(self) -> None:
        y = self.data(12.0)
        far = np.array([13.5, 1.9, 1.0, 0.9, 0.0, 0.0])  # needs ~20 evaluations, cold 3
        _, _, info = fit_peaks(self.x, y, np.ones_like(y), self.shapes, 2, far, self.lower,
                               self.upper, self.free, 10)
        assert info[CONVERGED] == 0 and info[ITERATIONS] == 10
        p, info = self.fit(y, far, max_iter=10)
        assert info[CONVERGED] == 1 and info[COLD_START] == 1 and abs(p[0] - 15.0) < 0.01
        assert info[ITERATIONS] > 10  # the warm attempt's evaluations are counted too
        p, info = self.fit(y, np.array([np.nan, 0.4, 100.0, 0.5, 5.0, 0.0]))
        assert info[COLD_START] == 1 and abs(p[0] - 15.0) < 0.01


# -- Bragg's law --------------------------------------------------------------------------------

def test_d_spacing_and_lattice_parameters() -> None:
    wl = 1.5406e-10
    for d in (1.2, 2.338, 4.1569):
        tth = float(bragg_two_theta(d, wl))
        got, err = d_spacing(tth, wl, 0.01)
        assert got == pytest.approx(d, rel=1e-12)
        fd = (d_spacing(tth + 1e-6, wl)[0] - d_spacing(tth - 1e-6, wl)[0]) / 2e-6
        assert err == pytest.approx(abs(fd) * 0.01, rel=1e-6)
    assert lattice_parameter(LAB6_A / math.sqrt(6), 1e-5, (2, 1, 1)) == \
        pytest.approx(("lattice_a", LAB6_A, 1e-5 * math.sqrt(6)))
    a, c = nmc_lattice(0.4)
    for hkl, known, want in (((1, 0, 4), {"c": c}, ("lattice_a", a)),
                             ((1, 0, 4), {"a": a}, ("lattice_c", c)),
                             ((0, 0, 3), {}, ("lattice_c", c)),
                             ((1, 1, 0), {}, ("lattice_a", a))):
        d = _hex_d(a, c, hkl)
        name, value, err = lattice_parameter(d, 1e-4, hkl, "hexagonal", **known)
        assert (name, value) == (want[0], pytest.approx(want[1], rel=1e-12))
        step = 1e-7
        fd = (lattice_parameter(d + step, 0, hkl, "hexagonal", **known)[1]
              - lattice_parameter(d - step, 0, hkl, "hexagonal", **known)[1]) / (2 * step)
        assert err == pytest.approx(abs(fd) * 1e-4, rel=1e-5)


# -- real files ---------------------------------------------------------------------------------

LAB6_HKL = [(1, 1, 1), (2, 0, 0), (2, 1, 0), (2, 1, 1), (2, 2, 0), (3, 0, 0), (3, 1, 0),
            (3, 1, 1), (3, 2, 0), (3, 2, 1), (4, 1, 0), (3, 3, 0), (4, 2, 0), (4, 2, 1),
            (3, 3, 2)]


def _lab6_config() -> PeaksConfig:
    """Each reflection as a Cu Kα1 + Kα2 doublet; positions guessed from a = 4.1569 Å."""
    peaks = []
    for hkl in LAB6_HKL:
        d = LAB6_A / math.sqrt(sum(i * i for i in hkl))
        t1, t2 = (float(bragg_two_theta(d, wl)) for wl in (CU_KA1, CU_KA2))
        name = "LaB6(" + "".join(map(str, hkl)) + ")"
        span = (t1 - 0.5, t2 + 0.4)
        peaks.append({"name": name, "position": t1, "fwhm": 0.08, "range": span, "hkl": hkl,
                      "position_limits": (t1 - 0.05, t1 + 0.05)})
        peaks.append({"name": name + " Ka2", "position": t2, "fwhm": 0.08, "range": span,
                      "position_limits": (t2 - 0.05, t2 + 0.05)})
    return PeaksConfig(peaks=peaks, wavelength_m=CU_KA1, input_kind="pattern")


def _frame(kind: str, x_name: str, x: np.ndarray, y: np.ndarray, seq: int = 0,
           meta: dict | None = None) -> Frame:
    unit = {"two_theta": "deg", "shift": "cm-1"}[x_name]
    return Frame("lab/ref/instrument", kind, seq, 1_700_000_000_000_000_000 + seq,
                 {x_name: x, "intensity": y}, {x_name: unit, "intensity": "counts"}, meta or {})


def test_lab6_lattice_parameter_and_cu_wavelength() -> None:
    """NIST SRM 660-series LaB6, a = 4.1569 Å. Each reflection is fitted as a Kα1/Kα2 pair.

    Found: the Kα2/Kα1 spacing gives sin θ2/sin θ1 = 1.002495 ± 0.00001 over 15 reflections:
    Cu (1.002489), not Co (1.002169). With λ(Cu Kα1) = 1.5405929 Å, single reflections above
    60° give a = 4.15649..4.15679 Å, lower at low angle (specimen displacement); a
    Nelson–Riley extrapolation of all 15 gives 4.15686 Å. Asserted: every reflection above 60°
    within 5e-4 Å, the extrapolation within 1e-4 Å."""
    x, y, _ = _real(LAB6).T
    proc = PeaksProcessor(_lab6_config())
    out = {f.meta["tags"]["peak"]: f for f in proc.process(_frame("pattern", "two_theta", x, y))}
    assert len(out) == 2 * len(LAB6_HKL) and not proc.failures
    theta, a, ratio = [], [], []
    for hkl in LAB6_HKL:
        name = "LaB6(" + "".join(map(str, hkl)) + ")"
        one, two = out[name].arrays, out[name + " Ka2"].arrays
        assert out[name].units["lattice_a"] == "angstrom"
        theta.append(math.radians(one["position"][0] / 2))
        a.append(one["lattice_a"][0])
        ratio.append(math.sin(math.radians(two["position"][0] / 2)) / math.sin(theta[-1]))
        assert one["lattice_a_err"][0] < 1e-4
    theta, a, ratio = np.array(theta), np.array(a), np.array(ratio)
    assert np.median(ratio) == pytest.approx(CU_KA2 / CU_KA1, abs=3e-5)
    high = np.degrees(2 * theta) > 60
    assert np.all(np.abs(a[high] - LAB6_A) < 5e-4)
    nelson_riley = np.cos(theta) ** 2 / np.sin(theta) + np.cos(theta) ** 2 / theta
    assert np.polyfit(nelson_riley, a, 1)[1] == pytest.approx(LAB6_A, abs=1e-4)


def _kernel_vs_curve_fit(x: np.ndarray, y: np.ndarray, lo: float, hi: float, position: float,
                         fwhm: float, shape: int = PSEUDO_VOIGT
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One peak on a straight baseline in [lo, hi], from the kernel's cold start: the kernel's
    and curve_fit's parameters and curve_fit's errors."""
    sel = (x >= lo) & (x <= hi)
    xs, ys = x[sel], y[sel]
    shapes = np.array([shape])
    guess = np.array([position, fwhm, 0.0, 0.5, 0.0, 0.0])
    lower = np.array([lo, fwhm / 20, 0.0, 0.0, -np.inf, -np.inf])
    upper = np.array([hi, hi - lo, np.inf, 1.0, np.inf, np.inf])
    p0 = cold_start(xs, ys, shapes, 2, guess, lower[:1], upper[:1], lower, upper)
    p, cov, info = fit_peaks(xs, ys, np.ones_like(xs), shapes, 2, p0, lower, upper,
                             np.ones(6, dtype=np.bool_))
    inside = (p > lower) & (p < upper)
    assert info[CONVERGED] == 1 and (inside[:3].all() and (inside[3] or shape != PSEUDO_VOIGT))
    q, q_err = scipy_fit(xs, ys, [shape], 1, p0)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), q_err, rtol=1e-3)
    return p, q, q_err


@pytest.mark.parametrize("position", [15.94, 41.64])
def test_panalytical_pattern_matches_curve_fit(position: float) -> None:
    x, y = _real(PANALYTICAL).T
    p, q, q_err = _kernel_vs_curve_fit(x, y, position - 0.45, position + 0.45, position, 0.1)
    assert_agree(p, q, q_err)
    assert p[0] == pytest.approx(position, abs=0.03) and q_err[0] < 0.002


def test_raman_band_matches_curve_fit() -> None:
    """The broad 410 cm-1 band of the glass spectrum (descending shift axis), as a Gaussian."""
    shift, counts = _real(RAMAN).T
    p, q, q_err = _kernel_vs_curve_fit(shift, counts, 340.0, 470.0, 413.0, 40.0, GAUSSIAN)
    assert_agree(p, q, q_err)
    assert p[0] == pytest.approx(403.0, abs=3.0) and p[1] == pytest.approx(57.0, abs=3.0)


def test_raman_with_als_baseline_through_the_processor() -> None:
    shift, counts = _real(RAMAN).T
    cfg = PeaksConfig(peaks=[{"name": "b410", "position": 413.0, "fwhm": 40.0, "window": 60.0,
                              "shape": "gaussian"}],
                      baseline={"kind": "als", "lam": 1e6, "p": 0.01})
    proc = PeaksProcessor(cfg)
    (out,) = proc.process(_frame("spectrum", "shift", shift, counts))
    assert out.kind == "result.peak" and out.meta["tags"] == {"peak": "b410"}
    assert out.units["position"] == "cm-1" and out.units["area"] == "counts*cm-1"
    assert "d_spacing" not in out.arrays and "eta" not in out.arrays
    # the same fit by hand: pybaselines' ALS off the whole spectrum, then a constant baseline
    flat = counts - Baseline(shift).asls(counts, lam=1e6, p=0.01)[0]
    sel = np.abs(shift - 413.0) <= 60.0
    q, q_err = scipy_fit(shift[sel], flat[sel], [GAUSSIAN], 0,
                         np.array([413.0, 40.0, 2000.0 * 40.0, 0.0, 0.0]))
    got = np.array([out.arrays[k][0] for k in ("position", "fwhm", "area")])
    err = np.array([out.arrays[k + "_err"][0] for k in ("position", "fwhm", "area")])
    assert_agree(got, q[:3], q_err[:3])
    np.testing.assert_allclose(err, q_err[:3], rtol=1e-3)
    assert out.arrays["position"][0] == pytest.approx(406.0, abs=3.0)


# -- the processor on simulated frames ---------------------------------------------------------

def test_als_recovers_the_simulated_g_band_on_fluorescence() -> None:
    shift = np.linspace(100.0, 3200.0, 1024)
    rng = np.random.default_rng(5)
    counts = rng.poisson(raman_spectrum(shift, 0.0, fluorescence=3.0)).astype(np.float64)
    peak = {"name": "G", "position": 1585.0, "fwhm": 20.0, "window": 80.0,
            "shape": "pseudo_voigt"}
    results = {}
    for kind in ("als", "poly"):
        baseline = {"kind": kind, "lam": 1e6, "p": 0.002} if kind == "als" else {"degree": 2}
        proc = PeaksProcessor(PeaksConfig(peaks=[peak], baseline=baseline,
                                          weighting="poisson"))
        (out,) = proc.process(_frame("spectrum", "shift", shift, counts))
        results[kind] = out.arrays
    # the pristine G band of the simulator: 1580 cm-1, FWHM 20, eta 0.7, height 1.5 x 1000
    for arrays in results.values():
        assert abs(arrays["position"][0] - 1580.0) < 4 * arrays["position_err"][0] + 0.05
        assert arrays["fwhm"][0] == pytest.approx(20.0, rel=0.05)
    assert results["als"]["height"][0] == pytest.approx(1500.0, rel=0.05)


def _simulated_charge(patterns_every_s: float = 20.0, seconds: int = 950) -> list[tuple[float, Frame]]:
    """XRD patterns of a 4C charge from SOC 0.02: (soc, frame)."""
    sc = load_scenario("cycling").model_copy(update={"detectors": ["xrd"],
                                                     "spectrum_every_s": patterns_every_s})
    sc.protocol[0] = sc.protocol[0].model_copy(update={"c_rate": 4.0})
    ex = SimExperiment("sim", sc, 1, 0)
    out = []
    for _ in range(seconds):
        out += [(float(ex.last_soc[0]), f) for f in ex.step() if f.kind == "pattern"]
    return out


def test_processor_tracks_simulated_nmc_003_through_a_charge() -> None:
    frames = _simulated_charge()
    cfg = PeaksConfig(peaks=[
        {"name": "NMC(003)", "position": 4.88, "fwhm": 0.08, "range": (4.6, 5.2),
         "hkl": (0, 0, 3), "lattice": "hexagonal"},
        {"name": "Al(111)", "position": 9.98, "fwhm": 0.08, "window": 0.4, "hkl": (1, 1, 1)},
    ], weighting="poisson", input_kind="pattern")
    proc = PeaksProcessor(cfg)
    wl = frames[0][1].meta["wavelength_m"]
    socs, z_pos, z_c, cold = [], [], [], []
    for soc, frame in frames:
        out = {f.validate().meta["tags"]["peak"]: f for f in proc.process(frame)}
        assert set(out) == {"NMC(003)", "Al(111)"}
        nmc = out["NMC(003)"].arrays
        truth = float(bragg_two_theta(nmc_d003(soc), wl))
        z_pos.append((nmc["position"][0] - truth) / nmc["position_err"][0])
        z_c.append((nmc["lattice_c"][0] - nmc_lattice(soc)[1]) / nmc["lattice_c_err"][0])
        al = out["Al(111)"].arrays
        assert al["lattice_a"][0] == pytest.approx(4.0495, abs=5 * al["lattice_a_err"][0])
        assert out["NMC(003)"].t0_ns == frame.t0_ns and out["NMC(003)"].stream == "sim/cell01/peaks"
        socs.append(soc)
        cold.append(nmc["cold_start"][0])
    assert socs[-1] - socs[0] > 0.9  # the charge covers the c expansion and its collapse
    z_pos, z_c = np.array(z_pos), np.array(z_c)
    assert np.all(np.abs(z_pos) < 5) and np.all(np.abs(z_c) < 5)
    assert abs(z_pos.mean()) < 0.6 and 0.5 < z_pos.std() < 1.6  # errors are honest
    assert cold[0] == 1 and sum(cold[1:]) == 0  # one cold start, then warm all the way


def test_processor_bad_input_and_failed_fits() -> None:
    cfg = PeaksConfig(peaks=[{"name": "p", "position": 15.0, "fwhm": 0.5, "window": 3.0}],
                      input_kind="pattern")
    proc = PeaksProcessor(cfg)
    assert proc.wants("pattern") and not proc.wants("spectrum")
    x = np.linspace(10.0, 20.0, 500)
    y = reference_model(x, [PSEUDO_VOIGT], 0, np.array([15.0, 0.5, 100.0, 0.5, 10.0]))
    cases = [({"two_theta": x}, "arrays.intensity", "missing"),
             ({"two_theta": x, "intensity": np.where(x > 14, np.nan, y)}, "arrays.intensity",
              "non-finite"),
             ({"two_theta": x, "intensity": y[:-1]}, "arrays.intensity", "samples"),
             ({"two_theta": x, "intensity": np.stack([y, y])}, "arrays.intensity", "1-D"),
             ({"two_theta": x + 20.0, "intensity": y}, "arrays.two_theta", "fit range")]
    for arrays, field, reason in cases:
        with pytest.raises(FrameError) as exc:
            proc.process(Frame("a/b/xrd", "pattern", 0, 0, arrays, {}, {}))
        assert exc.value.field == field and reason in exc.value.reason
        assert exc.value.stream == "a/b/xrd"
    # a flat frame: no peak to fit, warm or cold. Nothing is emitted and nothing raised.
    assert proc.process(Frame("a/b/xrd", "pattern", 1, 0,
                              {"two_theta": x, "intensity": np.full(x.size, 10.0)}, {}, {})) == []
    assert proc.failures == {"a/b/xrd": 1}
    # hkl needs a wavelength
    proc = PeaksProcessor(PeaksConfig(peaks=[{"name": "p", "position": 15.0, "fwhm": 0.5,
                                              "hkl": (1, 1, 1)}]))
    with pytest.raises(FrameError, match="wavelength"):
        proc.process(Frame("a/b/xrd", "pattern", 0, 0, {"two_theta": x, "intensity": y}, {}, {}))
    with pytest.raises(FrameError, match="positive wavelength"):
        proc.process(Frame("a/b/xrd", "pattern", 0, 0, {"two_theta": x, "intensity": y}, {},
                           {"wavelength_m": "1.54 A"}))
    assert len(proc.process(Frame("a/b/xrd", "pattern", 0, 0, {"two_theta": x, "intensity": y},
                                  {}, {"wavelength_m": 1.5406e-10}))) == 1


@pytest.mark.parametrize("bad", [
    {"peaks": []},
    {"peaks": [{"name": "p", "position": 5.0, "fwhm": 1.0, "window": 1.0, "range": (4, 6)}]},
    {"peaks": [{"name": "p", "position": 9.0, "fwhm": 1.0, "range": (4, 6)}]},
    {"peaks": [{"name": "p", "position": 5.0, "fwhm": 1.0, "hkl": (1, 0, 4),
                "lattice": "hexagonal"}]},
    {"peaks": [{"name": "p", "position": 5.0, "fwhm": 1.0, "fwhm_limits": (0, 2)}]},
    {"peaks": [{"name": "p", "position": 5.0, "fwhm": 1.0}] * 2},
    {"peaks": [{"name": "p", "position": 5.0, "fwhm": 1.0}], "baseline": {"kind": "als",
                                                                          "degree": 1}},
    {"peaks": [{"name": "p", "position": 5.0, "fwhm": 1.0, "shape": "voigt"}]},
    {"peaks": [{"name": "p", "position": 5.0, "fwhm": 1.0}], "unknown": 1},
])
def test_config_rejects(bad: dict) -> None:
    with pytest.raises(ValueError):
        PeaksConfig(**bad)


def test_overlapping_windows_are_fitted_together() -> None:
    x = np.linspace(10.0, 20.0, 1000)
    truth = np.array([14.6, 0.5, 100.0, 0.5, 15.4, 0.5, 60.0, 0.5, 18.5, 0.3, 30.0, 0.5, 10.0,
                      1.0])
    rng = np.random.default_rng(6)
    y = reference_model(x, [PSEUDO_VOIGT] * 3, 1, truth) + rng.normal(0.0, 0.5, x.size)
    cfg = PeaksConfig(peaks=[{"name": "a", "position": 14.5, "fwhm": 0.5, "window": 2.0},
                             {"name": "b", "position": 15.5, "fwhm": 0.5, "window": 2.0},
                             {"name": "far", "position": 18.5, "fwhm": 0.5, "window": 0.5}],
                      wavelength_m=1.0e-10)
    proc = PeaksProcessor(cfg)
    assert [g.members for g in proc.groups] == [(0, 1), (2,)]
    out = proc.process(_frame("pattern", "two_theta", x, y))
    assert [f.meta["tags"]["peak"] for f in out] == ["a", "b", "far"]
    for f, k in zip(out, (0, 1, 2), strict=True):
        assert f.arrays["position"][0] == pytest.approx(truth[4 * k], abs=5 * f.arrays["position_err"][0])
        # the reported height is the maximum of that peak's profile
        c, w, a, eta = truth[4 * k:4 * k + 4]
        assert f.arrays["height"][0] == pytest.approx(
            a / w * (eta * 2 / math.pi + (1 - eta) * 2 * math.sqrt(math.log(2) / math.pi)),
            abs=5 * f.arrays["height_err"][0])
        assert f.arrays["d_spacing"][0] == pytest.approx(d_spacing(f.arrays["position"][0],
                                                                   1.0e-10)[0])
