"""Pressure cell: headspace moles, gas evolution rate, electrons per gas molecule, and the split of
the pressure signal into a reversible (electrode volume) and an irreversible (gas) part.

Consumes the ``pressure`` stream of a cell (``t``, ``pressure``, ``temperature``) and the ``echem``
stream of the SAME cell (same experiment and cell, any instrument name: ``t``, ``voltage``,
``current``). Emits ``result.pressure`` frames, one sample per pressure sample.

**Moles.** n = p V / (R T) at every sample with the configured headspace V (the apparent amount:
the reversible part is separated below), with p corrected for the sensor's temperature offset,
p - offset_Pa_per_K (T - offset_reference_C), and T from the frame (``temperature_source =
"frame"``) or fixed. Units are read from the frame (Pa, hPa, mbar, kPa, bar; degC or K).
``delta_moles`` is n minus the initial amount: ``initial_moles_mol`` when given, else the mean of
the first ``baseline_samples`` samples (a running mean until that many have arrived).

**Charge: an as-of join.** The cumulative charge Q (coulomb counting of the echem current,
processors.kernels.coulomb) is joined to each pressure sample at time t as Q at the last echem
sample <= t, on a time base shared by the cell's streams (epoch ns; clock offsets between the
instruments are not corrected here). One echem stream per cell. Frames of the two streams
may arrive interleaved in any order within ``max_lag_s``; within one stream they must arrive in
time order (the transport's ``seq`` reordering provides that). A pressure sample waits until the
echem stream has reached its time, or until the newest time seen on the cell is ``max_lag_s``
past it (0: no wait) (then it is joined with what has arrived and counted as ``stale_joins``);
``flush`` releases the rest. Echem samples are kept only back to the last one at or before
max(last released pressure time, newest echem time - max_lag_s), so memory is bounded by
``max_lag_s`` times the sampling rates. Pressure samples older than one already released are
dropped (``late_samples``); non-finite or non-positive samples are skipped (``skipped_samples``).
Before the first echem sample ``charge_Ah`` is NaN and the charge counts as 0.

**Reversible / irreversible split.** Model: delta_moles(t) = n_irr(t) + beta * Q_state(t), where
Q_state = Q - Q(first sample) follows the state of charge: an electrode that swells with charge
shrinks the headspace, so the pressure-derived amount rises on charge and returns on discharge,
while n_irr is the gas made (less what a known capillary leak removes). beta (mol/Ah) is
- known when ``expansion_mL_per_Ah`` (or ``expansion_mL_per_soc`` with ``capacity_Ah``) is set:
  beta = p k / (R T) at each sample, the volume the electrode takes away per Ah;
- else estimated online from the discharge branch: every ``beta_chunk_s`` of uninterrupted
  discharge is one chunk, and the least-squares slope d(n + leaked)/dQ over the chunk is one
  estimate; beta is the median of the last ``beta_chunks`` chunk slopes (0 until the first,
  so until the first discharge n_irreversible still holds the reversible part).
  Why the discharge: gas made while charging adds to the charge-branch slope (beta + gas/dQ),
  so charge chunks overestimate beta; on discharge most of the branch makes no gas and its slope
  is beta itself. Gas made during a minority of the discharge (O2 at high state of charge at its
  start) lowers a few chunk slopes, which the median ignores.
Assumptions: the headspace is sealed, or loses a known fraction ``leak_per_s`` per second (an MS
capillary), which is added back before fitting; more than half of the discharge chunks make or
consume no gas (not true of Li-O2 discharge, which consumes O2); the reversible volume is linear
in the charge. ``n_reversible`` = beta Q_state and ``n_irreversible`` = delta_moles -
n_reversible use the beta known at that sample, so the first cycle's split is only as good as
the first chunks.

**Rate and z.** ``rate_mol_s`` is the gas evolution rate, d(n_irr + leaked)/dt: the sliding
least-squares slope (processors.gas.SlidingSlope, ``rate_window_s``) of the amount minus beta
times the slope of Q_state. z = Q / (F dn) in electrons per gas molecule, with dn the gas made
(leak added back, reversible part removed): ``z_electrons_per_molecule`` over the last
``z_window_s`` and ``z_half_cycle`` since the current half-cycle began (half-cycles as in the
electrochem processor). Positive when gas evolves on charge; NaN while |dn| < ``z_min_mol``
(set it to ~10x the noise of n) or when no charge is known at the sample.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from stream._fast import all_finite
from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .electrochem import require_arrays
from .gas import R_GAS, SlidingSlope
from .kernels.coulomb import coulomb_count, new_state

FARADAY = 96485.33212  # C/mol
PRESSURE_UNITS = {"Pa": 1.0, "hPa": 100.0, "mbar": 100.0, "kPa": 1e3, "bar": 1e5}
TEMPERATURE_OFFSETS = {"degC": 0.0, "°C": 0.0, "C": 0.0, "K": -273.15}
RESULT_UNITS = {"t": "s", "moles": "mol", "delta_moles": "mol", "rate_mol_s": "mol/s",
                "rate_umol_min": "umol/min", "z_electrons_per_molecule": "1",
                "z_half_cycle": "1", "n_reversible": "mol", "n_irreversible": "mol",
                "charge_Ah": "Ah"}


class PressureConfig(ProcessorConfig):
    headspace_mL: float = Field(10.0, gt=0)
    temperature_source: Literal["frame", "fixed"] = "frame"
    temperature_C: float = 25.0            # used when temperature_source = "fixed"
    offset_Pa_per_K: float = 0.0           # sensor offset drift with temperature
    offset_reference_C: float = 25.0       # temperature at which that offset is zero
    baseline_samples: int = Field(1, ge=1)
    initial_moles_mol: float | None = None
    rate_window_s: float = Field(60.0, gt=0)
    z_window_s: float = Field(3600.0, gt=0)
    z_min_mol: float = Field(1e-7, gt=0)   # ~10x the noise of n (2 Pa in 10 mL: 8e-9 mol)
    max_lag_s: float = Field(10.0, ge=0)
    current_threshold_A: float = Field(1e-5, ge=0)
    expansion_mL_per_Ah: float | None = None
    expansion_mL_per_soc: float | None = None
    capacity_Ah: float | None = Field(None, gt=0)
    beta_chunk_s: float = Field(600.0, gt=0)
    beta_chunks: int = Field(24, ge=1)
    leak_per_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _one_expansion(self) -> PressureConfig:
        if self.expansion_mL_per_Ah is not None and self.expansion_mL_per_soc is not None:
            raise ValueError("give expansion_mL_per_Ah or expansion_mL_per_soc, not both")
        if self.expansion_mL_per_soc is not None and self.capacity_Ah is None:
            raise ValueError("expansion_mL_per_soc needs capacity_Ah")
        return self

    def expansion_per_Ah(self) -> float | None:
        """The configured electrode expansion in mL per Ah, or None (then it is estimated)."""
        if self.expansion_mL_per_soc is not None:
            return self.expansion_mL_per_soc / self.capacity_Ah
        return self.expansion_mL_per_Ah


class DischargeSlope:
    """beta from the discharge branch: least-squares slope dy/dQ over chunks of ``chunk_s`` of
    uninterrupted discharge, the median of the last ``keep`` chunks. O(1) per interval."""

    def __init__(self, chunk_s: float, keep: int):
        self.chunk_s = chunk_s
        self.slopes: deque[float] = deque(maxlen=keep)
        self.beta = 0.0
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.t_start = self.t_last = self.q0 = self.y0 = 0.0
        self.sq = self.sqq = self.sy = self.sqy = 0.0

    def _add(self, t: float, q: float, y: float) -> None:
        if self.n == 0:
            self.t_start, self.q0, self.y0 = t, q, y
        dq, dy = q - self.q0, y - self.y0
        self.n += 1
        self.sq += dq
        self.sqq += dq * dq
        self.sy += dy
        self.sqy += dq * dy
        self.t_last = t

    def interval(self, prev: tuple[float, float, float], cur: tuple[float, float, float],
                 discharging: bool) -> None:
        """One interval between two samples (t, Q_state, y)."""
        if not discharging:
            self._close()
            return
        if self.n == 0:
            self._add(*prev)
        self._add(*cur)
        if self.t_last - self.t_start >= self.chunk_s:
            self._close()

    def _close(self) -> None:
        denom = self.n * self.sqq - self.sq * self.sq
        if self.n >= 3 and denom > 0 and self.t_last - self.t_start >= 0.5 * self.chunk_s:
            self.slopes.append((self.n * self.sqy - self.sq * self.sy) / denom)
            self.beta = float(np.median(self.slopes))
        self._reset()


@dataclass
class _Cell:
    origin_ns: int
    rate: SlidingSlope
    split: DischargeSlope
    rate_in: np.ndarray = field(default_factory=lambda: np.zeros(2))   # (y, Q_state)
    rate_out: np.ndarray = field(default_factory=lambda: np.zeros(2))  # their slopes
    coulomb: np.ndarray = field(default_factory=new_state)
    half_cycle: int = 0
    # echem buffer for the join: time (cell seconds), cumulative charge (Ah), half-cycle index
    # (plain lists: a frame adds ~10 samples and the buffer holds ~max_lag_s of them, where
    # list extend/bisect/del cost less than numpy calls on tiny arrays)
    echem_t: list[float] = field(default_factory=list)
    echem_q: list[float] = field(default_factory=list)
    echem_hc: list[int] = field(default_factory=list)
    echem_last_t: float = -math.inf
    newest_t: float = -math.inf
    pending: list[tuple[float, float, float]] = field(default_factory=list)  # (t, Pa, degC)
    released_t: float = -math.inf
    # per-sample state
    baseline_sum: float = 0.0
    baseline_n: int = 0
    n_first: float | None = None
    q_first: float | None = None
    q_eff: float = 0.0
    leaked: float = 0.0
    prev: tuple[float, float, float, float] | None = None  # (t, Q_state, y, n)
    hc_index: int | None = None
    hc_anchor: tuple[float, float] = (0.0, 0.0)  # (Q_state, y) where the half-cycle began
    z_window: deque = field(default_factory=deque)  # (t, Q_state, y)
    skipped: int = 0
    late: int = 0
    stale: int = 0
    source: Frame | None = None  # the cell's last frame: names the result stream at flush


class PressureProcessor(Processor):
    type_name = "pressure"
    consumes = ("pressure", "echem")
    Config = PressureConfig

    def __init__(self, config: PressureConfig | None = None):
        super().__init__(config)
        self._cells: dict[str, _Cell] = {}
        self._expansion = self.config.expansion_per_Ah()

    # -- intake ---------------------------------------------------------------------------
    def process(self, frame: Frame) -> list[Frame]:
        if frame.kind == "pressure":
            samples = self._pressure_samples(frame)
        elif frame.kind == "echem":
            samples = None
        else:
            return []
        key = frame.stream.rsplit("/", 1)[0]
        st = self._cells.get(key)
        if st is None:
            c = self.config
            st = self._cells[key] = _Cell(frame.t0_ns, SlidingSlope(2, c.rate_window_s),
                                          DischargeSlope(c.beta_chunk_s, c.beta_chunks))
        if samples is None:
            self._take_echem(frame, st)
        else:
            self._take_pressure(frame, st, *samples)
        return self._release(frame, st, final=False)

    def flush(self) -> list[Frame]:
        """Joins and emits every pressure sample still waiting for its echem data."""
        out = []
        for st in self._cells.values():
            if st.pending and st.source is not None:
                out += self._release(st.source, st, final=True)
        return out

    def _pressure_samples(self, frame: Frame) -> tuple[list[float], list[float], list[float]]:
        """(t, pressure Pa, temperature degC) of a pressure frame; FrameError when malformed."""
        c = self.config
        names = ("t", "pressure", "temperature") if c.temperature_source == "frame" else \
            ("t", "pressure")
        arrays = require_arrays(frame, names)
        unit = frame.units.get("pressure", "Pa")
        if unit not in PRESSURE_UNITS:
            raise FrameError(frame.stream, "units.pressure",
                             f"unit {unit!r} not one of {sorted(PRESSURE_UNITS)}")
        scale = PRESSURE_UNITS[unit]
        pressure = [x * scale for x in arrays[1].tolist()]
        if c.temperature_source == "frame":
            unit = frame.units.get("temperature", "degC")
            if unit not in TEMPERATURE_OFFSETS:
                raise FrameError(frame.stream, "units.temperature",
                                 f"unit {unit!r} not one of {sorted(TEMPERATURE_OFFSETS)}")
            offset = TEMPERATURE_OFFSETS[unit]
            temperature = [x + offset for x in arrays[2].tolist()]
        else:
            temperature = [c.temperature_C] * len(pressure)
        return arrays[0].tolist(), pressure, temperature

    def _take_pressure(self, frame: Frame, st: _Cell, t: list[float], pressure: list[float],
                       temperature: list[float]) -> None:
        st.source = frame
        base = (frame.t0_ns - st.origin_ns) * 1e-9
        for tk, pk, Tk in zip(t, pressure, temperature, strict=True):
            tk += base
            if not (math.isfinite(tk) and math.isfinite(pk) and math.isfinite(Tk) and pk > 0):
                st.skipped += 1
            elif tk <= st.released_t:
                st.late += 1
            else:
                bisect.insort(st.pending, (tk, pk, Tk))
                st.newest_t = max(st.newest_t, tk)

    def _take_echem(self, frame: Frame, st: _Cell) -> None:
        st.source = frame
        t, voltage, current = require_arrays(frame, ("t", "voltage", "current"))
        ts = (frame.t0_ns - st.origin_ns) * 1e-9 + t
        if not (ts[0] > st.echem_last_t and all_finite(ts) and all_finite(voltage)
                and all_finite(current)):  # out of order within the stream, or non-finite
            keep = np.isfinite(ts) & np.isfinite(voltage) & np.isfinite(current) & \
                (ts > st.echem_last_t)
            ts, voltage, current = ts[keep], voltage[keep], current[keep]
            if ts.size == 0:
                return
        t_list = ts.tolist()
        if any(b <= a for a, b in zip(t_list, t_list[1:], strict=False)):
            raise FrameError(frame.stream, "arrays.t", "sample times not increasing")
        q, ends = coulomb_count(ts, current, voltage, self.config.current_threshold_A,
                                st.coulomb, frame.meta.get("current_kind") == "interval_mean")
        if len(ends):  # half-cycle index per sample: +1 from each sample that starts one
            starts = np.zeros(ts.size, dtype=np.int64)
            starts[ends[:, 0].astype(np.int64)] = 1
            hc = (st.half_cycle + np.cumsum(starts)).tolist()
        else:
            hc = [st.half_cycle] * len(t_list)
        st.half_cycle = hc[-1]
        st.echem_t += t_list
        st.echem_q += q.tolist()
        st.echem_hc += hc
        st.echem_last_t = t_list[-1]
        st.newest_t = max(st.newest_t, st.echem_last_t)

    # -- join and release -----------------------------------------------------------------
    def _release(self, frame: Frame, st: _Cell, final: bool) -> list[Frame]:
        # ready: the echem stream has reached the sample, or the sample is max_lag_s old
        limit = math.inf if final else max(st.echem_last_t, st.newest_t - self.config.max_lag_s)
        n_ready = bisect.bisect_right(st.pending, (limit, math.inf, math.inf))
        out = []
        if n_ready:
            ready, st.pending = st.pending[:n_ready], st.pending[n_ready:]
            charge, rows = [], []
            for tk, pk, Tk in ready:
                i = bisect.bisect_right(st.echem_t, tk) - 1  # the as-of join
                if i >= 0:
                    q, hc = st.echem_q[i], st.echem_hc[i]
                    st.stale += tk > st.echem_last_t
                else:
                    q, hc = math.nan, -1
                charge.append(q)
                rows.append(self._sample(st, tk, pk, Tk, q, hc))
            st.released_t = ready[-1][0]
            out.append(self._emit(frame, st, [r[0] for r in ready], charge, rows))
        # keep the echem samples from the last one at or before the cut-off
        cut = max(st.released_t, st.echem_last_t - self.config.max_lag_s)
        first = bisect.bisect_right(st.echem_t, cut) - 1
        if first > 0:
            del st.echem_t[:first], st.echem_q[:first], st.echem_hc[:first]
        return out

    def _sample(self, st: _Cell, t: float, pressure: float, temp_C: float, charge: float,
                half_cycle: int) -> tuple[float, ...]:
        """Every output of one pressure sample, in time order. O(1) amortised."""
        c = self.config
        T = temp_C + 273.15
        p = pressure - c.offset_Pa_per_K * (temp_C - c.offset_reference_C)
        n = p * c.headspace_mL * 1e-6 / (R_GAS * T)
        if c.initial_moles_mol is not None:
            n0 = c.initial_moles_mol
        else:
            if st.baseline_n < c.baseline_samples:
                st.baseline_sum += n
                st.baseline_n += 1
            n0 = st.baseline_sum / st.baseline_n
        if st.n_first is None:
            st.n_first = n
        if not math.isnan(charge):
            st.q_eff = charge
        if st.q_first is None:
            st.q_first = st.q_eff
        q_state = st.q_eff - st.q_first
        if st.prev is not None:
            t_prev, q_prev, _, n_prev = st.prev
            st.leaked += c.leak_per_s * 0.5 * (n + n_prev) * (t - t_prev)
        y = n - st.n_first + st.leaked  # gas amount with the leak added back
        if self._expansion is not None:
            beta = p * self._expansion * 1e-6 / (R_GAS * T)
        else:
            if st.prev is not None:
                discharging = q_state - q_prev < -c.current_threshold_A * (t - t_prev) / 3600.0
                st.split.interval(st.prev[:3], (t, q_state, y), discharging)
            beta = st.split.beta
        # a half-cycle starts from the last sample of the previous one (unjoined: unchanged)
        if half_cycle < 0 and st.hc_index is not None:
            half_cycle = st.hc_index
        if half_cycle != st.hc_index:
            st.hc_anchor = (q_state, y) if st.prev is None else st.prev[1:3]
            st.hc_index = half_cycle
        win = st.z_window
        win.append((t, q_state, y))
        while len(win) >= 2 and win[1][0] <= t - c.z_window_s:
            win.popleft()
        if math.isnan(charge):  # no charge known at this sample: no z
            z_roll = z_hc = math.nan
        else:
            z_roll = self._z(q_state - win[0][1], y - win[0][2], beta)
            z_hc = self._z(q_state - st.hc_anchor[0], y - st.hc_anchor[1], beta)
        st.rate_in[0], st.rate_in[1] = y, q_state
        dy_dt, dq_dt = st.rate.update(t, st.rate_in, st.rate_out).tolist()
        rate = dy_dt - beta * dq_dt
        st.prev = (t, q_state, y, n)
        n_rev = beta * q_state
        return (n, n - n0, rate, z_roll, z_hc, n_rev, n - n0 - n_rev, beta)

    def _z(self, dq_Ah: float, dy: float, beta: float) -> float:
        gas = dy - beta * dq_Ah
        if abs(gas) < self.config.z_min_mol:
            return np.nan
        return dq_Ah * 3600.0 / (FARADAY * gas)

    def _emit(self, frame: Frame, st: _Cell, t: list[float], charge: list[float],
              rows: list[tuple[float, ...]]) -> Frame:
        t0_ns = st.origin_ns + round(t[0] * 1e9)
        ts = np.array(t)
        rows = np.array(rows)
        arrays = {"t": ts - ts[0], "moles": rows[:, 0], "delta_moles": rows[:, 1],
                  "rate_mol_s": rows[:, 2], "rate_umol_min": rows[:, 2] * 6e7,
                  "z_electrons_per_molecule": rows[:, 3], "z_half_cycle": rows[:, 4],
                  "n_reversible": rows[:, 5], "n_irreversible": rows[:, 6],
                  "charge_Ah": np.array(charge)}
        units = dict(RESULT_UNITS)
        meta = {"beta_mol_per_Ah": float(rows[-1, 7]), "skipped_samples": st.skipped,
                "late_samples": st.late, "stale_joins": st.stale,
                "beta_source": "configured" if self._expansion is not None else "estimated"}
        return self.emit(frame, "result.pressure", t0_ns, arrays, units, meta)
