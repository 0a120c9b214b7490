"""All processors together on 1,000 simulated cells at realistic rates, in one thread: target
under one core (CPU seconds per experiment second < 1) with p99 latency per frame < 10 ms.

Load per cell: potentiostat at 10 Hz in 1 s blocks, pressure at 1 Hz, OEMS with 12 m/z channels
at 1 Hz, and one 1-D XRD pattern every 5 s. The frames are made by the simulator first (not
timed); then every frame goes through the processors as the node runs them
(``stream.node.Node._run_processors``): each processor that wants the frame processes it, its
results are validated and fed to every processor again. The latency of a frame is the time from
it entering until it and all its derived results are processed (service time: frames are
processed back to back, so no queueing is in it).

    python bench/bench_all_processors.py [--cells 1000] [--seconds 60] [--warmup 10]
                                         [--profile LINES]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import time
from dataclasses import dataclass, field

import numpy as np
from common import check_idle

from adapters.sim.experiment import SimExperiment, load_scenario
from processors.base import Processor
from processors.electrochem import ElectrochemConfig, ElectrochemProcessor
from processors.events import EventProcessor
from processors.gas import GasConfig, GasProcessor
from processors.gas_events import GasEventProcessor
from processors.peaks import PeaksConfig, PeaksProcessor
from processors.pressure import PressureConfig, PressureProcessor
from processors.sensor_faults import SensorFaultProcessor
from stream.frame import Frame, FrameError

CPU_TARGET = 1.0        # CPU seconds per experiment second: under one core
P99_TARGET_MS = 10.0
MAX_DEPTH = 4           # as the node: results of results, four levels deep
# 12 OEMS channels: the simulator's default 7 plus fragments of CO/CO2/O2 (12, 16), Ar (20)
# and SO2 (48, 64)
OEMS_CHANNELS = [2, 12, 16, 20, 26, 27, 28, 32, 40, 44, 48, 64]
GASES = ["H2", "CO", "CO2", "C2H4", "O2", "SO2", "Ar"]


def make_processors() -> list[Processor]:
    """Every processor of the issue-4 load, configured for the simulator's cells."""
    xrd_peaks = PeaksConfig(name="peaks", input_kind="pattern", weighting="poisson", peaks=[
        {"name": "NMC(003)", "position": 4.88, "fwhm": 0.08, "range": (4.6, 5.2),
         "hkl": (0, 0, 3), "lattice": "hexagonal"},
        {"name": "Al(111)", "position": 9.98, "fwhm": 0.08, "window": 0.4, "hkl": (1, 1, 1)},
    ])
    return [
        ElectrochemProcessor(ElectrochemConfig(soc_v_full=4.2, soc_v_empty=2.8,
                                               nominal_capacity_Ah=0.05)),
        EventProcessor(),
        GasProcessor(GasConfig(gases=GASES, channels=OEMS_CHANNELS)),
        GasEventProcessor(),
        PressureProcessor(PressureConfig(leak_per_s=2e-7)),
        SensorFaultProcessor(),
        PeaksProcessor(xrd_peaks),
    ]


def make_frames(cells: int, seconds: int) -> list[list[Frame]]:
    """The frames of each second of a clean 1C cycling experiment, in the simulator's order."""
    sc = load_scenario("cycling").model_copy(update={
        "oems_channels": OEMS_CHANNELS, "detectors": ["xrd"], "spectrum_every_s": 5.0,
        "potentiostat_hz": 10.0, "pressure_hz": 1.0})
    ex = SimExperiment("bench", sc, cells, seed=0)
    return [ex.step() for _ in range(seconds)]


@dataclass
class Tally:
    """Time in each processor's ``process`` and the frames counted on the way."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    results: int = 0
    rejects: dict[str, int] = field(default_factory=dict)


def run_processors(procs: list[Processor], frame: Frame, tally: Tally, depth: int = 0) -> None:
    """``Node._run_processors``, with each processor's time taken."""
    clock = time.perf_counter
    for proc in procs:
        if not proc.wants(frame.kind):
            continue
        t0 = clock()
        try:
            results = proc.process(frame)
        except FrameError as exc:
            key = f"{proc.name}: {exc.field}: {exc.reason}"
            tally.rejects[key] = tally.rejects.get(key, 0) + 1
            continue
        finally:
            tally.seconds[proc.name] = tally.seconds.get(proc.name, 0.0) + clock() - t0
            tally.calls[proc.name] = tally.calls.get(proc.name, 0) + 1
        for result in results:
            result.validate()
        tally.results += len(results)
        if depth < MAX_DEPTH:
            for result in results:
                run_processors(procs, result, tally, depth + 1)


def process_seconds(procs: list[Processor], seconds: list[list[Frame]], tally: Tally,
                    latency: dict[str, list[float]], cpu_latency: list[float] | None) -> None:
    """Every frame through the processors; its wall-clock latency per input kind and (unless
    ``cpu_latency`` is None) the thread's CPU time for it, which leaves out time the thread
    was not running."""
    clock, cpu_clock = time.perf_counter, time.thread_time
    for frames in seconds:
        for frame in frames:
            c0 = cpu_clock() if cpu_latency is not None else 0.0
            t0 = clock()
            run_processors(procs, frame, tally)
            t1 = clock()
            if cpu_latency is not None:
                cpu_latency.append(cpu_clock() - c0)
            latency.setdefault(frame.kind, []).append(t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=60, help="experiment seconds timed")
    ap.add_argument("--warmup", type=int, default=10, help="experiment seconds run first")
    ap.add_argument("--profile", type=int, default=0, metavar="LINES",
                    help="also print the top LINES functions by own time (cProfile, a second "
                         "run over the same frames with fresh processors)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    frames = make_frames(args.cells, args.warmup + args.seconds)
    n_in = sum(len(f) for f in frames[args.warmup:])
    print(f"generated {args.warmup + args.seconds} s x {args.cells} cells "
          f"({sum(len(f) for f in frames):,} frames) in {time.perf_counter() - t0:.1f} s (not "
          "timed)")
    gc.collect()
    gc.freeze()  # the pre-made frames are not the node's garbage: keep them out of collections

    procs = make_processors()
    process_seconds(procs, frames[:args.warmup], Tally(), {}, [])  # compile, first samples
    tally = Tally()
    latency: dict[str, list[float]] = {}
    cpu_latency: list[float] = []
    check_idle()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    process_seconds(procs, frames[args.warmup:], tally, latency, cpu_latency)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    cpu_per_s = cpu / args.seconds
    every = np.concatenate([np.array(v) for v in latency.values()]) * 1e3
    p50, p99, worst = np.percentile(every, 50), np.percentile(every, 99), every.max()
    print(f"timed {args.seconds} s of experiment: {n_in:,} frames in, {tally.results:,} results; "
          f"wall {wall:.2f} s, CPU {cpu:.2f} s")
    if tally.rejects:
        for key, count in sorted(tally.rejects.items()):
            print(f"  rejected {count:,} x {key}")
    print(f"\n{'input kind':18s} {'frames':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    for kind, values in sorted(latency.items()):
        ms = np.array(values) * 1e3
        print(f"{kind:18s} {ms.size:9,d} {np.percentile(ms, 50):8.3f} "
              f"{np.percentile(ms, 99):8.3f} {ms.max():8.3f}")
    print(f"{'all':18s} {every.size:9,d} {p50:8.3f} {p99:8.3f} {worst:8.3f}")
    on_cpu = np.array(cpu_latency) * 1e3
    cpu_p99 = np.percentile(on_cpu, 99)
    print(f"{'all, thread CPU':18s} {on_cpu.size:9,d} {np.percentile(on_cpu, 50):8.3f} "
          f"{cpu_p99:8.3f} {on_cpu.max():8.3f}   (time on the CPU: preemption left out)")

    total = sum(tally.seconds.values())
    print(f"\n{'processor':16s} {'calls':>10s} {'us/call':>9s} {'us/cell-s':>10s} {'share':>7s}")
    for name, sec in sorted(tally.seconds.items(), key=lambda kv: -kv[1]):
        calls = tally.calls[name]
        print(f"{name:16s} {calls:10,d} {sec / calls * 1e6:9.1f} "
              f"{sec / (args.seconds * args.cells) * 1e6:10.1f} {sec / wall:7.1%}")
    rest = wall - total
    print(f"{'runtime':16s} {'':10s} {'':9s} {rest / (args.seconds * args.cells) * 1e6:10.1f} "
          f"{rest / wall:7.1%}   (dispatch, validate, timing)")

    print(f"\n{'case':52s} {'value':>9s} {'target':>8s}")
    for label, value, target, unit in (
            ("CPU seconds per experiment second", cpu_per_s, CPU_TARGET, ""),
            ("p99 latency per frame (wall clock)", p99, P99_TARGET_MS, " ms"),
            ("p99 latency per frame (thread CPU time)", cpu_p99, P99_TARGET_MS, " ms")):
        verdict = "PASS" if value < target else "FAIL"
        print(f"{f'{label}, {args.cells} cells':52s} {value:9.3f} {f'<{target:g}{unit}':>8s}  "
              f"{verdict}")

    if args.profile:
        prof = cProfile.Profile()
        procs = make_processors()
        process_seconds(procs, frames[:args.warmup], Tally(), {}, None)
        prof.runcall(process_seconds, procs, frames[args.warmup:], Tally(), {}, None)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())


if __name__ == "__main__":
    main()
