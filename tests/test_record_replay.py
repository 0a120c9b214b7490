"""Record, replay and process: live and offline runs give identical results."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from adapters.sim.clock import SimClock
from stream.build import build_node, build_sources
from stream.cli import main
from stream.config import parse_config
from stream.demo import demo_config
from stream.recording import RecordingReader, RecordingWriter, describe
from stream.sinks.lineprotocol_file import LineProtocolFileConfig, LineProtocolFileSink
from stream.sources import RecordingSource, SubscriberSource
from stream.transports import open_publisher, open_subscriber

from .helpers import assert_frames_equal, echem_frame, free_port

START_NS = 1_750_000_000_000_000_000


def _live_run(tmp_path: Path) -> tuple[Path, Path]:
    data = demo_config(tmp_path / "live", cells=2, duration_s=1.6 * 3600, speed="max",
                       start_ns=START_NS)
    data["sinks"] = [s for s in data["sinks"] if s["type"] != "console"]
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(tomli_w.dumps(data))
    cfg = parse_config(data, str(cfg_path))
    node = build_node(cfg, handle_signals=False)
    asyncio.run(node.run())
    return cfg_path, tmp_path / "live"


def test_record_replay_process_identical(tmp_path: Path) -> None:
    cfg_path, live = _live_run(tmp_path)
    live_results = (live / "results.lp").read_text()
    assert "result_half_cycle" in live_results and "alert" in live_results

    # offline: no transport
    assert main(["process", str(live / "recording.mcap"), "-c", str(cfg_path),
                 "--out", str(tmp_path / "offline")]) == 0
    assert (tmp_path / "offline" / "results.lp").read_text() == live_results

    # replay over a real ZeroMQ link into a processing node
    url = f"zmq+pushpull://127.0.0.1:{free_port()}"

    async def replay_into_node() -> None:
        cfg = parse_config(demo_config(tmp_path / "replayed", cells=0), "<test>")
        sink = LineProtocolFileSink(LineProtocolFileConfig(path=str(tmp_path / "replayed.lp")))
        sub = open_subscriber(url)
        node = build_node(cfg, sources=[SubscriberSource(sub)], sinks=[sink],
                          handle_signals=False)
        run = asyncio.create_task(node.run())
        source = RecordingSource(live / "recording.mcap", math.inf)
        sent = 0
        async with open_publisher(url) as pub:
            async for frame in source.frames():
                await pub.publish(frame)
                sent += 1
            while sub.received < sent:
                await asyncio.sleep(0.05)
        while node.stats["process"].frames_in < sent:
            await asyncio.sleep(0.05)
        node.stop()
        await run
        assert sub.tracker.lost == 0

    asyncio.run(replay_into_node())
    assert (tmp_path / "replayed.lp").read_text() == live_results


def test_replay_keeps_original_spacing(tmp_path: Path) -> None:
    path = tmp_path / "r.mcap"
    w = RecordingWriter(path)
    for s in range(11):
        w.write(echem_frame(seq=s), log_time_ns=START_NS + s * 100_000_000)  # 10 Hz
    w.close()

    async def timed(speed: float) -> float:
        t0 = time.monotonic()
        async for _ in RecordingSource(path, speed).frames():
            pass
        return time.monotonic() - t0

    assert 0.9 <= asyncio.run(timed(1.0)) < 1.5        # 1 s of recording at 1x
    assert 0.18 <= asyncio.run(timed(5.0)) < 0.6       # at 5x
    assert asyncio.run(timed(math.inf)) < 0.2           # as fast as possible


def test_inspect_reports_streams_and_gaps(tmp_path: Path, capsys) -> None:
    path = tmp_path / "g.mcap"
    w = RecordingWriter(path)
    for s in [0, 1, 2, 5, 6]:
        w.write(echem_frame(seq=s))
    for s in range(3):
        w.write(echem_frame(seq=s, stream="exp1/cell02/potentiostat"))
    w.close()
    summary = describe(path)
    by_stream = {s["stream"]: s for s in summary["streams"]}
    assert by_stream["exp1/cell01/potentiostat"]["lost"] == 2
    assert by_stream["exp1/cell01/potentiostat"]["frames"] == 5
    assert by_stream["exp1/cell02/potentiostat"]["lost"] == 0
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "exp1/cell01/potentiostat" in out and "2 streams" in out


WRITER = """
import sys, time
from stream.recording import RecordingWriter
from tests.helpers import echem_frame
w = RecordingWriter(sys.argv[1], chunk_size=1 << 30, flush_interval_s=0.2)
s = 0
while True:
    w.write(echem_frame(seq=s)); s += 1
    if s % 100 == 0:
        print(s, flush=True)
        time.sleep(0.01)
"""


def test_sigkilled_recorder_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.mcap"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            cwd=Path(__file__).parents[1], env=os.environ.copy())
    written = 0
    while written < 3000:
        written = int(proc.stdout.readline())
    time.sleep(0.5)  # let at least two time-based flushes happen
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader = RecordingReader(path)
    frames = [r.frame for r in reader]
    assert reader.truncated  # no footer: killed mid-write
    assert len(frames) >= 2000  # everything up to the last completed chunk
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert_frames_equal(frames[-1], echem_frame(seq=len(frames) - 1))
    summary = describe(path)
    assert summary["truncated"] and summary["streams"][0]["frames"] == len(frames)


def test_record_command_records_from_a_transport(tmp_path: Path) -> None:
    url = f"zmq+pushpull://127.0.0.1:{free_port()}"
    out = tmp_path / "rec.mcap"
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "record", url, "--out", str(out)],
                            stderr=subprocess.PIPE, env=os.environ.copy())

    async def send() -> None:
        async with open_publisher(url) as pub:
            for s in range(200):
                await pub.publish(echem_frame(seq=s))
            await asyncio.sleep(1.0)

    asyncio.run(send())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    frames = [r.frame for r in RecordingReader(out)]
    assert [f.seq for f in frames] == list(range(200))


def test_demo_sources_are_deterministic() -> None:
    def run_once() -> list:
        cfg = parse_config(demo_config(Path("/nonexistent"), cells=2, duration_s=600,
                                       start_ns=START_NS, speed="max"), "<t>")
        srcs = build_sources(cfg, clock=SimClock(START_NS, math.inf))

        async def go() -> list:
            return [f for s in srcs async for f in s.frames()]
        return asyncio.run(go())

    a, b = run_once(), run_once()
    # potentiostat, pressure and OEMS per cell-second, XRD and Raman every 60 s
    assert len(a) == len(b) == 2 * 600 * 3 + 2 * 10 * 2
    for x, y in zip(a, b, strict=True):
        assert_frames_equal(x, y)


def test_replay_skips_derived_frames_so_processors_recompute_them(tmp_path: Path) -> None:
    import numpy as np

    from stream.frame import Frame
    path = tmp_path / "r.mcap"
    w = RecordingWriter(path)
    raw = echem_frame(seq=0)
    pattern = Frame("exp1/cell01/azimuthal", "pattern", 0, START_NS,
                    {"two_theta": np.linspace(2, 30, 8), "intensity": np.ones(8)},
                    {"two_theta": "deg"}, {"derived_from": "image"})
    raw_pattern = Frame("exp1/cell01/xrd", "pattern", 0, START_NS,
                        {"two_theta": np.linspace(2, 30, 8), "intensity": np.ones(8)},
                        {"two_theta": "deg"}, {})
    for f in (raw, pattern, raw_pattern, Frame("exp1/cell01/events", "event", 0, START_NS,
                                               {}, {}, {"event": "x"})):
        w.write(f, log_time_ns=START_NS)
    w.close()

    async def replayed(raw_only: bool) -> list[str]:
        return [f.stream async for f in RecordingSource(path, raw_only=raw_only).frames()]

    assert asyncio.run(replayed(True)) == ["exp1/cell01/potentiostat", "exp1/cell01/xrd"]
    assert len(asyncio.run(replayed(False))) == 4
