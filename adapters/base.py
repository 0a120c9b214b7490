"""The adapter interface: an instrument becomes a Source of standard frames."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.frame import Frame
from stream.sources import Source

from .timebase import ClockConfig, ClockModel


class AdapterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clock: ClockConfig = Field(default_factory=ClockConfig)


class Adapter(Source):
    """Subclasses set ``type_name`` and ``Config``; ``stream`` is
    ``<experiment>/<cell>/<instrument>``.

    ``make_frame`` stamps a block: the instrument's ``t0_ns`` goes through the clock model onto
    the host time base, the raw clock is kept in ``meta["clock"]``, and ``seq`` counts up per kind.
    """

    type_name: ClassVar[str] = "adapter"
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig

    def __init__(self, stream: str, config: AdapterConfig | None = None):
        self.stream = stream
        self.config = config or self.Config()
        self.name = stream.replace("/", ".")
        self.seq = 0
        self._seqs: dict[str, int] = {}
        self.timebase = ClockModel(getattr(self.config, "clock", None))
        self.rejects = 0
        self.errors: list[str] = []   # the most recent reject reasons (bounded)

    def next_seq(self, kind: str | None = None) -> int:
        if kind is None:
            seq = self.seq
            self.seq += 1
            return seq
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

    def reject(self, where: str, reason: str, limit: int = 100) -> str:
        """Count a bad input and keep its message (``where`` names file:line:column, register
        or message). Returns the message, which the caller may log."""
        self.rejects += 1
        message = f"{self.stream}: {where}: {reason}"
        self.errors.append(message)
        if len(self.errors) > limit:
            del self.errors[: len(self.errors) - limit]
        return message

    def counters(self) -> dict[str, int]:
        return {"rejects": self.rejects}
