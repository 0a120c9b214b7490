"""Azimuthal integration: kernels against numpy/scipy references, the real Pilatus frame against
its Dioptas/pyFAI pattern, pyFAI itself (when installed), and the processor on simulator frames."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from scipy.signal import find_peaks

from adapters.sim import detectors as D
from adapters.sim.detectors import PoniGeometry
from adapters.sim.experiment import SimExperiment, load_scenario
from adapters.sim.spectra import XRD_AXIS, attach_detectors
from processors.azimuthal import (
    AxisSpec,
    AzimuthalConfig,
    AzimuthalProcessor,
    RadialTable,
    detector_gap_mask,
    integrate1d,
    radial_maps,
)
from processors.kernels.azimuthal import balanced_chunks, bbox_table, table_integrate
from stream.frame import Frame, FrameError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "detector_2d"
PONI, TIF, XY = (REAL / f"CeO2_Pilatus1M.{ext}" for ext in ("poni", "tif", "xy"))
needs_real = pytest.mark.skipif(not TIF.exists(), reason=f"shared real data missing: {REAL}")
EPS32 = 1.0 + float(np.finfo(np.float32).eps)
# a small tilted detector with the beam on it (pixels straddle 2θ = 0) and non-square pixels
SMALL = PoniGeometry(0.03, 0.0061, 0.0052, 0.05, -0.12, 0.3, 1e-10, 1e-4, 1.2e-4, (60, 80))


@pytest.fixture(scope="module")
def real_frame() -> np.ndarray:
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(TIF)


@pytest.fixture(scope="module")
def dioptas_frame(real_frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.flipud(real_frame))   # what Dioptas integrated


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.loadtxt(XY, comments="#")


@pytest.fixture(scope="module")
def real_geom() -> PoniGeometry:
    return PoniGeometry.from_poni_file(PONI, (1043, 981))


def _table_matrix(first: np.ndarray, count: np.ndarray, weights: np.ndarray,
                  npt: int) -> scipy.sparse.csr_matrix:
    """The table as a scipy (npt x npix) sparse matrix, for the references."""
    pixel = np.repeat(np.arange(count.size), count)
    start = np.repeat(np.cumsum(count) - count, count)
    bins = np.repeat(first, count) + np.arange(weights.size) - start
    return scipy.sparse.csr_matrix((weights.astype(np.float64), (bins, pixel)),
                                   shape=(npt, count.size))


def _full_range(pos: np.ndarray, delta: np.ndarray, npt: int) -> tuple[float, float]:
    lo = max(0.0, float((pos - delta).min()))
    return lo, (float((pos + delta).max()) * EPS32 - lo) / npt


def _parabolic_peaks(x: np.ndarray, y: np.ndarray, prominence: float) -> np.ndarray:
    """Peak positions: local maxima of the given prominence, refined by a parabola."""
    k, _ = find_peaks(y, prominence=prominence)
    k = k[(k > 0) & (k < y.size - 1)]
    y0, y1, y2 = y[k - 1], y[k], y[k + 1]
    return x[k] + 0.5 * (x[1] - x[0]) * (y0 - y2) / (y0 - 2 * y1 + y2)


# 1. Kernels against slow references --------------------------------------------------------------

@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1"])
def test_bbox_table_matches_dense_overlap_reference(unit: str) -> None:
    pos, delta = (a.ravel() for a in radial_maps(SMALL, unit, split=True))
    valid = np.random.default_rng(0).random(pos.size) > 0.1
    npt = 97
    lo, width = _full_range(pos[valid], delta[valid], npt)
    first, count, weights = bbox_table(pos, delta, valid, lo, width, npt)
    assert (pos - delta).min() < lo          # pixels at the beam straddle 2θ = 0 (clipped)
    # reference: the length of each pixel's [pos - delta, pos + delta] inside each bin over its
    # whole length, the first and last bins open-ended (pyFAI folds overhangs into them)
    edges = lo + width * np.arange(npt + 1)
    lower, upper = edges[:-1].copy(), edges[1:].copy()
    lower[0], upper[-1] = -np.inf, np.inf
    a, b = (pos - delta)[:, None], (pos + delta)[:, None]
    dense = np.clip(np.minimum(b, upper) - np.maximum(a, lower), 0, None) / (b - a)
    dense[~valid] = 0.0
    got = _table_matrix(first, count, weights, npt).toarray().T
    np.testing.assert_allclose(got, dense, atol=2e-6)
    assert np.all(count[~valid] == 0) and count[valid].min() >= 1 and count.max() >= 3
    np.testing.assert_allclose(got.sum(axis=1)[valid], 1.0, rtol=1e-6)   # each pixel sums to 1


def test_unsplit_table_matches_histogram() -> None:
    pos = np.radians(D.two_theta_map(SMALL)).ravel()
    valid = np.ones(pos.size, dtype=bool)
    valid[::7] = False
    npt = 50
    lo, width = _full_range(pos[valid], np.zeros(valid.sum()), npt)
    first, count, weights = bbox_table(pos, np.zeros_like(pos), valid, lo, width, npt)
    assert np.all(weights == 1.0) and np.array_equal(count, valid.astype(np.int32))
    edges = lo + width * np.arange(npt + 1)
    np.testing.assert_array_equal(np.bincount(first[valid], minlength=npt),
                                  np.histogram(pos[valid], edges)[0])
    # and each pixel lies in its bin
    assert np.all(edges[first[valid]] <= pos[valid]) and np.all(pos[valid] < edges[first[valid] + 1])


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("n_chunks", [1, 3, 8])
def test_table_integrate_matches_sparse_matvec(dtype: type, n_chunks: int) -> None:
    rng = np.random.default_rng(1)
    pos, delta = (a.ravel() for a in radial_maps(SMALL, "2th_deg", split=True))
    valid = rng.random(pos.size) > 0.05
    npt = 64
    first, count, weights = bbox_table(pos, delta, valid, *_full_range(pos, delta, npt), npt)
    data = rng.integers(0, 5000, pos.size).astype(dtype)
    if np.dtype(dtype).kind != "u":
        data[rng.random(pos.size) < 0.05] = -1      # gap pixels
    if np.dtype(dtype).kind == "f":
        data[rng.random(pos.size) < 0.02] = np.nan
    norm = rng.uniform(0.5, 1.0, pos.size).astype(np.float32)
    matrix = _table_matrix(first, count, weights, npt)
    chunks = balanced_chunks(count, n_chunks)
    assert chunks[0][0] == 0 and chunks[0][-1] == pos.size and chunks[1][-1] == weights.size
    for min_valid in (-np.inf, 0.0):
        signal, skipped_norm, skipped_weight = table_integrate(
            first, count, weights, data, norm, min_valid, npt, *chunks)
        keep = np.asarray(data >= min_valid)          # NaN is never kept
        values = np.where(keep, data.astype(np.float64), 0.0)
        np.testing.assert_allclose(signal, matrix @ values, rtol=1e-12)
        np.testing.assert_allclose(skipped_norm, matrix @ np.where(keep, 0.0, norm), rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(skipped_weight, matrix @ (~keep).astype(np.float64),
                                   rtol=1e-12, atol=1e-12)


def test_integrate_matches_numpy_histogram_reference() -> None:
    g = dataclasses.replace(SMALL, shape=(120, 90))
    rng = np.random.default_rng(2)
    image = rng.poisson(300.0, g.shape).astype(np.int32)
    image[rng.random(g.shape) < 0.05] = -1
    mask = np.zeros(g.shape, dtype=bool)
    mask[:, :3] = True
    spec = AxisSpec(40, "2th_deg", None, "no", True, 0.95)
    table = RadialTable(g, spec, mask)
    intensity, kept = table.integrate_count(image, 0.0)
    # reference: pyFAI's sum(signal) / sum(solid angle x polarisation), by numpy histograms
    tth = D.two_theta_map(g)
    ok = ~mask
    edges = np.linspace(tth[ok].min(), tth[ok].max() * EPS32, 41)   # 2θ ranges over the mask
    good = ok & (image >= 0)
    norm = D.solid_angle_map(g) * D.polarization_map(g, 0.95)
    signal = np.histogram(tth[good], edges, weights=image[good])[0]
    denominator = np.histogram(tth[good], edges, weights=norm[good])[0]
    np.testing.assert_allclose(table.radial, 0.5 * (edges[1:] + edges[:-1]), rtol=1e-6)
    np.testing.assert_allclose(kept, np.histogram(tth[good], edges)[0])
    expect = np.divide(signal, denominator, out=np.zeros(40), where=denominator > 0)
    np.testing.assert_allclose(intensity, expect, rtol=1e-6)
    # no correction, no masking: a plain mean per bin
    plain = integrate1d(image, g, 40, split="no", solid_angle=False)[1]
    counts = np.histogram(tth, np.linspace(tth.min(), tth.max() * EPS32, 41))[0]
    sums = np.histogram(tth, np.linspace(tth.min(), tth.max() * EPS32, 41), weights=image)[0]
    np.testing.assert_allclose(plain, sums / counts, rtol=1e-6)


# 2. The real Pilatus 1M frame against Dioptas/pyFAI -------------------------------------------

@needs_real
def test_real_frame_matches_dioptas_pattern(dioptas_frame: np.ndarray, reference: np.ndarray,
                                            real_geom: PoniGeometry) -> None:
    # .xy header: 2th_deg, 1512 points, no mask (gap pixels integrated at -1). Dioptas also
    # applied its default horizontal polarisation 0.99 and pyFAI's solid angle (the header says
    # "Polarization factor: None"; the pattern only matches with 0.99), with bbox splitting.
    x, y = reference[:, 0], reference[:, 1]
    radial, intensity = integrate1d(dioptas_frame, real_geom, x.size, polarization_factor=0.99)
    np.testing.assert_allclose(radial, x, atol=1e-5)
    assert np.corrcoef(intensity, y)[0, 1] >= 0.999
    np.testing.assert_allclose(intensity, y, rtol=1e-3)
    ours = _parabolic_peaks(radial, intensity, 0.02 * y.max())
    theirs = _parabolic_peaks(x, y, 0.02 * y.max())
    assert ours.size == theirs.size >= 10
    assert np.abs(ours - theirs).max() < 0.01
    # they are CeO2 (a = 5.411 Å) reflections at the PONI wavelength
    for hkl in ((1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)):
        tth = D.bragg_two_theta(5.411 / math.sqrt(sum(i * i for i in hkl)), real_geom.wavelength)
        assert np.abs(ours - tth).min() < 0.02, hkl
    # the comparison discriminates: without the polarisation correction, or with the frame not
    # flipped, the pattern no longer matches
    unpolarised = integrate1d(dioptas_frame, real_geom, x.size)[1]
    assert np.abs(unpolarised / y - 1).max() > 0.05
    unflipped = integrate1d(np.flipud(dioptas_frame), real_geom, x.size,
                            polarization_factor=0.99)[1]
    assert np.corrcoef(unflipped, y)[0, 1] < 0.99


@needs_real
def test_poni_v2_orientation_replaces_the_flip(tmp_path: Path, real_frame: np.ndarray,
                                               dioptas_frame: np.ndarray,
                                               real_geom: PoniGeometry) -> None:
    # the same calibration as a PONI v2.1 file whose Detector_config says orientation 2
    # (rows flipped): the raw tifffile array then integrates like Dioptas' flipped one
    config = {"pixel1": real_geom.pixel1, "pixel2": real_geom.pixel2,
              "max_shape": [1043, 981], "orientation": 2}
    text = PONI.read_text().replace("PixelSize1: 0.000172\nPixelSize2: 0.000172\n", "")
    text = text.replace("Distance:", "poni_version: 2.1\nDetector: Detector\n"
                        f"Detector_config: {json.dumps(config)}\nDistance:")
    (tmp_path / "v21.poni").write_text(text)
    g = PoniGeometry.from_poni_file(tmp_path / "v21.poni")
    assert g == dataclasses.replace(real_geom, orientation=2)
    kw = {"polarization_factor": 0.99, "split": "no"}
    np.testing.assert_allclose(integrate1d(real_frame, g, 800, **kw)[1],
                               integrate1d(dioptas_frame, real_geom, 800, **kw)[1], rtol=1e-9)


# 3. pyFAI itself, when installed (the 'bench' extra) ------------------------------------------

@needs_real
@pytest.mark.parametrize("split", ["bbox", "no"])
@pytest.mark.parametrize("unit", ["2th_deg", "q_nm^-1"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_pyfai(split: str, unit: str, masked: bool, dioptas_frame: np.ndarray,
                       real_geom: PoniGeometry) -> None:
    pyFAI = pytest.importorskip("pyFAI")
    ai = pyFAI.load(str(PONI))
    mask = dioptas_frame < 0 if masked else None
    radial_range = (3.0, 25.0) if unit == "2th_deg" and masked else None
    ours = RadialTable(real_geom, AxisSpec(1000, unit, radial_range, split, True, 0.95), mask)
    res = ai.integrate1d(dioptas_frame, 1000, unit=unit, method=(split, "csr", "cython"),
                         polarization_factor=0.95, mask=mask, radial_range=radial_range)
    # pyFAI keeps pixel corners in float32 (2θ to ~1e-8 relative): the axis end and the
    # splitting of the pixels at the detector's far corner differ that little
    np.testing.assert_allclose(ours.radial, res.radial, rtol=1e-7)
    intensity, kept = ours.integrate_count(dioptas_frame)
    np.testing.assert_allclose(kept, res.count, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(intensity, res.intensity, rtol=1e-4, atol=1e-6)


# 4. The processor -----------------------------------------------------------------------------

def _image_frame(image: np.ndarray, meta: dict | None = None, seq: int = 0) -> Frame:
    return Frame("exp/cell01/detector", "image", seq, 1_700_000_000_000_000_000 + seq,
                 {"image": image}, {"image": "counts"}, meta or {})


def test_processor_recovers_simulator_pattern() -> None:
    sc = load_scenario("cycling")
    sc.detectors = []
    ex = SimExperiment("sim", sc, 2, 0)
    attach_detectors(ex, ["xrd"], frames_2d=True)
    proc = AzimuthalProcessor(AzimuthalConfig(npt=1500))
    checked = 0
    for _ in range(11):          # a 2-D frame per cell every 5 s
        for frame in ex.step():
            if frame.kind != "image":
                continue
            (out,) = proc.process(frame)
            c = ex.cells.index(frame.cell)
            truth = D.xrd_pattern(XRD_AXIS, float(ex.last_soc[c]), 4.066e-11, scale=1000.0)
            tth, y = out.arrays["two_theta"], out.arrays["intensity"]
            inside = (tth > 2.5) & (tth < 30.0)
            expect = np.interp(tth[inside], XRD_AXIS, truth)
            assert np.corrcoef(y[inside], expect)[0, 1] >= 0.995
            assert np.median(y[inside] / expect) == pytest.approx(1.0, abs=0.01)
            assert (out.stream, out.kind, out.t0_ns) == (f"sim/{frame.cell}/azimuthal",
                                                        "pattern", frame.t0_ns)
            assert tth.dtype == y.dtype == np.float32
            assert out.units == {"two_theta": "deg", "intensity": "counts"}
            assert out.meta == {"wavelength_m": 4.066e-11, "derived_from": "image"}
            out.validate()
            checked += 1
    assert checked == 6
    assert len(proc._tables) == 1                  # one geometry, one table for all frames


def test_processor_skips_negative_pixels_unless_told() -> None:
    g = dataclasses.replace(SMALL, shape=(120, 90))
    image = np.full(g.shape, 100, dtype=np.int32)
    image[::5, ::3] = -1
    meta = {"poni": g.to_dict()}
    masked = AzimuthalProcessor(AzimuthalConfig(npt=30, polarization_factor=None,
                                                solid_angle=False))
    y = masked.process(_image_frame(image, meta))[0].arrays["intensity"]
    np.testing.assert_allclose(y[y > 0], 100.0, rtol=1e-6)
    raw = AzimuthalProcessor(AzimuthalConfig(npt=30, polarization_factor=None,
                                             solid_angle=False, mask_negative=False))
    assert raw.process(_image_frame(image, meta))[0].arrays["intensity"].min() < 99.0


@needs_real
def test_processor_poni_file_mask_file_and_gaps(tmp_path: Path, dioptas_frame: np.ndarray,
                                                reference: np.ndarray) -> None:
    cfg = {"poni_file": str(PONI), "npt": reference.shape[0]}
    frame = _image_frame(dioptas_frame)
    # unmasked with the default polarisation 0.99: the Dioptas pattern
    out = AzimuthalProcessor(AzimuthalConfig(**cfg, mask_negative=False)).process(frame)[0]
    np.testing.assert_allclose(out.arrays["intensity"], reference[:, 1], rtol=1e-3)
    assert out.meta["wavelength_m"] == 4.066e-11
    # in q: the same reflections, at q = 4π/λ·sin(θ)
    q = AzimuthalProcessor(AzimuthalConfig(**cfg, unit="q_nm^-1")).process(frame)[0]
    assert q.units == {"q": "nm^-1", "intensity": "counts"}
    prominence = 0.02 * reference[:, 1].max()
    q_peaks = _parabolic_peaks(q.arrays["q"].astype(float), q.arrays["intensity"], prominence)
    tth_peaks = _parabolic_peaks(reference[:, 0], reference[:, 1], prominence)
    assert q_peaks.size == tth_peaks.size
    np.testing.assert_allclose(np.degrees(2 * np.arcsin(q_peaks * 0.04066 / (4 * np.pi))),
                               tth_peaks, atol=0.01)
    # the gap mask, by file or by detector layout, equals skipping the -1 pixels per frame (on a
    # given range: by default a static mask also sets the range, and the beam is in a gap column)
    cfg["radial_range"] = (1.0, 30.0)
    gaps = dioptas_frame == -1
    np.testing.assert_array_equal(detector_gap_mask("pilatus", gaps.shape), np.flipud(gaps))
    np.save(tmp_path / "gaps.npy", gaps)
    no_bad = _image_frame(np.where(dioptas_frame == -2, 0, dioptas_frame))  # 27 bad pixels aside
    by_file = AzimuthalProcessor(AzimuthalConfig(**cfg, mask_file=str(tmp_path / "gaps.npy"),
                                                 mask_negative=False)).process(no_bad)[0]
    by_value = AzimuthalProcessor(AzimuthalConfig(**cfg)).process(no_bad)[0]
    np.testing.assert_allclose(by_file.arrays["intensity"], by_value.arrays["intensity"],
                               rtol=1e-5)


def test_processor_inline_poni_and_frame_errors() -> None:
    g = dataclasses.replace(SMALL, shape=(120, 90))
    proc = AzimuthalProcessor(AzimuthalConfig(npt=30, poni=g.to_dict()))
    image = np.random.default_rng(3).integers(0, 1000, g.shape).astype(np.uint16)
    expect = proc.process(_image_frame(image))[0].arrays["intensity"]
    assert expect.min() > 0
    for dtype in (">u2", "<f2", ">f8", "<i8"):        # wire dtypes numba cannot read directly
        same = proc.process(_image_frame(image.astype(dtype)))[0].arrays["intensity"]
        np.testing.assert_allclose(same, expect, rtol=1e-6)
    cases = {
        "arrays.image": [_image_frame(np.ones((120, 90, 2), np.int32)),     # not 2-D
                         _image_frame(np.ones((90, 120), np.int32)),         # not the PONI shape
                         _image_frame(np.ones(g.shape, bool)),               # not numeric
                         _image_frame(np.full(g.shape, np.nan)),             # no valid pixel
                         Frame("exp/cell01/detector", "image", 0, 0, {"x": image}, {}, {})],
    }
    for field, frames in cases.items():
        for frame in frames:
            with pytest.raises(FrameError) as err:
                proc.process(frame)
            assert err.value.stream == "exp/cell01/detector" and err.value.field == field
    no_geometry = AzimuthalProcessor(AzimuthalConfig(npt=30))
    with pytest.raises(FrameError) as err:
        no_geometry.process(_image_frame(image))
    assert err.value.field == "meta.poni"
    bad = {k: v for k, v in g.to_dict().items() if k != "wavelength"}
    with pytest.raises(FrameError, match="wavelength") as err:
        no_geometry.process(_image_frame(image, {"poni": bad}))
    assert err.value.field == "meta.poni"
    with pytest.raises(ValueError):
        AzimuthalConfig(poni_file="a.poni", poni={"dist": 0.1})
    with pytest.raises(ValueError, match="wavelength"):      # a bad inline PONI fails at once
        AzimuthalProcessor(AzimuthalConfig(poni=bad))
    with pytest.raises(FileNotFoundError):
        AzimuthalProcessor(AzimuthalConfig(poni_file="/nonexistent.poni"))


def test_processor_keeps_one_table_per_geometry() -> None:
    g = dataclasses.replace(SMALL, shape=(120, 90))
    proc = AzimuthalProcessor(AzimuthalConfig(npt=30, max_tables=2))
    image = np.ones(g.shape, dtype=np.int32)
    geoms = [dataclasses.replace(g, distance=d) for d in (0.03, 0.031, 0.032)]
    proc.process(_image_frame(image, {"poni": geoms[0].to_dict()}))
    table = next(iter(proc._tables.values()))
    proc.process(_image_frame(image, {"poni": geoms[0].to_dict()}, seq=1))
    assert next(iter(proc._tables.values())) is table          # cached, not rebuilt
    for seq, geom in enumerate(geoms[1:], start=2):
        proc.process(_image_frame(image, {"poni": geom.to_dict()}, seq=seq))
    assert list(proc._tables) == geoms[1:]                      # least recently used dropped


@needs_real
def test_processor_pattern_feeds_the_peaks_processor(dioptas_frame: np.ndarray,
                                                     real_geom: PoniGeometry) -> None:
    # real frame -> azimuthal -> peaks: the CeO2 calibrant's lattice parameter (5.411 Å)
    from processors.peaks import PeaksConfig, PeaksProcessor
    (pattern,) = AzimuthalProcessor(AzimuthalConfig(poni_file=str(PONI), npt=1512)).process(
        _image_frame(dioptas_frame))
    peaks = []
    for hkl in ((1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)):
        tth = float(D.bragg_two_theta(5.411 / math.sqrt(sum(i * i for i in hkl)), 4.066e-11))
        peaks.append({"name": "CeO2(" + "".join(map(str, hkl)) + ")", "position": tth,
                      "fwhm": 0.06, "window": 0.3, "hkl": hkl})
    results = PeaksProcessor(PeaksConfig(peaks=peaks)).process(pattern)
    lattice = [float(f.arrays["lattice_a"][0]) for f in results if f.kind == "result.peak"]
    assert len(lattice) == 4
    np.testing.assert_allclose(lattice, 5.411, atol=0.003)
