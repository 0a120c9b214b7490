"""Pressure transducers over Modbus TCP and Modbus RTU (through pymodbus), as ``pressure`` frames.

A register map names the channels: where each value lives (holding or input registers), how it is
encoded (int16, uint16, int32, uint32 or float32, with its byte and word order), its scale and
offset, and its unit. Pressures are published in Pa and temperatures in degC; this module does
unit conversion only. Each poll reads the mapped registers in as few requests as Modbus allows
(neighbouring registers of one table in one request of at most 125 registers), and samples are
collected into one ``pressure`` block per ``block_s``.

Modbus has no instrument clock: a sample's time is the host time at the middle of its poll, and
the clock mode defaults to ``host``. An ``offset_s`` in ``clock`` shifts the host time.

Faults never stop the polling. A failed read (no connection, timeout, exception response, a
response of the wrong size) or a NaN or infinity sent by the device gives NaN for the channels it covers, counted per channel in
``meta["failed"]``. A channel whose raw registers stay identical for ``stale_s`` is stale: its
samples are counted in ``meta["frozen"]`` (and NaN with ``stale_nan``). Every fault is a reject
naming the registers; warnings are rate-limited. A lost connection is re-opened with exponential
backoff and jitter, and a sample of NaN is recorded at every poll tick while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes

from stream.frame import ARRAY_NAME_RE, Frame

from .base import Adapter, AdapterConfig
from .timebase import ClockConfig

log = logging.getLogger(__name__)

MAX_READ_REGISTERS = 125   # the Modbus limit for one read of holding or input registers
WARN_INTERVAL_S = 30.0     # one kind of warning is logged at most this often

# unit in the register map -> (unit published, factor, offset): published = value*factor + offset
UNITS: dict[str, tuple[str, float, float]] = {
    "Pa": ("Pa", 1.0, 0.0), "hPa": ("Pa", 100.0, 0.0), "kPa": ("Pa", 1e3, 0.0),
    "MPa": ("Pa", 1e6, 0.0), "mbar": ("Pa", 100.0, 0.0), "bar": ("Pa", 1e5, 0.0),
    "psi": ("Pa", 6894.757293168361, 0.0), "Torr": ("Pa", 101325.0 / 760.0, 0.0),
    "atm": ("Pa", 101325.0, 0.0),
    "degC": ("degC", 1.0, 0.0), "K": ("degC", 1.0, -273.15), "degF": ("degC", 5 / 9, -160 / 9),
    "V": ("V", 1.0, 0.0), "mV": ("V", 1e-3, 0.0), "A": ("A", 1.0, 0.0), "mA": ("A", 1e-3, 0.0),
    "%": ("%", 1.0, 0.0), "1": ("1", 1.0, 0.0),
}
# register type -> (struct code, registers)
REGISTER_TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1), "int32": ("i", 2), "uint32": ("I", 2),
    "float32": ("f", 2),
}
RegisterType = Literal["float32", "int16", "uint16", "int32", "uint32"]
Order = Literal["big", "little"]


class RegisterChannel(BaseModel):
    """One mapped value, an entry of ``channels``."""

    model_config = ConfigDict(extra="forbid")
    name: str = "pressure"                            # array name in the frame
    address: int = Field(0, ge=0, le=65535)           # first register, 0-based protocol address
    function: Literal["holding", "input"] = "holding"  # FC3 holding or FC4 input registers
    type: RegisterType = Field("float32", validate_default=True)  # how the registers encode it
    byte_order: Order = "big"                         # big: a register's high byte is sent first
    word_order: Order = "big"                         # 32-bit: big = lower address holds high word
    scale: float = 1.0                                # value = raw * scale + offset, in `unit`
    offset: float = 0.0
    unit: str = Field("Pa", validate_default=True)  # published: pressures in Pa, temperatures degC
    stale: bool = True                                # include in the stale-value check

    @property
    def width(self) -> int:
        return REGISTER_TYPES[self.type][1]

    @property
    def last_address(self) -> int:
        return self.address + self.width - 1

    @field_validator("name")
    @classmethod
    def _array_name(cls, name: str) -> str:
        if name == "t" or not ARRAY_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a usable array name (letters, digits, _ . -; "
                             "not 't')")
        return name

    @field_validator("type")
    @classmethod
    def _fits(cls, type_: str, info: ValidationInfo) -> str:
        address = info.data.get("address", 0)
        if address + REGISTER_TYPES[type_][1] - 1 > 65535:
            raise ValueError(f"{type_} at address {address} runs past register 65535")
        return type_

    @field_validator("word_order")
    @classmethod
    def _words(cls, word_order: str, info: ValidationInfo) -> str:
        type_ = info.data.get("type", "float32")
        if word_order != "big" and REGISTER_TYPES[type_][1] == 1:
            raise ValueError(f"applies to 32-bit types only, not {type_}")
        return word_order

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str, info: ValidationInfo) -> str:
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}; known: {', '.join(UNITS)}")
        name = info.data.get("name")
        expected = {"pressure": "Pa", "temperature": "degC"}.get(name or "")
        if expected and UNITS[unit][0] != expected:
            raise ValueError(f"{unit!r} is not a {name} unit")
        return unit


class ModbusPressureConfig(AdapterConfig):
    transport: Literal["tcp", "rtu"] = "tcp"  # Modbus TCP, or Modbus RTU on a serial line
    host: str = "127.0.0.1"                   # tcp: the transducer or its gateway
    port: int = Field(502, ge=1, le=65535)    # tcp: port
    serial_port: str = Field("", validate_default=True)  # rtu: /dev/ttyUSB0, COM3, socket://gw:4001
    baudrate: int = Field(9600, gt=0)         # rtu: line settings
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(1, ge=0, le=255)     # Modbus device ("slave") id
    channels: list[RegisterChannel] = Field(default_factory=lambda: [RegisterChannel()])
    poll_hz: float = Field(1.0, gt=0, le=1000)     # polls per second
    block_s: float = Field(10.0, gt=0)             # samples per frame: round(block_s * poll_hz)
    timeout_s: float = Field(1.0, gt=0)            # connect and response timeout per request
    retries: int = Field(1, ge=0, le=10)           # resends of a request before it fails
    reconnect_min_s: float = Field(0.5, gt=0)      # first backoff after a failed connect
    reconnect_max_s: float = Field(30.0, gt=0, validate_default=True)  # backoff doubles up to this
    reconnect_jitter: float = Field(0.2, ge=0, le=1)  # each backoff times 1 +- this, at random
    stale_s: float = Field(60.0, ge=0)             # raw registers unchanged this long: stale; 0 off
    stale_nan: bool = False                        # stale samples as NaN (else kept, flagged)
    max_registers_per_request: int = Field(MAX_READ_REGISTERS, ge=1, le=MAX_READ_REGISTERS)
    merge_gap_registers: int = Field(0, ge=0, le=64)  # read across up to N unmapped registers
    clock: ClockConfig = Field(default_factory=lambda: ClockConfig(mode="host"))

    @field_validator("channels")
    @classmethod
    def _register_map(cls, channels: list[RegisterChannel]) -> list[RegisterChannel]:
        names = [ch.name for ch in channels]
        if "pressure" not in names:
            raise ValueError("no channel named 'pressure'")
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"channels[{i}]: name {name!r} used twice")
        order = sorted(range(len(channels)),
                       key=lambda i: (channels[i].function, channels[i].address))
        for prev, cur in zip(order, order[1:], strict=False):
            a, b = channels[prev], channels[cur]
            if a.function == b.function and b.address <= a.last_address:
                raise ValueError(f"channels[{cur}] {b.name!r} ({b.function} {b.address}-"
                                 f"{b.last_address}) overlaps channels[{prev}] {a.name!r} "
                                 f"({a.function} {a.address}-{a.last_address})")
        return channels

    @field_validator("clock")
    @classmethod
    def _host_clock_by_default(cls, clock: ClockConfig) -> ClockConfig:
        if "mode" not in clock.model_fields_set and clock.offset_s is None:
            clock.mode = "host"
        return clock

    @field_validator("serial_port")
    @classmethod
    def _serial_port(cls, serial_port: str, info: ValidationInfo) -> str:
        if info.data.get("transport") == "rtu" and not serial_port:
            raise ValueError("required with transport = 'rtu'")
        return serial_port

    @field_validator("unit_id")
    @classmethod
    def _rtu_id(cls, unit_id: int, info: ValidationInfo) -> int:
        if info.data.get("transport") == "rtu" and not 1 <= unit_id <= 247:
            raise ValueError(f"{unit_id} is not an RTU device id (1-247)")
        return unit_id

    @field_validator("reconnect_max_s")
    @classmethod
    def _backoff_range(cls, reconnect_max_s: float, info: ValidationInfo) -> float:
        if reconnect_max_s < info.data.get("reconnect_min_s", 0.0):
            raise ValueError("smaller than reconnect_min_s")
        return reconnect_max_s


def decode_registers(registers: Sequence[int], type_: str, byte_order: str = "big",
                     word_order: str = "big") -> float:
    """One value from its registers (lowest address first). Big word order: the lowest address
    holds the most significant word; big byte order: a register's high byte is the more
    significant. big/big is the Modbus default (ABCD), little words CDAB, little bytes BADC."""
    code, width = REGISTER_TYPES[type_]
    if len(registers) != width:
        raise ValueError(f"{type_} needs {width} registers, got {len(registers)}")
    words = registers if word_order == "big" else registers[::-1]
    raw = b"".join(int(w).to_bytes(2, "big" if byte_order == "big" else "little") for w in words)
    return float(struct.unpack(">" + code, raw)[0])


@dataclass
class ReadRequest:
    """One read of neighbouring registers in one table, covering one or more channels."""

    function: Literal["holding", "input"]
    address: int
    count: int
    channels: list[tuple[int, int]] = field(default_factory=list)  # (channel index, offset)


def plan_requests(channels: Sequence[RegisterChannel], max_count: int = MAX_READ_REGISTERS,
                  max_gap: int = 0) -> list[ReadRequest]:
    """The fewest reads that cover every channel: channels sorted by address share a read while
    the gap to the previous one is at most ``max_gap`` and the read stays within ``max_count``."""
    requests: list[ReadRequest] = []
    for function in ("holding", "input"):
        mapped = sorted((ch.address, i) for i, ch in enumerate(channels)
                        if ch.function == function)
        current: ReadRequest | None = None
        for address, i in mapped:
            end = address + channels[i].width
            if (current is not None and address - (current.address + current.count) <= max_gap
                    and end - current.address <= max_count):
                current.count = end - current.address
            else:
                current = ReadRequest(function, address, end - address)
                requests.append(current)
            current.channels.append((i, address - current.address))
    return requests


def exception_name(code: int) -> str:
    try:
        return ExcCodes(code).name
    except ValueError:
        return "unknown exception code"


@dataclass
class _ChannelState:
    last_raw: tuple[int, ...] | None = None
    changed_at: float = 0.0
    frozen: bool = False


@dataclass
class _Block:
    n_channels: int
    times_ns: list[int] = field(default_factory=list)
    values: list[list[float]] = field(init=False)
    failed: list[int] = field(init=False)
    frozen: list[int] = field(init=False)
    failed_polls: int = 0

    def __post_init__(self) -> None:
        self.values = [[] for _ in range(self.n_channels)]
        self.failed = [0] * self.n_channels
        self.frozen = [0] * self.n_channels


class ModbusPressureAdapter(Adapter):
    """Polls a Modbus device and publishes ``pressure`` blocks (t, pressure [Pa], any other
    mapped channel). Read faults and stale values are counted and flagged, never fatal."""

    type_name = "modbus.pressure"
    graceful_stop = True
    Config = ModbusPressureConfig
    reject_burst = 1                 # each kind of reject logged once per WARN_INTERVAL_S
    reject_interval_s = WARN_INTERVAL_S

    def __init__(self, stream: str, config: ModbusPressureConfig | None = None):
        super().__init__(stream, config)
        c = self.config
        self.requests = plan_requests(c.channels, c.max_registers_per_request,
                                      c.merge_gap_registers)
        self.names = [ch.name for ch in c.channels]
        self.units = {"t": "s", **{ch.name: UNITS[ch.unit][0] for ch in c.channels}}
        # published = raw * gain + bias, from the channel's scale/offset and its unit's conversion
        self._gain = [ch.scale * UNITS[ch.unit][1] for ch in c.channels]
        self._bias = [ch.offset * UNITS[ch.unit][1] + UNITS[ch.unit][2] for ch in c.channels]
        self.samples_per_block = max(1, round(c.block_s * c.poll_hz))
        self.endpoint = (f"{c.host}:{c.port}" if c.transport == "tcp" else c.serial_port) \
            + f" unit {c.unit_id}"
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._ever_connected = False
        self._backoff_s = 0.0
        self._next_connect = 0.0         # monotonic time of the next connect attempt
        self._rng = random.Random()
        self._state = [_ChannelState() for _ in c.channels]
        self.polls = 0
        self.failed_polls = 0
        self.read_errors = 0             # timeouts, lost connections, wrong-size responses
        self.exceptions = 0              # Modbus exception responses
        self.invalid_values = 0          # NaN or infinity sent by the device
        self.reconnects = 0
        self.frozen_samples = 0
        self.overruns = 0                # poll ticks skipped because a poll took too long

    # -- connection ----------------------------------------------------------------------------
    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        c = self.config
        # reconnect_delay=0: pymodbus does not reconnect by itself; the backoff is ours
        if c.transport == "tcp":
            return AsyncModbusTcpClient(c.host, port=c.port, framer=FramerType.SOCKET,
                                        timeout=c.timeout_s, retries=c.retries,
                                        reconnect_delay=0)
        return AsyncModbusSerialClient(c.serial_port, framer=FramerType.RTU, baudrate=c.baudrate,
                                       bytesize=c.bytesize, parity=c.parity,
                                       stopbits=c.stopbits, timeout=c.timeout_s,
                                       retries=c.retries, reconnect_delay=0)

    async def _ensure_connected(self) -> bool:
        if self._client is not None and self._client.connected:
            return True
        if time.monotonic() < self._next_connect:
            return False
        if self._client is None:
            self._client = self._make_client()
        try:
            ok = await self._client.connect()
        except (ModbusException, OSError) as exc:
            ok, reason = False, f"connect failed: {exc}"
        else:
            reason = "connect failed"
        if not ok:
            c = self.config
            self._backoff_s = min(c.reconnect_max_s, max(c.reconnect_min_s, 2 * self._backoff_s))
            delay = self._backoff_s * (1 + c.reconnect_jitter * self._rng.uniform(-1, 1))
            self._next_connect = time.monotonic() + delay
            self.reject(self.endpoint, f"{reason}; next attempt in {delay:.2f} s", key="connect")
            return False
        if self._ever_connected:
            self.reconnects += 1
            log.info("%s: %s: reconnected", self.stream, self.endpoint)
        self._ever_connected = True
        self._backoff_s = 0.0
        return True

    # -- reading -------------------------------------------------------------------------------
    def _where(self, req: ReadRequest) -> str:
        names = ", ".join(self.names[i] for i, _ in req.channels)
        last = req.address + req.count - 1
        span = f"register {req.address}" if req.count == 1 else \
            f"registers {req.address}-{last}"
        return f"{self.endpoint} {req.function} {span} ({names})"

    async def _read(self, req: ReadRequest) -> list[int] | None:
        assert self._client is not None
        read = (self._client.read_holding_registers if req.function == "holding"
                else self._client.read_input_registers)
        where = self._where(req)
        try:
            response = await read(req.address, count=req.count, device_id=self.config.unit_id)
        except (TimeoutError, ModbusException, OSError) as exc:
            self.read_errors += 1
            self.reject(where, f"no response: {exc}", key=f"read {where}")
            return None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            self.exceptions += 1
            self.reject(where, f"Modbus exception {code} ({exception_name(code)})",
                        key=f"exception {where}")
            return None
        registers = list(response.registers)
        if len(registers) != req.count:
            self.read_errors += 1
            self.reject(where, f"response has {len(registers)} registers, expected {req.count}",
                        key=f"size {where}")
            return None
        return registers

    def _value(self, i: int, raw: tuple[int, ...], now: float) -> tuple[float | None, bool]:
        """A channel's published value (None when the device sends NaN or infinity, its signal
        for a channel error or an over-/underflow) and whether it is stale."""
        ch = self.config.channels[i]
        where = self._where(ReadRequest(ch.function, ch.address, ch.width, [(i, 0)]))
        value = decode_registers(raw, ch.type, ch.byte_order, ch.word_order)
        if not math.isfinite(value):
            self.invalid_values += 1
            self.reject(where, f"device sent {value} (channel error or over-/underflow)",
                        key=f"invalid {ch.name}")
            return None, False
        state = self._state[i]
        if raw != state.last_raw:
            if state.frozen:
                log.info("%s: %s: updating again", self.stream, where)
            state.last_raw, state.changed_at, state.frozen = raw, now, False
        elif (ch.stale and self.config.stale_s > 0 and not state.frozen
              and now - state.changed_at >= self.config.stale_s):
            state.frozen = True
            self.reject(where, f"raw registers {[hex(r) for r in raw]} unchanged for "
                               f"{self.config.stale_s:g} s: stale value", key=f"stale {ch.name}")
        value = value * self._gain[i] + self._bias[i]
        if state.frozen and self.config.stale_nan:
            value = math.nan
        return value, state.frozen

    async def _poll(self, block: _Block) -> None:
        """One sample of every channel into ``block``; NaN where it could not be read."""
        start_ns = time.time_ns()
        n = len(self.names)
        values = [math.nan] * n
        read = [False] * n
        if await self._ensure_connected():
            for req in self.requests:
                registers = await self._read(req)
                if registers is None:
                    if not self._client.connected:  # lost: reconnect at the next poll
                        break
                    continue
                now = time.monotonic()
                for i, offset in req.channels:
                    raw = tuple(registers[offset:offset + self.config.channels[i].width])
                    value, frozen = self._value(i, raw, now)
                    if value is None:
                        continue
                    values[i], read[i] = value, True
                    if frozen:
                        block.frozen[i] += 1
                        self.frozen_samples += 1
        self.polls += 1
        if not any(read):
            self.failed_polls += 1
            block.failed_polls += 1
        for i in range(n):
            if not read[i]:
                block.failed[i] += 1
                self._state[i] = _ChannelState()  # after a gap, the stale clock restarts
            block.values[i].append(values[i])
        block.times_ns.append((start_ns + time.time_ns()) // 2)

    def _frame(self, block: _Block) -> Frame:
        t0 = block.times_ns[0]
        arrays = {"t": (np.array(block.times_ns, dtype=np.int64) - t0) * 1e-9}
        for name, column in zip(self.names, block.values, strict=True):
            arrays[name] = np.array(column, dtype=np.float64)
        meta = {"transport": self.config.transport, "unit_id": self.config.unit_id,
                "stale": any(block.failed) or any(block.frozen),
                "failed": dict(zip(self.names, block.failed, strict=True)),
                "frozen": dict(zip(self.names, block.frozen, strict=True)),
                "failed_polls": block.failed_polls}
        # the instrument time is the host time of the first poll: nothing to estimate
        return self.make_frame("pressure", t0, arrays, self.units, meta, host_ns=t0,
                               observe=False)

    async def frames(self) -> AsyncIterator[Frame]:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.config.poll_hz
        block = _Block(len(self.names))
        next_tick = loop.time()
        try:
            while True:
                await self._poll(block)
                if len(block.times_ns) >= self.samples_per_block:
                    yield self._frame(block)
                    block = _Block(len(self.names))
                next_tick += period
                late = loop.time() - next_tick
                if late > 0:
                    skipped = int(late // period) + 1
                    self.overruns += skipped
                    next_tick += skipped * period
                if await self.sleep_or_stop(next_tick - loop.time()):
                    if block.times_ns:  # the node is stopping: hand over the partial block
                        yield self._frame(block)
                    return
        finally:
            if self._client is not None:
                self._client.close()

    def counters(self) -> dict[str, int]:
        return {"rejects": self.rejects, "polls": self.polls, "failed_polls": self.failed_polls,
                "read_errors": self.read_errors, "exceptions": self.exceptions,
                "invalid_values": self.invalid_values,
                "reconnects": self.reconnects, "frozen_samples": self.frozen_samples,
                "overruns": self.overruns}
