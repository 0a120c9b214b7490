"""Detection scoring against the simulator's ground truth (issue 4, item 7).

Runs every fault scenario through the detector chain, matches each injected fault with the event
that answers it (adapters/sim/scoring.py gives the criteria), prints the confusion table, and
checks the targets:

- every injected fault detected; hard shorts within 1 s at 10 Hz; soft shorts within one charge;
  at least 90 % of micro-shorts of 20 mV or more; gas bursts within two instrument time constants;
  the runaway precursor before the temperature criterion;
- zero false alarms on clean cycling of 100 cells over 24 h.

    python bench/bench_detection.py                   # everything (about an hour on 2 cores)
    python bench/bench_detection.py --clean-cells 20 --clean-hours 6   # a quicker look
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.sim.experiment import Scenario, load_scenario  # noqa: E402
from adapters.sim.scoring import Run, Score, random_faults, run_scenario, score  # noqa: E402

HOURS = 3600.0


def fault_cases(rng: np.random.Generator) -> list[tuple[str, Scenario, int]]:
    """(label, scenario, cells): the shipped fault scenarios and randomised ones."""
    cases = [(name, load_scenario(name), 4) for name in
             ("soft-short", "thermal-runaway-precursor", "plating-fast-charge")]

    def cycling(label: str, faults: list, cell_type: str = "closed", hours: float = 12.0
                ) -> tuple[str, Scenario, int]:
        sc = load_scenario("cycling")
        sc.name, sc.duration_s, sc.faults = label, hours * HOURS, faults
        sc.cell.cell_type = cell_type
        return label, sc, 4

    span = 12 * HOURS
    cases.append(cycling("micro-shorts", random_faults(
        "micro_short", 4, span, 40, rng, (0.02, 0.08), margin_s=600.0)))
    cases.append(cycling("hard-shorts", random_faults(
        "hard_short", 4, span, 12, rng, (0.02, 0.1), duration_s=30.0)))
    for cell_type in ("flow", "closed"):
        cases.append(cycling(f"gas-bursts-{cell_type}", random_faults(
            "gas_burst", 4, span, 8, rng, (1.5e-9, 5e-9), duration_s=600.0), cell_type))
    sensors = []
    for kind in ("sensor_stuck", "sensor_dropout", "sensor_spikes", "sensor_out_of_range"):
        for instrument in ("potentiostat", "pressure", "oems"):
            magnitude = (1.0, 1.0) if kind == "sensor_spikes" else (0.0, 0.0)
            sensors += random_faults(kind, 4, span, 1, rng, magnitude, duration_s=300.0,
                                     instrument=instrument)
    cases.append(cycling("sensor-faults", sensors))
    return cases


def _run(args: tuple[str, Scenario, int, int, float | None]) -> tuple[str, Run, float]:
    label, sc, cells, seed, seconds = args
    t0 = time.perf_counter()
    run = run_scenario(sc, cells, seconds, seed=seed)
    return label, run, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean-cells", type=int, default=100)
    parser.add_argument("--clean-hours", type=float, default=24.0)
    parser.add_argument("--chunk-cells", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-faults", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    jobs = [] if args.skip_faults else [(label, sc, cells, k, None) for k, (label, sc, cells)
                                        in enumerate(fault_cases(rng))]
    clean = load_scenario("cycling")
    for k in range(0, args.clean_cells, args.chunk_cells):
        jobs.append(("clean", clean, min(args.chunk_cells, args.clean_cells - k), 1000 + k,
                     args.clean_hours * HOURS))
    faults, clean_score = Score(), Score()
    ok = True
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for label, run, elapsed in pool.imap_unordered(_run, jobs):
            s = score(run)
            print(f"{label:28s} {run.cells:3d} cells {run.seconds / HOURS:5.1f} h  "
                  f"{len(run.events):5d} events  {elapsed:6.0f} s  rejected frames "
                  f"{dict(run.rejects) or 0}", flush=True)
            (clean_score if label == "clean" else faults).add(s)
    if not args.skip_faults:
        print("\nFault scenarios: confusion table (rows: injected faults, one count each)\n")
        print(faults.render())
        for fault in faults.missed:
            print(f"  missed: {fault['cell']} {fault['kind']} at {fault['onset_s']:.0f} s "
                  f"({fault['stream']})")
        for kind in sorted(faults.table):
            if kind == "no fault":
                continue
            found, total = faults.detected(kind)
            need = 0.9 if kind == "micro_short" else 1.0
            verdict = "PASS" if found >= need * total else "FAIL"
            ok &= verdict == "PASS"
            print(f"  {kind:22s} {found}/{total} within its criterion: {verdict}")
    print(f"\nClean cycling: {args.clean_cells} cells x {args.clean_hours:g} h\n")
    print(clean_score.render())
    for e in clean_score.false_alarms[:20]:
        print(f"  false alarm: {e['cell']} {e['event']} at {e['t_s']:.0f} s {e['values']}")
    clean_ok = not clean_score.false_alarms
    ok &= clean_ok
    print(f"  zero false alarms: {'PASS' if clean_ok else 'FAIL'} "
          f"({len(clean_score.false_alarms)} alarms)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
