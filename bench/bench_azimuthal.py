"""Azimuthal integration per frame, opmon against pyFAI's fastest CPU method on the same frame.
Target: opmon at least as fast (ratio pyFAI time / opmon time >= 1) with the same result.

    python bench/bench_azimuthal.py [--threads 1] [--reps 9] [--npt 3000] [--quick]

Frames: a simulated 4-megapixel DECTRIS Eiger 4M frame (2167 x 2070 pixels of 75 µm, Poisson
counts of a graphite/NMC pattern, module gaps at -1) and the real Pilatus 1M CeO2 frame from
shared/data/real (if present). Both sides use the same geometry, mask (the gaps), unit (2θ in
degrees), solid-angle and polarisation (0.99) corrections, and pixel splitting. opmon is timed
both as its table pass (``RadialTable.integrate``) and as the whole processor (frame checks,
integration, output frame). pyFAI's table building (its engine set-up) and opmon's are timed
once and reported, not counted per frame. ``--threads`` sets OMP_NUM_THREADS for pyFAI and
NUMBA_NUM_THREADS for opmon before either is imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real" / "detector_2d"
TARGET = 1.0
PYFAI_ALGOS = ("histogram", "csr", "csc")   # "lut" is never faster than csr and needs more RAM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides")
    ap.add_argument("--reps", type=int, default=9, help="timed frames per method (median)")
    ap.add_argument("--npt", type=int, default=3000, help="bins for the 4-megapixel frame")
    ap.add_argument("--quick", action="store_true", help="3 repetitions, bbox splitting only")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    import numba
    import pyFAI
    reps = 3 if args.quick else args.reps
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}, "
          f"pyFAI {pyFAI.version}, {os.cpu_count()} cpus, {args.threads} thread(s) per side "
          f"(OMP_NUM_THREADS = NUMBA_NUM_THREADS = {args.threads}), median of {reps} frames")
    _warn_if_busy()
    cases = [_eiger4m_case(args.npt)]
    if (REAL / "CeO2_Pilatus1M.tif").exists():
        cases.append(_pilatus_case())
    splits = ("bbox",) if args.quick else ("bbox", "no")
    for name, geom, image, mask, npt in cases:
        print(f"\n{name}: {image.shape[0]} x {image.shape[1]} = {image.size / 1e6:.2f} Mpx "
              f"{image.dtype}, {int(mask.sum()):,} masked, {npt} bins of 2θ")
        for split in splits:
            _compare(geom, image, mask, npt, split, reps)


def _eiger4m_case(npt: int) -> tuple[str, Any, np.ndarray, np.ndarray, int]:
    from adapters.sim import detectors as D
    geom = D.PoniGeometry(0.12, 0.0815, 0.0772, 0.012, -0.008, 0.0, 4.066e-11, 75e-6, 75e-6,
                          (2167, 2070))
    mask = D.pilatus_mask(geom.shape, (514, 1030), (37, 10))
    axis = np.linspace(0.0, 50.0, 20001)
    pattern = D.xrd_pattern(axis, 0.5, geom.wavelength, scale=200.0, fwhm_deg=0.05)
    factors = D.solid_angle_map(geom) * D.polarization_map(geom, 0.99)
    image = D.project_pattern(axis, pattern, D.two_theta_map(geom), mask,
                              np.random.default_rng(0), polarization=factors)
    return "Eiger 4M (simulated)", geom, image, mask, npt


def _pilatus_case() -> tuple[str, Any, np.ndarray, np.ndarray, int]:
    import tifffile

    from adapters.sim.detectors import PoniGeometry
    image = np.ascontiguousarray(np.flipud(tifffile.imread(REAL / "CeO2_Pilatus1M.tif")))
    geom = PoniGeometry.from_poni_file(REAL / "CeO2_Pilatus1M.poni", image.shape)
    return "Pilatus 1M CeO2 (real)", geom, image, image < 0, 1512


def _compare(geom: Any, image: np.ndarray, mask: np.ndarray, npt: int, split: str,
             reps: int) -> None:
    from processors.azimuthal import AxisSpec, AzimuthalConfig, AzimuthalProcessor, RadialTable
    from stream.frame import Frame

    t = time.perf_counter()
    table = RadialTable(geom, AxisSpec(npt, "2th_deg", None, split, True, 0.99), mask)
    ours_build = time.perf_counter() - t
    ours = table.integrate(image)            # the first call also loads the compiled kernel

    np.save(mask_path := Path(os.environ.get("TMPDIR", "/tmp")) / "opmon_bench_mask.npy", mask)
    proc = AzimuthalProcessor(AzimuthalConfig(npt=npt, poni=geom.to_dict(), split=split,
                                              mask_file=str(mask_path)))
    frame = Frame("bench/cell01/detector", "image", 0, 0, {"image": image}, {"image": "counts"})
    proc.process(frame)                      # builds its table

    peers = {}
    for algo in PYFAI_ALGOS:
        ai = _pyfai_integrator(geom)
        method = (split, algo, "cython")

        def run(ai: Any = ai, method: tuple = method) -> Any:
            return ai.integrate1d(image, npt, unit="2th_deg", method=method, mask=mask,
                                  correctSolidAngle=True, polarization_factor=0.99)

        t = time.perf_counter()
        result = run()
        first = time.perf_counter() - t
        peers[algo] = (run, result, first)

    timers: dict[str, Callable[[], Any]] = {
        "opmon table pass": lambda: table.integrate(image),
        "opmon processor": lambda: proc.process(frame),
        **{f"pyFAI {split}/{algo}": run for algo, (run, _, _) in peers.items()},
    }
    times = _interleaved(timers, reps)
    best_algo = min(peers, key=lambda a: statistics.median(times[f"pyFAI {split}/{a}"]))
    best_label = f"pyFAI {split}/{best_algo}"
    best = statistics.median(times[best_label])
    ref = peers[best_algo][1]
    print(f"  split {split!r}: {table.nnz / image.size:.2f} table entries per pixel")
    print(f"    {'method':<26} {'median ms':>10} {'min ms':>8} {'build s':>8}")
    for label, ts in times.items():
        algo = label.rsplit("/", 1)[-1]
        build = (ours_build if label.startswith("opmon table") else
                 peers[algo][2] - statistics.median(ts) / 1e3 if algo in peers else float("nan"))
        mark = "  <- fastest pyFAI" if label == best_label else ""
        print(f"    {label:<26} {statistics.median(ts):>10.2f} {min(ts):>8.2f} "
              f"{build:>8.2f}{mark}")
    agree = ref.count > 0
    rel = np.abs(ours[agree] - ref.intensity[agree]) / np.abs(ref.intensity[agree])
    corr = np.corrcoef(ours[agree], ref.intensity[agree])[0, 1]
    axis = np.abs(table.radial - ref.radial).max()
    for label in ("opmon table pass", "opmon processor"):
        ratio = best / statistics.median(times[label])
        print(f"    {label}: {ratio:.2f}x {best_label} (target >= {TARGET:.0f}x)  "
              f"{'PASS' if ratio >= TARGET else 'FAIL'}")
    print(f"    result vs {best_label}: max relative difference {rel.max():.1e} over "
          f"{int(agree.sum())} bins, correlation {corr:.10f}, radial axis within {axis:.1e}°")


def _pyfai_integrator(geom: Any) -> Any:
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator
    detector = Detector(geom.pixel1, geom.pixel2, max_shape=geom.shape)
    return AzimuthalIntegrator(dist=geom.distance, poni1=geom.poni1, poni2=geom.poni2,
                               rot1=geom.rot1, rot2=geom.rot2, rot3=geom.rot3,
                               wavelength=geom.wavelength, detector=detector)


def _interleaved(timers: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Milliseconds per call; the methods take turns, in alternating order, every repetition."""
    out: dict[str, list[float]] = {k: [] for k in timers}
    order = list(timers)
    for rep in range(reps):
        for label in order if rep % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            timers[label]()
            out[label].append((time.perf_counter() - t) * 1e3)
    return out


def _warn_if_busy() -> None:
    try:
        from bench.common import check_idle
    except ImportError:
        return
    check_idle()


if __name__ == "__main__":
    main()
