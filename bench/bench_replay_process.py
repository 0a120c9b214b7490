"""Replay plus offline processing of a 24 h, 4-cell recording: target >= 1000x real time.

The recording is made once by the simulator with the demo's scenario (its cells and faults,
every instrument: potentiostat at 10 Hz in 1 s blocks, pressure, OEMS, XRD and Raman) and cached
in bench/out/. The timed part is exactly ``opmon process``: read the MCAP file, decode and
validate every frame, run the demo's processors (all, or those named with --processors) and alert
rules, write results as line protocol.

    python bench/bench_replay_process.py [--hours 24] [--cells 4] [--processors TYPES]
                                         [--profile LINES]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import math
import pstats
import time
from pathlib import Path

from adapters.sim.clock import SimClock
from stream.build import build_node, build_sources
from stream.config import parse_config
from stream.demo import demo_config
from stream.recording import RecordingWriter
from stream.sinks.lineprotocol_file import LineProtocolFileConfig, LineProtocolFileSink
from stream.sources import RecordingSource

OUT = Path(__file__).parent / "out"
START_NS = 1_750_000_000_000_000_000
TARGET = 1000.0


def make_recording(path: Path, hours: float, cells: int) -> None:
    cfg = parse_config(demo_config(OUT, cells=cells, duration_s=hours * 3600, speed="max",
                                   start_ns=START_NS), "<bench>")
    sources = build_sources(cfg, clock=SimClock(START_NS, math.inf))
    tmp = path.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    writer = RecordingWriter(tmp, flush_interval_s=60)

    async def drain() -> None:
        iters = [s.frames().__aiter__() for s in sources]
        while iters:  # interleave cells block by block, as a live recorder would see them
            for it in list(iters):
                try:
                    frame = await it.__anext__()
                except StopAsyncIteration:
                    iters.remove(it)
                    continue
                writer.write(frame, log_time_ns=int(frame.times_ns()[-1]))

    asyncio.run(drain())
    writer.close()
    tmp.rename(path)


def process(path: Path, cells: int, profile: int = 0, only: list[str] | None = None
            ) -> tuple[float, dict]:
    demo = demo_config(OUT, cells=0)
    if only is not None:  # a subset of the demo's processors, by type
        demo["processors"] = [p for p in demo["processors"] if p["type"] in only]
    cfg = parse_config({**demo, "sinks": []}, "<bench>")
    results = OUT / "bench_results.lp"
    results.unlink(missing_ok=True)
    sink = LineProtocolFileSink(LineProtocolFileConfig(path=str(results)))
    node = build_node(cfg, sources=[RecordingSource(path)], sinks=[sink], handle_signals=False)
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    snapshot = asyncio.run(node.run()) if prof is None else prof.runcall(asyncio.run, node.run())
    wall = time.perf_counter() - t0
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(profile)
        print(out.getvalue())
    return wall, snapshot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--processors", default="", metavar="TYPES",
                    help="only these of the demo's processors, comma-separated types "
                         "(e.g. electrochem,gas,events); default: all of them")
    ap.add_argument("--profile", type=int, default=0, metavar="LINES",
                    help="profile the processing (cProfile) and print the top LINES functions")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    path = OUT / f"sim_{args.cells}cells_{args.hours:g}h.mcap"
    if not path.exists():
        t0 = time.perf_counter()
        make_recording(path, args.hours, args.cells)
        print(f"made {path.name} ({path.stat().st_size / 1e6:.1f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")
    only = [t for t in args.processors.split(",") if t] or None
    wall, snap = process(path, args.cells, args.profile, only)
    proc = snap["process"]
    ratio = args.hours * 3600 / wall
    print(f"frames in {int(proc['frames_in'])}, results {int(proc['frames_out'])}, "
          f"rejects {int(proc['rejects'])}, lost {int(proc['lost'])}")
    print(f"{'case':60s} {'wall s':>8s} {'x real time':>12s} {'target':>8s}")
    what = f"{args.cells} cells x {args.hours:g} h, " + (args.processors or "all processors")
    print(f"{what:60s} {wall:8.1f} "
          f"{ratio:12.0f} {TARGET:8.0f}  {'PASS' if ratio >= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
