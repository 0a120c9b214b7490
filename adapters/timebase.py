"""Instrument clocks onto the shared time base.

Every adapter stamps each block with two clocks: the instrument's own time (from the file, the
register poll or the detector message) and the host's receive time. ``ClockModel`` estimates the
instrument clock's offset and drift against the host from those pairs; an offset (and drift) set
in the config overrides the estimate.

The host receive time is the instrument time plus the offset plus a delay that is never negative
(buffering, file flushes, network). So the offset is read off the lower envelope of
``host - instrument``: the minimum per bucket of ``bucket_s``, and the drift is the least-squares
slope through the last ``window_buckets`` bucket minima. Memory and time per sample are O(1).

Frames carry the corrected time: ``t0_ns`` is on the host time base, the raw instrument
``t0_ns`` and the clock model are kept in ``meta["clock"]``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ClockConfig(BaseModel):
    """``[..params.clock]``: how an adapter maps its instrument clock onto the host's."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["estimate", "fixed", "instrument", "host"] = "estimate"
    offset_s: float | None = None      # host - instrument; setting it selects mode "fixed"
    drift_ppm: float = 0.0             # with offset_s: instrument clock rate error
    bucket_s: float = Field(10.0, gt=0)
    window_buckets: int = Field(60, ge=2)
    min_buckets_for_drift: int = Field(6, ge=2)


class ClockModel:
    """Offset and drift of one instrument clock against the host clock.

    Modes: ``estimate`` (default; the lower envelope of host − instrument), ``fixed`` (the
    configured offset and drift), ``instrument`` (trust the instrument clock as it is: replays
    of files), ``host`` (stamp blocks with the receive time, for instruments without a clock).
    """

    def __init__(self, config: ClockConfig | None = None):
        self.config = config or ClockConfig()
        c = self.config
        self.mode = "fixed" if c.offset_s is not None and c.mode == "estimate" else c.mode
        self._fixed_offset_ns = int(round((c.offset_s or 0.0) * 1e9))
        self._buckets: deque[tuple[float, float]] = deque(maxlen=c.window_buckets)
        self._bucket_start_ns: int | None = None
        self._bucket_instr_s = 0.0
        self._bucket_min_s = math.inf
        self._first_instr_ns: int | None = None
        self._d0_ns = 0
        self.n_observations = 0
        self._offset_s = 0.0
        self._drift = 0.0
        self._ref_instr_s = 0.0

    # -- observations -----------------------------------------------------------------------
    def observe(self, instrument_ns: int, host_ns: int) -> None:
        """One pair: an instrument timestamp and the host time it was received at."""
        if self.mode != "estimate":
            return
        if self._first_instr_ns is None:
            self._first_instr_ns = instrument_ns
            self._bucket_start_ns = instrument_ns
            self._d0_ns = host_ns - instrument_ns  # offsets are kept relative to the first
        x = (instrument_ns - self._first_instr_ns) * 1e-9
        d = (host_ns - instrument_ns - self._d0_ns) * 1e-9
        self.n_observations += 1
        bucket_ns = int(self.config.bucket_s * 1e9)
        if instrument_ns - self._bucket_start_ns >= bucket_ns:
            self._close_bucket()
            self._bucket_start_ns = instrument_ns
        if d < self._bucket_min_s:
            self._bucket_min_s = d
            self._bucket_instr_s = x
        if not self._buckets:  # until the first bucket closes, the running minimum is the offset
            self._offset_s, self._ref_instr_s = self._bucket_min_s, self._bucket_instr_s

    def _close_bucket(self) -> None:
        if math.isfinite(self._bucket_min_s):
            self._buckets.append((self._bucket_instr_s, self._bucket_min_s))
            self._fit()
        self._bucket_min_s = math.inf

    def _fit(self) -> None:
        xs = np.array([b[0] for b in self._buckets])
        ds = np.array([b[1] for b in self._buckets])
        if len(xs) >= self.config.min_buckets_for_drift and np.ptp(xs) > 0:
            slope, intercept = np.polyfit(xs - xs[-1], ds, 1)
            # the envelope of the last buckets, on the line: robust to one slow bucket
            resid = ds - (intercept + slope * (xs - xs[-1]))
            self._offset_s = float(intercept + min(0.0, resid.min()))
            self._drift = float(slope)
        else:
            self._offset_s = float(ds.min())
            self._drift = 0.0
        self._ref_instr_s = float(xs[-1])

    # -- the model ------------------------------------------------------------------------------
    @property
    def offset_s(self) -> float:
        if self.mode == "fixed":
            return self._fixed_offset_ns * 1e-9
        return self._d0_ns * 1e-9 + self._offset_s if self.mode == "estimate" else 0.0

    @property
    def drift_ppm(self) -> float:
        if self.mode == "fixed":
            return self.config.drift_ppm
        return self._drift * 1e6 if self.mode == "estimate" else 0.0

    def offset_ns_at(self, instrument_ns: int) -> int:
        """host − instrument at an instrument time, in ns."""
        if self.mode == "instrument":
            return 0
        if self.mode == "fixed":
            if self._first_instr_ns is None:
                self._first_instr_ns = instrument_ns
            dt = (instrument_ns - self._first_instr_ns) * 1e-9
            return self._fixed_offset_ns + int(round(self.config.drift_ppm * 1e-6 * dt * 1e9))
        if self._first_instr_ns is None:
            return 0
        x = (instrument_ns - self._first_instr_ns) * 1e-9
        return self._d0_ns + int(round((self._offset_s + self._drift * (x - self._ref_instr_s))
                                       * 1e9))

    def correct(self, instrument_t0_ns: int, host_ns: int | None = None) -> int:
        """The block start on the host time base."""
        if self.mode == "host":
            return int(host_ns) if host_ns is not None else int(instrument_t0_ns)
        return int(instrument_t0_ns) + self.offset_ns_at(int(instrument_t0_ns))

    def meta(self, instrument_t0_ns: int, host_ns: int | None) -> dict[str, Any]:
        """What a frame's ``meta["clock"]`` records: the raw clock and the model applied."""
        out: dict[str, Any] = {"instrument_t0_ns": int(instrument_t0_ns), "mode": self.mode,
                               "offset_s": round(self.offset_s, 9),
                               "drift_ppm": round(self.drift_ppm, 6)}
        if host_ns is not None:
            out["host_receive_ns"] = int(host_ns)
        return out


_Config = TypeVar("_Config", bound=BaseModel)


def replay_clock(config: _Config) -> _Config:
    """An adapter config (with ``follow`` and ``clock``) for a source read once, as a replay:
    it trusts the instrument clock (file times, mtimes), unless the config chose a clock mode or
    set an offset. A followed source keeps its config."""
    clock: ClockConfig = config.clock
    if config.follow or "mode" in clock.model_fields_set or clock.offset_s is not None:
        return config
    return config.model_copy(update={"clock": ClockConfig(**{**clock.model_dump(),
                                                             "mode": "instrument"})})
