"""Sensor faults: stuck values, dropouts, spikes and out-of-range readings, per channel.

Consumes ``echem``, ``pressure`` and ``ms.ion_current`` frames. Every numeric channel (every
array but ``t`` and the names in ``exclude``) gets four detectors whose state lives in one
numba state row (``processors/kernels/sensor.py``), each O(1) per sample:

- **sensor_dropout**: no finite sample (NaN/inf, or a time gap) for more than
  max(``dropout_s``, ``dropout_periods`` x the learned sample period). Frames lost in transport
  (a gap in the frame's ``seq``) are the link's loss, counted by the sequence tracker, not the
  sensor's: the time they covered is not counted as missing;
- **sensor_out_of_range**: outside the channel's ``limits`` for ``range_s`` and
  ``range_min_samples``; re-armed after ``rearm_s`` inside the limits narrowed by the
  hysteresis;
- **sensor_stuck**: the value does not move (bit-identical, or within ``stuck_resolution``) for
  ``stuck_s`` and ``stuck_min_samples`` on a channel that normally moves (learned fraction of
  unchanged steps below ``stuck_max_unchanged``, and the run unlikely at that fraction). Runs
  of exact zeros on ``stuck_zero_ok`` channels (current at rest) are not stuck;
- **sensor_spikes**: ``spike_min_count`` isolated outliers (robust z > ``spike_z`` against an
  EWMA level and MAD-like scale, back within ``spike_z_return`` after at most
  ``spike_max_burst`` samples) within ``spike_window_s``.

Each fires one ``event`` frame per episode (severity ``warning``, at the onset) with
``meta.channel`` and float evidence, and re-arms when the condition has cleared. Missing
samples feed only the dropout detector and out-of-range samples only the range detector.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .electrochem import require_arrays
from .kernels import sensor as K

DetectorName = Literal["dropout", "out_of_range", "stuck", "spikes"]
KIND_CODES: dict[str, int] = {"dropout": K.DROPOUT, "out_of_range": K.OUT_OF_RANGE,
                              "stuck": K.STUCK, "spikes": K.SPIKES}
EVENT_NAMES = {code: f"sensor_{name}" for name, code in KIND_CODES.items()}
# names of the kernel's evidence columns e1..e4 per kind (None: not reported as a number)
EVIDENCE: dict[int, tuple[str | None, ...]] = {
    K.DROPOUT: ("missing_s", "period_s", "nan_samples", None),
    K.OUT_OF_RANGE: ("value", "low", "high", "duration_s"),
    K.STUCK: ("value", "duration_s", "samples", "typical_step"),
    K.SPIKES: ("spikes", "max_z", "level", "value"),
}


class RangeLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float = -math.inf
    high: float = math.inf
    hysteresis: float = 0.0
    unit: str | None = None  # checked against the frame's unit for the channel


DEFAULT_LIMITS: dict[str, RangeLimit] = {
    "voltage": RangeLimit(low=-0.5, high=5.5, hysteresis=0.05, unit="V"),
    "pressure": RangeLimit(low=0.0, high=1.0e6, hysteresis=1.0e3, unit="Pa"),  # 0..10 bar abs
    "temperature": RangeLimit(low=-40.0, high=150.0, hysteresis=1.0, unit="degC"),
    "m[0-9]*": RangeLimit(low=-1e-12, high=1e-5, hysteresis=1e-13, unit="A"),  # ion currents
}


class SensorFaultsConfig(ProcessorConfig):
    detectors: list[DetectorName] = ["dropout", "out_of_range", "stuck", "spikes"]
    # arrays that are not sensor channels: counters, integrals, per-channel sample times
    exclude: list[str] = ["step", "cycle", "half_cycle", "selector", "q_*", "t_*"]
    rearm_s: float = 5.0
    dropout_s: float = 2.0
    dropout_periods: float = 5.0
    # channel-name pattern -> limits; merged over DEFAULT_LIMITS, first matching pattern wins
    limits: dict[str, RangeLimit] = {}
    range_s: float = 2.0
    range_min_samples: int = 3
    stuck_s: float = 10.0
    stuck_min_samples: int = 5
    stuck_learn_samples: int = Field(100, ge=2)  # EWMA horizon and warm-up, changed samples
    stuck_max_unchanged: float = 0.5
    stuck_significance: float = Field(1e-6, gt=0.0, lt=1.0)
    stuck_zero_ok: list[str] = ["current"]
    stuck_resolution: dict[str, float] = {}  # channel-name pattern -> resolution
    spike_z: float = 10.0
    spike_z_return: float = 5.0
    spike_alpha: float = 0.05
    spike_warmup: int = Field(16, ge=3, le=K.MAX_WARMUP)
    spike_max_burst: int = Field(2, ge=1, le=K.MAX_BURST)
    spike_min_count: int = Field(3, ge=1, le=K.MAX_COUNT)
    spike_window_s: float = 60.0
    spike_rel_floor: float = 1e-6        # sigma >= this x |level|


def params_vector(c: SensorFaultsConfig) -> np.ndarray:
    p = np.zeros(K.N_PARAM)
    p[K.P_DROPOUT_S], p[K.P_DROPOUT_PERIODS] = c.dropout_s, c.dropout_periods
    p[K.P_RANGE_S], p[K.P_RANGE_N] = c.range_s, c.range_min_samples
    p[K.P_STUCK_S], p[K.P_STUCK_N] = c.stuck_s, c.stuck_min_samples
    p[K.P_STUCK_ALPHA] = 1.0 / c.stuck_learn_samples
    p[K.P_STUCK_WARMUP] = c.stuck_learn_samples
    p[K.P_STUCK_MAX_UNCHANGED] = c.stuck_max_unchanged
    p[K.P_STUCK_LOG_SIG] = math.log(c.stuck_significance)
    p[K.P_SPIKE_Z], p[K.P_SPIKE_Z_RETURN] = c.spike_z, c.spike_z_return
    p[K.P_SPIKE_ALPHA], p[K.P_SPIKE_WARMUP] = c.spike_alpha, c.spike_warmup
    p[K.P_SPIKE_MAX_BURST], p[K.P_SPIKE_COUNT] = c.spike_max_burst, c.spike_min_count
    p[K.P_SPIKE_WINDOW_S], p[K.P_SPIKE_REL_FLOOR] = c.spike_window_s, c.spike_rel_floor
    p[K.P_REARM_S] = c.rearm_s
    return p


def _first_match(name: str, table: dict[str, Any]) -> Any:
    return next((v for pattern, v in table.items() if fnmatch.fnmatchcase(name, pattern)), None)


@dataclass
class _StreamState:
    index: dict[str, int] = field(default_factory=dict)
    state: np.ndarray = field(default_factory=lambda: K.new_state(0))
    chan: np.ndarray = field(default_factory=lambda: np.zeros((0, K.N_CHAN)))
    rows: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)  # frame kind -> last seq


class SensorFaultProcessor(Processor):
    type_name = "sensor_faults"
    consumes = ("echem", "pressure", "ms.ion_current")
    Config = SensorFaultsConfig

    def __init__(self, config: SensorFaultsConfig | None = None):
        super().__init__(config)
        c = self.config
        self._params = params_vector(c)
        self._enabled = np.zeros(4, dtype=np.bool_)
        for name in c.detectors:
            self._enabled[KIND_CODES[name]] = True
        self._limits = {**c.limits, **{k: v for k, v in DEFAULT_LIMITS.items()
                                       if k not in c.limits}}
        self._streams: dict[str, _StreamState] = {}
        self._channels: dict[tuple[str, ...], tuple[str, ...]] = {}  # array names -> channels

    def process(self, frame: Frame) -> list[Frame]:
        names = tuple(frame.arrays)
        channels = self._channels.get(names)
        if channels is None:
            channels = self._channels[names] = tuple(
                n for n in names if n != "t" and not any(
                    fnmatch.fnmatchcase(n, pattern) for pattern in self.config.exclude))
        t, *values = require_arrays(frame, ("t", *channels))
        if K.decreases(t):
            raise FrameError(frame.stream, "arrays.t", "sample times decrease")
        st = self._streams.get(frame.stream)
        if st is None:
            st = self._streams[frame.stream] = _StreamState()
        rows = st.rows.get(channels)
        if rows is None:
            rows = st.rows[channels] = self._rows(frame, st, channels)
        x = np.concatenate(values).reshape(len(values), t.size) if values else \
            np.empty((0, t.size))
        t_abs = self.stream_seconds(frame, t)
        last_seq = st.seq.get(frame.kind)
        st.seq[frame.kind] = frame.seq
        if last_seq is not None and frame.seq > last_seq + 1 and t_abs.size:
            K.skip_lost(st.state, rows, float(t_abs[0]))  # lost in transport, not a dropout
        found = K.monitor(t_abs, x, rows, st.state, st.chan, self._params, self._enabled)
        if not found.shape[0]:
            return []
        names_of = {row: name for name, row in st.index.items()}
        return [self._event(frame, names_of[int(e[0])], e) for e in found]

    def channels(self, stream: str) -> list[str]:
        """The channels monitored on a stream so far."""
        st = self._streams.get(stream)
        return list(st.index) if st else []

    def _rows(self, frame: Frame, st: _StreamState, channels: tuple[str, ...]) -> np.ndarray:
        """State rows of these channels; new channels get fresh detectors."""
        c = self.config
        for name in channels:
            if name in st.index:
                continue
            limit = _first_match(name, self._limits) or RangeLimit()
            unit = frame.units.get(name)
            if limit.unit and unit and unit != limit.unit:
                raise FrameError(frame.stream, f"units.{name}",
                                 f"{unit!r}, but its range limits are in {limit.unit!r}")
            chan = np.zeros((1, K.N_CHAN))
            chan[0, K.C_LOW], chan[0, K.C_HIGH] = limit.low, limit.high
            chan[0, K.C_HYST] = limit.hysteresis
            chan[0, K.C_ZERO_OK] = any(fnmatch.fnmatchcase(name, p) for p in c.stuck_zero_ok)
            chan[0, K.C_RESOLUTION] = _first_match(name, c.stuck_resolution) or 0.0
            st.index[name] = len(st.index)
            st.state = np.vstack([st.state, K.new_state(1)])
            st.chan = np.vstack([st.chan, chan])
        return np.array([st.index[n] for n in channels], dtype=np.int64)

    def _event(self, frame: Frame, channel: str, e: np.ndarray) -> Frame:
        alarm = Alarm.from_row(e)
        return self.emit_event(frame, alarm.onset_s, alarm.event, "warning",
                               {"channel": channel, **alarm.evidence})


@dataclass(frozen=True)
class Alarm:
    event: str
    onset_s: float
    detected_s: float
    evidence: dict[str, Any]

    @classmethod
    def from_row(cls, e: np.ndarray) -> Alarm:
        """From one row of the kernel's event table."""
        kind = int(e[1])
        onset, detected = float(e[2]), float(e[3])
        evidence: dict[str, Any] = {"latency_s": detected - onset}
        for name, value in zip(EVIDENCE[kind], e[4:8], strict=True):
            if name is not None:
                evidence[name] = float(value)
        if kind == K.DROPOUT:
            evidence["cause"] = "nan" if e[7] else "gap"
        return cls(EVENT_NAMES[kind], onset, detected, evidence)


class ChannelDetector:
    """One detector on one channel, River style: the state lives on the object, ``update(t, x)``
    is O(1) and returns an Alarm when the detector fires. Keyword arguments are
    SensorFaultsConfig fields (``stuck_s=5.0``...)."""

    kind: ClassVar[str]

    def __init__(self, limit: RangeLimit | None = None, zero_ok: bool = False,
                 resolution: float = 0.0, **config: Any):
        self.params = params_vector(SensorFaultsConfig(**config))
        self.enabled = np.zeros(4, dtype=np.bool_)
        self.enabled[KIND_CODES[self.kind]] = True
        self.state = K.new_state(1)
        limit = limit or RangeLimit()
        self.chan = np.array([[limit.low, limit.high, limit.hysteresis, float(zero_ok),
                               resolution]])
        self._rows = np.zeros(1, dtype=np.int64)

    def update(self, t: float, x: float) -> Alarm | None:
        alarms = self.update_many(np.array([t], dtype=np.float64), np.array([x]))
        return alarms[0] if alarms else None

    def update_many(self, t: np.ndarray, xs: np.ndarray) -> list[Alarm]:
        x = np.ascontiguousarray(xs, dtype=np.float64).reshape(1, -1)
        found = K.monitor(np.ascontiguousarray(t, dtype=np.float64), x, self._rows, self.state,
                          self.chan, self.params, self.enabled)
        return [Alarm.from_row(e) for e in found]


class DropoutDetector(ChannelDetector):
    kind = "dropout"


class StuckDetector(ChannelDetector):
    kind = "stuck"

    @property
    def p_unchanged(self) -> float:
        """The learned fraction of samples that repeat the previous value."""
        return float(self.state[0, K.S_P_UNCHANGED])


class SpikeDetector(ChannelDetector):
    kind = "spikes"

    @property
    def z(self) -> float:
        """Robust z of the last sample (NaN during warm-up)."""
        return float(self.state[0, K.K_Z])


class RangeDetector(ChannelDetector):
    kind = "out_of_range"

    def __init__(self, low: float, high: float, hysteresis: float = 0.0, **config: Any):
        super().__init__(RangeLimit(low=low, high=high, hysteresis=hysteresis), **config)
