"""SCPI instruments through pyvisa: source-measure units and electrometers used as potentiostats
or current monitors, or any meter that answers a query with comma-separated numbers.

The adapter connects with pyvisa (the pure-Python ``@py`` backend: ``TCPIP::host::port::SOCKET``
or ``ASRL/dev/ttyUSB0::INSTR``; ``@sim`` with a pyvisa-sim YAML for dry runs), optionally checks
``*IDN?``, sends the ``init`` commands, then polls the measurement query at ``poll_hz`` and
publishes the replies as blocks of ``block_s`` seconds. pyvisa blocks, so all instrument I/O runs
in one worker thread; the event loop only turns finished blocks into frames.

Bad input never stops the poll: a malformed reply (wrong field count, a field that is not a
number), an unanswered query, and every entry of the instrument's error queue (``SYST:ERR?``,
after each init command and every ``error_check_s``) is named (resource, command, field) and
counted with ``Adapter.reject``. After a timeout the adapter resynchronises (``*OPC?``, discarding
late replies until its ``1``), so a late reply is never taken for the next reading. A connection
that fails, or ``reconnect_after_timeouts`` unanswered queries in a row, closes the session and
reconnects with exponential backoff, replaying ``init``.

Time base: each sample is stamped with the host time of its query (the midpoint between sending
the query and receiving the reply; ClockModel mode ``host``). With ``time_field`` the instrument's
own timestamp (Keithley ``TIME``/``TSTamp``/``REL`` elements, in s) times the samples and the
ClockModel estimates its offset and drift from the reply receive times (mode ``estimate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import numpy as np
import pyvisa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pyvisa import constants

from stream.frame import ARRAY_NAME_RE, Frame

from .base import Adapter, AdapterConfig
from .timebase import ClockConfig, ClockModel

log = logging.getLogger(__name__)

SKIP = "_"                        # a field name that drops the reply field
# Units a standard channel is published in; other units are converted with ``scale``.
STANDARD_UNITS = {"voltage": "V", "current": "A", "temperature": "degC", "pressure": "Pa",
                  "resistance": "ohm", "charge": "C", "time": "s"}
SCPI_OVERFLOW = 9.9e37            # SCPI: +9.9E37 is an overflow, 9.91E37 "not a number"
MAX_ERRORS_PER_CHECK = 32         # error-queue entries read in one check
MAX_RESYNC_LINES = 16             # late replies discarded while resynchronising
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")
_ERROR_REPLY = re.compile(r"\s*([+-]?\d+)\s*(?:,\s*(.*?))?\s*")
_SYNCED = ("1", "+1")             # the reply to ``*OPC?``


class ScpiField(BaseModel):
    """One comma-separated field of the measurement reply."""

    model_config = ConfigDict(extra="forbid")
    name: str                     # array name in the frame; "_" drops the field
    unit: str | None = None       # default: the standard unit of the name (voltage V, current A...)
    scale: float = 1.0            # published = reply * scale + offset (1e-3 for a reply in mA)
    offset: float = 0.0


class SerialConfig(BaseModel):
    """Line settings, used only for ``ASRL`` resources."""

    model_config = ConfigDict(extra="forbid")
    baud_rate: int = 9600
    data_bits: int = Field(8, ge=5, le=8)
    parity: Literal["none", "odd", "even"] = "none"
    stop_bits: Literal[1, 2] = 1
    flow_control: Literal["none", "xon_xoff", "rts_cts"] = "none"


class ScpiConfig(AdapterConfig):
    resource: str = "TCPIP::127.0.0.1::5025::SOCKET"  # VISA resource string
    backend: str = "@py"                # pyvisa backend: "@py", "@sim" or "file.yaml@sim"
    read_termination: str = "\n"
    write_termination: str = "\n"
    timeout_s: float = Field(2.0, gt=0)  # per reply
    serial: SerialConfig = Field(default_factory=SerialConfig)  # ASRL resources only
    expect_idn: str | None = None       # *IDN? must contain this ("" = query and record only)
    init: list[str] = []                # commands sent after each connect ("...?" are queried)
    final: list[str] = []               # commands sent when the adapter stops (e.g. ":OUTP OFF")
    query: str = ":READ?"               # the measurement query
    fields: list[ScpiField] = Field(default_factory=lambda: [ScpiField(name="voltage"),
                                                             ScpiField(name="current")])
    separator: str = Field(",", min_length=1)
    strip_units: bool = False           # read the leading number of "+1.2E-09NADC"-style fields
    overflow_as_nan: bool = True        # SCPI overflow (|x| >= 9.9E37) is published as NaN
    time_field: str | None = None       # a field holding the instrument's timestamp, in s
    kind: Literal["echem", "pressure", "temperature"] = "echem"
    poll_hz: float = Field(10.0, gt=0)
    block_s: float = Field(1.0, gt=0)   # samples per frame: a 10 Hz SMU publishes 1 s blocks
    error_query: str = ":SYST:ERR?"     # the error queue; "" = never read
    error_check_s: float = Field(10.0, ge=0)  # read it this often while polling (0 = after init only)
    resync_query: str = "*OPC?"         # answered "1" after any late reply; "" = no resync
    stale_s: float = Field(5.0, gt=0)   # no valid reading this long: reported as stale
    reconnect_after_timeouts: int = Field(3, ge=1)  # unanswered queries in a row
    reconnect_min_s: float = Field(0.5, gt=0)       # backoff, doubled per failed attempt
    reconnect_max_s: float = Field(30.0, gt=0)

    @field_validator("fields", mode="before")
    @classmethod
    def _field_names(cls, value: Any) -> Any:
        """A bare string is a field with that name and its standard unit."""
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> ScpiConfig:
        names = [f.name for f in self.fields if f.name != SKIP]
        for i, f in enumerate(self.fields):
            if f.name == SKIP:
                continue
            if not ARRAY_NAME_RE.match(f.name) or f.name == "t":
                raise ValueError(f"fields[{i}]: {f.name!r} is not a valid channel name")
            standard = STANDARD_UNITS.get(f.name)
            if f.unit is None:
                f.unit = standard or ""
            elif standard is not None and f.unit != standard:
                raise ValueError(f"fields[{i}]: {f.name!r} is published in {standard}; "
                                 f"convert with scale instead of unit {f.unit!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"fields: duplicate names in {names}")
        if self.time_field is not None and self.time_field not in names:
            raise ValueError(f"time_field {self.time_field!r} is not one of fields {names}")
        channels = set(names) - {self.time_field}
        needed = {"echem": {"voltage", "current"}, "pressure": {"pressure"},
                  "temperature": {"temperature"}}[self.kind]
        if not channels & needed:
            raise ValueError(f"kind {self.kind!r} needs a field named one of {sorted(needed)}")
        if "clock" not in self.model_fields_set:  # the instrument's clock only when it sends one
            self.clock = ClockConfig(mode="host" if self.time_field is None else "estimate")
        return self


class ReplyError(ValueError):
    """A reply that cannot be read; the message names the field."""


def parse_reply(reply: str, fields: list[ScpiField], separator: str = ",",
                strip_units: bool = False) -> list[float]:
    """The numbers of one reply, scaled, for every field not named ``_``, in order."""
    tokens = reply.strip().split(separator)
    if len(tokens) != len(fields):
        raise ReplyError(f"reply {reply.strip()!r} has {len(tokens)} field(s), "
                         f"expected {len(fields)}")
    values = []
    for number, (token, f) in enumerate(zip(tokens, fields, strict=True), start=1):
        if f.name == SKIP:
            continue
        match = _NUMBER.match(token) if strip_units else _NUMBER.fullmatch(token.rstrip())
        if match is None:
            raise ReplyError(f"field {number} ({f.name!r}): not a number: {token!r} "
                             f"in reply {reply.strip()!r}")
        values.append(float(match.group(1)) * f.scale + f.offset)
    return values


def parse_error_reply(reply: str) -> tuple[int, str]:
    """``-113,"Undefined header"`` -> (-113, "Undefined header")."""
    match = _ERROR_REPLY.fullmatch(reply)
    if match is None:
        raise ReplyError(f"error-queue reply {reply.strip()!r} is not '<code>,\"<message>\"'")
    return int(match.group(1)), (match.group(2) or "").strip('"')


class _Lost(Exception):
    """The session no longer answers: close it and reconnect."""


class _Block:
    """The samples of one frame, collected by the worker thread."""

    def __init__(self, meta: dict[str, Any], clock_restarted: bool = False):
        self.meta = meta
        self.clock_restarted = clock_restarted   # the instrument's timestamps went back
        self.rows: list[list[float]] = []
        self.mid_ns: list[int] = []    # host time of each query (send/receive midpoint)
        self.recv_ns: list[int] = []   # host time each reply arrived
        self.started = 0.0             # time.monotonic() of the first sample

    def add(self, values: list[float], mid_ns: int, recv_ns: int) -> None:
        if not self.rows:
            self.started = time.monotonic()
        self.rows.append(values)
        self.mid_ns.append(mid_ns)
        self.recv_ns.append(recv_ns)


class ScpiAdapter(Adapter):
    """Polls one SCPI instrument; publishes ``kind`` frames of ``t`` plus one array per field."""

    type_name = "scpi"
    Config = ScpiConfig
    graceful_stop = True   # on request_stop() the last partial block is still published
    reject_burst = 1       # each kind of warning (and reject) logged at most once per 10 s,
    reject_interval_s = 10.0  # with the number held back

    def __init__(self, stream: str, config: ScpiConfig | None = None):
        super().__init__(stream, config)
        c: ScpiConfig = self.config
        self._names = [f.name for f in c.fields if f.name != SKIP]
        self._time_column = None if c.time_field is None else self._names.index(c.time_field)
        self._channels = [(name, j) for j, name in enumerate(self._names) if name != c.time_field]
        channel_names = {name for name, _ in self._channels}
        self.units = {"t": "s", **{f.name: f.unit for f in c.fields
                                   if f.name in channel_names and f.unit}}
        self._block_samples = max(1, round(c.block_s * c.poll_hz))
        self.stats = dict.fromkeys(("samples", "timeouts", "reconnects", "connect_failures",
                                    "instrument_errors", "overflows", "stale", "stale_replies"), 0)
        self.connected = False
        self.stale = False
        self.idn: str | None = None
        self._timeouts_in_row = 0
        self._last_good = time.monotonic()
        self._last_instrument_s = -math.inf

    def counters(self) -> dict[str, int]:
        return {**super().counters(), **self.stats, "connected": int(self.connected),
                "stale_now": int(self.stale)}

    # -- event loop side ------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[Frame]:
        rm = await asyncio.to_thread(pyvisa.ResourceManager, self.config.backend)
        self._last_good = time.monotonic()
        loop = asyncio.get_running_loop()
        blocks: asyncio.Queue[_Block | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: _Block | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):   # the loop is closing
                loop.call_soon_threadsafe(blocks.put_nowait, item)

        worker = threading.Thread(target=self._worker, args=(rm, stop, emit), daemon=True,
                                  name=f"scpi {self.stream}")
        worker.start()
        # request_stop(): the worker ends its poll, hands over the partial block, sends `final`
        stop_requested = asyncio.ensure_future(self._stopper().wait())
        stop_requested.add_done_callback(lambda _: stop.set())
        try:
            while (item := await blocks.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield self._frame(item)
        finally:
            stop_requested.cancel()
            stop.set()
            await asyncio.to_thread(worker.join)

    def _frame(self, block: _Block) -> Frame:
        rows = np.asarray(block.rows, dtype=np.float64)
        if block.clock_restarted:
            self.timebase = ClockModel(self.config.clock)
        if self._time_column is None:
            mid = np.asarray(block.mid_ns, dtype=np.int64)
            t = (mid - mid[0]) * 1e-9
            instrument_t0_ns = host_ns = int(mid[0])
        else:
            instrument_s = rows[:, self._time_column]
            instrument_ns = np.round(instrument_s * 1e9).astype(np.int64)
            for i_ns, r_ns in zip(instrument_ns.tolist(), block.recv_ns, strict=True):
                self.timebase.observe(i_ns, r_ns)
            t = instrument_s - instrument_s[0]
            instrument_t0_ns, host_ns = int(instrument_ns[0]), block.recv_ns[0]
        arrays = {"t": t, **{name: np.ascontiguousarray(rows[:, j]) for name, j in self._channels}}
        return self.make_frame(self.config.kind, instrument_t0_ns, arrays, self.units,
                               block.meta, host_ns=host_ns, observe=False)

    # -- worker thread ----------------------------------------------------------------------
    def _worker(self, rm: pyvisa.ResourceManager, stop: threading.Event,
                emit: Callable[[_Block | BaseException | None], None]) -> None:
        try:
            self._run(rm, stop, emit)
        except Exception as exc:   # a bug, not the instrument: frames() raises it
            emit(exc)
        finally:
            emit(None)

    def _run(self, rm: pyvisa.ResourceManager, stop: threading.Event,
             emit: Callable[[_Block], None]) -> None:
        c: ScpiConfig = self.config
        backoff = c.reconnect_min_s
        while not stop.is_set():
            try:
                res = self._open(rm)
            except Exception as exc:   # pyvisa backends raise plain Exception on connect
                self.stats["connect_failures"] += 1
                self.warnings.warn(f"{self.stream}: {c.resource}: cannot connect ({exc}); "
                                   f"retrying in {backoff:.1f} s", "connect")
                self._check_stale()
                if stop.wait(backoff):
                    break
                backoff = min(2 * backoff, c.reconnect_max_s)
                continue
            self.connected = True
            samples_before = self.stats["samples"]
            try:
                self._poll(res, stop, emit)
            except (_Lost, OSError, pyvisa.errors.Error) as exc:
                self.stats["reconnects"] += 1
                self.warnings.warn(f"{self.stream}: {c.resource}: connection lost "
                                   f"({str(exc) or type(exc).__name__}); reconnecting", "lost")
            finally:
                self.connected = False
                self._close(res, stop.is_set())
            if self.stats["samples"] > samples_before:
                backoff = c.reconnect_min_s
            else:   # lost before any reading: back off rather than hammer the instrument
                if stop.wait(backoff):
                    break
                backoff = min(2 * backoff, c.reconnect_max_s)

    def _open(self, rm: pyvisa.ResourceManager) -> Any:
        c: ScpiConfig = self.config
        ms = round(c.timeout_s * 1000)
        res = rm.open_resource(c.resource, read_termination=c.read_termination,
                               write_termination=c.write_termination, timeout=ms,
                               open_timeout=ms)
        try:
            res.encoding = "latin-1"   # any byte decodes; garbage is then named as a field
            if res.interface_type == constants.InterfaceType.asrl:
                s = c.serial
                res.baud_rate, res.data_bits = s.baud_rate, s.data_bits
                res.parity = constants.Parity[s.parity]
                res.stop_bits = constants.StopBits.one if s.stop_bits == 1 else \
                    constants.StopBits.two
                res.flow_control = constants.ControlFlow[s.flow_control]
            self._timeouts_in_row = 0
            self._resync(res)   # discard what a previous session left unread
            if c.expect_idn is not None:
                self._check_idn(res)
            self._check_errors(res, "queued before connecting")
            for command in c.init:
                if command.rstrip().endswith("?"):
                    self._query(res, command)
                else:
                    res.write(command)
                self._check_errors(res, f"after init command {command!r}")
        except BaseException:
            with contextlib.suppress(Exception):
                res.close()
            raise
        return res

    def _check_idn(self, res: Any) -> None:
        c: ScpiConfig = self.config
        answer = self._query(res, "*IDN?")
        idn = answer[0].strip() if answer else ""
        if c.expect_idn not in idn:
            message = self.reject(f"{c.resource} '*IDN?'",  # logged as the connect failure
                                  f"reply {idn!r} does not contain {c.expect_idn!r}", log=False)
            raise _Lost(message)
        if idn != self.idn:
            log.info("%s: %s is %s", self.stream, c.resource, idn)
        self.idn = idn

    def _close(self, res: Any, stopping: bool) -> None:
        if stopping:
            for command in self.config.final:
                try:
                    res.write(command)
                except Exception as exc:   # the instrument may already be gone
                    log.warning("%s: final command %r failed: %s", self.stream, command, exc)
        with contextlib.suppress(Exception):
            res.close()

    def _poll(self, res: Any, stop: threading.Event, emit: Callable[[_Block], None]) -> None:
        """Poll until stopped (returns) or the session is lost (raises)."""
        c: ScpiConfig = self.config
        period = 1.0 / c.poll_hz
        check_every = c.error_check_s if c.error_query and c.error_check_s > 0 else math.inf
        block = self._new_block()
        next_due = time.monotonic()
        next_check = next_due + check_every
        try:
            while not stop.is_set():
                wait = next_due - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
                next_due = max(next_due + period, time.monotonic())   # late: no catch-up burst
                sample = self._read_sample(res)
                if sample is None:
                    self._check_stale()
                else:
                    values, mid_ns, recv_ns = sample
                    if self._clock_went_back(values):
                        if block.rows:
                            emit(block)
                        block = self._new_block(clock_restarted=True)
                    block.add(values, mid_ns, recv_ns)
                    self._fresh()
                if block.rows and (len(block.rows) >= self._block_samples
                                   or time.monotonic() - block.started >= c.block_s):
                    emit(block)
                    block = self._new_block()
                if time.monotonic() >= next_check:
                    self._check_errors(res, "while polling")
                    next_check = time.monotonic() + check_every
        finally:
            if block.rows:
                emit(block)

    def _new_block(self, clock_restarted: bool = False) -> _Block:
        meta: dict[str, Any] = {"resource": self.config.resource}
        if self.idn is not None:
            meta["idn"] = self.idn
        return _Block(meta, clock_restarted)

    def _query(self, res: Any, command: str) -> tuple[str, int, int] | None:
        """(reply, query midpoint ns, receive ns); None after a timeout (counted, and the
        session resynchronised). Raises _Lost after too many timeouts in a row."""
        c: ScpiConfig = self.config
        sent_ns = time.time_ns()
        try:
            reply = res.query(command)
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code != constants.StatusCode.error_timeout:
                raise
        else:
            recv_ns = time.time_ns()
            self._timeouts_in_row = 0
            return reply, (sent_ns + recv_ns) // 2, recv_ns
        self.stats["timeouts"] += 1
        self._timeouts_in_row += 1
        self._reject("timeout", f"{c.resource} {command!r}", f"no reply within {c.timeout_s:g} s")
        if self._timeouts_in_row >= c.reconnect_after_timeouts:
            raise _Lost(f"{self._timeouts_in_row} queries in a row unanswered")
        self._resync(res)
        return None

    def _resync(self, res: Any) -> None:
        """Send ``resync_query`` and discard every reply before its ``1``: a late reply to an
        earlier query is then never read as the answer to the next one."""
        c: ScpiConfig = self.config
        if not c.resync_query:
            return
        res.write(c.resync_query)
        for _ in range(MAX_RESYNC_LINES):
            try:
                line = res.read().strip()
            except pyvisa.errors.VisaIOError as exc:
                raise _Lost(f"no reply to {c.resync_query!r} ({exc.abbreviation})") from None
            if line in _SYNCED:
                return
            self.stats["stale_replies"] += 1
            self.warnings.warn(f"{self.stream}: {c.resource}: discarded the late reply "
                               f"{line!r}", "stale_reply")
        raise _Lost(f"no '1' among {MAX_RESYNC_LINES} replies to {c.resync_query!r}")

    def _read_sample(self, res: Any) -> tuple[list[float], int, int] | None:
        c: ScpiConfig = self.config
        answer = self._query(res, c.query)
        if answer is None:
            return None
        reply, mid_ns, recv_ns = answer
        try:
            values = parse_reply(reply, c.fields, c.separator, c.strip_units)
        except ReplyError as exc:
            self._reject("reply", f"{c.resource} {c.query!r}", str(exc))
            return None
        if c.overflow_as_nan and any(abs(v) >= SCPI_OVERFLOW for v in values):
            self.stats["overflows"] += 1
            self.warnings.warn(f"{self.stream}: {c.resource} {c.query!r}: overflow in reply "
                               f"{reply.strip()!r}, published as NaN", "overflow")
            values = [math.nan if abs(v) >= SCPI_OVERFLOW else v for v in values]
        if self._time_column is not None and not math.isfinite(values[self._time_column]):
            self._reject("reply", f"{c.resource} {c.query!r}",
                         f"time field {c.time_field!r} is not finite in reply {reply.strip()!r}")
            return None
        self.stats["samples"] += 1
        return values, mid_ns, recv_ns

    def _clock_went_back(self, values: list[float]) -> bool:
        """The instrument's timestamps restarted (power cycle, timestamp reset)."""
        if self._time_column is None:
            return False
        instrument_s, last = values[self._time_column], self._last_instrument_s
        self._last_instrument_s = instrument_s
        if instrument_s >= last:
            return False
        log.warning("%s: %s: instrument time went back from %.6f s to %.6f s; the clock "
                    "estimate restarts", self.stream, self.config.resource, last, instrument_s)
        return True

    def _check_errors(self, res: Any, context: str) -> None:
        """Read the error queue until it says 0; each entry is named and counted."""
        c: ScpiConfig = self.config
        if not c.error_query:
            return
        for _ in range(MAX_ERRORS_PER_CHECK):
            answer = self._query(res, c.error_query)
            if answer is None:
                return
            try:
                code, message = parse_error_reply(answer[0])
            except ReplyError as exc:
                self._reject("reply", f"{c.resource} {c.error_query!r}", str(exc))
                return
            if code == 0:
                return
            self.stats["instrument_errors"] += 1
            self._reject("instrument_error", f"{c.resource} {c.error_query!r} {context}",
                         f"instrument error {code}: {message}")

    def _check_stale(self) -> None:
        quiet_s = time.monotonic() - self._last_good
        if not self.stale and quiet_s >= self.config.stale_s:
            self.stale = True
            self.stats["stale"] += 1
            log.warning("%s: %s: stale: no valid reading for %.1f s", self.stream,
                        self.config.resource, quiet_s)

    def _fresh(self) -> None:
        now = time.monotonic()
        if self.stale:
            self.stale = False
            log.info("%s: %s: readings resumed after %.1f s", self.stream, self.config.resource,
                     now - self._last_good)
        self._last_good = now

    def _reject(self, key: str, where: str, reason: str) -> None:
        self.reject(where, reason, key=key)
