"""Simulator throughput on one core: 100 cells with all instruments (potentiostat 10 Hz, pressure
1 Hz, OEMS 7 channels at 1 Hz, a 1-D XRD pattern and a Raman spectrum every 5 s per cell).
Target: >= 100x real time. 2-D detector frames are measured separately.

    python bench/bench_sim.py [--cells 100] [--seconds 300]
"""

from __future__ import annotations

import argparse
import time

from adapters.sim.experiment import SimExperiment, load_scenario

TARGET = 100.0


def run(cells: int, seconds: int, detectors: str) -> tuple[float, int]:
    scenario = load_scenario("cycling")
    scenario.detectors = {"none": [], "1d": ["xrd", "raman"], "2d": ["xrd", "raman", "xrd2d"]}[
        detectors]
    ex = SimExperiment("bench", scenario, cells, seed=0)
    ex.step()  # compile
    n = 0
    t0 = time.perf_counter()
    for _ in range(seconds):
        n += len(ex.step())
    wall = time.perf_counter() - t0
    return seconds / wall, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=300)
    args = ap.parse_args()
    print(f"{'case':52s} {'x real time':>12s} {'frames/s':>10s} {'target':>8s}")
    for detectors, label, target in (("none", "no spectra", None),
                                     ("1d", "1-D XRD + Raman every 5 s", TARGET),
                                     ("2d", "plus a 2-D frame every 5 s (1043x981)", None)):
        seconds = args.seconds if detectors != "2d" else max(20, args.seconds // 10)
        try:
            speed, n = run(args.cells, seconds, detectors)
        except ImportError as exc:
            print(f"{label:52s} not available: {exc}")
            continue
        verdict = "" if target is None else ("PASS" if speed >= target else "FAIL")
        print(f"{f'{args.cells} cells, {label}':52s} {speed:12.1f} {n / seconds * speed:10.0f} "
              f"{(f'{target:.0f}' if target else '-'):>8s}  {verdict}")


if __name__ == "__main__":
    main()
