"""The whole alert path from a config, as `opmon run` builds it: a simulated hard short goes
through the event detector and the default alert rules to every notifier at once — the retained
MQTT topic on a real Mosquitto, a webhook receiver, the log — and into a real InfluxDB 1.x as
events and alerts; an acknowledgement on the MQTT command topic resolves the latched alert, and
the node still ends when its data ends (the acknowledgement listener does not keep it alive)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from stream.alerts.defaults import default_rules
from stream.alerts.mqtt import MqttAlertConfig, read_retained
from stream.build import build_node
from stream.config import parse_config

from .servers import INFLUXD, InfluxDBServer, MosquittoServer
from .test_alert_webhook import Receiver

T0 = 1_700_000_000_000_000_000
SCENARIO = """
name = "short-after-five-minutes"
duration_s = 900.0
detectors = []
[cell]
initial_soc = 0.3
sei_rate_mol_s = 0.0
[[protocol]]
kind = "cc"
c_rate = 1.0
v = 4.2
[[faults]]
kind = "hard_short"
cells = [1]
at_s = 300.0
magnitude = 0.05
"""


def _config(tmp_path: Path, broker: MosquittoServer, hook: Receiver,
            influx: InfluxDBServer) -> dict:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    return {
        "experiment": {"id": "exp"},
        "sim": {"speed": "max", "start_ns": T0},
        "simulations": [{"scenario": str(scenario), "cells": 2, "seed": 0}],
        "processors": [{"type": "electrochem"}, {"type": "events"}],
        "alerts": [r for r in default_rules() if r["name"] == "hard_short"],
        "sinks": [
            {"type": "alert_mqtt", "url": broker.url},
            {"type": "alert_webhook", "url": hook.url, "backoff_s": 0.05},
            {"type": "alert_log"},
            {"type": "influxdb", "url": influx.url, "database": "opmon",
             "kinds": ["event", "alert"], "spool_dir": str(tmp_path / "spool")},
        ]}


@pytest.mark.servers
@pytest.mark.skipif(INFLUXD is None, reason="influxd (InfluxDB 1.x) not installed")
def test_a_hard_short_reaches_every_notifier_once(tmp_path: Path, caplog) -> None:
    with MosquittoServer(tmp_path / "broker") as broker, Receiver([]) as hook, \
            InfluxDBServer(tmp_path / "influxd") as influx:
        influx.create_database("opmon")
        cfg = parse_config(_config(tmp_path, broker, hook, influx))
        node = build_node(cfg, handle_signals=False)
        assert any(s.auxiliary for s in node.sources)  # the acknowledgement listener
        with caplog.at_level(logging.WARNING, logger="opmon.alerts"):
            asyncio.run(asyncio.wait_for(node.run(), 60))

        # the webhook: one delivery per state change, the short on cell02 only
        fired = [(b["rule"], b["cell"], b["state"]) for b in hook.processed]
        assert fired == [("hard_short", "cell02", "firing")]
        assert hook.duplicates == 0
        # the retained topic holds the current state for a late subscriber
        docs = asyncio.run(read_retained(MqttAlertConfig(url=broker.url), "exp"))
        assert [(d["alert_id"], d["state"]) for d in docs] == [("hard_short/cell02", "firing")]
        # the log
        assert any("hard_short" in r.getMessage() for r in caplog.records
                   if r.levelno >= logging.ERROR)
        # InfluxDB: the detector's event and the alert, on the short's cell, after its onset
        events = influx.rows('SELECT * FROM "event" WHERE "event" = \'hard_short\'', "opmon")
        alerts = influx.rows('SELECT * FROM "alert"', "opmon")
        assert {r["cell"] for r in events} == {"cell02"}
        assert [(r["cell"], r["rule"], r["state"]) for r in alerts] == [
            ("cell02", "hard_short", "firing")]
        onset_ns = T0 + 300 * 10**9
        assert onset_ns <= events[0]["time"] <= onset_ns + 10**9  # within 1 s at 10 Hz
