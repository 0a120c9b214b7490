"""Detector kernels on one core: samples per second. Target: >= 100 million samples/s.

    python bench/bench_detectors.py [--samples 50000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from processors.kernels.changepoint import cusum_kernel, ewma_kernel, page_hinkley_kernel

TARGET = 100e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000_000)
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal(args.samples)
    cases = {
        "CUSUM two-sided (k=0.5, h=5)": lambda s: cusum_kernel(x, 0.0, 1.0, 0.5, 5.0, s),
        "EWMA, exact limits (lambda=0.1)": lambda s: ewma_kernel(x, 0.0, 1.0, 0.1, 2.814, True,
                                                                 s),
        "EWMA, asymptotic limits": lambda s: ewma_kernel(x, 0.0, 1.0, 0.1, 2.814, False, s),
        "Page-Hinkley": lambda s: page_hinkley_kernel(x, 0.005, 50.0, 1.0, s),
    }
    print(f"{'kernel':36s} {'M samples/s':>12s} {'target':>8s}")
    for name, run in cases.items():
        run(np.zeros(4))  # compile / load from cache
        best = min(_timed(run) for _ in range(3))
        rate = x.size / best
        print(f"{name:36s} {rate / 1e6:12.0f} {TARGET / 1e6:8.0f}  "
              f"{'PASS' if rate >= TARGET else 'FAIL'}")


def _timed(run) -> float:
    t0 = time.perf_counter()
    run(np.zeros(4))
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
