"""The MQTT transport against a real Mosquitto broker (and amqtt's in-process broker).

Each test starts its own broker on a free 127.0.0.1 port with a config, log and persistence
database in its tmp dir (see tests/servers.py). Broker log and client state are printed when a
test fails, so a failure says what the broker saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from stream.codec import encode_json, encode_payload
from stream.frame import Frame
from stream.topics import topic_for
from stream.transports import TransportConfig, open_publisher, open_subscriber
from stream.transports.mqtt import MqttPublisher, MqttSubscriber

from .servers import LOOPBACK, MOSQUITTO, MOSQUITTO_PASSWD, MosquittoServer, free_port

servers = pytest.mark.servers  # the tests that start a broker

STREAM = "exp1/cell01/potentiostat"
KIND = "echem"
T0_NS = 1_700_000_000_000_000_000
BLOCK = 10          # samples per frame
DT_S = 0.01         # sample period


# -- frames ---------------------------------------------------------------------------------
def make_frame(seq: int, stream: str = STREAM) -> Frame:
    rng = np.random.default_rng(seq)
    t = np.arange(BLOCK, dtype=np.float64) * DT_S
    voltage = 3.0 + 0.2 * np.sin(seq / 50.0) + 1e-3 * rng.standard_normal(BLOCK)
    current = 1e-3 * (1.0 + rng.standard_normal(BLOCK))
    return Frame(stream=stream, kind=KIND, seq=seq, t0_ns=T0_NS + seq * int(BLOCK * DT_S * 1e9),
                 arrays={"t": t, "voltage": voltage, "current": current},
                 units={"t": "s", "voltage": "V", "current": "A"},
                 meta={"cycle": seq // 100}).validate()


def assert_same_frame(got: Frame, want: Frame) -> None:
    assert (got.stream, got.kind, got.seq, got.t0_ns) == (want.stream, want.kind, want.seq,
                                                          want.t0_ns)
    assert got.units == want.units
    assert got.meta == want.meta
    assert list(got.arrays) == list(want.arrays)
    for name, arr in want.arrays.items():
        assert got.arrays[name].dtype == np.float64, name
        assert got.arrays[name].shape == (BLOCK,), name
        np.testing.assert_array_equal(got.arrays[name], arr, err_msg=name)


# -- helpers --------------------------------------------------------------------------------
def cfg(url: str, **options: object) -> TransportConfig:
    """Link options as a TransportConfig. (The URL-query form ``?qos=1`` is refused by
    TransportConfig today; see test_url_query_qos.)"""
    return TransportConfig(url=url, **options)


async def wait_until(cond: Callable[[], bool], timeout: float, what: str,
                     check: Callable[[], None] | None = None) -> None:
    """Poll ``cond`` every 10 ms; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Collector:
    """Runs ``async for frame in subscriber`` in a task and keeps every frame it yields."""

    def __init__(self, sub: MqttSubscriber):
        self.sub = sub
        self.frames: list[Frame] = []
        self.task: asyncio.Task | None = None

    async def start(self, timeout: float = 10.0) -> Collector:
        self.task = asyncio.create_task(self._consume(), name="collector")
        await wait_until(self.sub.subscribed.is_set, timeout, "the subscription", self.check)
        return self

    async def _consume(self) -> None:
        async for frame in self.sub:
            self.frames.append(frame)

    def check(self) -> None:
        """Raise if the receive loop died (it must never end on its own)."""
        if self.task is not None and self.task.done():
            exc = self.task.exception() if not self.task.cancelled() else None
            raise AssertionError(f"the subscriber's receive loop ended: {exc!r}") from exc

    @property
    def seqs(self) -> list[int]:
        return [f.seq for f in self.frames]

    async def wait_for(self, n: int, timeout: float) -> None:
        await wait_until(lambda: len(self.frames) >= n, timeout,
                         f"{n} frames (have {len(self.frames)})", self.check)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.task, 15)


@contextlib.asynccontextmanager
async def collecting(spec: str | TransportConfig, topics: list[str] | None = None):
    sub = open_subscriber(spec, topics or ["opmon/#"])
    assert isinstance(sub, MqttSubscriber)
    collector = Collector(sub)
    try:
        await collector.start()
        yield collector
    finally:
        await collector.stop()
        await sub.close()


@contextlib.asynccontextmanager
async def publishing(spec: str | TransportConfig, close_timeout: float = 5.0):
    """An MqttPublisher, started; closed with a short flush so a failing test ends quickly."""
    pub = open_publisher(spec)
    assert isinstance(pub, MqttPublisher)
    await pub.start()
    try:
        yield pub
    finally:
        await asyncio.wait_for(pub.close(timeout=close_timeout), close_timeout + 15)


async def flush(pub: MqttPublisher, timeout: float) -> None:
    try:
        await pub.flush(timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"{pub.buffered} messages still not acknowledged after {timeout} s "
                             f"(reconnects: {pub.reconnects}, connected: "
                             f"{pub.connected.is_set()})") from None
    assert pub.buffered == 0


async def round_trip(pub_spec: str | TransportConfig, sub_spec: str | TransportConfig,
                     n: int) -> None:
    """Publish frames 0..n-1 through one publisher and check what one subscriber receives."""
    sent = [make_frame(i) for i in range(n)]
    async with collecting(sub_spec) as col:
        async with publishing(pub_spec) as pub:
            for frame in sent:
                await pub.publish(frame)
            await flush(pub, 20)
        await col.wait_for(n, timeout=20)
        await asyncio.sleep(0.1)  # nothing more should arrive
        assert col.seqs == list(range(n))
        for got, want in zip(col.frames, sent, strict=True):
            assert_same_frame(got, want)
        sub = col.sub
        assert sub.tracker.lost == 0
        assert sub.tracker.duplicates == 0
        assert sub.rejects == 0, sub.last_reject
        assert sub.received == n


# -- fixtures -------------------------------------------------------------------------------
def _need_mosquitto() -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")


@pytest.fixture
def mosquitto(tmp_path):
    _need_mosquitto()
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _dump_broker_log(tmp_path):
    """Print the broker log(s) of each test: pytest shows them when the test fails."""
    yield
    for log in sorted(tmp_path.glob("*/mosquitto.log")):
        print(f"--- {log} ---")
        print(log.read_text(errors="replace")[-8000:])


# -- 1. round trip --------------------------------------------------------------------------
@servers
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("fmt", "qos"), [("binary", 1), ("json", 1), ("binary", 0), ("json", 0)])
async def test_round_trip(mosquitto: MosquittoServer, fmt: str, qos: int):
    await round_trip(cfg(mosquitto.url, qos=qos, format=fmt),
                     cfg(mosquitto.url, qos=qos, client_id=f"opmon-test-rt-{fmt}-{qos}"), n=300)


@servers
async def test_json_payload_is_plain_json(mosquitto: MosquittoServer):
    """format=json puts the README's JSON form on the wire, readable by any MQTT client."""
    async with aiomqtt.Client(LOOPBACK, mosquitto.port, identifier="opmon-test-raw") as raw:
        await raw.subscribe("opmon/#", qos=1)
        async with publishing(cfg(mosquitto.url, qos=1, format="json")) as pub:
            await pub.publish(make_frame(7))
            await flush(pub, 10)
        message = await asyncio.wait_for(anext(aiter(raw.messages)), 10)
    assert str(message.topic) == f"opmon/{STREAM}/{KIND}"
    doc = json.loads(message.payload)
    assert (doc["stream"], doc["kind"], doc["seq"]) == (STREAM, KIND, 7)
    assert doc["data"]["voltage"] == make_frame(7).arrays["voltage"].tolist()


def test_url_query_options_without_qos():
    """Options other than qos do travel in the URL query."""
    from stream.transports import parse_transport
    c = parse_transport("mqtt://127.0.0.1:1883?format=json&client_id=x&max_inflight=5")
    assert (c.format, c.client_id, c.max_inflight, c.port) == ("json", "x", 5, 1883)


def test_url_query_qos():
    """The documented form ``mqtt://HOST:PORT?qos=1`` (stream/transports/__init__.py)."""
    from stream.transports import parse_transport
    assert parse_transport("mqtt://127.0.0.1:1883?qos=0").qos == 0
    assert parse_transport("mqtt://127.0.0.1:1883?qos=1&format=json").qos == 1


# -- 2. broker restart mid-stream ----------------------------------------------------------
@servers
@pytest.mark.timeout(90)
async def test_broker_restart_mid_stream_loses_nothing(mosquitto: MosquittoServer):
    n, rate_hz = 2000, 400.0
    restart_at, down_s = n // 2, 1.0
    pub_cfg = cfg(mosquitto.url, qos=1)
    sub_cfg = cfg(mosquitto.url, qos=1, client_id="opmon-test-restart")
    buffered_while_down = 0
    restarted = asyncio.Event()

    async def restart_broker() -> None:
        nonlocal buffered_while_down
        await asyncio.to_thread(mosquitto.stop)           # SIGTERM: the database is saved
        await asyncio.sleep(down_s)
        buffered_while_down = pub.buffered
        await asyncio.to_thread(mosquitto.start)          # same port, same database
        restarted.set()

    async with collecting(sub_cfg) as col:
        async with publishing(pub_cfg) as pub:
            await asyncio.wait_for(pub.connected.wait(), 10)
            restart_task = None
            t_start = time.monotonic()
            for seq in range(n):
                if seq == restart_at:
                    restart_task = asyncio.create_task(restart_broker())
                await pub.publish(make_frame(seq))
                # steady rate, independent of how long publish() took
                delay = t_start + (seq + 1) / rate_hz - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
            await asyncio.wait_for(restart_task, 20)
            await flush(pub, 20)

        await wait_until(lambda: set(col.seqs) >= set(range(n)), 15,
                         "every seq after the restart", col.check)
        await asyncio.sleep(0.2)  # late duplicates, if any, arrive now

    sub = col.sub
    print(f"restart: buffered while down {buffered_while_down}, publisher reconnects "
          f"{pub.reconnects}, subscriber reconnects {sub.reconnects}, "
          f"tracker {sub.tracker.report()}")
    assert restarted.is_set()
    assert buffered_while_down > 0, "the publisher should have buffered while the broker was down"
    assert pub.reconnects >= 1 and sub.reconnects >= 1, (pub.reconnects, sub.reconnects)
    assert sorted(set(col.seqs)) == list(range(n))
    # The subscriber's tracker drops every duplicate, so each seq is yielded exactly once.
    assert sorted(col.seqs) == list(range(n)), "a duplicate got through the tracker"
    assert sub.tracker.lost == 0, sub.tracker.report()
    assert sub.rejects == 0, sub.last_reject
    for frame in col.frames[::97]:
        assert_same_frame(frame, make_frame(frame.seq))


@servers
@pytest.mark.timeout(60)
async def test_inflight_messages_resent_promptly_after_broker_crash(mosquitto: MosquittoServer):
    """Messages sent to a broker that never acknowledges them and then dies are re-sent as soon
    as a broker is back, even when nothing new is published (no wait for a publish timeout),
    and reach a persistent subscriber."""
    fast = {"qos": 1, "reconnect_max_s": 0.5}
    async with collecting(cfg(mosquitto.url, client_id="opmon-test-crash", **fast)) as col, \
            publishing(cfg(mosquitto.url, **fast)) as pub:
        sub = col.sub
        await asyncio.wait_for(pub.connected.wait(), 10)
        for seq in range(5):
            await pub.publish(make_frame(seq))
        await flush(pub, 10)
        await col.wait_for(5, timeout=10)

        # Save the subscriber's session in the database: the crash below writes none.
        await asyncio.to_thread(mosquitto.restart)
        await wait_until(lambda: sub.reconnects >= 1 and sub.subscribed.is_set(), 10,
                         "the subscriber to come back", col.check)
        await wait_until(lambda: pub.reconnects >= 1 and pub.connected.is_set(), 10,
                         "the publisher to notice the restart and come back")

        mosquitto.pause()                                  # hung broker: no PUBACK
        for seq in range(5, 10):
            await pub.publish(make_frame(seq))
        await asyncio.sleep(0.5)
        assert pub.buffered == 5                           # in flight, not acknowledged
        reconnects = pub.reconnects
        await asyncio.to_thread(mosquitto.kill)            # crash: the connection is reset
        # The publisher notices the lost connection by itself, while idle.
        await wait_until(lambda: not pub.connected.is_set(), 3, "the publisher to notice")

        await asyncio.to_thread(mosquitto.start)
        t0 = time.monotonic()
        await flush(pub, 8)
        assert time.monotonic() - t0 < 5, "re-sent only after a publish timeout"
        assert pub.reconnects > reconnects
        await col.wait_for(10, timeout=10)
        assert col.seqs == list(range(10))
        assert sub.tracker.lost == 0


# -- 3. username / password -----------------------------------------------------------------
@pytest.fixture
def mosquitto_auth(tmp_path):
    _need_mosquitto()
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed")
    from .servers import make_password_file
    workdir = tmp_path / "mosquitto-auth"
    workdir.mkdir()
    pwfile = make_password_file(workdir / "passwd", {"opmon": "s3cret-pw", "viewer": "other"})
    server = MosquittoServer(workdir, allow_anonymous=False, password_file=pwfile)
    server.start()
    yield server
    server.stop()


@servers
@pytest.mark.timeout(60)
async def test_username_password(mosquitto_auth: MosquittoServer, monkeypatch):
    monkeypatch.setenv("OPMON_TEST_MQTT_PASSWORD", "s3cret-pw")
    common = {"url": mosquitto_auth.url, "qos": 1, "username": "opmon",
              "password_env": "OPMON_TEST_MQTT_PASSWORD"}
    await round_trip(TransportConfig(**common),
                     TransportConfig(client_id="opmon-test-auth-sub", **common), n=50)


@servers
@pytest.mark.timeout(60)
async def test_wrong_password_or_anonymous_is_refused(mosquitto_auth: MosquittoServer,
                                                      monkeypatch):
    monkeypatch.setenv("OPMON_TEST_MQTT_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("OPMON_TEST_MQTT_WRONG", "not-the-password")
    good = TransportConfig(url=mosquitto_auth.url, qos=1, username="opmon",
                           password_env="OPMON_TEST_MQTT_PASSWORD", client_id="opmon-test-good")
    async with collecting(good) as col:
        for bad in (
            TransportConfig(url=mosquitto_auth.url, qos=1, username="opmon",
                            password_env="OPMON_TEST_MQTT_WRONG", reconnect_max_s=0.5),
            TransportConfig(url=mosquitto_auth.url, qos=1, reconnect_max_s=0.5),  # anonymous
        ):
            pub = open_publisher(bad)
            assert isinstance(pub, MqttPublisher)
            await pub.start()
            try:
                await pub.publish(make_frame(0, stream="exp1/cell02/potentiostat"))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(pub.connected.wait(), 2.0)
                assert pub.reconnects >= 1          # it keeps trying, with backoff
                assert pub.buffered == 1            # and keeps the frame
            finally:
                await asyncio.wait_for(pub.close(timeout=0.2), 15)

        # A subscriber with the wrong password never subscribes either.
        bad_sub = open_subscriber(TransportConfig(url=mosquitto_auth.url, username="opmon",
                                                  password_env="OPMON_TEST_MQTT_WRONG",
                                                  reconnect_max_s=0.5))
        bad_col = Collector(bad_sub)
        with pytest.raises(AssertionError, match="timed out"):
            await bad_col.start(timeout=2.0)
        await bad_col.stop()
        assert bad_sub.reconnects >= 1

        await asyncio.sleep(0.2)
        assert col.frames == []


@servers
@pytest.mark.timeout(30)
async def test_missing_password_secret_is_reported(mosquitto_auth: MosquittoServer,
                                                   monkeypatch):
    """A password_env that is not set stops the publisher: publish() says why instead of
    buffering frames that nothing will ever send."""
    monkeypatch.delenv("OPMON_TEST_MQTT_UNSET", raising=False)
    pub = open_publisher(TransportConfig(url=mosquitto_auth.url, username="opmon",
                                         password_env="OPMON_TEST_MQTT_UNSET"))
    await pub.start()
    try:
        await asyncio.sleep(0.2)
        with pytest.raises(RuntimeError, match="OPMON_TEST_MQTT_UNSET is not set"):
            await pub.publish(make_frame(0))
    finally:
        await asyncio.wait_for(pub.close(timeout=0.5), 10)


# -- 4. malformed payloads ------------------------------------------------------------------
@servers
@pytest.mark.timeout(60)
async def test_malformed_payloads_are_counted_and_skipped(mosquitto: MosquittoServer):
    good = [make_frame(i) for i in range(5)]
    binary = encode_payload(good[0])
    unknown_kind = json.loads(encode_json(good[0]))
    unknown_kind["kind"] = "teleportation"
    bad_payloads = [
        b"\x00\xffgarbage that is no frame at all \x13\x37" * 3,   # garbage
        binary[: len(binary) - 24],                                # truncated binary frame
        json.dumps(unknown_kind).encode(),                         # JSON, unknown kind
        b"",                                                       # empty
        b"{not json",                                              # broken JSON
        b'{"a":' * 50_000,                                         # nested far too deep
    ]
    topic = topic_for(good[0])
    async with collecting(cfg(mosquitto.url, qos=1, client_id="opmon-test-malformed")) as col:
        async with aiomqtt.Client(LOOPBACK, mosquitto.port, identifier="opmon-test-raw") as raw:
            for payload in bad_payloads:
                await raw.publish(topic, payload, qos=1)
            for frame in good:
                await raw.publish(topic, encode_payload(frame), qos=1)
        await col.wait_for(len(good), timeout=15)
        sub = col.sub
        await wait_until(lambda: sub.rejects >= len(bad_payloads), 5, "the rejects")
        assert sub.rejects == len(bad_payloads), sub.last_reject
        assert "nested" in sub.last_reject or "recursion" in sub.last_reject.lower()
        assert col.seqs == list(range(len(good)))
        for got, want in zip(col.frames, good, strict=True):
            assert_same_frame(got, want)
        assert sub.tracker.lost == 0
        assert sub.received == len(good)


# -- 5. amqtt, in process -------------------------------------------------------------------
@pytest.fixture
async def amqtt_broker():
    try:
        from amqtt.broker import Broker
    except Exception as exc:  # noqa: BLE001 - any import problem means: cannot run here
        pytest.skip(f"amqtt cannot be imported on this Python: {exc!r}")
    port = free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    try:
        broker = Broker(config)
        await broker.start()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"amqtt's broker does not start here: {exc!r}")
    try:
        yield f"mqtt://{LOOPBACK}:{port}"
    finally:
        await asyncio.wait_for(broker.shutdown(), 15)


@servers
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("fmt", "qos"), [("binary", 1), ("json", 0)])
async def test_round_trip_amqtt(amqtt_broker: str, fmt: str, qos: int):
    await round_trip(cfg(amqtt_broker, qos=qos, format=fmt),
                     cfg(amqtt_broker, qos=qos, client_id=f"opmon-test-amqtt-{fmt}"), n=100)


# -- TLS with client certificates -----------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tls_material(tmp_path) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=opmon test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt",
                 cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=rogue", "-keyout", "rogue.key", "-out", "rogue.crt", cwd=d)
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


@servers
@pytest.mark.timeout(60)
async def test_tls_with_client_certificates(tmp_path, tls_material: dict[str, Path]):
    _need_mosquitto()
    pki = tls_material
    server = MosquittoServer(tmp_path / "mosquitto-tls", extra=[
        f"cafile {pki['ca_crt']}", f"certfile {pki['server_crt']}",
        f"keyfile {pki['server_key']}", "require_certificate true", "tls_version tlsv1.2"])
    server.start()
    try:
        url = f"mqtts://127.0.0.1:{server.port}"
        tls = {"url": url, "qos": 1, "tls_ca": str(pki["ca_crt"]),
               "tls_cert": str(pki["client_crt"]), "tls_key": str(pki["client_key"])}
        await round_trip(TransportConfig(**tls),
                         TransportConfig(client_id="opmon-test-tls-sub", **tls), n=50)
        # a client whose certificate the broker's CA did not sign never connects
        rogue = TransportConfig(**{**tls, "tls_cert": str(pki["rogue_crt"]),
                                   "tls_key": str(pki["rogue_key"])})
        async with publishing(rogue, close_timeout=0.5) as pub:
            await pub.publish(make_frame(0))
            await asyncio.sleep(2.0)
            assert not pub.connected.is_set()
    finally:
        server.stop()
