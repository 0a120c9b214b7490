"""Modbus pressure adapter against pymodbus's own servers on loopback: register maps in every type,
byte and word order (encoded here with struct), holding vs input tables, fewest requests, a value
followed over polls, exception responses, short responses and NaN/infinity sent by the device, a
server stopped and restarted on the same port, stale values, Modbus RTU over a pty null-modem (frames and CRCs checked byte by
byte) and through a socket:// gateway, and config errors naming the key."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
import tty
from collections.abc import Callable
from contextlib import aclosing

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus import FramerType
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.modbus import (
    ModbusPressureAdapter,
    ModbusPressureConfig,
    RegisterChannel,
    decode_registers,
    plan_requests,
)
from adapters.timebase import ClockModel
from stream.config import format_validation_error
from stream.frame import Frame

STREAM = "exp1/cell01/pressure"
TABLE_SIZE = 64
FILL = 0x1234            # unmapped registers: reading the wrong table or address shows
PA_PER = {"Pa": 1.0, "kPa": 1e3, "bar": 1e5, "mbar": 100.0, "psi": 6894.757293168361}
STRUCT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
COMBOS = [(t, b, w) for t in STRUCT for b in ("big", "little")
          for w in (("big", "little") if struct.calcsize(STRUCT[t]) == 4 else ("big",))]


def encode(value: float, type_: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Registers (lowest address first) as a device with these orders stores ``value``."""
    data = struct.pack(STRUCT[type_], value)                 # most significant byte first
    words = [data[i:i + 2] for i in range(0, len(data), 2)]  # most significant word first
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class Device:
    """A Modbus device served by pymodbus, with separate holding and input tables. The test
    keeps its own copy of the tables, so a restarted server starts from the last values."""

    def __init__(self, unit_id: int = 1):
        self.unit_id = unit_id
        self.tables = {"holding": [FILL] * TABLE_SIZE, "input": [FILL] * TABLE_SIZE}
        self.requests: list[tuple[int, int, int]] = []  # (function code, address, count)
        self.request_ns: list[int] = []                 # host time each request arrived
        self.short_responses = False
        self.server: ModbusTcpServer | ModbusSerialServer | None = None

    def _sim_device(self) -> SimDevice:
        def registers(table: str) -> list[SimData]:
            return [SimData(0, values=list(self.tables[table]), datatype=DataType.REGISTERS)]

        def bits() -> list[SimData]:
            return [SimData(0, values=False, datatype=DataType.BITS)]

        return SimDevice(self.unit_id, simdata=(bits(), bits(), registers("holding"),
                                                registers("input")))

    def _trace_pdu(self, sending: bool, pdu):
        if not sending and isinstance(pdu, ReadHoldingRegistersRequest):  # input requests too
            self.requests.append((pdu.function_code, pdu.address, pdu.count))
            self.request_ns.append(time.time_ns())
        if (sending and self.short_responses and isinstance(pdu, ReadHoldingRegistersResponse)
                and pdu.function_code == 3 and len(pdu.registers) > 1):  # holding only
            pdu.registers = pdu.registers[:-1]
        return pdu

    async def start_tcp(self, port: int, framer: FramerType = FramerType.SOCKET) -> None:
        self.server = ModbusTcpServer(self._sim_device(), address=("127.0.0.1", port),
                                      framer=framer, trace_pdu=self._trace_pdu)
        await self.server.serve_forever(background=True)

    async def start_serial(self, path: str) -> None:
        self.server = ModbusSerialServer(self._sim_device(), port=path, baudrate=19200,
                                         framer=FramerType.RTU, trace_pdu=self._trace_pdu)
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def write(self, table: str, address: int, registers: list[int]) -> None:
        self.tables[table][address:address + len(registers)] = registers
        if self.server is not None:
            code = 16 if table == "holding" else 4
            assert await self.server.context.async_setValues(self.unit_id, code, address,
                                                             registers) is None


class Run:
    """The adapter's frames() in a task; frames are validated and kept in order."""

    def __init__(self, adapter: ModbusPressureAdapter):
        self.adapter = adapter
        self.frames: list[Frame] = []
        self._cursor = 0
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async with aclosing(self.adapter.frames()) as frames:
            async for frame in frames:
                self.frames.append(frame.validate())
                self._arrived.set()

    async def next(self, predicate: Callable[[Frame], bool] = lambda f: True,
                   timeout: float = 10.0) -> Frame:
        """The next frame not yet looked at that satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                while self._cursor < len(self.frames):
                    frame = self.frames[self._cursor]
                    self._cursor += 1
                    if predicate(frame):
                        return frame
                self._arrived.clear()
                await self._arrived.wait()

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def adapter(port: int, channels: list[dict], **params) -> ModbusPressureAdapter:
    config = {"host": "127.0.0.1", "port": port, "channels": channels, "poll_hz": 50.0,
              "block_s": 0.04, "timeout_s": 0.3, "retries": 0, "reconnect_min_s": 0.05,
              "reconnect_max_s": 0.2, **params}
    return ModbusPressureAdapter(STREAM, ModbusPressureConfig.model_validate(config))


def published(raw: float, ch: dict) -> float:
    return (raw * ch.get("scale", 1.0) + ch.get("offset", 0.0)) * PA_PER[ch.get("unit", "Pa")]


# -- decoding and request planning (pure) ------------------------------------------------------

@given(st.sampled_from(COMBOS), st.data())
def test_decode_matches_struct_encoding(combo, data) -> None:
    type_, byte_order, word_order = combo
    if type_ == "float32":
        value = data.draw(st.floats(width=32, allow_nan=False))
    else:
        bits = struct.calcsize(STRUCT[type_]) * 8
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if type_[0] == "i" else (0, 2**bits - 1)
        value = data.draw(st.integers(lo, hi))
    registers = encode(value, type_, byte_order, word_order)
    assert decode_registers(registers, type_, byte_order, word_order) == value


@st.composite
def register_maps(draw) -> list[RegisterChannel]:
    channels, address = [], {"holding": 0, "input": 0}
    for i in range(draw(st.integers(1, 40))):
        function = draw(st.sampled_from(["holding", "input"]))
        type_ = draw(st.sampled_from(list(STRUCT)))
        start = address[function] + draw(st.integers(0, 3))
        channels.append(RegisterChannel(name="pressure" if i == 0 else f"c{i}", address=start,
                                        function=function, type=type_))
        address[function] = start + struct.calcsize(STRUCT[type_]) // 2
    return channels


@given(register_maps(), st.integers(2, 125), st.integers(0, 3))
def test_plan_covers_every_channel_in_fewest_reads(channels, max_count, max_gap) -> None:
    requests = plan_requests(channels, max_count, max_gap)
    covered = sorted(i for req in requests for i, _ in req.channels)
    assert covered == list(range(len(channels)))
    for req in requests:
        assert 1 <= req.count <= max_count
        for i, offset in req.channels:
            ch = channels[i]
            assert ch.function == req.function and ch.address == req.address + offset
            assert offset + ch.width <= req.count
    for a, b in zip(requests, requests[1:], strict=False):  # no two neighbours could be one
        if a.function == b.function:
            b_end = b.address + b.count
            assert b.address - (a.address + a.count) > max_gap or b_end - a.address > max_count


# -- against a pymodbus TCP server ---------------------------------------------------------------

async def test_every_type_and_order_from_holding_and_input_tables(port: int) -> None:
    device = Device()
    channels = [{"name": "pressure", "address": 0, "type": "float32", "unit": "mbar"}]
    await device.write("holding", 0, encode(1013.25, "float32"))
    expected = {"pressure": published(float(np.float32(1013.25)), channels[0])}
    next_address = {"holding": 2, "input": 0}
    units = ["Pa", "kPa", "bar", "mbar", "psi"]
    for k, (type_, byte_order, word_order) in enumerate(COMBOS):
        table = ("holding", "input")[k % 2]
        raw = {"float32": -2345.678, "int16": -12345, "uint16": 54321, "int32": -123456789,
               "uint32": 3_000_000_123}[type_]
        ch = {"name": f"{type_}_{byte_order}_{word_order}", "address": next_address[table],
              "function": table, "type": type_, "byte_order": byte_order,
              "word_order": word_order, "scale": (1.0, 0.1, 0.01, 2.5)[k % 4],
              "offset": (0.0, 5.0, -1.5)[k % 3], "unit": units[k % len(units)]}
        registers = encode(raw, type_, byte_order, word_order)
        await device.write(table, ch["address"], registers)
        next_address[table] += len(registers)
        channels.append(ch)
        expected[ch["name"]] = published(float(np.float32(raw)) if type_ == "float32" else raw,
                                         ch)
    await device.start_tcp(port)
    run = Run(adapter(port, channels, block_s=0.1))
    try:
        frames = [await run.next(), await run.next()]
    finally:
        await run.stop()
        await device.stop()
    for frame in frames:
        assert frame.kind == "pressure" and frame.stream == STREAM
        assert set(frame.units.values()) == {"s", "Pa"}
        for name, value in expected.items():
            np.testing.assert_allclose(frame.arrays[name], value, rtol=1e-12, err_msg=name)
        assert frame.meta["failed"] == dict.fromkeys(expected, 0)
        assert frame.meta["stale"] is False
    # one read per table and poll, covering exactly the mapped registers
    assert set(device.requests) == {(3, 0, next_address["holding"]),
                                    (4, 0, next_address["input"])}
    assert len(device.requests) >= 2 * sum(f.n_samples for f in frames)
    assert run.adapter.rejects == 0


async def test_value_followed_over_polls_blocks_and_time_base(port: int) -> None:
    device = Device()
    temperature = {"name": "temperature", "address": 2, "type": "int16", "scale": 0.1,
                   "unit": "degC"}
    channels = [{"name": "pressure", "address": 0, "type": "int32", "word_order": "little",
                 "unit": "Pa"}, temperature]
    await device.write("holding", 2, encode(253, "int16"))
    written = [101_325, 101_400, 99_870, 150_000, -5, 101_325]
    await device.write("holding", 0, encode(written[0], "int32", word_order="little"))
    await device.start_tcp(port)
    run = Run(adapter(port, channels, poll_hz=50.0, block_s=0.1))
    try:
        for value in written[1:]:
            await run.next(lambda f: np.isfinite(f.arrays["pressure"]).all())
            await device.write("holding", 0, encode(value, "int32", word_order="little"))
            await run.next(lambda f, v=value: f.arrays["pressure"][-1] == v)
    finally:
        await run.stop()
        await device.stop()
    pressure = np.concatenate([f.arrays["pressure"] for f in run.frames])
    changes = np.flatnonzero(np.diff(pressure)) + 1
    followed = pressure[np.r_[0, changes]]
    assert followed.tolist() == written  # every value once, in order, nothing in between
    np.testing.assert_allclose(np.concatenate([f.arrays["temperature"] for f in run.frames]),
                               25.3, rtol=1e-12)
    assert [f.seq for f in run.frames] == list(range(len(run.frames)))
    for frame in run.frames:
        assert frame.n_samples == 5
        assert frame.units == {"t": "s", "pressure": "Pa", "temperature": "degC"}
        assert frame.arrays["t"][0] == 0 and np.all(np.diff(frame.arrays["t"]) > 0)
        clock = frame.meta["clock"]
        assert clock["mode"] == "host" and frame.t0_ns == clock["host_receive_ns"]
    # one read per poll: sample k is stamped inside its poll, so after request k-1 arrived at
    # the server and before request k+1 was sent
    sample_ns = np.concatenate([f.times_ns() for f in run.frames])
    n = len(sample_ns)
    arrived = np.array(device.request_ns)
    assert n <= len(arrived) <= n + 1  # the run may stop with one poll in flight
    assert np.all(sample_ns[1:] > arrived[:n - 1]) and np.all(sample_ns[:-1] < arrived[1:n])


async def test_exception_and_short_responses_are_counted_and_polling_goes_on(port: int) -> None:
    device = Device()
    channels = [{"name": "pressure", "address": 0, "unit": "bar"},
                {"name": "aux", "address": 1000, "type": "uint16", "unit": "V"},
                {"name": "flow", "address": 4, "function": "input", "type": "float32",
                 "unit": "%"},
                {"name": "p2", "address": 6, "function": "input", "type": "float32"},
                {"name": "p3", "address": 8, "function": "input", "type": "float32"}]
    await device.write("holding", 0, encode(1.5, "float32"))
    # the device's own error signals (Keller: NaN for a channel error, +-inf for over/underflow)
    await device.write("input", 4, encode(42.0, "float32") + encode(math.nan, "float32")
                       + encode(-math.inf, "float32"))
    await device.start_tcp(port)
    run = Run(adapter(port, channels))
    try:
        frames = [await run.next() for _ in range(4)]
        device.short_responses = True
        await run.next(lambda f: f.meta["failed"]["pressure"] > 0)
        short = await run.next()
        device.short_responses = False
        recovered = await run.next(lambda f: f.meta["failed"]["pressure"] == 0)
    finally:
        await run.stop()
        await device.stop()
    for frame in frames:
        np.testing.assert_array_equal(frame.arrays["pressure"], 1.5e5)
        np.testing.assert_array_equal(frame.arrays["flow"], 42.0)
        assert np.isnan(frame.arrays["aux"]).all()
        n = frame.n_samples
        assert frame.meta["failed"] == {"pressure": 0, "aux": n, "flow": 0, "p2": n, "p3": n}
        assert np.isnan(frame.arrays["p2"]).all() and np.isnan(frame.arrays["p3"]).all()
        assert frame.meta["stale"] is True
    errors = run.adapter.errors
    assert any(f"127.0.0.1:{port} unit 1 holding register 1000 (aux): Modbus exception 2 "
               "(ILLEGAL_ADDRESS)" in e for e in errors)
    assert run.adapter.exceptions >= 4 * 2 and run.adapter.invalid_values >= 4 * 2 * 2
    assert any("input registers 6-7 (p2): device sent nan" in e for e in errors)
    assert any("input registers 8-9 (p3): device sent -inf" in e for e in errors)
    # a response one register short: the read is refused, named, counted; the rest still reads
    assert np.isnan(short.arrays["pressure"]).all()
    np.testing.assert_array_equal(short.arrays["flow"], 42.0)
    assert any("holding registers 0-1 (pressure): response has 1 registers, expected 2" in e
               for e in errors)
    assert run.adapter.read_errors >= 1
    np.testing.assert_array_equal(recovered.arrays["pressure"], 1.5e5)
    counted = run.adapter.counters()
    assert counted["rejects"] == sum(counted[k] for k in ("exceptions", "read_errors",
                                                          "invalid_values"))


async def test_server_stopped_and_restarted_on_the_same_port(port: int) -> None:
    device = Device()
    channels = [{"name": "pressure", "address": 10, "unit": "kPa"}]
    await device.write("holding", 10, encode(100.0, "float32"))
    await device.start_tcp(port)
    run = Run(adapter(port, channels, block_s=0.1))
    try:
        before = await run.next(lambda f: np.isfinite(f.arrays["pressure"]).all())
        await device.stop()
        outage = await run.next(lambda f: f.meta["failed_polls"] == f.n_samples)
        rejects_during = run.adapter.rejects
        await asyncio.sleep(0.6)  # several reconnect attempts with backoff
        await device.write("holding", 10, encode(250.0, "float32"))
        await device.start_tcp(port)
        after = await run.next(lambda f: np.isfinite(f.arrays["pressure"]).any())
        steady = await run.next()
    finally:
        await run.stop()
        await device.stop()
    np.testing.assert_array_equal(before.arrays["pressure"], 100e3)
    assert np.isnan(outage.arrays["pressure"]).all()
    assert outage.meta["stale"] is True and outage.meta["failed"]["pressure"] == outage.n_samples
    assert rejects_during >= 1
    good = after.arrays["pressure"][np.isfinite(after.arrays["pressure"])]
    np.testing.assert_array_equal(good, 250e3)
    np.testing.assert_array_equal(steady.arrays["pressure"], 250e3)
    assert steady.meta["failed"] == {"pressure": 0}
    assert run.adapter.reconnects == 1
    connect_failures = [e for e in run.adapter.errors if "connect failed" in e]
    assert connect_failures and all(f"127.0.0.1:{port} unit 1" in e for e in connect_failures)
    # the backoff spaces the attempts: fewer connects than polls that found the link down
    assert len(connect_failures) < run.adapter.failed_polls / 2
    assert [f.seq for f in run.frames] == list(range(len(run.frames)))  # the frames kept coming


@pytest.mark.parametrize("stale_nan", [False, True])
async def test_registers_that_stop_changing_are_stale(port: int, stale_nan: bool) -> None:
    device = Device()
    channels = [{"name": "pressure", "address": 0, "unit": "mbar"},
                {"name": "temperature", "address": 2, "type": "int16", "scale": 0.1,
                 "unit": "degC", "stale": False}]
    await device.write("holding", 0, encode(980.0, "float32") + encode(215, "int16"))
    await device.start_tcp(port)
    run = Run(adapter(port, channels, poll_hz=40.0, block_s=0.1, stale_s=0.3,
                      stale_nan=stale_nan))
    try:
        fresh = await run.next()
        frozen = await run.next(lambda f: f.meta["frozen"]["pressure"] == f.n_samples)
        await device.write("holding", 0, encode(990.0, "float32"))
        moving = await run.next(lambda f: f.arrays["pressure"][0] == 99_000.0)
    finally:
        await run.stop()
        await device.stop()
    assert fresh.meta["frozen"]["pressure"] == 0
    np.testing.assert_array_equal(fresh.arrays["pressure"], 98_000.0)
    assert frozen.meta["stale"] is True and frozen.meta["failed"]["pressure"] == 0
    if stale_nan:
        assert np.isnan(frozen.arrays["pressure"]).all()
    else:
        np.testing.assert_array_equal(frozen.arrays["pressure"], 98_000.0)
    assert moving.meta["frozen"]["pressure"] == 0
    assert all(f.meta["frozen"]["temperature"] == 0 for f in run.frames)
    stale = [e for e in run.adapter.errors if "stale value" in e]
    assert len(stale) == 1  # once per stale stretch, not per sample
    assert f"127.0.0.1:{port} unit 1 holding registers 0-1 (pressure)" in stale[0]
    assert "unchanged for 0.3 s" in stale[0]


async def test_stale_check_off_with_zero(port: int) -> None:
    device = Device()
    await device.write("holding", 0, encode(1.0, "float32"))
    await device.start_tcp(port)
    run = Run(adapter(port, [{"name": "pressure", "unit": "bar"}], stale_s=0))
    try:
        frames = [await run.next() for _ in range(3)]
    finally:
        await run.stop()
        await device.stop()
    assert all(f.meta["frozen"] == {"pressure": 0} and not f.meta["stale"] for f in frames)
    assert run.adapter.rejects == 0


async def test_stale_clock_restarts_after_an_outage(port: int) -> None:
    device = Device()
    await device.write("holding", 0, encode(1.0, "float32"))
    await device.start_tcp(port)
    run = Run(adapter(port, [{"name": "pressure", "unit": "bar"}], block_s=0.1, stale_s=0.4))
    try:
        await run.next(lambda f: np.isfinite(f.arrays["pressure"]).all())
        await device.stop()
        await run.next(lambda f: f.meta["failed_polls"] == f.n_samples)
        await asyncio.sleep(0.5)  # longer than stale_s, registers unchanged meanwhile
        await device.start_tcp(port)
        back = await run.next(lambda f: np.isfinite(f.arrays["pressure"]).all())
        frozen = await run.next(lambda f: f.meta["frozen"]["pressure"] > 0)
    finally:
        await run.stop()
        await device.stop()
    assert back.meta["frozen"]["pressure"] == 0  # unchanged over the outage is not stale
    assert frozen.seq > back.seq  # ... it is once the value is seen unchanged for stale_s


# -- Modbus RTU ---------------------------------------------------------------------------------

class NullModem:
    """Two pseudo-terminals joined by a byte pump, like a null-modem cable between two serial
    ports; the traffic each way is recorded."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        (self._server_master, server_slave), (self._client_master, client_slave) = \
            os.openpty(), os.openpty()
        for fd in (server_slave, client_slave):
            tty.setraw(fd)
        self.server_path, self.client_path = os.ttyname(server_slave), os.ttyname(client_slave)
        self._slaves = (server_slave, client_slave)  # held open: the masters never read EIO
        self.to_server, self.to_client = bytearray(), bytearray()
        for fd in (self._server_master, self._client_master):
            os.set_blocking(fd, False)
        loop.add_reader(self._client_master, self._pump, self._client_master,
                        self._server_master, self.to_server)
        loop.add_reader(self._server_master, self._pump, self._server_master,
                        self._client_master, self.to_client)

    @staticmethod
    def _pump(src: int, dst: int, record: bytearray) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:
            return
        record.extend(data)
        os.write(dst, data)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in (self._server_master, self._client_master):
            loop.remove_reader(fd)
        for fd in (self._server_master, self._client_master, *self._slaves):
            os.close(fd)


def rtu_frames(data: bytes, lengths: Callable[[bytes], int]) -> list[bytes]:
    frames = []
    while data:
        n = lengths(data)
        frame, data = data[:n], data[n:]
        assert len(frame) == n, "truncated RTU frame"
        assert crc16_modbus(frame[:-2]) == int.from_bytes(frame[-2:], "little"), frame.hex()
        frames.append(frame)
    return frames


async def test_rtu_over_a_serial_line() -> None:
    line = NullModem()
    device = Device(unit_id=7)
    channels = [{"name": "pressure", "address": 3, "type": "float32", "word_order": "little",
                 "unit": "bar"},
                {"name": "temperature", "address": 5, "type": "int16", "scale": 0.01,
                 "unit": "degC"}]
    await device.write("holding", 3, encode(1.2345, "float32", word_order="little")
                       + encode(2231, "int16"))
    try:
        await device.start_serial(line.server_path)
        run = Run(ModbusPressureAdapter(STREAM, ModbusPressureConfig(
            transport="rtu", serial_port=line.client_path, baudrate=19200, unit_id=7,
            channels=channels, poll_hz=25.0, block_s=0.12, timeout_s=0.5, retries=0)))
        try:
            frames = [await run.next(), await run.next()]
        finally:
            await run.stop()
    finally:
        await device.stop()
        line.close()
    for frame in frames:
        np.testing.assert_allclose(frame.arrays["pressure"], float(np.float32(1.2345)) * 1e5,
                                   rtol=1e-12)
        np.testing.assert_allclose(frame.arrays["temperature"], 22.31, rtol=1e-12)
        assert frame.meta["transport"] == "rtu" and frame.meta["failed_polls"] == 0
    # on the wire: RTU frames (device id, function, data, CRC-16/MODBUS), one read per poll
    requests = rtu_frames(bytes(line.to_server), lambda d: 8)
    assert requests and all(r[:6] == bytes([7, 3, 0, 3, 0, 3]) for r in requests)
    responses = rtu_frames(bytes(line.to_client), lambda d: 3 + d[2] + 2)
    assert len(responses) >= sum(f.n_samples for f in frames)
    for response in responses:
        assert response[:3] == bytes([7, 3, 6])
        registers = list(struct.unpack(">3H", response[3:9]))
        assert registers == device.tables["holding"][3:6]


async def test_rtu_through_a_socket_gateway(port: int) -> None:
    device = Device(unit_id=2)
    await device.write("input", 0, encode(-3, "int16"))
    await device.start_tcp(port, framer=FramerType.RTU)  # a transparent serial-to-TCP gateway
    run = Run(ModbusPressureAdapter(STREAM, ModbusPressureConfig(
        transport="rtu", serial_port=f"socket://127.0.0.1:{port}", unit_id=2,
        channels=[{"name": "pressure", "function": "input", "type": "int16", "scale": 0.5,
                   "unit": "psi"}],
        poll_hz=50.0, block_s=0.04, timeout_s=0.5)))
    try:
        frame = await run.next()
    finally:
        await run.stop()
        await device.stop()
    np.testing.assert_allclose(frame.arrays["pressure"], -1.5 * PA_PER["psi"], rtol=1e-12)
    assert set(device.requests) == {(4, 0, 1)}


async def test_unreachable_device_gives_nan_blocks_not_an_error(port: int) -> None:
    run = Run(adapter(port, [{"name": "pressure"}], block_s=0.1))  # nothing listens there
    try:
        frames = [await run.next(), await run.next()]
    finally:
        await run.stop()
    for frame in frames:
        assert np.isnan(frame.arrays["pressure"]).all()
        assert frame.meta["failed_polls"] == frame.n_samples == 5
    assert run.adapter.reconnects == 0 and run.adapter.rejects >= 1
    assert all(f"127.0.0.1:{port} unit 1: connect failed" in e for e in run.adapter.errors)


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "key", "message"), [
    ({"channels": [{"name": "pressure", "address": 0},
                   {"name": "temperature", "address": 1, "type": "int16", "unit": "degC"}]},
     "params.channels", "channels[1] 'temperature' (holding 1-1) overlaps channels[0]"),
    ({"channels": [{"unit": "furlong"}]}, "params.channels[0].unit", "unknown unit 'furlong'"),
    ({"channels": [{"type": "float64"}]}, "params.channels[0].type", "float32"),
    ({"channels": [{"type": "int16", "word_order": "little"}]},
     "params.channels[0].word_order", "32-bit types only"),
    ({"channels": [{"address": 65535}]}, "params.channels[0].type", "runs past register 65535"),
    ({"channels": [{"unit": "degC"}]}, "params.channels[0].unit", "not a pressure unit"),
    ({"channels": [{"name": "pressure"}, {"name": "temperature", "address": 4, "unit": "bar"}]},
     "params.channels[1].unit", "not a temperature unit"),
    ({"channels": [{"name": "temperature", "unit": "degC"}]}, "params.channels",
     "no channel named 'pressure'"),
    ({"channels": [{"name": "pressure"}, {"name": "pressure", "address": 4}]},
     "params.channels", "used twice"),
    ({"channels": [{"name": "t", "unit": "1"}]}, "params.channels[0].name", "not a usable"),
    ({"transport": "rtu"}, "params.serial_port", "required with transport = 'rtu'"),
    ({"transport": "rtu", "serial_port": "/dev/ttyUSB0", "unit_id": 0}, "params.unit_id",
     "not an RTU device id"),
    ({"reconnect_min_s": 60.0}, "params.reconnect_max_s", "smaller than reconnect_min_s"),
    ({"slave": 1}, "params.slave", "unknown key"),
    ({"transport": "udp"}, "params.transport", "'tcp' or 'rtu'"),
])
def test_config_errors_name_the_key(params: dict, key: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModbusPressureConfig.model_validate(params)
    text = format_validation_error("run.toml", info.value, "params")
    assert f"run.toml: {key}: " in text and message in text, text


def test_clock_defaults_to_host_time_unless_configured() -> None:
    assert ClockModel(ModbusPressureConfig().clock).mode == "host"
    assert ClockModel(ModbusPressureConfig(clock={"bucket_s": 5.0}).clock).mode == "host"
    assert ClockModel(ModbusPressureConfig(clock={"offset_s": 0.25}).clock).mode == "fixed"
    assert ClockModel(ModbusPressureConfig(clock={"mode": "estimate"}).clock).mode == "estimate"
    cfg = ModbusPressureConfig(poll_hz=2.0, block_s=10.0)
    assert ModbusPressureAdapter(STREAM, cfg).samples_per_block == 20
    assert ModbusPressureAdapter(STREAM, ModbusPressureConfig(
        poll_hz=0.1, block_s=1.0)).samples_per_block == 1


async def test_a_stopping_node_gets_the_partly_filled_block(port: int) -> None:
    from stream.node import Node

    from .test_node import CollectSink

    device = Device()
    await device.write("holding", 0, encode(1.5, "float32", "big", "big"))
    await device.start_tcp(port)
    source = adapter(port, [{"name": "pressure", "address": 0, "type": "float32",
                             "unit": "bar"}], block_s=60.0)  # a block far longer than the run
    sink = CollectSink()
    node = Node("exp", [source], [], [sink], handle_signals=False)
    task = asyncio.create_task(node.run())
    try:
        async with asyncio.timeout(10):
            while source.polls < 10:
                await asyncio.sleep(0.02)
        node.stop()
        await asyncio.wait_for(task, 10)
    finally:
        await device.stop()
    (frame,) = [f for f in sink.frames if f.kind == "pressure"]
    assert frame.n_samples >= 10
    np.testing.assert_allclose(frame.arrays["pressure"], 1.5e5)
