"""Line-protocol encoding: opmon's LineEncoder against influxdb-client's Point API on the same
points, with byte-identical output. Target: >= 10x.

    python bench/bench_lineprotocol.py [--cells 2] [--sim-seconds 1800] [--reps 5]

Cases:
- pipeline results: every result and health frame the demo's processors make from a simulated
  experiment (single-sample frames: echem, gas per gas, pressure, peaks ...), encoded as the
  InfluxDB sink does, a batch at a time (``LineEncoder.encode_many``);
- 100-sample blocks: potentiostat-like frames (t, voltage, current, temperature, an int step
  counter, a bool flag, NaN gaps), 5,000 lines per batch.

The peer builds one ``Point`` per sample (measurement, tags, fields as Python values, ns time)
and calls ``to_line_protocol()``. Output check: the opmon lines and the Point lines are the same
bytes (the same multiset of lines: opmon groups a batch's lines per series), and, frame by frame,
``LineEncoder.encode`` gives exactly the Point lines in order. opmon and the peer alternate
repetition by repetition; the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from influxdb_client import Point

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream.build import build_node  # noqa: E402
from stream.config import parse_config  # noqa: E402
from stream.demo import demo_config  # noqa: E402
from stream.frame import Frame  # noqa: E402
from stream.lineprotocol import (  # noqa: E402
    LineEncoder,
    frame_fields,
    frame_tags,
    measurement_for,
)
from stream.sinks.base import Sink, SinkConfig  # noqa: E402

TARGET = 10.0
T0_NS = 1_767_225_600_000_000_000


class CollectSink(Sink):
    """Keeps every frame it is given."""

    type_name = "collect"

    def __init__(self, kinds: list[str]):
        super().__init__(SinkConfig(kinds=kinds))
        self.frames: list[Frame] = []

    async def write(self, frame: Frame) -> None:
        self.frames.append(frame)


def pipeline_results(cells: int, seconds: float) -> list[Frame]:
    """The result and health frames of the demo's processors on a simulated experiment."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({**demo_config(Path(tmp), cells=cells, duration_s=seconds,
                                          speed="max"), "sinks": []})
    sink = CollectSink(["result.*", "health"])
    asyncio.run(build_node(cfg, sinks=[sink], handle_signals=False).run())
    return sink.frames


def potentiostat_blocks(n_frames: int, n: int = 100, cells: int = 10) -> list[Frame]:
    rng = np.random.default_rng(3)
    frames = []
    for k in range(n_frames):
        cell = k % cells
        v = 3.7 + 0.3 * rng.standard_normal(n)
        v[rng.random(n) < 0.02] = np.nan  # gaps
        frames.append(Frame(f"bench/cell{cell:02d}/potentiostat", "echem", k // cells,
                            T0_NS + (k // cells) * n * 100_000_000,
                            {"t": np.arange(n) * 0.1, "voltage": v,
                             "current": np.round(rng.standard_normal(n), 4),
                             "temperature": 25.0 + np.round(rng.random(n), 2),
                             "step": np.full(n, k // 50, dtype=np.int64),
                             "cc": rng.random(n) < 0.5}))
    return frames


def point_lines(frames: list[Frame]) -> list[str]:
    """The peer: one influxdb-client Point per sample."""
    out = []
    for frame in frames:
        measurement = measurement_for(frame.kind)
        tags = frame_tags(frame)
        fields = {k: v.tolist() for k, v in frame_fields(frame).items()}
        for i, t_ns in enumerate(frame.times_ns().tolist()):
            point = Point(measurement)
            for key, value in tags.items():
                point.tag(key, value)
            for key, values in fields.items():
                point.field(key, values[i])
            line = point.time(t_ns).to_line_protocol()
            if line:
                out.append(line)
    return out


def batches(frames: list[Frame], batch_lines: int = 5000) -> list[list[Frame]]:
    """Consecutive frames in batches of about ``batch_lines`` samples, as the sink makes them."""
    out, batch, samples = [], [], 0
    for frame in frames:
        batch.append(frame)
        samples += frame.n_samples
        if samples >= batch_lines:
            out.append(batch)
            batch, samples = [], 0
    return out + ([batch] if batch else [])


def opmon_batches(frame_batches: list[list[Frame]]) -> tuple[bytes, int, int]:
    """The sink's way: each batch through ``LineEncoder.encode_many``."""
    encoder = LineEncoder()
    parts = [encoder.encode_many(batch)[0] for batch in frame_batches]
    return b"".join(parts), encoder.lines, encoder.nudged


def check_identical(frames: list[Frame]) -> tuple[bool, bool, int]:
    """(batched output = Point lines as a multiset, per-frame output = Point lines in order,
    number of lines)."""
    ref = point_lines(frames)
    data, _, nudged = opmon_batches(batches(frames))
    if nudged:
        raise SystemExit(f"{nudged} points were moved by a nanosecond: not the same points")
    ordered = b"".join(chunk for f in frames for chunk, _ in LineEncoder().encode(f))
    expected = "".join(line + "\n" for line in ref).encode()
    return sorted(data.splitlines()) == sorted(expected.splitlines()), ordered == expected, \
        len(ref)


def run_case(name: str, frames: list[Frame], reps: int) -> bool:
    same_set, same_order, n_lines = check_identical(frames)
    frame_batches = batches(frames)
    opmon_times, peer_times = [], []
    for _ in range(reps):
        t = time.process_time()
        opmon_batches(frame_batches)
        opmon_times.append(time.process_time() - t)
        t = time.process_time()
        point_lines(frames)
        peer_times.append(time.process_time() - t)
    opmon_s, peer_s = statistics.median(opmon_times), statistics.median(peer_times)
    ratio = peer_s / opmon_s
    ok = ratio >= TARGET and same_set and same_order
    print(f"{name:34s} {len(frames):>8d} {n_lines:>9d} {n_lines / opmon_s / 1e3:>11.0f} "
          f"{n_lines / peer_s / 1e3:>11.0f} {ratio:>7.1f}x  {'yes' if same_set else 'NO':>9s} "
          f"{'yes' if same_order else 'NO':>9s}  {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2)
    ap.add_argument("--sim-seconds", type=float, default=1800.0)
    ap.add_argument("--blocks", type=int, default=500)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    t = time.process_time()
    results = pipeline_results(args.cells, args.sim_seconds)
    print(f"simulated {args.sim_seconds:.0f} s of {args.cells} cells through the demo's "
          f"processors in {time.process_time() - t:.1f} s")
    blocks = potentiostat_blocks(args.blocks)
    opmon_batches(batches(results[:2000]))  # load the numba kernels
    print(f"target: opmon >= {TARGET:.0f}x Point, byte-identical lines\n")
    print(f"{'case':34s} {'frames':>8s} {'lines':>9s} {'opmon kl/s':>11s} {'Point kl/s':>11s} "
          f"{'ratio':>8s} {'same set':>9s} {'in order':>9s}")
    run_case("pipeline results (1 sample/frame)", results, args.reps)
    run_case("potentiostat blocks (100 samples)", blocks, args.reps)


if __name__ == "__main__":
    main()
