"""Electrochemistry: coulomb counting, half-cycles and cycles, capacity, efficiency and energy;
dQ/dV per half-cycle, internal resistance at current steps, and state of charge.

Consumes ``echem`` frames with arrays ``t`` (s), ``voltage`` (V) and ``current`` (A, positive =
charge). Emits per input block ``result.echem`` (cumulative charge and SOC at the block's last
sample), per closed half-cycle ``result.dqdv`` (smoothed dQ/dV curve) and ``result.half_cycle``,
per closed cycle (charge then discharge) ``result.cycle`` with capacities, coulombic and energy
efficiency, and per current step ``result.resistance`` (R0 and R after set delays).
Every output depends only on the samples, not on how they are cut into frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field, model_validator
from scipy.ndimage import gaussian_filter1d

from stream._fast import all_finite
from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .kernels import dqdv, resistance, soc
from .kernels.coulomb import E_HALF, Q_HALF, SIGN, coulomb_count, new_state
from .kernels.resistance import TIME_EPS

MAX_DQDV_BINS = 100_000


class ElectrochemConfig(ProcessorConfig):
    current_threshold_A: float = 1e-5  # |I| below this is rest
    # how the current samples were taken: "auto" reads the frame's meta["current_kind"]
    # ("instantaneous", the default, or "interval_mean" as EC-Lab's <I>)
    current_kind: Literal["auto", "instantaneous", "interval_mean"] = "auto"
    # dQ/dV: charge binned on a fixed voltage grid per half-cycle, Gaussian-smoothed
    dqdv_v_min: float = 0.0
    dqdv_v_max: float = 5.0
    dqdv_bin_V: float = Field(0.005, gt=0)
    dqdv_smooth_V: float = Field(0.005, ge=0)           # Gaussian sigma; 0 = raw bins
    dqdv_min_current_fraction: float = Field(0.9, ge=0, le=1)  # drops CV tapers
    dqdv_partial_s: float = Field(0.0, ge=0)            # live curve every N s; 0 = off
    # resistance at current steps: R0 from the first sample, then R after each delay
    resistance_delays_s: list[float] = [1.0, 10.0]
    resistance_min_step_fraction: float = Field(0.2, ge=0)  # of the largest |I| seen
    resistance_trend_s: float = Field(10.0, ge=0)  # R0 corrected for the pre-step drift; 0 = off
    # state of charge: anchors at the cut-offs (None = that anchor off), optional OCV table
    soc_v_full: float | None = None
    soc_v_empty: float | None = None
    soc_v_tol: float = Field(0.005, ge=0)
    soc_taper_C: float = Field(0.1, gt=0)
    nominal_capacity_Ah: float | None = Field(None, gt=0)
    ocv_table: list[tuple[float, float]] = []           # (soc, V), V increasing
    ocv_rest_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ElectrochemConfig:
        n_bins = (self.dqdv_v_max - self.dqdv_v_min) / self.dqdv_bin_V
        if not 1 <= n_bins <= MAX_DQDV_BINS:
            raise ValueError(f"dqdv_v_min..dqdv_v_max must hold 1 to {MAX_DQDV_BINS} bins "
                             f"of dqdv_bin_V, not {n_bins:g}")
        if any(d <= 0 for d in self.resistance_delays_s):
            raise ValueError("resistance_delays_s must be positive")
        if self.resistance_delays_s != sorted(self.resistance_delays_s):
            raise ValueError("resistance_delays_s must be in increasing order")
        if self.ocv_table and (len(self.ocv_table) < 2 or np.any(
                np.diff([v for _, v in self.ocv_table]) <= 0)):
            raise ValueError("ocv_table needs at least 2 (soc, V) rows with V increasing")
        return self


@dataclass
class _CellState:
    kernel: np.ndarray = field(default_factory=new_state)
    cycle: int = 0
    half_cycle: int = 0
    pending_charge: tuple[float, float] | None = None  # (Ah, Wh) of the last charge half-cycle
    last_frame: Frame | None = None
    last_t_ns: int = 0
    dqdv_bins: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dqdv_state: np.ndarray = field(default_factory=dqdv.new_state)
    next_partial_s: float = 0.0
    partial_q: float = math.nan  # cumulative charge at the last live dQ/dV curve
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    soc: np.ndarray = field(default_factory=lambda: np.zeros(0))


_F8 = np.dtype(np.float64)


def require_arrays(frame: Frame, names: tuple[str, ...]) -> list[np.ndarray]:
    """The named 1-D float arrays, all as long as ``t``; FrameError names what is wrong."""
    out = []
    arrays = frame.arrays
    t = arrays.get("t")
    n = t.shape[0] if t is not None and t.ndim else 1  # Frame.n_samples
    for name in names:
        arr = arrays.get(name)
        if arr is None:
            raise FrameError(frame.stream, f"arrays.{name}", "missing")
        if arr.ndim != 1 or arr.shape[0] != n:
            raise FrameError(frame.stream, f"arrays.{name}",
                             f"shape {list(arr.shape)} does not match t ({n} samples)")
        if arr.dtype == _F8 and arr.flags.c_contiguous:  # the usual case: as it is
            out.append(arr)
            continue
        if arr.dtype.kind not in "fiu":
            raise FrameError(frame.stream, f"arrays.{name}", f"dtype {arr.dtype.str} not numeric")
        out.append(np.ascontiguousarray(arr, dtype=np.float64))
    return out


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


class ElectrochemProcessor(Processor):
    type_name = "electrochem"
    consumes = ("echem",)
    Config = ElectrochemConfig

    def __init__(self, config: ElectrochemConfig | None = None):
        super().__init__(config)
        c = self.config
        self._cells: dict[str, _CellState] = {}
        self._n_bins = int(round((c.dqdv_v_max - c.dqdv_v_min) / c.dqdv_bin_V))
        self._bin_centres = c.dqdv_v_min + (np.arange(self._n_bins) + 0.5) * c.dqdv_bin_V
        self._delays = np.array(c.resistance_delays_s, dtype=np.float64)
        self._r_names = ["r0_ohm"] + [f"r_{d:g}s_ohm" for d in c.resistance_delays_s]
        table = np.array(c.ocv_table, dtype=np.float64).reshape(-1, 2)
        self._ocv_soc, self._ocv_v = table[:, 0].copy(), table[:, 1].copy()
        # without an anchor SOC stays unknown: skip the kernel
        self._soc_on = (c.soc_v_full is not None or c.soc_v_empty is not None
                        or len(c.ocv_table) > 0)
        self._no_soc = np.full(1, np.nan)
        self._v_full, self._v_empty = _or_nan(c.soc_v_full), _or_nan(c.soc_v_empty)

    def _new_cell(self) -> _CellState:
        st = _CellState()
        st.dqdv_bins = np.zeros(self._n_bins)
        st.next_partial_s = self.config.dqdv_partial_s
        st.steps = resistance.new_state(len(self._delays))
        st.soc = soc.new_state(self.config.nominal_capacity_Ah)
        return st

    def process(self, frame: Frame) -> list[Frame]:
        t, voltage, current = require_arrays(frame, ("t", "voltage", "current"))
        for name, arr in (("voltage", voltage), ("current", current)):
            if not all_finite(arr):
                raise FrameError(frame.stream, f"arrays.{name}", "non-finite sample")
        st = self._cells.get(frame.stream)
        if st is None:
            st = self._cells[frame.stream] = self._new_cell()
        c = self.config
        t_abs = self.stream_seconds(frame, t)
        kind = c.current_kind
        if kind == "auto":
            kind = frame.meta.get("current_kind", "instantaneous")
        q_total, ends = coulomb_count(t_abs, current, voltage, c.current_threshold_A,
                                      st.kernel, kind == "interval_mean")
        st.last_frame = frame
        st.last_t_ns = frame.t0_ns + round(float(t[-1]) * 1e9)
        out: list[Frame] = []
        start = 0
        for index, sign, charge, energy in ends:
            stop = int(index)
            self._bin_dqdv(frame, st, t, t_abs, voltage, current, q_total, start, stop,
                           int(sign), out)
            start = stop
            t_ns = frame.t0_ns + round(float(t[stop]) * 1e9)
            out.extend(self._close_half_cycle(frame, st, t_ns, int(sign), charge, energy))
        self._bin_dqdv(frame, st, t, t_abs, voltage, current, q_total, start, len(t),
                       int(st.kernel[SIGN]), out)
        rows = resistance.current_steps(t_abs, voltage, current, c.current_threshold_A,
                                        c.resistance_min_step_fraction, self._delays,
                                        c.resistance_trend_s, st.steps)
        out.extend(self._resistance_frame(frame, row) for row in rows)
        last = len(t) - 1
        soc_now = self._no_soc
        if self._soc_on:
            soc_now = soc.track_soc(t_abs, voltage, current, q_total, st.soc,
                                    c.current_threshold_A, self._v_full, self._v_empty,
                                    c.soc_v_tol, c.soc_taper_C, self._ocv_v, self._ocv_soc,
                                    c.ocv_rest_s)[last:]
        out.append(self.emit(frame, "result.echem", frame.t0_ns + round(float(t[last]) * 1e9), {
            "t": np.zeros(1),
            "voltage": voltage[last:],
            "current": current[last:],
            "charge_Ah": q_total[last:],
            "soc": soc_now,
            "cycle": np.array([st.cycle], dtype=np.int64),
            "half_cycle": np.array([st.half_cycle], dtype=np.int64),
        }, {"t": "s", "voltage": "V", "current": "A", "charge_Ah": "Ah"}))
        return out

    def flush(self) -> list[Frame]:
        """At the end of a run, the half-cycle still open is reported too (``complete`` = 0),
        and the last current step with the delayed resistances it could measure."""
        out: list[Frame] = []
        for st in self._cells.values():
            sign = int(st.kernel[SIGN])
            if st.last_frame is None:
                continue
            if sign != 0 and st.kernel[Q_HALF] != 0.0:
                out.extend(self._close_half_cycle(st.last_frame, st, st.last_t_ns, sign,
                                                  st.kernel[Q_HALF], st.kernel[E_HALF],
                                                  complete=False))
            out.extend(self._resistance_frame(st.last_frame, row)
                       for row in resistance.pending_step(st.steps, len(self._delays)))
        return out

    # -- dQ/dV ---------------------------------------------------------------------------
    def _bin_dqdv(self, frame: Frame, st: _CellState, t: np.ndarray, t_abs: np.ndarray,
                  voltage: np.ndarray, current: np.ndarray, q_total: np.ndarray, start: int,
                  stop: int, sign: int, out: list[Frame]) -> None:
        """Bin samples [start, stop) of the open half-cycle (direction ``sign``); a live
        curve at every ``dqdv_partial_s`` boundary (at the first sample on or after it)."""
        c = self.config
        while start < stop:
            cut = stop + 1  # no boundary crossed
            if c.dqdv_partial_s > 0:
                cut = start + int(np.searchsorted(t_abs[start:stop],
                                                  st.next_partial_s - TIME_EPS)) + 1
            end = min(cut, stop)
            whole = start == 0 and end == len(t)  # the usual case: no copies
            dqdv.bin_charge(voltage if whole else voltage[start:end],
                            q_total if whole else q_total[start:end],
                            current if whole else current[start:end],
                            st.dqdv_state, st.dqdv_bins, c.dqdv_v_min, c.dqdv_bin_V,
                            c.dqdv_min_current_fraction)
            if cut <= stop:  # crossed a live-curve boundary at sample cut - 1
                k = cut - 1
                st.next_partial_s = (math.floor((t_abs[k] + TIME_EPS) / c.dqdv_partial_s)
                                     + 1) * c.dqdv_partial_s
                if q_total[k] != st.partial_q:
                    st.partial_q = q_total[k]
                    out.extend(self._dqdv_frame(frame, st, frame.t0_ns + round(t[k] * 1e9),
                                                sign, complete=False))
            start = end

    def _dqdv_frame(self, frame: Frame, st: _CellState, t_ns: int, sign: int,
                    complete: bool) -> list[Frame]:
        """The smoothed curve over the bins that hold charge (empty list if none)."""
        c = self.config
        filled = np.flatnonzero(st.dqdv_bins)
        if filled.size == 0:
            return []
        curve = st.dqdv_bins / c.dqdv_bin_V
        sigma = c.dqdv_smooth_V / c.dqdv_bin_V
        radius = 0
        if sigma > 0:
            curve = gaussian_filter1d(curve, sigma, mode="constant", truncate=4.0)
            radius = int(4.0 * sigma + 0.5)
        lo, hi = max(filled[0] - radius, 0), min(filled[-1] + radius + 1, self._n_bins)
        curve = curve[lo:hi]
        peak = int(np.argmax(np.abs(curve)))
        return [self.emit(frame, "result.dqdv", t_ns, {
            "voltage": self._bin_centres[lo:hi].copy(),
            "dqdv": curve,
            "peak_voltage": self._bin_centres[lo + peak:lo + peak + 1].copy(),
            "peak_dqdv": curve[peak:peak + 1].copy(),
            "direction": np.array([sign], dtype=np.int64),
            "cycle": np.array([st.cycle], dtype=np.int64),
            "half_cycle": np.array([st.half_cycle], dtype=np.int64),
            "complete": np.array([int(complete)], dtype=np.int64),
        }, {"voltage": "V", "dqdv": "Ah/V", "peak_voltage": "V", "peak_dqdv": "Ah/V"})]

    # -- resistance ----------------------------------------------------------------------
    def _resistance_frame(self, frame: Frame, row: np.ndarray) -> Frame:
        arrays = {"t": np.zeros(1)}
        arrays.update({name: row[resistance.N_ROW_FIXED + j:resistance.N_ROW_FIXED + j + 1]
                       for j, name in enumerate(self._r_names)})
        arrays["delta_i_A"] = row[resistance.ROW_DI:resistance.ROW_DI + 1]
        arrays["i_before_A"] = row[resistance.ROW_I_BEFORE:resistance.ROW_I_BEFORE + 1]
        arrays["v_before_V"] = row[resistance.ROW_V_BEFORE:resistance.ROW_V_BEFORE + 1]
        arrays["dt_s"] = row[resistance.ROW_DT:resistance.ROW_DT + 1]
        units = {name: "ohm" for name in self._r_names}
        units.update({"t": "s", "delta_i_A": "A", "i_before_A": "A", "v_before_V": "V",
                      "dt_s": "s"})
        return self.emit(frame, "result.resistance",
                         self.stream_ns(frame, float(row[resistance.ROW_T])), arrays, units)

    # -- half-cycles and cycles ----------------------------------------------------------
    def _close_half_cycle(self, frame: Frame, st: _CellState, t_ns: int, sign: int,
                          charge: float, energy: float, complete: bool = True) -> list[Frame]:
        out = self._dqdv_frame(frame, st, t_ns, sign, complete)
        out.append(self.emit(frame, "result.half_cycle", t_ns, {
            "capacity_Ah": np.array([abs(charge)]),
            "energy_Wh": np.array([abs(energy)]),
            "direction": np.array([sign], dtype=np.int64),
            "cycle": np.array([st.cycle], dtype=np.int64),
            "half_cycle": np.array([st.half_cycle], dtype=np.int64),
            "complete": np.array([int(complete)], dtype=np.int64),
        }, {"capacity_Ah": "Ah", "energy_Wh": "Wh"}))
        if not complete:
            return out
        st.dqdv_bins[:] = 0.0
        st.dqdv_state[dqdv.I_MAX] = 0.0
        st.partial_q = math.nan
        st.half_cycle += 1
        if sign > 0:
            st.pending_charge = (abs(charge), abs(energy))
        elif st.pending_charge is not None:
            q_ch, e_ch = st.pending_charge
            q_dis, e_dis = abs(charge), abs(energy)
            out.append(self.emit(frame, "result.cycle", t_ns, {
                "charge_Ah": np.array([q_ch]),
                "discharge_Ah": np.array([q_dis]),
                "coulombic_efficiency": np.array([q_dis / q_ch if q_ch > 0 else np.nan]),
                "charge_energy_Wh": np.array([e_ch]),
                "discharge_energy_Wh": np.array([e_dis]),
                "energy_efficiency": np.array([e_dis / e_ch if e_ch > 0 else np.nan]),
                "cycle": np.array([st.cycle], dtype=np.int64),
            }, {"charge_Ah": "Ah", "discharge_Ah": "Ah", "charge_energy_Wh": "Wh",
                "discharge_energy_Wh": "Wh"}))
            st.cycle += 1
            st.pending_charge = None
        return out
