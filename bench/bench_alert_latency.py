"""Alert latency at the load of 1,000 cells (issue 5). Target: p99 < 100 ms.

A node (its own process) takes 1,000 simulated cells' worth of potentiostat frames per second
(one 1 s block of 10 samples of voltage, current and temperature per cell per second) from its
input transport, runs the alert engine (two field rules on the raw frames plus the default event
rules) and publishes alerts to a real Mosquitto through the ``alert_mqtt`` notifier. The driver
(this process) paces the frames and, every ``--every`` seconds, sends one cell's block with the
voltage below the threshold. Latency = from just before that frame is published into the node's
input transport to the firing alert arriving at an MQTT subscriber in the driver: both clocks
are this process's ``perf_counter``.

The comparison: Grafana's unified alerting evaluates a rule at most every 10 s (its minimum
evaluation interval), so a threshold crossing reaches a Grafana notification after up to 10 s
plus the query; the ratio printed is that 10 s over the measured p99.

    python bench/bench_alert_latency.py [--cells 1000] [--seconds 20] [--input zmq mqtt]

With ``--input mqtt`` the frames reach the node over MQTT (QoS 1) instead of ZeroMQ: that
measures the MQTT input transport as much as the alert engine (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import check_idle, free_port, mosquitto, versions  # noqa: E402

from stream.frame import Frame  # noqa: E402

TARGET_S = 0.100
GRAFANA_MIN_INTERVAL_S = 10.0
EXPERIMENT = "bench"
T0 = 1_700_000_000_000_000_000
RULES = [
    {"name": "voltage_low", "kind": "echem", "field": "voltage", "op": "<", "threshold": 2.5,
     "hysteresis": 0.2, "severity": "critical", "labels": {"fault": "short"}},
    {"name": "over_temperature", "kind": "echem", "field": "temperature", "op": ">",
     "threshold": 45.0, "hysteresis": 2.0, "for_s": 3.0, "severity": "critical"},
]


# -- the node (its own process) -----------------------------------------------------------------
def node_main(input_url: str, topics: list[str], broker_url: str, ready: mp.Event,
              stop: mp.Event, results: mp.Queue) -> None:
    from processors.alert_rules import AlertRuleProcessor, AlertRulesConfig
    from stream.alerts.defaults import default_rules
    from stream.alerts.mqtt import MqttAlertConfig, MqttAlertSink
    from stream.node import Node
    from stream.sources import SubscriberSource
    from stream.transports import open_subscriber

    async def main() -> None:
        subscriber = open_subscriber(input_url, topics)
        engine = AlertRuleProcessor(AlertRulesConfig(rules=[*RULES, *default_rules()]))
        sink = MqttAlertSink(MqttAlertConfig(url=broker_url, ack=False))
        node = Node(EXPERIMENT, [SubscriberSource(subscriber)], [engine], [sink],
                    health_interval_s=3600.0, handle_signals=False)
        task = asyncio.create_task(node.run())
        await asyncio.wait_for(sink.connected.wait(), 10)
        subscribed = getattr(subscriber, "subscribed", None)
        if subscribed is not None:
            await asyncio.wait_for(subscribed.wait(), 10)
        await asyncio.sleep(0.5)  # the ZeroMQ bind
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        node.stop()
        snapshot = await task
        process = snapshot["process"]
        results.put({"frames_in": process["frames_in"], "rejects": process["rejects"],
                     "process_p99_ms": process["latency_p99_ms"], "published": sink.published})

    asyncio.run(main())


# -- the driver ---------------------------------------------------------------------------------
class Load:
    """1 s blocks of 10 samples per cell, the cells spread evenly over each second."""

    def __init__(self, cells: int):
        self.cells = cells
        self.t = np.arange(10) * 0.1
        self.normal = {"voltage": np.full(10, 3.7), "current": np.full(10, 0.05),
                       "temperature": np.full(10, 25.0)}
        self.crossing = {**self.normal, "voltage": np.full(10, 2.0)}
        self.streams = [f"{EXPERIMENT}/cell{i:04d}/potentiostat" for i in range(cells)]

    def frame(self, cell: int, second: int, cross: bool) -> Frame:
        arrays = self.crossing if cross else self.normal
        return Frame(self.streams[cell], "echem", second, T0 + second * 1_000_000_000,
                     {"t": self.t, **arrays}, {"t": "s", "voltage": "V", "current": "A",
                                               "temperature": "degC"})


async def drive(input_url: str, broker_port: int, cells: int, seconds: float, every_s: float,
                warmup_s: float) -> dict:
    import aiomqtt

    from stream.transports import open_publisher

    load = Load(cells)
    published_at: dict[str, float] = {}
    latencies: list[float] = []
    resolved = 0
    publisher = open_publisher(input_url)
    await publisher.start()
    async with aiomqtt.Client("127.0.0.1", broker_port) as client:
        await client.subscribe(f"opmon/{EXPERIMENT}/alerts/voltage_low/#", qos=1)

        async def receive() -> None:
            nonlocal resolved
            async for message in client.messages:
                now = time.perf_counter()
                doc = json.loads(message.payload)
                if doc["state"] == "firing":
                    sent = published_at.pop(doc["cell"], None)
                    if sent is not None:
                        latencies.append(now - sent)
                elif doc["state"] == "resolved":
                    resolved += 1

        receiver = asyncio.create_task(receive())
        tick_s = 0.01
        per_tick = max(1, round(cells * tick_s))
        crossings, next_cross, cursor, sent, rotate = 0, warmup_s, 0, 0, 0
        pending: set[int] = set()
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            if elapsed >= next_cross:
                pending.add(rotate)
                rotate = (rotate + 7919) % cells  # a prime stride: every cell in turn
                next_cross += every_s
            for _ in range(per_tick):
                cell, second = cursor % cells, cursor // cells
                cursor += 1
                cross = cell in pending
                if cross:
                    pending.discard(cell)
                    crossings += 1
                    published_at[load.streams[cell].split("/")[1]] = time.perf_counter()
                await publisher.publish(load.frame(cell, second, cross))
                sent += 1
            delay = start + (cursor / per_tick) * tick_s - time.perf_counter()
            await asyncio.sleep(max(0.0, delay))
        await publisher.flush()
        await asyncio.sleep(1.5)  # the last alerts
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
    await publisher.close()
    wall = time.perf_counter() - start
    return {"sent": sent, "rate": sent / seconds, "crossings": crossings, "wall": wall,
            "latencies": np.array(latencies), "missing": len(published_at), "resolved": resolved}


def run_case(name: str, broker_port: int, cells: int, seconds: float, every_s: float) -> dict:
    broker_url = f"mqtt://127.0.0.1:{broker_port}"
    if name == "zmq":
        input_url, topics = f"zmq+pushpull://127.0.0.1:{free_port()}", ["opmon/#"]
    else:
        input_url = f"{broker_url}?qos=1"
        topics = [f"opmon/{EXPERIMENT}/+/potentiostat/echem"]
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    node = ctx.Process(target=node_main, args=(input_url, topics, broker_url, ready, stop,
                                               results), daemon=True)
    node.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the node did not start")
        out = asyncio.run(drive(input_url, broker_port, cells, seconds, every_s, warmup_s=2.0))
        stop.set()
        out["node"] = results.get(timeout=60)
    finally:
        stop.set()
        node.join(30)
        if node.is_alive():
            node.terminate()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--every", type=float, default=0.1, help="a crossing every N s (default 0.1)")
    ap.add_argument("--input", nargs="+", default=["zmq"], choices=["zmq", "mqtt"],
                    help="the node's input transport(s) (default zmq; mqtt: QoS 1 through the "
                    "same broker)")
    args = ap.parse_args()
    print(f"alert latency, {args.cells} cells x 1 frame/s (10 samples), {args.seconds:g} s, a "
          f"crossing every {args.every:g} s\n{versions()}")
    check_idle()
    rows = []
    with mosquitto() as port:
        for name in args.input:
            rows.append((name, run_case(name, port, args.cells, args.seconds, args.every)))
    print(f"\n{'input':6s} {'frames/s':>9s} {'node in':>8s} {'node p99':>8s} {'crossings':>9s} "
          f"{'alerts':>7s} "
          f"{'missed':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} {'vs Grafana 10 s':>16s}"
          "  verdict")
    ok = True
    for name, r in rows:
        lat = r["latencies"]
        p50, p99, pmax = (np.percentile(lat, [50, 99]).tolist() + [lat.max()]) if lat.size \
            else (np.nan, np.nan, np.nan)
        passed = lat.size > 0 and r["missing"] == 0 and p99 < TARGET_S
        ok &= passed
        print(f"{name:6s} {r['rate']:9.0f} {int(r['node']['frames_in']):8d} "
              f"{r['node']['process_p99_ms']:6.1f}ms {r['crossings']:9d} "
              f"{lat.size:7d} {r['missing']:6d} {p50 * 1e3:7.1f} {p99 * 1e3:7.1f} "
              f"{pmax * 1e3:7.1f} {GRAFANA_MIN_INTERVAL_S / p99:15.0f}x  "
              f"{'PASS' if passed else 'FAIL'} (p99 < {TARGET_S * 1e3:.0f} ms)")
    print("latency: crossing frame published into the node's input -> firing alert received "
          "from Mosquitto; Grafana's unified alerting evaluates at most every 10 s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
