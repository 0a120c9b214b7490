"""The node runtime: rejects are counted and never stop the pipeline; backpressure; shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.electrochem import ElectrochemProcessor
from stream.codec import encode_multipart, encode_payload
from stream.frame import Frame
from stream.node import Node
from stream.recording import RecordingReader
from stream.sinks.base import Sink
from stream.sources import Source, SubscriberSource
from stream.transports import open_subscriber

from .helpers import echem_frame, free_port


class ListSource(Source):
    def __init__(self, frames: list[Frame]):
        self.items = frames
        self.name = "list"

    async def frames(self) -> AsyncIterator[Frame]:
        for f in self.items:
            yield f


class CollectSink(Sink):
    type_name = "collect"

    def __init__(self, delay: float = 0.0, queue_size: int = 4096):
        super().__init__(self.Config(queue_size=queue_size))
        self.frames: list[Frame] = []
        self.delay = delay
        self.closed = False

    async def write(self, frame: Frame) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.frames.append(frame)

    async def close(self) -> None:
        self.closed = True


def _bad_frames() -> list[Frame]:
    missing = echem_frame(seq=0, stream="e/bad1/p")
    del missing.arrays["voltage"]
    short = echem_frame(seq=0, stream="e/bad2/p")
    short.arrays["current"] = short.arrays["current"][:3]
    nan_t = echem_frame(seq=0, stream="e/bad3/p")
    nan_t.arrays["t"] = nan_t.arrays["t"].copy()
    nan_t.arrays["t"][2] = np.nan
    bad_stream = echem_frame(seq=0, stream="not a stream")
    nan_v = echem_frame(seq=0, stream="e/bad4/p")
    nan_v.arrays["voltage"] = np.full(10, np.nan)
    return [missing, short, nan_t, bad_stream, nan_v]


async def test_malformed_frames_are_counted_and_pipeline_continues() -> None:
    good = [echem_frame(seq=s) for s in range(20)]
    frames = good[:10] + _bad_frames() + good[10:]
    sink = CollectSink()
    node = Node("e", [ListSource(frames)], [ElectrochemProcessor()], [sink],
                handle_signals=False)
    snap = await node.run()
    # invalid envelopes are rejected at the source; semantically bad frames by the processor
    assert snap["source.list"]["rejects"] == 2  # nan t, bad stream name
    assert snap["process"]["rejects"] == 3      # missing voltage, short current, NaN voltage
    echem_results = [f for f in sink.frames if f.kind == "result.echem"]
    assert len(echem_results) == 20 and sink.closed
    assert "arrays.voltage" in node.stats["process"].last_error


async def test_backpressure_loses_nothing_with_a_slow_sink() -> None:
    frames = [echem_frame(seq=s) for s in range(300)]
    sink = CollectSink(delay=0.0005, queue_size=4)
    node = Node("e", [ListSource(frames)], [], [sink], queue_size=2, handle_signals=False)
    snap = await node.run()
    raw = [f for f in sink.frames if f.kind == "echem"]
    assert [f.seq for f in raw] == list(range(300))
    assert snap["process"]["lost"] == 0


async def test_health_frames_are_published() -> None:
    class SlowSource(ListSource):
        async def frames(self) -> AsyncIterator[Frame]:
            for f in self.items:
                await asyncio.sleep(0.01)
                yield f

    sink = CollectSink()
    node = Node("e", [SlowSource([echem_frame(seq=s) for s in range(30)])], [], [sink],
                health_interval_s=0.1, handle_signals=False)
    await node.run()
    health = [f for f in sink.frames if f.kind == "health"]
    assert health and {"frames_in", "rejects", "lost", "queue_depth", "latency_p99_ms"} <= \
        set(health[-1].arrays)
    last_process = [f for f in health if f.instrument == "process"][-1]
    assert last_process.arrays["frames_in"][0] == 30


@st.composite
def fuzz_messages(draw) -> list[list[bytes]]:
    msgs = []
    for _ in range(draw(st.integers(1, 8))):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            msgs.append([b"opmon/x", draw(st.binary(max_size=200))])
        elif choice == 1:
            payload = bytearray(encode_payload(echem_frame(seq=0, stream="e/fz/p")))
            at = draw(st.integers(0, len(payload) - 1))
            payload[at] ^= draw(st.integers(1, 255))
            msgs.append([b"opmon/x", bytes(payload)])
        else:
            parts = encode_multipart(echem_frame(seq=0, stream="e/fz/p"), b"opmon/x")
            msgs.append([bytes(memoryview(p).cast("B")) if isinstance(p, np.ndarray) else p
                         for p in parts][:draw(st.integers(1, 4))])
    return msgs


@given(fuzz_messages())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_wire_messages_over_zeromq(messages: list[list[bytes]]) -> None:
    """Garbage on a real ZeroMQ link is counted as rejects; valid frames after it still flow."""
    async def scenario() -> None:
        port = free_port()
        url = f"zmq+pushpull://127.0.0.1:{port}"
        sub = open_subscriber(url)
        sink = CollectSink()
        node = Node("e", [SubscriberSource(sub)], [ElectrochemProcessor()], [sink],
                    handle_signals=False)
        run = asyncio.create_task(node.run())
        ctx = zmq.asyncio.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        bad = 0
        for msg in messages:
            await push.send_multipart(msg)
            bad += 1
        for s in range(5):
            await push.send_multipart(encode_multipart(echem_frame(seq=s), b"opmon/ok"))
        deadline = time.monotonic() + 10
        while sum(f.kind == "result.echem" and f.cell == "cell01" for f in sink.frames) < 5:
            assert time.monotonic() < deadline, "valid frames after garbage did not arrive"
            await asyncio.sleep(0.01)
        node.stop()
        await run
        push.close(0)
        # some corrupted messages may still be valid frames (e.g. a flipped data byte)
        assert sub.rejects + sub.received == bad + 5
        assert sub.rejects >= 1 or all(len(m) >= 2 for m in messages)
        assert not run.exception()

    asyncio.run(scenario())


CONFIG = """
[experiment]
id = "sig"
[sim]
speed = 20.0
[[cells]]
id = "c1"
[[cells.instruments]]
id = "potentiostat"
adapter = "sim.potentiostat"
params = {{ duration_s = 100000.0 }}
[[processors]]
type = "electrochem"
[[sinks]]
type = "record"
path = "{out}/rec.mcap"
[[sinks]]
type = "lineprotocol"
path = "{out}/results.lp"
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_flushes_sinks(tmp_path: Path, sig: int) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(out=tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while not (tmp_path / "rec.mcap").exists() or (tmp_path / "rec.mcap").stat().st_size < 2000:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    reader = RecordingReader(tmp_path / "rec.mcap")
    frames = [r.frame for r in reader]
    assert not reader.truncated  # finished properly: footer written
    n_raw = sum(f.kind == "echem" for f in frames)
    lines = (tmp_path / "results.lp").read_text().splitlines()
    assert n_raw > 10 and sum(line.startswith("result_echem") for line in lines) == n_raw


class BufferingSource(Source):
    """Collects one sample per tick into blocks of ``block`` samples, as a polled instrument
    adapter does; on a stop request it hands over the partial block and ends."""

    graceful_stop = True

    def __init__(self, block: int = 100, tick_s: float = 0.01):
        self.block, self.tick_s, self.samples = block, tick_s, 0

    async def frames(self):
        seq, pending = 0, []
        while True:
            stopping = await self.sleep_or_stop(self.tick_s)
            if not stopping:
                pending.append(float(self.samples))
                self.samples += 1
            if pending and (stopping or len(pending) == self.block):
                yield echem_frame(seq=seq, n=len(pending))
                seq, pending = seq + 1, []
            if stopping:
                return


async def test_stop_lets_buffering_sources_hand_over_their_partial_block() -> None:
    source, sink = BufferingSource(), CollectSink()
    node = Node("exp1", [source, ListSource([])], [], [sink], handle_signals=False)
    task = asyncio.create_task(node.run())
    await asyncio.sleep(0.35)  # a few samples into the first block
    node.stop()
    await asyncio.wait_for(task, 10)
    assert source.samples > 0
    echem = [f for f in sink.frames if f.kind == "echem"]
    assert sum(f.n_samples for f in echem) == source.samples  # none lost at the stop
