"""Electrical and thermal event detectors on each cell's potentiostat stream.

The per-sample detectors run in one numba kernel (``kernels/echem_events.py``, where each is
described): hard short, micro-shorts, soft short, abnormal self-discharge at rest, lithium plating
and the GB 38031 thermal-runaway criterion (dT/dt >= 1 degC/s held for more than 3 s). A drop in
coulombic efficiency against the cell's own EWMA is judged per ``result.cycle`` frame from the
electrochem processor (run it before this one).

Each event is an ``event`` frame at the onset with ``meta`` = {event, severity, source, onset_ns,
...} and float evidence as arrays; each detector fires once per episode and re-arms when its
condition clears or the cycler changes step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .electrochem import require_arrays
from .kernels import echem_events as K
from .sensor_faults import DEFAULT_LIMITS

_VOLTAGE = DEFAULT_LIMITS["voltage"]


class EventsConfig(ProcessorConfig):
    rest_current_A: float = 1e-5          # |I| below this is rest
    settle_s: float = 10.0                # after a step change, before noise is judged
    short_drop_V: float = 0.5
    short_window_s: float = 1.0
    short_rearm_s: float = 10.0           # the drop below a tenth of short_drop_V this long
    # readings outside this span are not a cell voltage (a spike, a rail): every detector skips
    # them, the sensor_faults processor reports them (its default voltage limits)
    voltage_limits_V: tuple[float, float] = (_VOLTAGE.low, _VOLTAGE.high)
    micro_min_V: float = 0.015
    micro_max_current_change: float = 0.01  # relative: a micro-short leaves I unchanged
    micro_sigmas: float = 8.0             # ... and drops further than this many noise sigmas
    soft_sigma_V: float = 0.002
    soft_tau_s: float = 30.0
    soft_for_s: float = 30.0
    stall_fraction: float = 0.05          # of the last charge; 0 disables the stall criterion
    stall_dV: float = 0.0005
    self_discharge_settle_s: float = 300.0
    self_discharge_tau_s: float = 120.0
    self_discharge_c_rate: float = 0.002  # leak current limit, as a C-rate
    self_discharge_for_s: float = 300.0
    plating_min_rate_V_s: float = 5e-5
    plating_flatness: float = 0.2
    plating_flat_s: float = 60.0
    plating_window_s: float = 1200.0
    plating_tau_s: float = 10.0
    runaway_dTdt_C_s: float = 1.0
    runaway_hold_s: float = 3.0
    runaway_tau_s: float = 1.0
    table_V: tuple[float, float] = (2.0, 5.0)  # voltage span of the dV/dQ table
    ce_alpha: float = 0.3                 # EWMA weight of the coulombic-efficiency baseline
    ce_drop: float = 0.005                # absolute drop below the EWMA that is an event
    ce_sigmas: float = 4.0
    ce_warmup_cycles: int = 2

    def params(self) -> np.ndarray:
        p = np.empty(K.N_PARAMS)
        p[[K.P_SHORT_DROP, K.P_SHORT_WIN, K.P_MICRO_MIN, K.P_MICRO_DI, K.P_REST_I, K.P_SETTLE,
           K.P_SOFT_SIGMA, K.P_SOFT_TAU, K.P_SOFT_FOR, K.P_STALL_FRAC, K.P_STALL_DV,
           K.P_SD_SETTLE, K.P_SD_TAU, K.P_SD_C_RATE, K.P_SD_FOR, K.P_PLATE_MIN, K.P_PLATE_FLAT,
           K.P_PLATE_FLAT_S, K.P_PLATE_WINDOW, K.P_PLATE_TAU, K.P_RUN_DTDT, K.P_RUN_HOLD,
           K.P_RUN_TAU, K.P_V_LO, K.P_V_HI, K.P_MICRO_SIGMAS, K.P_V_VALID_LO, K.P_V_VALID_HI,
           K.P_SHORT_REARM]] = [
            self.short_drop_V, self.short_window_s, self.micro_min_V,
            self.micro_max_current_change, self.rest_current_A, self.settle_s, self.soft_sigma_V,
            self.soft_tau_s, self.soft_for_s, self.stall_fraction, self.stall_dV,
            self.self_discharge_settle_s, self.self_discharge_tau_s, self.self_discharge_c_rate,
            self.self_discharge_for_s, self.plating_min_rate_V_s, self.plating_flatness,
            self.plating_flat_s, self.plating_window_s, self.plating_tau_s,
            self.runaway_dTdt_C_s, self.runaway_hold_s, self.runaway_tau_s, *self.table_V,
            self.micro_sigmas, *self.voltage_limits_V, self.short_rearm_s]
        return p


# code -> (severity, evidence names of the kernel's three values)
_DESCRIBE = {
    K.HARD_SHORT: ("critical", ("voltage_drop_V", "voltage_V", "current_A")),
    K.MICRO_SHORT: ("warning", ("depth_V", "voltage_V", "current_A")),
    K.SOFT_SHORT: ("critical", ("voltage_sigma_V", "voltage_V", "current_A")),
    K.SOFT_SHORT_STALL: ("critical", ("voltage_rise_V", "charge_Ah", "voltage_V")),
    K.SELF_DISCHARGE: ("warning", ("leak_current_A", "r_isc_ohm", "dVdt_V_s")),
    K.PLATING: ("warning", ("dVdt_V_s", "plateau_s", "voltage_V")),
    K.THERMAL_RUNAWAY: ("critical", ("dTdt_C_s", "temperature_C", "held_s")),
}
_CRITERIA = {
    K.SOFT_SHORT: "sigma of dV during CC charge",
    K.SOFT_SHORT_STALL: "charge passed without the voltage rising",
    K.THERMAL_RUNAWAY: "GB 38031: dT/dt >= 1 degC/s for > 3 s",
}


@dataclass
class _CeBaseline:
    mean: float = math.nan
    var: float = 0.0
    n: int = 0


@dataclass
class _Cell:
    state: np.ndarray = field(default_factory=K.new_state)
    ce: _CeBaseline = field(default_factory=_CeBaseline)


class EventProcessor(Processor):
    type_name = "events"
    consumes = ("echem", "result.cycle")
    Config = EventsConfig

    def __init__(self, config: EventsConfig | None = None):
        super().__init__(config)
        self._params = self.config.params()
        self._cells: dict[str, _Cell] = {}

    def _cell(self, key: str) -> _Cell:
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell()
        return cell

    def process(self, frame: Frame) -> list[Frame]:
        if frame.kind == "result.cycle":
            return self._coulombic_efficiency(frame)
        t, voltage, current = require_arrays(frame, ("t", "voltage", "current"))
        n = t.size
        temp = frame.arrays.get("temperature")
        temp = np.full(n, np.nan) if temp is None else \
            np.ascontiguousarray(np.ravel(temp), dtype=np.float64)
        step = frame.arrays.get("step")
        step = np.full(n, np.nan) if step is None else \
            np.ascontiguousarray(np.ravel(step), dtype=np.float64)
        for name, arr in (("temperature", temp), ("step", step)):
            if arr.size != n:
                raise FrameError(frame.stream, f"arrays.{name}", f"{arr.size} samples, t has {n}")
        t_abs = self.stream_seconds(frame, t)
        rows = K.detect_block(t_abs, voltage, current, temp, step, self._params,
                              self._cell(frame.stream).state)
        out = []
        for code, _, onset, *values in rows:
            severity, names = _DESCRIBE[int(code)]
            evidence: dict = {name: float(v) for name, v in zip(names, values, strict=True)}
            if int(code) in _CRITERIA:
                evidence["criterion"] = _CRITERIA[int(code)]
            out.append(self.emit_event(frame, float(onset), K.NAMES[int(code)], severity,
                                       evidence))
        return out

    def _coulombic_efficiency(self, frame: Frame) -> list[Frame]:
        (ce_arr,) = require_arrays(frame, ("coulombic_efficiency",))
        ce = float(ce_arr[-1])
        if not math.isfinite(ce):
            return []
        c = self.config
        base = self._cell(f"{frame.stream.rsplit('/', 1)[0]}").ce
        out = []
        if base.n >= c.ce_warmup_cycles:
            limit = max(c.ce_drop, c.ce_sigmas * math.sqrt(base.var))
            if base.mean - ce > limit:
                t_s = float(self.stream_seconds(frame, np.zeros(1))[0])
                out.append(self.emit_event(frame, t_s, "ce_drop", "warning", {
                    "coulombic_efficiency": ce, "baseline": base.mean, "drop": base.mean - ce}))
                return out  # an outlier does not move the baseline
        if base.n == 0:
            base.mean = ce
        else:
            diff = ce - base.mean
            base.mean += c.ce_alpha * diff
            base.var = (1 - c.ce_alpha) * (base.var + c.ce_alpha * diff * diff)
        base.n += 1
        return out
