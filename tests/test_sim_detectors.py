"""Simulated detectors: pyFAI geometry on a real Pilatus frame, Bragg, staging, Raman, kernels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from adapters.sim.detectors import (
    PoniGeometry,
    _interp_uniform,
    _pv_sum,
    _uniform_step,
    bragg_two_theta,
    chi_map,
    d_from_two_theta,
    graphite_d002,
    graphite_dominant_d002,
    nmc_d003,
    pilatus_mask,
    polarization_map,
    project_pattern,
    pseudo_voigt,
    raman_bands,
    raman_baseline,
    raman_spectrum,
    rotation_matrix,
    solid_angle_map,
    two_theta_map,
    xrd_background,
    xrd_pattern,
    xrd_peaks,
)

REAL = Path(__file__).parents[2] / "shared/data/real/detector_2d"
PONI, TIF, XY = (REAL / f"CeO2_Pilatus1M.{ext}" for ext in ("poni", "tif", "xy"))
needs_real = pytest.mark.skipif(not PONI.exists(), reason=f"shared real data missing: {REAL}")
CU_KA1 = 1.5406e-10

# Forward model of the real frame: reference .xy (solid-angle corrected, not polarization
# corrected) x solid angle x horizontal polarization 0.99. Its Pearson against the frame, on
# log1p counts, is 0.8612. Without the factors it is 0.8154, with the solid angle only 0.8520,
# and with vertical polarization 0.8560. A PONI error of 1 px gives 0.789, a 0.1 % distance error
# 0.833, and swapped poni1/poni2 or no rotations about 0.2. Pearson on raw counts is only 0.284
# (0.73 with the frame clipped at its 99th percentile): the CeO2 rings are spotty (coarse grains,
# single pixels up to 621,698 counts on a ~5,700-count ring), so raw counts measure texture, not
# geometry.
CORR_MIN = 0.85


@pytest.fixture(scope="module")
def geom() -> PoniGeometry:
    return PoniGeometry.from_poni_file(PONI, (1043, 981))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(TIF)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.loadtxt(XY, comments="#")


def _reference_positions(geom: PoniGeometry) -> np.ndarray:
    """Slow per-pixel reference: the rotation matrix applied to each pixel vector, as pyFAI."""
    i, j = np.meshgrid(np.arange(geom.shape[0]), np.arange(geom.shape[1]), indexing="ij")
    vec = np.stack([(i + 0.5) * geom.pixel1 - geom.poni1, (j + 0.5) * geom.pixel2 - geom.poni2,
                    np.full(i.shape, geom.distance)], axis=-1)
    return vec @ rotation_matrix(geom).T


# 1. PONI parsing ------------------------------------------------------------------------------

@needs_real
def test_poni_v1_parsing(geom: PoniGeometry) -> None:
    assert geom.distance == pytest.approx(0.208651380603, rel=1e-12)
    assert (geom.poni1, geom.poni2) == pytest.approx((0.0872948482846, 0.0799601126306))
    assert (geom.rot1, geom.rot2, geom.rot3) == pytest.approx(
        (-0.0184422457059, 0.00413760084465, -2.77645988275e-08))
    assert geom.wavelength == pytest.approx(4.066e-11)
    assert (geom.pixel1, geom.pixel2, geom.shape, geom.orientation) == (172e-6, 172e-6,
                                                                        (1043, 981), 3)
    assert PoniGeometry.from_dict(geom.to_dict()) == geom


@needs_real
def test_direct_beam_matches_fit2d_header(geom: PoniGeometry) -> None:
    # The PONI header gives pyFAI's own Fit2D conversion: beam centre x=487.259, y=512.548 pix
    # (pixel corners), tilt 1.083°. The beam (0, 0, 1) in the detector frame is R^T·ez.
    m = rotation_matrix(geom)
    p1, p2 = geom.distance * m[2, :2] / m[2, 2]
    assert (geom.poni2 + p2) / geom.pixel2 == pytest.approx(487.259, abs=2e-3)
    assert (geom.poni1 + p1) / geom.pixel1 == pytest.approx(512.548, abs=2e-3)
    assert np.degrees(np.arccos(m[2, 2])) == pytest.approx(1.083, abs=1e-3)
    tth = two_theta_map(geom)
    assert np.unravel_index(np.argmin(tth), tth.shape) == (512, 487)


def test_poni_v2_parsing_named_detector_and_orientation(tmp_path: Path) -> None:
    text = ("# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis\nponi_version: 2.1\n"
            "Detector: Pilatus1M\nDetector_config: {\"orientation\": 2}\nDistance: 0.2\n"
            "Poni1: 0.09\nPoni2: 0.08\nRot1: 0.01\nRot2: -0.02\nRot3: 0.3\nWavelength: 1e-10\n")
    (tmp_path / "a.poni").write_text(text)
    g = PoniGeometry.from_poni_file(tmp_path / "a.poni")   # shape from the detector name
    assert (g.pixel1, g.pixel2, g.shape, g.orientation) == (172e-6, 172e-6, (1043, 981), 2)
    (tmp_path / "b.poni").write_text(text.replace("Pilatus1M", "Detector").replace(
        '{"orientation": 2}', '{"pixel1": 1e-4, "pixel2": 2e-4, "max_shape": [40, 30]}'))
    g2 = PoniGeometry.from_poni_file(tmp_path / "b.poni")
    assert (g2.pixel1, g2.pixel2, g2.shape, g2.orientation) == (1e-4, 2e-4, (40, 30), 3)
    # orientation 2 flips rows: the same geometry seen upside down
    flipped = dataclasses.replace(g2, orientation=2)
    np.testing.assert_array_equal(two_theta_map(flipped), np.flipud(two_theta_map(g2)))
    with pytest.raises(ValueError, match="wavelength"):
        PoniGeometry.from_dict({"dist": 0.1, "poni1": 0, "poni2": 0, "pixel1": 1e-4,
                                "pixel2": 1e-4, "shape": (4, 4)})


def test_two_theta_map_matches_per_pixel_rotation() -> None:
    g = PoniGeometry(0.15, 0.004, 0.006, 0.05, -0.12, 0.7, 1e-10, 1e-4, 1.2e-4, (60, 80))
    tth = two_theta_map(g)
    t = _reference_positions(g)
    ref = np.degrees(np.arccos(t[..., 2] / np.linalg.norm(t, axis=-1)))
    np.testing.assert_allclose(tth, ref, atol=1e-9)
    # pyFAI's closed form (calc_tth): t3 = p1·s2 − p2·c2·s1 + L·c1·c2, |t| = |p|
    i, j = np.indices(g.shape)
    p1, p2 = (i + 0.5) * g.pixel1 - g.poni1, (j + 0.5) * g.pixel2 - g.poni2
    t3 = (p1 * np.sin(g.rot2) - p2 * np.cos(g.rot2) * np.sin(g.rot1)
          + g.distance * np.cos(g.rot1) * np.cos(g.rot2))
    closed = np.degrees(np.arccos(t3 / np.sqrt(p1 ** 2 + p2 ** 2 + g.distance ** 2)))
    np.testing.assert_allclose(tth, closed, atol=1e-9)
    # chi and polarization against pyFAI's trigonometric forms
    chi = np.arctan2(t[..., 0], t[..., 1])
    np.testing.assert_allclose(chi_map(g), np.degrees(chi), atol=1e-9)
    tth_rad = np.radians(tth)
    pol = 0.5 * (1 + np.cos(tth_rad) ** 2 - 0.9 * np.cos(2 * chi) * np.sin(tth_rad) ** 2)
    np.testing.assert_allclose(polarization_map(g, 0.9), pol, atol=1e-12)
    # closed forms: untilted 2θ = arctan(r/L); solid angle cos³ = (L/√(L² + r²))³ at any tilt
    flat = dataclasses.replace(g, rot1=0.0, rot2=0.0, rot3=0.0)
    r = np.hypot(p1, p2)
    np.testing.assert_allclose(two_theta_map(flat), np.degrees(np.arctan(r / 0.15)), atol=1e-12)
    np.testing.assert_allclose(solid_angle_map(g), (0.15 / np.hypot(0.15, r)) ** 3, rtol=1e-12)


# 2. Geometry against the real frame ----------------------------------------------------------

@needs_real
def test_projection_of_reference_pattern_matches_real_frame(
        geom: PoniGeometry, frame: np.ndarray, reference: np.ndarray) -> None:
    assert frame.shape == (1043, 981) and frame.dtype == np.int32
    measured = np.flipud(frame)            # Dioptas integrated np.flipud of the stored array
    x, y = reference[:, 0], reference[:, 1]
    good = measured >= 0
    log_measured = np.log1p(measured[good])

    def corr(tth: np.ndarray, polarization: np.ndarray | None,
             solid_angle: np.ndarray | None) -> float:
        model = project_pattern(x, y, tth, None, None, polarization=polarization,
                                solid_angle=solid_angle)
        return float(np.corrcoef(np.log1p(model[good]), log_measured)[0, 1])

    def full_model_corr(g: PoniGeometry) -> float:
        return corr(two_theta_map(g), polarization_map(g, 0.99), solid_angle_map(g))

    c = full_model_corr(geom)
    assert c >= CORR_MIN, c
    # the threshold discriminates wrong geometries
    wrong = {"swapped poni": dataclasses.replace(geom, poni1=geom.poni2, poni2=geom.poni1),
             "no rotations": dataclasses.replace(geom, rot1=0.0, rot2=0.0, rot3=0.0),
             "rot1 sign": dataclasses.replace(geom, rot1=-geom.rot1),
             "poni1 + 1 px": dataclasses.replace(geom, poni1=geom.poni1 + geom.pixel1),
             "distance + 0.1 %": dataclasses.replace(geom, distance=geom.distance * 1.001),
             "no Dioptas flip": dataclasses.replace(geom, orientation=2)}
    for name, g in wrong.items():
        assert full_model_corr(g) < CORR_MIN, name
    # solid angle and horizontal polarization (pyFAI chi convention) each improve the fit
    tth, sa = two_theta_map(geom), solid_angle_map(geom)
    c_vertical = corr(tth, polarization_map(geom, -0.99), sa)
    assert c > c_vertical > corr(tth, None, sa) > corr(tth, None, None)


@needs_real
def test_pilatus_mask_matches_real_gaps(frame: np.ndarray) -> None:
    mask = pilatus_mask(frame.shape)
    assert mask.sum() == 73_533
    np.testing.assert_array_equal(mask, frame == -1)
    assert (frame == -2).sum() == 27     # bad pixels: not part of the module layout
    np.testing.assert_array_equal(pilatus_mask((981, 1043)), mask.T)   # turned by 90°
    with pytest.raises(ValueError):
        pilatus_mask((1000, 1000))


# 3. Bragg's law --------------------------------------------------------------------------------

def test_bragg_round_trip() -> None:
    d = np.linspace(0.8, 10.0, 50)
    np.testing.assert_allclose(d_from_two_theta(bragg_two_theta(d, CU_KA1), CU_KA1), d, rtol=1e-12)
    assert bragg_two_theta(3.355, CU_KA1) == pytest.approx(26.54, abs=0.01)   # graphite (002)
    assert np.isnan(bragg_two_theta(0.5, CU_KA1))                           # λ > 2d


@needs_real
def test_ceo2_reflections_at_poni_wavelength(geom: PoniGeometry, reference: np.ndarray) -> None:
    x, y = reference[:, 0], reference[:, 1]
    step = x[1] - x[0]
    for hkl in ((1, 1, 1), (2, 0, 0), (2, 2, 0)):
        tth = bragg_two_theta(5.411 / np.sqrt(np.sum(np.square(hkl))), geom.wavelength)
        window = np.flatnonzero(np.abs(x - tth) < 0.15)
        k = window[np.argmax(y[window])]
        y0, y1, y2 = y[k - 1:k + 2]
        peak = x[k] + 0.5 * step * (y0 - y2) / (y0 - 2 * y1 + y2)   # parabolic vertex
        assert abs(peak - tth) < 0.02, (hkl, peak, tth)
        assert abs(x[k] - tth) < 0.02, (hkl, x[k], tth)


# 4. Electrode physics --------------------------------------------------------------------------

def test_graphite_staging_and_nmc_lattice() -> None:
    soc = np.linspace(0, 1, 201)
    d = np.array([graphite_dominant_d002(s) for s in soc])
    assert np.all(np.diff(d) >= 0) and d[-1] > d[0]
    assert (d[0], d[-1]) == (3.355, 3.70)
    assert graphite_d002(0.17) == [(pytest.approx(3.44), 1.0)]           # stage 4
    assert graphite_d002(0.5) == [(3.50, 0.0), (3.51, 1.0)]               # stage 2, LiC12
    for s in soc:
        assert sum(w for _, w in graphite_d002(s)) == pytest.approx(1.0)
    assert graphite_d002(0.75) == [(3.51, 0.5), (3.70, 0.5)]

    d003 = np.array([nmc_d003(s) for s in soc])
    k = int(np.argmax(d003))
    assert soc[k] == pytest.approx(0.7)
    assert np.all(np.diff(d003[:k + 1]) > 0) and np.all(np.diff(d003[k:]) < 0)
    assert (d003[0], d003[k], d003[-1]) == pytest.approx((14.20 / 3, 14.47 / 3, 14.00 / 3))


def test_xrd_graphite_peak_moves_to_lower_angle() -> None:
    tth = np.linspace(10, 80, 2048)
    window = (tth > bragg_two_theta(3.75, CU_KA1)) & (tth < bragg_two_theta(3.30, CU_KA1))
    peak = [tth[window][np.argmax(xrd_pattern(tth, s, CU_KA1)[window])]
            for s in np.linspace(0, 1, 41)]
    assert np.all(np.diff(peak) <= 1e-9) and peak[0] - peak[-1] > 2.0
    assert peak[0] == pytest.approx(bragg_two_theta(3.355, CU_KA1), abs=0.05)
    assert peak[-1] == pytest.approx(bragg_two_theta(3.70, CU_KA1), abs=0.05)
    # NMC (003) follows the c lattice: lowest angle near soc 0.7
    w003 = (tth > 18.0) & (tth < 19.5)
    p003 = {s: tth[w003][np.argmax(xrd_pattern(tth, s, CU_KA1)[w003])] for s in (0.0, 0.7, 1.0)}
    assert p003[0.7] < p003[0.0] < p003[1.0]


# 5. Forward projection ------------------------------------------------------------------------

def test_project_pattern_rebinned_reproduces_pattern() -> None:
    g = PoniGeometry(0.2, 0.09, 0.08, -0.02, 0.004, 0.0, 4.066e-11, 172e-6, 172e-6, (1043, 981))
    tth_map = two_theta_map(g)
    mask = pilatus_mask(g.shape)
    axis = np.linspace(0.0, 32.0, 16001)
    pattern = xrd_pattern(axis, 0.6, g.wavelength, scale=2000.0, fwhm_deg=0.1)
    img = project_pattern(axis, pattern, tth_map, mask, None)
    assert img.dtype == np.int32 and np.all(img[mask] == -1) and np.all(img[~mask] >= 0)

    edges = np.arange(1.0, 25.0, 0.01)
    t, v = tth_map[~mask], img[~mask].astype(float)
    n = np.histogram(t, edges)[0]
    mean_v = np.histogram(t, edges, weights=v)[0] / np.maximum(n, 1)
    mean_t = np.histogram(t, edges, weights=t)[0] / np.maximum(n, 1)
    expect = np.interp(mean_t, axis, pattern)
    peaks = (n >= 50) & (expect > 0.2 * pattern.max())
    assert peaks.sum() > 50
    np.testing.assert_allclose(mean_v[peaks], expect[peaks], rtol=0.01)

    noisy = project_pattern(axis, pattern, tth_map, mask, np.random.default_rng(1))
    assert np.all(noisy[mask] == -1)
    clean = img[~mask].astype(float)
    assert abs(noisy[~mask].mean() - clean.mean()) < 5 * np.sqrt(clean.mean() / clean.size)
    assert np.std(noisy[~mask] - clean) == pytest.approx(np.sqrt(clean.mean()), rel=0.05)


def test_project_pattern_nonuniform_axis_and_factors() -> None:
    tth_map = np.array([[0.5, 1.5, 2.5], [3.5, 9.0, -1.0]])
    axis = np.array([0.0, 1.0, 3.0, 4.0])
    y = np.array([10.0, 20.0, 40.0, 80.0])
    out = project_pattern(axis, y, tth_map, None, None, polarization=np.full((2, 3), 0.5))
    np.testing.assert_array_equal(out, np.rint(0.5 * np.interp(tth_map, axis, y)).astype(np.int32))


# 6. Raman ------------------------------------------------------------------------------------

def _band_max(shift: np.ndarray, spec: np.ndarray, lo: float, hi: float) -> float:
    w = (shift > lo) & (shift < hi)
    return float(shift[w][np.argmax(spec[w])])


def test_raman_g_band_follows_staging() -> None:
    shift = np.linspace(200, 3000, 2801)
    base = raman_baseline(shift) * 1000.0

    def bands(soc: float) -> np.ndarray:
        return raman_spectrum(shift, soc) - base

    assert _band_max(shift, bands(0.0), 1500, 1700) == pytest.approx(1580, abs=1)
    mid = bands(0.19)                                      # stage 4-3: doublet
    assert _band_max(shift, mid, 1560, 1588) == pytest.approx(1577, abs=2)
    assert _band_max(shift, mid, 1592, 1620) == pytest.approx(1600, abs=2)
    assert _band_max(shift, bands(0.45), 1500, 1700) == pytest.approx(1600, abs=1)
    g_height = [bands(s)[(shift > 1560) & (shift < 1620)].max() for s in (0.5, 0.75, 1.0)]
    assert g_height[0] > g_height[1] > 20 * g_height[2]    # G vanishes for LiC6
    for s in (0.0, 0.5, 1.0):
        spec = bands(s)
        for band in (716, 741, 893, 917):
            assert _band_max(shift, spec, band - 6, band + 6) == pytest.approx(band, abs=1)
            assert spec[np.argmin(np.abs(shift - band))] > 200
    assert np.all(raman_baseline(shift) > 0)
    noisy = raman_spectrum(shift, 0.3, np.random.default_rng(0))
    assert np.all(noisy > 0) and np.all(noisy == np.round(noisy))
    assert len(raman_bands(0.3)[3]) == raman_bands(0.3)[0].size


# 7. Numba kernels against numpy references ------------------------------------------------------

def test_peak_kernel_matches_pseudo_voigt() -> None:
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 100, 3000))
    c, w, eta, a = rng.uniform(-5, 105, 20), rng.uniform(0.05, 5, 20), rng.uniform(0, 1, 20), \
        rng.uniform(0, 10, 20)
    c[3], eta[5] = np.nan, 1.0              # unreachable reflection (skipped), pure Lorentzian
    base = rng.uniform(0, 1, x.size)
    ref = base + sum(pseudo_voigt(x, *p) for p in zip(c, w, eta, a, strict=True)
                     if np.isfinite(p[0]))
    for order in (slice(None), slice(None, None, -1), rng.permutation(x.size)):   # bisection or not
        out = base[order].copy()
        _pv_sum(x[order], np.column_stack([c, w, eta, a / 2]), 2.0, out)
        np.testing.assert_allclose(out, ref[order], rtol=1e-12, atol=1e-14)
    # area normalisation of the reference itself
    fine = np.linspace(-2000, 2000, 2_000_001)
    area = np.trapezoid(pseudo_voigt(fine, 1.0, 0.5, 0.3, 2.0), fine)
    assert area == pytest.approx(2.0, rel=1e-3)


def test_xrd_pattern_is_the_sum_of_its_parts() -> None:
    x = np.linspace(5, 120, 1500)
    d, area, labels = xrd_peaks(0.4)
    assert len(labels) == d.size == area.size
    ref = 3.0 * 0.2 * xrd_background(x, CU_KA1) + sum(
        3.0 * pseudo_voigt(x, bragg_two_theta(di, CU_KA1), 0.1, 0.4, ai)
        for di, ai in zip(d, area, strict=True))
    got = xrd_pattern(x, 0.4, CU_KA1, scale=3.0, background=0.2, fwhm_deg=0.1, eta=0.4)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_interp_kernel_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    axis = np.linspace(2.0, 30.0, 1500)
    y = rng.uniform(0, 1000, axis.size)
    xq = rng.uniform(0.0, 33.0, 100_000)
    out = np.empty_like(xq)
    dx = _uniform_step(axis)
    assert dx is not None and _uniform_step(axis ** 1.01) is None
    _interp_uniform(xq, axis[0], dx, y, out)
    np.testing.assert_allclose(out, np.interp(xq, axis, y), rtol=0, atol=1e-10 * y.max())
