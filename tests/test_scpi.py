"""SCPI adapter against a real line-based SCPI peer: an emulated Keithley 2400 SMU served over TCP
on a free loopback port (and over a pseudo-terminal for the serial path), reached through
pyvisa-py; plus the same adapter on pyvisa-sim with a YAML device."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import select
import socket
import socketserver
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.base import WarnLimiter
from adapters.scpi import (
    ReplyError,
    ScpiAdapter,
    ScpiConfig,
    ScpiField,
    parse_error_reply,
    parse_reply,
)
from stream.config import CellSection
from stream.frame import Frame
from stream.node import Node
from stream.sinks import Sink

STREAM = "exp1/cell01/smu"
IDN = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,4711,C32 Oct  4 2010 (opmon test emulator)"
INIT = ["*RST", ":SOUR:FUNC CURR", ":SOUR:CURR 0.00125", ':SENS:FUNC "VOLT"',
        ":FORM:ELEM VOLT,CURR,TIME", ":OUTP ON"]


# -- the emulated instrument --------------------------------------------------------------------
@dataclass
class Reading:
    """One :READ? reply as sent, with the values it carries."""
    reply: bytes
    values: dict[str, float]
    fault: str | None = None

    @property
    def published(self) -> bool:   # what the adapter must publish: good replies and overflows
        return self.fault in (None, "overflow")


@dataclass
class Keithley2400:
    """What a Keithley 2400 answers, one command line at a time. Voltage follows the reading
    counter, current is the programmed source level, TIME the seconds since power-on."""
    commands: list[str] = field(default_factory=list)
    errors: deque[str] = field(default_factory=deque)
    faults: deque[str] = field(default_factory=deque)   # applied to the next :READ? replies
    readings: list[Reading] = field(default_factory=list)
    fault_delay_s: float = 0.0
    down: bool = False                  # no replies: the network is going away
    unanswered: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.source_current = 0.0
        self.elements = ["VOLT", "CURR", "RES", "TIME", "STAT"]

    def published(self, name: str) -> np.ndarray:
        return np.array([r.values[name] for r in self.readings if r.published])

    def handle(self, line: str) -> bytes | None:
        with self.lock:
            self.commands.append(line)
            if self.down:
                self.unanswered.set()
                return None
            return self._answer(line)

    def _answer(self, line: str) -> bytes | None:
        cmd = line.strip().upper()
        head, _, arg = cmd.partition(" ")
        if cmd == "*IDN?":
            return IDN.encode()
        if cmd == "*OPC?":
            return b"1"
        if cmd == "*RST":
            self.reset()
        elif cmd == "*CLS":
            self.errors.clear()
        elif head in (":SOUR:CURR", ":SOUR:CURR:LEV") and arg:
            self.source_current = float(arg)
        elif head == ":FORM:ELEM":
            self.elements = arg.replace(" ", "").split(",")
        elif cmd in (":SYST:ERR?", "SYST:ERR?", ":SYST:ERR:NEXT?"):
            return (self.errors.popleft() if self.errors else '0,"No error"').encode()
        elif cmd == ":READ?":
            return self._read()
        elif head not in (":SOUR:FUNC", ":SENS:FUNC", ":OUTP"):
            self.errors.append('-113,"Undefined header"')
        return None

    def _read(self) -> bytes:
        n = len(self.readings)
        fault = self.faults.popleft() if self.faults else None
        text = {"VOLT": f"{3.0 + 0.5 * math.sin(n / 7):+.6E}",
                "CURR": f"{self.source_current:+.6E}",
                "RES": "+9.910000E+37",
                "TIME": f"{time.monotonic() - self.started:+.6E}",
                "STAT": "+2.150400E+04"}
        if fault == "overflow":
            text["VOLT"] = "+9.900000E+37"
        values = {"voltage": math.nan if fault == "overflow" else float(text["VOLT"]),
                  "current": float(text["CURR"]), "time": float(text["TIME"])}
        reply = ",".join(text[e] for e in self.elements).encode()
        if fault == "short":
            reply = text["VOLT"].encode()
        elif fault == "text":
            reply = f"{text['VOLT']},abc,{text['TIME']}".encode()
        elif fault == "bytes":
            reply = b"\xff\xfe\x01," + reply.split(b",", 1)[1]
        elif fault == "late":
            time.sleep(self.fault_delay_s)
        self.readings.append(Reading(reply, values, fault))
        return reply


def serve_lines(recv: Callable[[], bytes], send: Callable[[bytes], None],
                instrument: Keithley2400) -> None:
    """Answer newline-terminated commands until ``recv`` returns nothing."""
    pending = b""
    while chunk := recv():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            reply = instrument.handle(line.decode("latin-1"))
            if reply is not None:
                send(reply + b"\n")


class SmuServer:
    """The emulated SMU on a TCP port; ``stop`` drops every connection, ``start`` again on the
    same port brings it back (the instrument's state survives, like a network outage)."""

    def __init__(self, port: int, instrument: Keithley2400):
        self.port = port
        self.instrument = instrument
        self.connections = 0
        self._clients: set[socket.socket] = set()
        self._server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._clients.add(self.request)
                owner.connections += 1
                with contextlib.suppress(OSError):
                    serve_lines(lambda: self.request.recv(4096), self.request.sendall,
                                owner.instrument)
                owner._clients.discard(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        for client in list(self._clients):
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        self._server = None


@pytest.fixture
def smu(port: int):
    server = SmuServer(port, Keithley2400())
    server.start()
    yield server
    if server._server is not None:
        server.stop()


def tcp_config(port: int, **params) -> ScpiConfig:
    base = {"resource": f"TCPIP::127.0.0.1::{port}::SOCKET", "expect_idn": "MODEL 2400",
            "init": INIT, "fields": ["voltage", "current", "time"], "poll_hz": 50.0,
            "block_s": 0.1, "timeout_s": 0.3, "error_check_s": 0.0,
            "reconnect_min_s": 0.1, "reconnect_max_s": 0.4}
    return ScpiConfig.model_validate({**base, **params})


async def run_until(adapter: ScpiAdapter, done: Callable[[list[Frame]], bool],
                    timeout_s: float = 15.0) -> list[Frame]:
    """Consume the adapter's frames until ``done(frames)``, then cancel it as a node would."""
    frames: list[Frame] = []

    async def consume() -> None:
        async for frame in adapter.frames():
            frames.append(frame.validate())

    task = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(timeout_s):
            while not done(frames):
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return frames


def published(frames: list[Frame], name: str) -> np.ndarray:
    return np.concatenate([f.arrays[name] for f in frames])


def assert_prefix(got: np.ndarray, sent: np.ndarray) -> None:
    """The adapter published exactly what the instrument sent, in order, nothing twice (it may
    stop before the last replies)."""
    assert 0 < len(got) <= len(sent)
    np.testing.assert_array_equal(got, sent[:len(got)])


def assert_on_host_time_base(frame: Frame) -> None:
    """The estimated offset is the lower envelope of receive - instrument time, so the corrected
    start is never after its reply arrived (within the float offset's 1 us resolution) and not
    long before."""
    lag_ns = frame.meta["clock"]["host_receive_ns"] - frame.t0_ns
    assert -1_000 <= lag_ns < 200_000_000


# -- over TCP: values, time base, init -------------------------------------------------------------
@pytest.mark.parametrize("time_field", [None, "time"])
async def test_readings_over_tcp_match_the_instrument(smu: SmuServer, port: int,
                                                      time_field: str | None):
    fields = ["voltage", "current", "time" if time_field else "_"]
    adapter = ScpiAdapter(STREAM, tcp_config(port, fields=fields, time_field=time_field,
                                             final=[":OUTP OFF"]))
    before_ns = time.time_ns()
    frames = await run_until(adapter, lambda f: len(f) >= 6)
    after_ns = time.time_ns()
    inst = smu.instrument
    for _ in range(100):   # the final command, sent as the adapter stopped
        if inst.commands[-1] == ":OUTP OFF":
            break
        await asyncio.sleep(0.02)
    assert inst.commands[-1] == ":OUTP OFF" and inst.commands.count(":OUTP OFF") == 1

    assert_prefix(published(frames, "voltage"), inst.published("voltage"))
    np.testing.assert_array_equal(published(frames, "current"), 0.00125)  # set by init
    # init sent in order, after the identity and error-queue checks, each followed by SYST:ERR?
    sent_init = [c for c in inst.commands if c in INIT]
    assert sent_init == INIT
    assert inst.commands.index("*IDN?") < inst.commands.index("*RST")
    assert inst.commands[inst.commands.index(":SOUR:CURR 0.00125") + 1] == ":SYST:ERR?"
    assert adapter.rejects == 0 and adapter.stats["instrument_errors"] == 0

    for seq, frame in enumerate(frames):
        assert (frame.stream, frame.kind, frame.seq) == (STREAM, "echem", seq)
        assert set(frame.arrays) == {"t", "voltage", "current"}
        assert frame.units == {"t": "s", "voltage": "V", "current": "A"}
        assert frame.meta["idn"] == IDN
        assert 1 <= frame.n_samples <= 5
        steps = np.diff(frame.arrays["t"])   # instrument timestamps: 1 ms resolution
        assert np.all(steps > 0) if time_field is None else np.all(steps >= 0)
    starts = [f.t0_ns for f in frames]
    assert starts == sorted(starts)
    clock = frames[0].meta["clock"]
    if time_field is None:   # host time of each query
        assert clock["mode"] == "host"
        assert before_ns <= frames[0].t0_ns <= frames[-1].t0_ns <= after_ns
    else:                    # the instrument's TIME element, offset estimated
        assert clock["mode"] == "estimate"
        times = inst.published("time")[:sum(f.n_samples for f in frames)]
        np.testing.assert_allclose(published(frames, "t") + np.repeat(
            [f.meta["clock"]["instrument_t0_ns"] * 1e-9 for f in frames],
            [f.n_samples for f in frames]), times, rtol=0, atol=1e-9)
        assert clock["instrument_t0_ns"] == round(times[0] * 1e9)
        for frame in frames:
            assert_on_host_time_base(frame)


async def test_instrument_clock_restart_restarts_the_estimate(smu: SmuServer, port: int):
    inst = smu.instrument
    inst.started -= 1000.0   # the SMU has been on for 1000 s; then its timestamp is reset
    adapter = ScpiAdapter(STREAM, tcp_config(port, time_field="time"))
    reset_at: list[int] = []

    def reset_then_wait(frames: list[Frame]) -> bool:
        if len(frames) >= 3 and not reset_at:
            inst.started = time.monotonic()
            reset_at.append(len(inst.readings))
        return bool(reset_at) and sum(f.n_samples for f in frames) >= reset_at[0] + 10

    frames = await run_until(adapter, reset_then_wait)
    assert_prefix(published(frames, "voltage"), inst.published("voltage"))
    raw_t0 = [f.meta["clock"]["instrument_t0_ns"] * 1e-9 for f in frames]
    assert raw_t0[0] > 1000 and raw_t0[-1] < 10      # both clocks seen, no block spans both
    for frame in frames:   # on the host time base throughout: the old offset was dropped
        assert_on_host_time_base(frame)
    # non-decreasing: the instrument's timestamps have 1 ms resolution at 1000 s
    assert all(np.all(np.diff(f.arrays["t"]) >= 0) for f in frames)


class CollectSink(Sink):
    type_name = "collect"

    def __init__(self) -> None:
        super().__init__(self.Config())
        self.frames: list[Frame] = []

    async def write(self, frame: Frame) -> None:
        self.frames.append(frame)


async def test_node_stop_publishes_every_reading(smu: SmuServer, port: int):
    """When the node stops, the partial block is still published: every reading the instrument
    sent reaches the sink, none lost at the stop."""
    adapter = ScpiAdapter(STREAM, tcp_config(port, block_s=0.5))   # 25 samples per block
    sink = CollectSink()
    node = Node("exp1", [adapter], [], [sink], handle_signals=False)
    run = asyncio.create_task(node.run())
    async with asyncio.timeout(10):
        while not any(f.kind == "echem" for f in sink.frames):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)   # a few samples into the next block
        node.stop()
        stats = await run
    frames = [f for f in sink.frames if f.kind == "echem"]
    np.testing.assert_array_equal(published(frames, "voltage"),
                                  smu.instrument.published("voltage"))
    assert 0 < frames[-1].n_samples < 25
    assert stats[f"source.{adapter.name}"]["rejects"] == 0


# -- bad input ------------------------------------------------------------------------------------
async def test_malformed_replies_are_named_counted_and_skipped(smu: SmuServer, port: int):
    inst = smu.instrument
    inst.faults.extend([None] * 5 + ["short", None, "text", "bytes", None, "overflow"])
    adapter = ScpiAdapter(STREAM, tcp_config(port))
    frames = await run_until(adapter, lambda f: sum(x.n_samples for x in f) >= 15)

    assert_prefix(published(frames, "voltage"), inst.published("voltage"))
    assert adapter.rejects == 3 and adapter.stats["overflows"] == 1
    where = f"{STREAM}: TCPIP::127.0.0.1::{port}::SOCKET ':READ?': "
    short, text, garbage = adapter.errors
    assert short.startswith(where) and "has 1 field(s), expected 3" in short
    assert text.startswith(where) and "field 2 ('current'): not a number: 'abc'" in text
    assert garbage.startswith(where) and "field 1 ('voltage'): not a number" in garbage
    assert np.isnan(published(frames, "voltage")).sum() == 1   # the overflow


async def test_instrument_error_queue_is_reported(smu: SmuServer, port: int):
    inst = smu.instrument
    init = [*INIT, ":SOUR:CURR:BOGUS 1"]
    adapter = ScpiAdapter(STREAM, tcp_config(port, init=init, error_check_s=0.1))

    injected: list[int] = []

    def inject_then_wait(frames: list[Frame]) -> bool:
        if len(frames) >= 2 and not injected:
            inst.errors.append('-222,"Data out of range"')
            injected.append(len(frames))
        return adapter.stats["instrument_errors"] == 2 and len(frames) >= injected[0] + 4

    frames = await run_until(adapter, inject_then_wait)
    assert adapter.stats["instrument_errors"] == 2 and adapter.rejects == 2
    undefined, out_of_range = adapter.errors
    assert "':SYST:ERR?' after init command ':SOUR:CURR:BOGUS 1'" in undefined
    assert undefined.endswith("instrument error -113: Undefined header")
    assert "while polling" in out_of_range
    assert out_of_range.endswith("instrument error -222: Data out of range")
    assert_prefix(published(frames, "voltage"), inst.published("voltage"))   # polling went on


async def test_timeout_is_counted_and_the_late_reply_discarded(smu: SmuServer, port: int):
    inst = smu.instrument
    inst.fault_delay_s = 0.45   # the adapter waits 0.3 s
    inst.faults.extend([None] * 6 + ["late"])
    adapter = ScpiAdapter(STREAM, tcp_config(port))
    frames = await run_until(adapter, lambda f: sum(x.n_samples for x in f) >= 15)

    assert adapter.stats["timeouts"] == 1 and adapter.stats["stale_replies"] == 1
    assert adapter.rejects == 1 and "':READ?': no reply within 0.3 s" in adapter.errors[0]
    # the late reading is not published, and nothing after it is shifted by one
    assert_prefix(published(frames, "voltage"), inst.published("voltage"))
    assert adapter.stats["reconnects"] == 0


async def test_server_restart_reconnects_and_resumes(smu: SmuServer, port: int):
    inst = smu.instrument
    adapter = ScpiAdapter(STREAM, tcp_config(port, stale_s=0.5))
    restarted: list[int] = []

    async def outage() -> None:
        while len(inst.readings) < 10:
            await asyncio.sleep(0.02)
        inst.down = True                 # replies stop; the next query stays unanswered,
        await asyncio.to_thread(inst.unanswered.wait, 5)   # so every reply sent was read
        smu.stop()
        await asyncio.sleep(1.0)         # refused connections meanwhile
        assert adapter.stats["connect_failures"] >= 1
        inst.down = False
        restarted.append(len(inst.readings))
        smu.start()

    task = asyncio.create_task(outage())
    frames = await run_until(adapter, lambda f: bool(restarted) and
                             sum(x.n_samples for x in f) >= restarted[0] + 10)
    await task
    assert smu.connections == 2
    assert inst.commands.count("*RST") == 2                     # init replayed
    assert adapter.stats["reconnects"] == 1 and adapter.stats["stale"] == 1
    assert adapter.counters()["stale_now"] == 0
    assert_prefix(published(frames, "voltage"), inst.published("voltage"))
    assert [f.seq for f in frames] == list(range(len(frames)))


async def test_wrong_instrument_is_refused(smu: SmuServer, port: int):
    adapter = ScpiAdapter(STREAM, tcp_config(port, expect_idn="MODEL 6517"))
    frames = await run_until(adapter, lambda f: adapter.stats["connect_failures"] >= 2)
    assert frames == [] and ":READ?" not in smu.instrument.commands
    assert "'*IDN?': reply" in adapter.errors[0] and "does not contain 'MODEL 6517'" in \
        adapter.errors[0]


async def test_unknown_backend_fails_the_source():
    adapter = ScpiAdapter(STREAM, ScpiConfig(backend="@nonexistent"))
    with pytest.raises(ValueError, match="nonexistent"):
        await run_until(adapter, lambda f: False, timeout_s=5.0)


async def test_unreachable_instrument_backs_off(port: int):
    adapter = ScpiAdapter(STREAM, tcp_config(port, stale_s=0.2))
    await run_until(adapter, lambda f: adapter.stats["connect_failures"] >= 3)
    assert adapter.stats["stale"] == 1 and adapter.counters()["connected"] == 0


# -- serial: the same instrument on a pseudo-terminal ------------------------------------------------
async def test_serial_resource_over_a_pty():
    if not hasattr(os, "openpty"):
        pytest.skip("needs a pseudo-terminal (POSIX)")
    controller, device = os.openpty()
    inst = Keithley2400()
    stop = threading.Event()

    def recv() -> bytes:
        while not stop.is_set():
            if select.select([controller], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    return os.read(controller, 4096)
        return b""

    server = threading.Thread(target=serve_lines,
                              args=(recv, lambda b: os.write(controller, b), inst), daemon=True)
    server.start()
    config = tcp_config(0, resource=f"ASRL{os.ttyname(device)}::INSTR",
                        serial={"baud_rate": 19200, "flow_control": "none"})
    try:
        frames = await run_until(ScpiAdapter(STREAM, config), lambda f: len(f) >= 3)
    finally:
        stop.set()
        server.join()
        os.close(controller)
        os.close(device)
    assert_prefix(published(frames, "voltage"), inst.published("voltage"))
    np.testing.assert_array_equal(published(frames, "current"), 0.00125)


# -- pyvisa-sim: the same adapter on a YAML device ------------------------------------------------
SIM_YAML = """\
spec: "1.1"
devices:
  smu:
    eom:
      ASRL INSTR: {q: "\\n", r: "\\n"}
    error:
      error_queue:
        - q: ":SYST:ERR?"
          default: '0,"No error"'
          command_error: '-113,"Undefined header"'
    dialogues:
      - {q: "*IDN?", r: "KEITHLEY INSTRUMENTS INC.,MODEL 2450,SIM,1.0"}
      - {q: "*OPC?", r: "1"}
      - {q: "*RST"}
      - {q: ":READ?", r: "+3.712500E+00,-2.500000E-03"}
resources:
  ASRL1::INSTR:
    device: smu
"""


async def test_pyvisa_sim_device(tmp_path: Path):
    yaml_path = tmp_path / "smu.yaml"
    yaml_path.write_text(SIM_YAML)
    config = ScpiConfig(backend=f"{yaml_path}@sim", resource="ASRL1::INSTR",
                        expect_idn="MODEL 2450", init=["*RST", ":SOUR:WRONG"],
                        poll_hz=100.0, block_s=0.05, timeout_s=0.2)
    adapter = ScpiAdapter(STREAM, config)
    frames = await run_until(adapter, lambda f: len(f) >= 3)
    reply = re.search(r':READ\?", r: "(.*)"', SIM_YAML).group(1).split(",")
    np.testing.assert_array_equal(published(frames, "voltage"), float(reply[0]))
    np.testing.assert_array_equal(published(frames, "current"), float(reply[1]))
    assert frames[0].meta["idn"].endswith("MODEL 2450,SIM,1.0")
    assert adapter.errors == [f"{STREAM}: ASRL1::INSTR ':SYST:ERR?' after init command "
                              "':SOUR:WRONG': instrument error -113: Undefined header"]


# -- parsing, fuzzed -------------------------------------------------------------------------------
FIELDS = [ScpiField(name="voltage", unit="V"), ScpiField(name="_"),
          ScpiField(name="current", unit="A", scale=1e-3)]


@given(st.text(max_size=60))
def test_any_reply_parses_or_names_its_fault(reply: str):
    try:
        values = parse_reply(reply, FIELDS)
    except ReplyError as exc:
        assert "field" in str(exc)
    else:
        assert len(values) == 2


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(finite, finite, st.sampled_from(["{:+.6E}", "{!r}", "{:.3f}"]), st.booleans())
def test_numbers_round_trip(voltage: float, current: float, fmt: str, units: bool):
    suffix = "NADC" if units else ""
    reply = ",".join(fmt.format(x) + suffix for x in (voltage, 0.0, current)) + "\r\n"
    got = parse_reply(reply, FIELDS, strip_units=units)
    assert got == [float(fmt.format(voltage)), float(fmt.format(current)) * 1e-3]


@given(st.text(max_size=3).filter(lambda s: s.strip() and not s.strip()[0].isdigit()
                                  and "," not in s))
def test_unit_suffix_without_strip_units_is_refused(suffix: str):
    with pytest.raises(ReplyError, match="field 1 \\('voltage'\\): not a number"):
        parse_reply(f"1.5{suffix},2,3", FIELDS)


@given(st.integers(-999, 999), st.text(alphabet=st.characters(blacklist_characters='"\r\n'),
                                       max_size=40))
def test_error_replies(code: int, message: str):
    assert parse_error_reply(f'{code:+d},"{message}"\n') == (code, message)


def test_garbled_error_reply_is_refused():
    with pytest.raises(ReplyError, match="error-queue reply 'No error'"):
        parse_error_reply("No error")


# -- config ----------------------------------------------------------------------------------------
def test_config_rules():
    assert ScpiConfig().clock.mode == "host"
    assert ScpiConfig(fields=["voltage", "t_s"], time_field="t_s").clock.mode == "estimate"
    assert ScpiConfig(clock={"offset_s": 1.5}).clock.offset_s == 1.5
    with pytest.raises(ValidationError, match="convert with scale"):
        ScpiConfig(fields=[{"name": "current", "unit": "mA"}])
    with pytest.raises(ValidationError, match="time_field 'time' is not one of"):
        ScpiConfig(time_field="time")
    with pytest.raises(ValidationError, match="kind 'pressure' needs"):
        ScpiConfig(kind="pressure")
    with pytest.raises(ValidationError, match="duplicate"):
        ScpiConfig(fields=["voltage", "voltage"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        ScpiConfig(pollhz=5)


def test_readme_fragment_examples_are_valid_configs():
    doc = Path(__file__).resolve().parents[1] / "adapters" / "scpi.md"
    blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)
    cells = [CellSection.model_validate(cell) for block in blocks
             for cell in tomllib.loads(block).get("cells", [])]
    instruments = [inst for cell in cells for inst in cell.instruments if inst.adapter == "scpi"]
    assert len(instruments) >= 3
    for inst in instruments:
        ScpiConfig.model_validate(inst.params)


def test_repeated_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture):
    # the adapter's limiter (adapters.base.WarnLimiter with ScpiAdapter's reject_burst = 1)
    limited = WarnLimiter(logging.getLogger("test_scpi"), ScpiAdapter.reject_burst, 0.2)
    for i in range(5):
        limited.warn(f"timeout {i}", "timeout")
    time.sleep(0.25)
    limited.warn("timeout 5", "timeout")
    assert [r.getMessage() for r in caplog.records] == [
        "timeout 0", "timeout 5 (4 similar message(s) held back)"]
