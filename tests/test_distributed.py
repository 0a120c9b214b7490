"""Nodes connected by transports: an adapter node publishes, a worker node processes."""

from __future__ import annotations

import asyncio
import math

import tomli_w

from adapters.sim.clock import SimClock
from stream.build import build_node, build_sources
from stream.config import parse_config
from stream.demo import demo_config
from stream.transports import open_publisher, open_subscriber

from .helpers import assert_frames_equal, echem_frame, free_port


async def test_inproc_bus_is_lossless_and_filters_topics() -> None:
    url = "inproc://bus-test"
    all_sub = open_subscriber(url, ["opmon/#"])
    cell2 = open_subscriber(url, ["opmon/+/cell02/#"])
    pub = open_publisher(url)

    async def collect(sub) -> list:
        return [f async for f in sub]

    tasks = [asyncio.create_task(collect(s)) for s in (all_sub, cell2)]
    frames = [echem_frame(seq=s, stream=f"e/cell0{1 + s % 2}/p") for s in range(10)]
    for f in frames:
        await pub.publish(f)
    await pub.close()
    got_all, got_cell2 = await asyncio.gather(*tasks)
    assert len(got_all) == 10 and [f.cell for f in got_cell2] == ["cell02"] * 5
    for a, b in zip(got_all, frames, strict=True):
        assert_frames_equal(a, b)


async def test_adapter_node_to_worker_node_over_zeromq(tmp_path) -> None:
    """`opmon run` roles: node A runs the instruments and publishes raw frames on PUSH/PULL;
    node B subscribes, runs the processors and writes results. The results equal a
    single-process run of the same frames."""
    port = free_port()
    start = 1_760_000_000_000_000_000
    base = demo_config(tmp_path, cells=2, duration_s=1800, speed="max", start_ns=start)
    single = {**base, "sinks": [{"type": "lineprotocol", "path": str(tmp_path / "single.lp")}]}
    adapter_node = {**base, "processors": [], "alerts": [], "sinks": [
        {"type": "publish", "kinds": ["echem", "pressure", "ms.ion_current", "pattern",
                                      "spectrum"],
         "transport": {"url": f"zmq+pushpull://127.0.0.1:{port}"}}]}
    worker = {**base, "simulations": [],
              "inputs": [{"url": f"zmq+pushpull://127.0.0.1:{port}"}],
              "sinks": [{"type": "lineprotocol", "path": str(tmp_path / "worker.lp")}]}
    for name, data in (("single", single), ("adapter", adapter_node), ("worker", worker)):
        (tmp_path / f"{name}.toml").write_text(tomli_w.dumps(data))

    cfg = parse_config(single, "single")
    single_snap = await build_node(cfg, sources=build_sources(cfg, SimClock(start, math.inf)),
                                   handle_signals=False).run()

    worker_node = build_node(parse_config(worker, "worker"), handle_signals=False)
    worker_task = asyncio.create_task(worker_node.run())
    cfg = parse_config(adapter_node, "adapter")
    await build_node(cfg, sources=build_sources(cfg, SimClock(start, math.inf)),
                     handle_signals=False).run()
    expected = single_snap["process"]["frames_in"]  # every raw frame of the run
    for _ in range(1200):
        if worker_node.stats["process"].frames_in >= expected:
            break
        await asyncio.sleep(0.05)
    worker_node.stop()
    snap = await worker_task
    assert snap["process"]["frames_in"] == expected and snap["process"]["lost"] == 0
    assert (tmp_path / "worker.lp").read_text() == (tmp_path / "single.lp").read_text()
