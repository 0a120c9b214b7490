"""The adapter interface: an instrument becomes a Source of standard frames."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.frame import Frame
from stream.sources import Source

from .timebase import ClockConfig, ClockModel


class InputError(ValueError):
    """Bad input that names its place (``where``: file, line and column, byte offset, register
    or message) and the ``reason``; ``Adapter.reject_error`` counts and logs it."""

    def __init__(self, where: str, reason: str):
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


class WarnLimiter:
    """Rate-limited warnings. Per ``key``, the first ``burst`` messages are logged, then at
    most one per ``interval_s``, which says how many were held back since the last one."""

    def __init__(self, logger: logging.Logger, burst: int = 20, interval_s: float = 10.0):
        self.logger, self.burst, self.interval_s = logger, burst, interval_s
        self._state: dict[str, list[float]] = {}  # key -> [count, held back, last logged]

    def warn(self, message: str, key: str = "") -> bool:
        """Log ``message`` unless the limit holds it back; True if it was logged."""
        now = time.monotonic()
        state = self._state.setdefault(key, [0, 0, -math.inf])
        state[0] += 1
        if state[0] > self.burst and now - state[2] < self.interval_s:
            state[1] += 1
            return False
        held = int(state[1])
        state[1], state[2] = 0, now
        if held:
            self.logger.warning("%s (%d similar message(s) held back)", message, held)
        else:
            self.logger.warning("%s", message)
        return True


class AdapterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clock: ClockConfig = Field(default_factory=ClockConfig)


class Adapter(Source):
    """Subclasses set ``type_name`` and ``Config``; ``stream`` is
    ``<experiment>/<cell>/<instrument>``.

    ``make_frame`` stamps a block: the instrument's ``t0_ns`` goes through the clock model onto
    the host time base, the raw clock is kept in ``meta["clock"]``, and ``seq`` counts up per kind.

    ``reject`` counts a bad input and logs it through ``warnings``, a ``WarnLimiter`` on the
    adapter module's logger: per key the first ``reject_burst`` messages, then one per
    ``reject_interval_s`` that says how many were held back.
    """

    type_name: ClassVar[str] = "adapter"
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig
    reject_burst: ClassVar[int] = 20
    reject_interval_s: ClassVar[float] = 10.0

    def __init__(self, stream: str, config: AdapterConfig | None = None):
        self.stream = stream
        self.config = config or self.Config()
        self.name = stream.replace("/", ".")
        self._seqs: dict[str, int] = {}
        self.timebase = ClockModel(getattr(self.config, "clock", None))
        self.rejects = 0
        self.errors: list[str] = []   # the most recent reject reasons (bounded)
        self.warnings = WarnLimiter(logging.getLogger(type(self).__module__), self.reject_burst,
                                    self.reject_interval_s)

    def next_seq(self, kind: str) -> int:
        """``seq`` counts per (stream, kind), as every receiver tracks it."""
        seq = self._seqs.get(kind, 0)
        self._seqs[kind] = seq + 1
        return seq

    def make_frame(self, kind: str, instrument_t0_ns: int, arrays: dict[str, np.ndarray],
                   units: dict[str, str] | None = None, meta: dict[str, Any] | None = None,
                   host_ns: int | None = None, observe: bool = True) -> Frame:
        """A frame on the corrected time base. ``host_ns`` is when the block was received
        (``time.time_ns()`` if omitted); with ``observe`` it feeds the clock estimate."""
        if host_ns is None:
            host_ns = time.time_ns()
        last_ns = instrument_t0_ns
        t = arrays.get("t")
        if t is not None and len(t):
            last_ns = instrument_t0_ns + int(round(float(t[-1]) * 1e9))
        if observe:
            self.timebase.observe(last_ns, host_ns)
        t0 = self.timebase.correct(instrument_t0_ns, host_ns)
        meta = {**(meta or {}), "clock": self.timebase.meta(instrument_t0_ns, host_ns)}
        return Frame(self.stream, kind, self.next_seq(kind), t0, arrays, units or {}, meta)

    def reject(self, where: str, reason: str, limit: int = 100, key: str = "",
               log: bool = True) -> str:
        """Count a bad input, keep its message (``where`` names file:line:column, register or
        message) and log it, rate-limited per ``key`` (``log = False``: the caller reports the
        message another way). Returns the message."""
        self.rejects += 1
        message = f"{self.stream}: {where}: {reason}"
        self.errors.append(message)
        if len(self.errors) > limit:
            del self.errors[: len(self.errors) - limit]
        if log:
            self.warnings.warn(message, key)
        return message

    def reject_error(self, exc: InputError) -> str:
        """``reject`` for an error that names its place."""
        return self.reject(exc.where, exc.reason)

    def counters(self) -> dict[str, int]:
        return {"rejects": self.rejects}
