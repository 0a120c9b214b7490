"""Warm-started peak fits per frame, opmon's numba Levenberg–Marquardt against scipy's curve_fit
on the same frames and model. Target: >= 10x faster, parameters within 1e-6 relative or 1 % of
their standard error.

    python bench/bench_peakfit.py [--frames 200] [--reps 5]

Cases: (a) one pseudo-Voigt on a linear baseline, 1024 points; (b) three pseudo-Voigts (two
overlapping) on a linear baseline, 2048 points. Each is a sequence of noisy frames whose peaks
drift by about one standard error per frame; both fitters start every frame from their own
previous result (the first from the same guess). opmon runs ``fit_guarded``, what the peaks
processor calls (divergence guard included); it is compiled or loaded from cache before timing.
The peer is ``curve_fit`` (Levenberg–Marquardt, MINPACK) with the same model and its analytic
Jacobian in numpy; curve_fit with finite differences (its default) is shown for reference.
Repetitions alternate the order; the median time per frame is reported.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from processors.kernels.peakfit import PSEUDO_VOIGT, fit_guarded

TARGET = 10.0
LN2 = math.log(2.0)
G_NORM, L_NORM = 2.0 * math.sqrt(LN2 / math.pi), 2.0 / math.pi


# -- the peer's model: the same pseudo-Voigts and baseline in numpy ------------------------------

def _axis(x: np.ndarray) -> np.ndarray:
    mid, half = 0.5 * (x.max() + x.min()), 0.5 * (x.max() - x.min())
    return (x - mid) / half


def numpy_model(n_peaks: int) -> tuple[Callable, Callable]:
    """f(x, *p) and its Jacobian for ``n_peaks`` pseudo-Voigts (position, FWHM, area, eta) plus
    b0 + b1·t, t = x scaled to [-1, 1] as in the kernel."""

    def parts(x: np.ndarray, c: float, w: float) -> tuple[np.ndarray, ...]:
        d = x - c
        s = 4.0 / (w * w)
        u2 = s * d * d
        q = 1.0 / (1.0 + u2)
        lor = L_NORM / w * q
        gau = G_NORM / w * np.exp(-LN2 * u2)
        return d, s, u2, q, lor, gau

    def f(x: np.ndarray, *p: float) -> np.ndarray:
        out = p[-2] + p[-1] * _axis(x)
        for k in range(n_peaks):
            c, w, a, eta = p[4 * k:4 * k + 4]
            _, _, _, _, lor, gau = parts(x, c, w)
            out = out + a * (eta * lor + (1.0 - eta) * gau)
        return out

    def jac(x: np.ndarray, *p: float) -> np.ndarray:
        out = np.empty((x.size, len(p)))
        for k in range(n_peaks):
            c, w, a, eta = p[4 * k:4 * k + 4]
            d, s, u2, q, lor, gau = parts(x, c, w)
            out[:, 4 * k] = a * (eta * lor * q + (1.0 - eta) * gau * LN2) * 2.0 * s * d
            out[:, 4 * k + 1] = a / w * (eta * lor * (u2 - 1.0) * q
                                         + (1.0 - eta) * gau * (2.0 * LN2 * u2 - 1.0))
            out[:, 4 * k + 2] = eta * lor + (1.0 - eta) * gau
            out[:, 4 * k + 3] = a * (lor - gau)
        out[:, -2] = 1.0
        out[:, -1] = _axis(x)
        return out

    return f, jac


# -- cases ----------------------------------------------------------------------------------------

def make_case(peaks: list[tuple[float, float, float, float]], n_points: int, n_frames: int,
              seed: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """x, noisy frames (Poisson-like noise, sigma ~ sqrt(counts)) and the first frame's truth.
    Positions and FWHMs drift by ~1 standard error per frame, areas by 0.2 %."""
    rng = np.random.default_rng(seed)
    x = np.linspace(10.0, 20.0, n_points)
    f, _ = numpy_model(len(peaks))
    truth = np.array([v for peak in peaks for v in peak] + [50.0, 5.0])
    frames = []
    for k in range(n_frames):
        p = truth.copy()
        for j in range(len(peaks)):
            p[4 * j] += 3e-4 * k
            p[4 * j + 1] *= 1.0 + 2e-4 * k
            p[4 * j + 2] *= 1.0 + 2e-3 * math.sin(0.3 * k + j)
        clean = f(x, *p)
        frames.append(clean + np.sqrt(clean) * rng.standard_normal(x.size))
    return x, frames, truth


CASES = {
    "(a) 1 pseudo-Voigt + linear, 1024 pts": ([(15.0, 0.5, 400.0, 0.4)], 1024),
    "(b) 3 pseudo-Voigts + linear, 2048 pts": ([(13.0, 0.4, 300.0, 0.3), (13.6, 0.5, 200.0, 0.5),
                                                 (17.0, 0.6, 250.0, 0.6)], 2048),
}


# -- the two fitters ----------------------------------------------------------------------------

def run_opmon(x: np.ndarray, frames: list[np.ndarray], start: np.ndarray
              ) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Seconds per frame, parameters and errors per frame, mean iterations."""
    n_peaks = (start.size - 2) // 4
    shapes = np.full(n_peaks, PSEUDO_VOIGT, dtype=np.int64)
    lower, upper = np.full(start.size, -np.inf), np.full(start.size, np.inf)
    lower[1:4 * n_peaks:4] = 0.01
    upper[1:4 * n_peaks:4] = 5.0
    lower[2:4 * n_peaks:4] = 0.0
    lower[3:4 * n_peaks:4], upper[3:4 * n_peaks:4] = 0.0, 1.0
    lower[0:4 * n_peaks:4], upper[0:4 * n_peaks:4] = x.min(), x.max()
    search_lo = start[0:4 * n_peaks:4] - 0.2
    search_hi = start[0:4 * n_peaks:4] + 0.2
    free = np.ones(start.size, dtype=np.bool_)
    w = np.ones_like(x)
    params, errors, iterations = [], [], 0.0
    p, chi2_ref = start.copy(), math.nan
    t0 = time.perf_counter()
    for y in frames:
        p, cov, info = fit_guarded(x, y, w, shapes, 2, p, start, search_lo, search_hi, lower,
                                   upper, free, chi2_ref, 4.0, 100)
        chi2_ref = info[1]
        params.append(p)
        errors.append(cov)
        iterations += info[2]
    seconds = (time.perf_counter() - t0) / len(frames)
    errs = np.array([np.sqrt(np.diag(c)) for c in errors])
    return seconds, np.array(params), errs, iterations / len(frames)


def run_curve_fit(x: np.ndarray, frames: list[np.ndarray], start: np.ndarray, analytic: bool
                  ) -> tuple[float, np.ndarray, np.ndarray, float]:
    f, jac = numpy_model((start.size - 2) // 4)
    params, errors, evaluations = [], [], 0.0
    p = start.copy()
    t0 = time.perf_counter()
    for y in frames:
        p, cov, info, _, _ = curve_fit(f, x, y, p0=p, jac=jac if analytic else None,
                                       full_output=True)
        params.append(p)
        errors.append(cov)
        evaluations += info["nfev"]
    seconds = (time.perf_counter() - t0) / len(frames)
    errs = np.array([np.sqrt(np.diag(c)) for c in errors])
    return seconds, np.array(params), errs, evaluations / len(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore", OptimizeWarning)
    import numba
    import scipy
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"numba {numba.__version__}, {os.cpu_count()} cpus; {args.frames} frames per "
          f"sequence, median of {args.reps} repetitions")
    print(f"{'case':40s} {'opmon':>9s} {'curve_fit':>10s} {'ratio':>7s} {'target':>7s}  "
          f"{'result':6s} {'cf (FD)':>9s} {'it/frame':>9s} {'agree':>6s} {'max |dp|/sigma':>14s} "
          f"{'errors':>8s}")
    for label, (peaks, n_points) in CASES.items():
        x, frames, truth = make_case(peaks, n_points, args.frames, seed=1)
        start = truth * (1.0 + 0.002 * np.cos(np.arange(truth.size)))  # the same for both
        run_opmon(x, frames[:2], start)  # compile, or load the numba cache
        t_ours, t_peer, t_fd = [], [], []
        for rep in range(args.reps):
            order = ("opmon", "peer", "fd") if rep % 2 == 0 else ("fd", "peer", "opmon")
            for who in order:
                if who == "opmon":
                    s, p_ours, e_ours, it_ours = run_opmon(x, frames, start)
                    t_ours.append(s)
                elif who == "peer":
                    s, p_peer, e_peer, it_peer = run_curve_fit(x, frames, start, True)
                    t_peer.append(s)
                else:
                    t_fd.append(run_curve_fit(x, frames, start, False)[0])
        ours, peer = statistics.median(t_ours), statistics.median(t_peer)
        ratio = peer / ours
        tol = np.maximum(1e-6 * np.abs(p_peer), 0.01 * e_peer)
        agree = bool(np.all(np.abs(p_ours - p_peer) <= tol))
        worst = float(np.max(np.abs(p_ours - p_peer) / e_peer))
        err_rel = float(np.max(np.abs(e_ours / e_peer - 1.0)))
        print(f"{label:40s} {ours * 1e6:7.0f}us {peer * 1e6:8.0f}us {ratio:7.1f} {TARGET:7.0f}  "
              f"{'PASS' if ratio >= TARGET and agree else 'FAIL':6s} "
              f"{statistics.median(t_fd) * 1e6:7.0f}us {it_ours:4.1f}/{it_peer:<4.1f} "
              f"{'yes' if agree else 'NO':>6s} {worst:14.2e} {err_rel:8.1e}")
    print("it/frame: opmon model+Jacobian evaluations / curve_fit function evaluations; agree: "
          "every parameter of every frame within 1e-6 relative or 1 % of curve_fit's standard "
          "error; errors: largest relative difference of the standard errors")


if __name__ == "__main__":
    main()
