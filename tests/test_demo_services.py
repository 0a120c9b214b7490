"""`opmon demo` against real services, as docker-compose runs it: InfluxDB 1.x (v1 /write),
VictoriaMetrics through influxdb-client's v2 write, and Mosquitto for the retained alerts. The
demo's hard short on cell03 (at 1.5 h) must reach each of them, and the demo must still end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.alerts.mqtt import MqttAlertConfig, read_retained

from .servers import (
    INFLUXD,
    VICTORIA_METRICS,
    InfluxDBServer,
    MosquittoServer,
    VictoriaMetricsServer,
)

DEMO = [sys.executable, "-m", "stream.cli", "demo", "--duration", "100m", "--speed", "max",
        "--cells", "3"]


def _demo(tmp_path: Path, *extra: str, env: dict | None = None) -> str:
    proc = subprocess.run([*DEMO, "--out", str(tmp_path / "run"), *extra], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.servers
@pytest.mark.skipif(INFLUXD is None, reason="influxd (InfluxDB 1.x) not installed")
def test_demo_writes_influxdb_v1_and_retained_mqtt_alerts(tmp_path: Path) -> None:
    with InfluxDBServer(tmp_path / "influxd") as influx, \
            MosquittoServer(tmp_path / "broker") as broker:
        influx.create_database("opmon")
        out = _demo(tmp_path, "--influx-url", influx.url, "--mqtt-url", broker.url)
        assert "hard_short" in out
        shorts = influx.rows("SELECT * FROM \"event\" WHERE \"event\" = 'hard_short'", "opmon")
        assert {r["cell"] for r in shorts} == {"cell03"}
        counts = {m: influx.rows(f'SELECT count(*) FROM "{m}"', "opmon")
                  for m in ("result_echem", "result_half_cycle", "result_gas", "pressure", "health")}
        assert [m for m, rows in counts.items() if not rows] == []
        firing = {(r["rule"], r["cell"]) for r in influx.rows(
            "SELECT * FROM \"alert\" WHERE \"state\" = 'firing'", "opmon")}
        assert ("hard_short", "cell03") in firing
        docs = asyncio.run(read_retained(MqttAlertConfig(url=broker.url), "demo"))
        assert ("hard_short/cell03", "firing") in {(d["alert_id"], d["state"]) for d in docs}
        # the sink wrote everything: nothing left in its spool
        assert not list((tmp_path / "run" / "spool").glob("*.gz"))


@pytest.mark.servers
@pytest.mark.skipif(VICTORIA_METRICS is None, reason="victoria-metrics not installed")
def test_demo_writes_through_influxdb_client_v2(tmp_path: Path) -> None:
    with VictoriaMetricsServer(tmp_path / "vm") as vm:
        _demo(tmp_path, "--influx-url", vm.url, "--influx-org", "lab", "--influx-bucket",
              "opmon", "--influx-token-env", "DEMO_TOKEN", env={"DEMO_TOKEN": "secret"})
        vm.flush()
        end = str(time.time() + 3 * 3600)  # simulated time runs ahead of the clock
        shorts = vm.export('{__name__="event_voltage_drop_V"}', end=end)
        assert {s["metric"]["cell"] for s in shorts} == {"cell03"}
        assert vm.export('{__name__="result_echem_voltage", cell="cell01"}', end=end)
