"""The InfluxDB sink against real servers the tests start on free loopback ports: InfluxDB 1.x
(``influxd``, /write, read back with InfluxQL) and VictoriaMetrics (influxdb-client's
/api/v2/write, read back with /api/v1/export). Kill the database mid-stream, refused data in the
dead-letter file, the spool filled to its bound, SIGTERM and restart, Retry-After."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stream.config import ConfigError, parse_config
from stream.frame import Frame
from stream.influx.config import InfluxSinkConfig
from stream.lineprotocol import LineEncoder, LineProtocolError, check_name, encode_points
from stream.recording import RecordingReader
from stream.sinks.influxdb import InfluxDBSink

from .servers import INFLUXD, VICTORIA_METRICS, InfluxDBServer, VictoriaMetricsServer
from .test_node import CONFIG

needs_influxd = pytest.mark.skipif(INFLUXD is None, reason="influxd (InfluxDB 1.x) not installed")
T0 = 1_767_225_600_000_000_000
DB = "opmon"


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory):
    if INFLUXD is None:
        pytest.skip("influxd (InfluxDB 1.x) not installed")
    with InfluxDBServer(tmp_path_factory.mktemp("influxd")) as server:
        yield server


def fresh_db(server: InfluxDBServer, name: str) -> str:
    server.query(f'DROP DATABASE "{name}"')
    server.create_database(name)
    return name


def sink_config(tmp_path: Path, url: str, **kw) -> InfluxSinkConfig:
    defaults = {"url": url, "database": DB, "spool_dir": str(tmp_path / "spool"),
                "retry_min_s": 0.05, "retry_max_s": 0.5, "close_timeout_s": 10.0}
    return InfluxSinkConfig(**{**defaults, **kw})


async def write_all(sink: InfluxDBSink, frames: list[Frame], pause_s: float = 0.0) -> None:
    await sink.start()
    for frame in frames:
        await sink.write(frame)
        if pause_s:
            await asyncio.sleep(pause_s)
    await sink.close()


def echem_blocks(n_frames: int, n: int = 50, cell: str = "cell01", start: int = 0) -> list[Frame]:
    """Blocks whose values ``v`` are the running sample index (sums check loss and duplicates)."""
    out = []
    for k in range(start, start + n_frames):
        idx = np.arange(k * n, (k + 1) * n)
        out.append(Frame(f"exp1/{cell}/potentiostat", "echem", k, T0 + k * n * 10**8,
                         {"t": np.arange(n) * 0.1, "v": idx.astype(np.float64),
                          "step": (idx // 1000).astype(np.int64)}))
    return out


def count_and_sum(server: InfluxDBServer, db: str, measurement: str = "echem") -> tuple[int, float]:
    rows = server.rows(f'SELECT COUNT("v"), SUM("v") FROM "{measurement}"', db)
    return (rows[0]["count"], rows[0]["sum"]) if rows else (0, 0.0)


# -- write and read back ----------------------------------------------------------------------
@needs_influxd
def test_v1_write_and_read_back(influx: InfluxDBServer, tmp_path: Path) -> None:
    db = fresh_db(influx, "readback")
    blocks = echem_blocks(30)
    results = [Frame("exp1/cell01/gas", "result.gas", k, T0 + k * 10**9,
                     {"rate_mol_s": np.array([1.25e-9 * k]), "amount_mol": np.array([3e-7 * k]),
                      "cycle": np.array([k // 10], dtype=np.int64), "charging": np.array([k % 2 == 0])},
                     {}, {"tags": {"gas": gas, "seq": "never"}})
               for k in range(40) for gas in ("H2", "CO 2,x=y")]
    event = Frame("exp1/cell01/events", "event", 0, T0 + 5, {"dv_V": np.array([-0.25])}, {},
                  {"event": "hard_short", "severity": "critical", "onset_ns": T0,
                   "criterion": 'dV < -0.2 V "fast"\\'})
    sink = InfluxDBSink(sink_config(tmp_path, influx.url, database=db, batch_size=700))
    asyncio.run(write_all(sink, blocks + results + [event, event]))
    assert sink.counters()["points_written"] == 30 * 50 + 80 + 2
    assert count_and_sum(influx, db) == (1500, float(np.arange(1500).sum()))
    rows = influx.rows('SELECT * FROM "result_gas" WHERE "gas" = \'CO 2,x=y\'', db)
    assert len(rows) == 40
    assert rows[7] == {"_measurement": "result_gas", "time": T0 + 7 * 10**9, "amount_mol": 3e-7 * 7,
                       "cell": "cell01", "charging": False, "cycle": 0, "experiment": "exp1",
                       "gas": "CO 2,x=y", "instrument": "gas", "rate_mol_s": 1.25e-9 * 7}
    types = {(r["_measurement"], r["fieldKey"]): r["fieldType"]
             for r in influx.rows("SHOW FIELD KEYS", db)}
    assert types[("result_gas", "cycle")] == "integer"
    assert types[("result_gas", "charging")] == "boolean"
    assert types[("echem", "v")] == "float" and types[("event", "event")] == "string"
    tag_keys = {r["tagKey"] for r in influx.rows('SHOW TAG KEYS FROM "result_gas"', db)}
    assert tag_keys == {"experiment", "cell", "instrument", "gas"}
    events = influx.rows('SELECT * FROM "event"', db)
    assert [e["time"] - T0 for e in events] == [5, 6]  # the repeated event moved by 1 ns
    assert events[0]["criterion"] == 'dV < -0.2 V "fast"\\' and events[0]["onset_ns"] == T0


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=10)


@needs_influxd
@given(measurement=_text, tag_value=_text, field_key=_text, string_value=st.text(max_size=30),
       number=st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_escaping_round_trip_nasty_names(influx: InfluxDBServer, measurement: str,
                                         tag_value: str, field_key: str, string_value: str,
                                         number: float) -> None:
    """What the encoder accepts, InfluxDB stores unchanged; what it refuses, it names."""
    names = [(measurement, "measurement"), ("k " + tag_value, "tag key"),
             (tag_value, "tag value"), ("f" + field_key, "field key")]
    try:
        for name, what in names:
            check_name(name, what)
    except LineProtocolError as exc:
        assert exc.name in [n for n, _ in names]
        assume(False)
    db = "nasty"
    if not any(r.get("name") == db for r in influx.rows("SHOW DATABASES")):
        influx.create_database(db)
    case = str(time.monotonic_ns())
    data = encode_points(measurement, {"case": case, "k " + tag_value: tag_value},
                         {"f" + field_key: number, "s" + field_key: string_value}, [T0])
    status, body = influx.write(data, db)
    assert status == 204, body
    [row] = influx.rows(f"SELECT * FROM /.*/ WHERE \"case\" = '{case}'", db)
    assert row["_measurement"] == measurement
    assert row["k " + tag_value] == tag_value
    assert float(row["f" + field_key]) == number  # JSON may print a large float as an int
    assert row["s" + field_key] == string_value


@pytest.mark.skipif(VICTORIA_METRICS is None, reason="victoria-metrics not installed")
def test_v2_write_through_influxdb_client_to_victoriametrics(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("not-checked-by-vm\n")
    frames = [Frame("exp1/cell02/gas", "result.gas", k, T0 + k * 10**9 + 123_456,
                    {"rate_mol_s": np.array([1e-9 * (k + 1)]),
                     "cycle": np.array([k], dtype=np.int64)}, {}, {"tags": {"gas": "H2 O"}})
              for k in range(25)] + echem_blocks(4, n=20, cell="cell02")
    with VictoriaMetricsServer(tmp_path / "vm") as vm:
        sink = InfluxDBSink(sink_config(tmp_path, vm.url, api="v2", database=None, org="lab",
                                        bucket="opmon", token_file=str(token), batch_size=30))
        asyncio.run(write_all(sink, frames))
        vm.flush()
        [rate] = vm.export('{__name__="result_gas_rate_mol_s"}')
        [volts] = vm.export('{__name__="echem_v"}')
    assert sink.counters()["points_written"] == 25 + 80
    assert rate["metric"] == {"__name__": "result_gas_rate_mol_s", "experiment": "exp1",
                              "cell": "cell02", "instrument": "gas", "gas": "H2 O"}
    # VictoriaMetrics keeps about 15 significant digits
    np.testing.assert_allclose(rate["values"], [1e-9 * (k + 1) for k in range(25)], rtol=1e-13)
    assert rate["timestamps"] == [(T0 + k * 10**9 + 123_456) // 10**6 for k in range(25)]
    assert volts["values"] == list(range(80))


# -- nothing lost -----------------------------------------------------------------------------
@needs_influxd
def test_kill_influxd_mid_stream_nothing_lost_nothing_duplicated(tmp_path: Path) -> None:
    frames = echem_blocks(300)
    with InfluxDBServer(tmp_path / "influx") as server:
        server.create_database(DB)
        sink = InfluxDBSink(sink_config(tmp_path, server.url, batch_size=500,
                                        flush_interval_s=0.1))
        outage = {}

        async def produce() -> None:
            await sink.start()
            for k, frame in enumerate(frames):
                await sink.write(frame)
                await asyncio.sleep(0.004)
                if k == 80:
                    await asyncio.to_thread(server.kill)  # SIGKILL: no clean shutdown
                    outage["killed_at"] = sink.counters()["points_written"]
                if k == 200:
                    outage["spooled"] = sink.counters()["points_spooled"]
                    await asyncio.to_thread(server.start)  # same port, same data
            await sink.close()

        asyncio.run(produce())
        counters = sink.counters()
        assert count_and_sum(server, DB) == (300 * 50, float(np.arange(300 * 50).sum()))
    assert outage["spooled"] > 0 and counters["retries"] > 0
    assert counters["spool_batches"] == 0 and counters["points_dead_lettered"] == 0
    assert counters["points_written"] >= 300 * 50


@needs_influxd
def test_close_while_down_spools_and_a_restart_resumes(tmp_path: Path) -> None:
    with InfluxDBServer(tmp_path / "influx") as server:
        server.create_database(DB)
        server.stop()
        first = InfluxDBSink(sink_config(tmp_path, server.url, batch_size=400))
        started = time.monotonic()
        asyncio.run(write_all(first, echem_blocks(40)))
        assert time.monotonic() - started < 8  # close() does not wait for a database that is down
        assert first.counters()["spool_points"] == 2000
        assert first.counters()["points_written"] == 0
        server.start()
        second = InfluxDBSink(sink_config(tmp_path, server.url, batch_size=400))
        asyncio.run(write_all(second, echem_blocks(10, start=40)))  # new points after the spool
        assert count_and_sum(server, DB) == (2500, float(np.arange(2500).sum()))
        assert second.counters()["spool_points"] == 0
        assert not list((tmp_path / "spool").glob("*.lp.gz"))


@needs_influxd
def test_spool_fills_to_its_bound_then_backpressure_then_replays(tmp_path: Path) -> None:
    bound = 60_000
    frames = echem_blocks(400)
    with InfluxDBServer(tmp_path / "influx") as server:
        server.create_database(DB)
        server.stop()
        sink = InfluxDBSink(sink_config(tmp_path, server.url, batch_size=250,
                                        spool_max_bytes=bound, max_pending_batches=2))
        seen = {}

        async def produce() -> None:
            await sink.start()
            progress = asyncio.Event()

            async def feed() -> None:
                for frame in frames:
                    await sink.write(frame)
                    progress.set()

            task = asyncio.create_task(feed())
            while True:  # wait until the producer stops making progress: backpressure
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), 1.5)
                except TimeoutError:
                    break
            seen["blocked"] = sink.counters()
            seen["spool_bytes"] = sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.gz"))
            assert not task.done()
            await asyncio.to_thread(server.start)
            await task
            await sink.close()

        asyncio.run(produce())
        assert count_and_sum(server, DB) == (400 * 50, float(np.arange(400 * 50).sum()))
    blocked = seen["blocked"]
    assert 0 < blocked["spool_bytes"] <= bound and seen["spool_bytes"] == blocked["spool_bytes"]
    assert blocked["points_written"] == 0 and blocked["points_spooled"] < 400 * 50
    assert sink.counters()["backpressure_s"] > 1.0 and sink.counters()["points_dropped"] == 0


# -- refused data -----------------------------------------------------------------------------
@needs_influxd
def test_malformed_results_reach_the_dead_letter_file(influx: InfluxDBServer,
                                                      tmp_path: Path) -> None:
    db = fresh_db(influx, "deadletter")
    good = echem_blocks(20)  # "step" is an integer field
    conflict = Frame("exp1/cell01/potentiostat", "echem", 99, T0 + 10**12,
                     {"t": np.arange(3) * 0.1, "v": np.array([7.0, 8.0, 9.0]),
                      "step": np.array([0.5, 1.5, 2.5])})  # float into an integer field
    too_big = Frame("exp1/cell01/counter", "result.count", 0, T0,
                    {"n": np.array([2**64 - 1], dtype=np.uint64)})
    bad_tag = Frame("exp1/cell01/gas", "result.gas", 0, T0, {"rate": np.array([1.0])}, {},
                    {"tags": {"gas": "H2\nCO2"}})
    long_tag = Frame("exp1/cell01/gas", "result.gas", 1, T0, {"rate": np.array([2.0])}, {},
                     {"tags": {"gas": "x" * 70_000}})
    later = echem_blocks(20, start=20)
    sink = InfluxDBSink(sink_config(tmp_path, influx.url, database=db, batch_size=2000))
    asyncio.run(write_all(sink, good[:10] + [conflict, too_big, bad_tag] + good[10:] +
                          [long_tag] + later))
    dead = sink.dead_letter.read()
    reasons = [d["reason"] for d in dead]
    assert len(dead) == 3 + 1 + 1 + 1
    assert sum("type conflict" in r for r in reasons) == 3  # the three conflicting lines alone
    assert sum("out of range" in r for r in reasons) == 1
    assert sum("tag value" in r and "newline" in r for r in reasons) == 1
    assert sum(d["status"] == 400 for d in dead) == 5
    assert all(d["line"].startswith("echem,") for d in dead if "type conflict" in d["reason"])
    assert [d["stream"] for d in dead if d["status"] is None] == ["exp1/cell01/gas"]
    # everything else arrived, once
    assert count_and_sum(influx, db) == (2000, float(np.arange(2000).sum()))
    counters = sink.counters()
    assert counters["points_dead_lettered"] == 5 and counters["frames_refused"] == 1
    assert influx.rows('SELECT COUNT("rate") FROM "result_gas"', db) == []


# -- retries ----------------------------------------------------------------------------------
class ScriptedInflux(http.server.ThreadingHTTPServer):
    """An HTTP server on a free loopback port answering /write with scripted statuses, then
    204; records each request's time, query, headers and unzipped body."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]):
        self.script = list(script)
        self.requests: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                if handler.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                self.requests.append({"t": time.monotonic(), "path": handler.path,
                                      "headers": dict(handler.headers), "body": body})
                status, headers = self.script.pop(0) if self.script else (204, {})
                handler.send_response(status)
                for key, value in headers.items():
                    handler.send_header(key, value)
                handler.send_header("Content-Length", "0")
                handler.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedInflux:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def test_retry_after_429_and_5xx_with_backoff(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    script = [(429, {"Retry-After": "1"}), (503, {}), (500, {})]
    with ScriptedInflux(script) as server:
        sink = InfluxDBSink(sink_config(tmp_path, server.url, batch_size=10_000, database="x y",
                                        retention_policy="one_week", username="opmon",
                                        password_file=str(password), retry_min_s=0.2,
                                        retry_max_s=5.0))
        asyncio.run(write_all(sink, echem_blocks(4)))
        requests = server.requests
    assert len(requests) == 4
    gaps = np.diff([r["t"] for r in requests])
    assert gaps[0] >= 0.95  # Retry-After: 1
    assert gaps[1] >= 0.19 and gaps[2] >= 0.38  # 0.2 s doubling per failure, jitter x0.5..1
    assert all(r["body"] == requests[0]["body"] for r in requests)  # the same batch, once
    assert len(requests[0]["body"].splitlines()) == 200
    query = parse_qs(urlsplit(requests[0]["path"]).query)
    assert query == {"db": ["x y"], "rp": ["one_week"], "precision": ["ns"]}
    assert requests[0]["headers"]["Content-Encoding"] == "gzip"
    assert requests[0]["headers"]["Authorization"] == "Basic b3Btb246czNjcmV0"  # opmon:s3cret
    assert sink.counters()["retries"] == 3 and sink.counters()["points_written"] == 200


@needs_influxd
def test_auth_failure_keeps_the_data_until_fixed(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("admin-secret")
    bad.write_text("wrong")
    with InfluxDBServer(tmp_path / "influx", auth=True) as server:
        server.create_database(DB)
        refused = InfluxDBSink(sink_config(tmp_path, server.url, username="admin",
                                           password_file=str(bad), close_timeout_s=1.0))
        asyncio.run(write_all(refused, echem_blocks(6)))
        assert refused.counters()["points_written"] == 0
        assert refused.counters()["spool_points"] == 300
        assert "401" in refused.stats.last_error
        fixed = InfluxDBSink(sink_config(tmp_path, server.url, username="admin",
                                         password_file=str(good)))
        asyncio.run(write_all(fixed, []))
        assert count_and_sum(server, DB) == (300, float(np.arange(300).sum()))


# -- config and the node ----------------------------------------------------------------------
def test_config_errors_name_the_key(tmp_path: Path) -> None:
    base = {"experiment": {"id": "e"}}
    with pytest.raises(ConfigError, match=r"sinks\[0\].*needs database"):
        parse_config({**base, "sinks": [{"type": "influxdb", "url": "http://h:8086"}]})
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.token: secrets are not read"):
        parse_config({**base, "sinks": [{"type": "influxdb", "api": "v2", "org": "o",
                                         "bucket": "b", "token": "plain"}]})
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.url"):
        parse_config({**base, "sinks": [{"type": "influxdb", "url": "ftp://h",
                                         "database": "d"}]})
    cfg = parse_config({**base, "sinks": [{"type": "influxdb", "database": "d",
                                           "batch_size": 5000, "spool_max_bytes": 10**9}]})
    assert cfg.sinks[0].type == "influxdb"


# test_node's config (simulated potentiostat at 20x, electrochem, record and line-protocol
# file sinks) plus the InfluxDB sink
NODE_CONFIG = CONFIG + """[[sinks]]
type = "influxdb"
url = "{url}"
database = "{db}"
spool_dir = "{out}/spool"
flush_interval_s = 0.2
"""


@needs_influxd
def test_node_sigterm_flushes_every_result_into_influxdb(influx: InfluxDBServer,
                                                          tmp_path: Path) -> None:
    db = fresh_db(influx, "node")
    cfg = tmp_path / "run.toml"
    cfg.write_text(NODE_CONFIG.format(out=tmp_path, url=influx.url, db=db))
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "run", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 90
    while sum(r["count"] for r in influx.rows('SELECT COUNT("voltage") FROM "result_echem"',
                                              db)) < 12:  # written while it runs
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    n_raw = sum(r.frame.kind == "echem" for r in RecordingReader(tmp_path / "rec.mcap"))
    [row] = influx.rows('SELECT COUNT("voltage") FROM "result_echem"', db)
    assert n_raw > 10 and row["count"] == n_raw  # one result per raw block, all flushed
    assert influx.rows('SELECT COUNT("frames_in") FROM "health"', db)


@needs_influxd
def test_unreadable_spool_file_is_set_aside(influx: InfluxDBServer, tmp_path: Path) -> None:
    db = fresh_db(influx, "corrupt")
    spool = tmp_path / "spool"
    spool.mkdir()
    good = LineEncoder().encode_many(echem_blocks(2))[0]
    (spool / f"{0:020d}-7.lp.gz").write_bytes(b"this is not gzip")
    (spool / f"{1:020d}-100.lp.gz").write_bytes(gzip.compress(good))
    sink = InfluxDBSink(sink_config(tmp_path, influx.url, database=db))
    asyncio.run(write_all(sink, []))
    assert count_and_sum(influx, db) == (100, float(np.arange(100).sum()))
    assert (spool / f"{0:020d}-7.lp.gz.corrupt").exists()
    [dead] = sink.dead_letter.read()
    assert "unreadable spool file" in dead["reason"]
