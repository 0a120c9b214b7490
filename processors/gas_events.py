"""Gassing onsets and the thermal-runaway precursor, from the gas processor's rates, the pressure
cell and the cell temperature (run after the ``gas`` processor).

- **gassing onset, per gas:** a one-sided CUSUM on the rate standardised by a baseline mean and
  sigma learnt online (EWMA) while the gas is quiet. The onset is placed where the CUSUM last left
  zero, and reported with the cell voltage, the charge and (when the electrochem processor gives
  one) the state of charge at that time. Onsets at rates of ``alarm_rate_mol_s`` or more are
  warnings; smaller ones (the everyday O2/CO2 release at high state of charge) are ``info``
  records of the onset voltage; ``latency_s`` is the time from the estimated onset to the
  detection. An onset at the alarm rate is placed where the rate reached half of it, when
  that is later than where the excursion began (a burst on top of everyday gassing starts at
  the burst), and an episode below the alarm rate escalates to a warning when a burst comes.
  The CUSUM restarts at each cycler step change, and a detector re-arms once the rate is back
  at its baseline, or after a warning once block means are back below half the alarm rate,
  for ``rearm_s``. An ion-current spike (the gas's ``mole_fraction`` up and back in one
  sample: gas through a headspace or a flow cell cannot do that) disturbs every rate over
  the slope window that holds it: for ``spike_veto_s`` the rates are not judged (the
  ``sensor_faults`` processor reports the spikes).
- **runaway precursor, per cell:** indicators that each hold for ``hold_s``: H2 and CO2 rates that
  accelerate (d ln(rate)/dt above 1/``growth_time_s`` above the onset level, keeping half of it
  over ``growth_lag_s``, held for ``growth_hold_s``: an exponential does, a burst's first-order
  rise through the instrument does not), dp/dt above
  ``dpdt_Pa_s`` and dT/dt above ``dTdt_C_s``. The precursor fires when an accelerating gas and at
  least one other indicator are active together; the GB 38031 temperature criterion of the
  ``events`` processor is its last stage.

Streams of one cell (gas, pressure, potentiostat) are put on one time base: seconds since the
first frame of that cell on any stream.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .electrochem import require_arrays
from .kernels import gas_rates as K
from .kernels.echem_events import EW


class GasEventsConfig(ProcessorConfig):
    gases: list[str] = ["H2", "CO", "CO2", "C2H4", "O2"]
    block_s: float = 60.0             # rates are averaged over blocks (decorrelated samples)
    warmup_blocks: int = 10           # baseline learnt before onsets are judged
    baseline_tau_s: float = 1800.0
    cusum_k: float = 0.5              # in block sigmas
    cusum_h: float = 15.0             # ARL0 ~ 2e7 blocks for independent blocks
    fast_z: float = 8.0               # a sample this many sigmas up, for fast_hold_s, is an onset
    fast_hold_s: float = 10.0
    min_rate_mol_s: float = 0.0       # an onset must also exceed this absolute rate
    alarm_rate_mol_s: float = 1e-9    # onsets above this rate are warnings, below it info
    rearm_s: float = 300.0           # back at the baseline (z < 0.5) this long re-arms
    spike_veto_s: float = 30.0        # rates this long after an ion-current spike are not judged
    # runaway precursor
    runaway_gases: list[str] = ["H2", "CO2"]
    growth_time_s: float = 120.0      # accelerating: d ln(rate)/dt above 1/growth_time_s
    growth_tau_s: float = 20.0
    growth_hold_s: float = 60.0       # sustained: a step's first-order response stops growing
    growth_lag_s: float = 30.0        # ... and keeps half its growth rate over this lag
    dpdt_Pa_s: float = 0.2
    dTdt_C_s: float = 0.02
    slope_tau_s: float = 30.0
    hold_s: float = 10.0
    coincidence_s: float = 60.0       # indicators count together within this time


def onset_params(c: GasEventsConfig) -> np.ndarray:
    p = np.zeros(K.N_ONSET_PARAM)
    p[[K.Q_BLOCK_S, K.Q_WARMUP_BLOCKS, K.Q_BASELINE_TAU, K.Q_CUSUM_K, K.Q_CUSUM_H, K.Q_FAST_Z,
       K.Q_FAST_HOLD, K.Q_MIN_RATE, K.Q_ALARM_RATE, K.Q_REARM_S, K.Q_GROWTH_TIME,
       K.Q_GROWTH_TAU, K.Q_GROWTH_LAG, K.Q_SPIKE_VETO]] = [
        c.block_s, c.warmup_blocks, c.baseline_tau_s, c.cusum_k, c.cusum_h, c.fast_z,
        c.fast_hold_s, c.min_rate_mol_s, c.alarm_rate_mol_s, c.rearm_s, c.growth_time_s,
        c.growth_tau_s, c.growth_lag_s, c.spike_veto_s]
    return p


def _new_fit() -> np.ndarray:
    """EW regression sums, then the time of the last sample (NaN: none)."""
    fit = np.zeros(EW + 1)
    fit[EW] = np.nan
    return fit


@dataclass
class _Indicator:
    since: float = math.nan
    active_t: float = -math.inf       # last time it held for hold_s
    value: float = math.nan


@dataclass
class _Cell:
    origin_ns: int
    step: float = math.nan
    history: deque = field(default_factory=lambda: deque(maxlen=4096))  # (t, V, Ah, soc)
    gases: dict[str, np.ndarray] = field(default_factory=dict)  # onset state per gas
    indicators: dict[str, _Indicator] = field(default_factory=dict)
    pressure_fit: np.ndarray = field(default_factory=_new_fit)
    temp_fit: np.ndarray = field(default_factory=_new_fit)
    charge_Ah: float = math.nan
    soc: float = math.nan
    precursor_armed: bool = True


class GasEventProcessor(Processor):
    type_name = "gas_events"
    consumes = ("result.gas", "result.echem", "pressure", "echem")
    Config = GasEventsConfig

    def __init__(self, config: GasEventsConfig | None = None):
        super().__init__(config)
        self._cells: dict[str, _Cell] = {}
        c = self.config
        self._params = onset_params(c)
        self._growth_names = {gas: gas + "_growth" for gas in c.runaway_gases}

    def _cell(self, frame: Frame) -> _Cell:
        key = frame.stream.rsplit("/", 1)[0]
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(frame.t0_ns)
        return cell

    def _times(self, cell: _Cell, frame: Frame, t: np.ndarray) -> np.ndarray:
        return (frame.t0_ns - cell.origin_ns) * 1e-9 + t

    def _event(self, frame: Frame, cell: _Cell, t_s: float, event: str, severity: str,
               evidence: dict) -> Frame:
        t_ns = cell.origin_ns + int(round(t_s * 1e9))
        values = {k: v for k, v in evidence.items() if isinstance(v, float)}
        return self.emit(frame, "event", t_ns, {k: np.array([v]) for k, v in values.items()}, {},
                         {"event": event, "severity": severity, "source": frame.stream,
                          "onset_ns": t_ns, **{k: v for k, v in evidence.items()
                                               if not isinstance(v, float)}})

    def process(self, frame: Frame) -> list[Frame]:
        cell = self._cell(frame)
        if frame.kind == "echem":
            return self._echem(frame, cell)
        if frame.kind == "result.echem":
            (q,) = require_arrays(frame, ("charge_Ah",))
            cell.charge_Ah = float(q[-1])
            soc = frame.arrays.get("soc")
            cell.soc = float(np.ravel(soc)[-1]) if soc is not None and soc.size else math.nan
            return []
        if frame.kind == "pressure":
            t, p = require_arrays(frame, ("t", "pressure"))
            _check_units(frame, "pressure", "Pa")
            return self._slope_indicator(frame, cell, "dpdt", self._times(cell, frame, t), p,
                                         cell.pressure_fit, self.config.dpdt_Pa_s)
        return self._gas(frame, cell)

    def _echem(self, frame: Frame, cell: _Cell) -> list[Frame]:
        t, v = require_arrays(frame, ("t", "voltage"))
        ts = self._times(cell, frame, t)
        step = frame.arrays.get("step")
        if step is not None and step.size:
            last = float(np.ravel(step)[-1])
            if last != cell.step:
                cell.step = last
                for onset in cell.gases.values():  # step change: the CUSUMs restart
                    onset[K.O_CUSUM] = 0.0
        cell.history.append((float(ts[-1]), float(v[-1]), cell.charge_Ah, cell.soc))
        temp = frame.arrays.get("temperature")
        if temp is None:
            return []
        temp = np.ravel(temp)
        if temp.dtype != np.float64:
            temp = temp.astype(np.float64)
        if temp.size != ts.size:
            raise FrameError(frame.stream, "arrays.temperature",
                             f"{temp.size} samples, t has {ts.size}")
        return self._slope_indicator(frame, cell, "dTdt", ts, temp, cell.temp_fit,
                                     self.config.dTdt_C_s)

    def _at(self, cell: _Cell, t: float) -> tuple[float, float, float]:
        """Voltage, charge and SOC of the cell at time t (as-of the potentiostat history)."""
        times = [h[0] for h in cell.history]
        k = bisect_right(times, t) - 1
        if k < 0:
            return (math.nan, math.nan, math.nan)
        return cell.history[k][1:]

    def _gas(self, frame: Frame, cell: _Cell) -> list[Frame]:
        tags = frame.meta.get("tags") or {}
        gas = tags.get("gas")
        c = self.config
        report, growth_name = gas in c.gases, self._growth_names.get(gas)
        if not report and growth_name is None:
            return []
        t, rate = require_arrays(frame, ("t", "rate_mol_s"))
        ts = self._times(cell, frame, t)
        x = frame.arrays.get("mole_fraction")
        if x is None or x.size != ts.size:
            x = np.full(ts.size, np.nan)
        elif x.dtype != np.float64 or x.ndim != 1:
            x = np.ascontiguousarray(np.ravel(x), dtype=np.float64)
        st = cell.gases.get(gas)
        if st is None:
            st = cell.gases[gas] = K.new_onset_state()
        n = ts.size
        events = np.empty((n, K.N_ONSET_EVIDENCE))
        codes, growth = np.empty(n, dtype=np.int64), np.empty(n)
        n_events, n_on, n_used = K.onset_block(ts, rate, x, st, self._params, report,
                                                growth_name is not None, events, codes, growth)
        if n_events == 0 and n_on == 0:  # the usual case: nothing to report
            if growth_name is not None and n_used:  # the growth indicator's hold restarts
                cell.indicators.setdefault(growth_name, _Indicator()).since = math.nan
            return []
        out = []
        e = 0
        for k in range(n):
            while e < n_events and events[e, 0] == k:
                out.append(self._onset_event(frame, cell, gas, events[e], float(ts[k])))
                e += 1
            if growth_name is not None and codes[k] != K.SKIPPED:
                out += self._indicator(frame, cell, growth_name, float(ts[k]), codes[k] == K.ON,
                                       float(growth[k]))
        return out

    def _onset_event(self, frame: Frame, cell: _Cell, gas: str, row: np.ndarray,
                     detected_t: float) -> Frame:
        onset_t, z, rate, baseline, sigma = (float(v) for v in row[1:])
        v, q, soc = self._at(cell, onset_t)
        severity = "warning" if rate >= self.config.alarm_rate_mol_s else "info"
        return self._event(frame, cell, onset_t, "gas_onset", severity, {
            "gas": gas, "rate_mol_s": rate, "baseline_mol_s": baseline,
            "baseline_sigma_mol_s": sigma, "voltage_V": v, "charge_Ah": q, "soc": soc,
            "statistic": z, "latency_s": detected_t - onset_t})

    def _slope_indicator(self, frame: Frame, cell: _Cell, name: str, ts: np.ndarray,
                         values: np.ndarray, fit: np.ndarray, limit: float) -> list[Frame]:
        n = ts.size
        codes, slopes = np.empty(n, dtype=np.int64), np.empty(n)
        n_on, n_used = K.slope_indicator(ts, values, fit, self.config.slope_tau_s, limit, codes,
                                         slopes)
        if n_on == 0:  # all off: the indicator's hold restarts
            if n_used:
                cell.indicators.setdefault(name, _Indicator()).since = math.nan
            return []
        out = []
        for k in range(n):
            if codes[k] != K.SKIPPED:
                out += self._indicator(frame, cell, name, float(ts[k]), codes[k] == K.ON,
                                       float(slopes[k]))
        return out

    def _indicator(self, frame: Frame, cell: _Cell, name: str, t: float, on: bool,
                   value: float) -> list[Frame]:
        c = self.config
        ind = cell.indicators.setdefault(name, _Indicator())
        if not on:
            ind.since = math.nan
            return []
        if math.isnan(ind.since):
            ind.since = t
        if t - ind.since < (c.growth_hold_s if name.endswith("_growth") else c.hold_s):
            return []
        ind.active_t, ind.value = t, value
        active = {k: i for k, i in cell.indicators.items() if t - i.active_t <= c.coincidence_s}
        gas_growth = [k for k in active if k.endswith("_growth")]
        if not (cell.precursor_armed and gas_growth and len(active) >= 2):
            return []
        cell.precursor_armed = False
        onset = min(active[k].since for k in active if math.isfinite(active[k].since)) \
            if any(math.isfinite(active[k].since) for k in active) else t
        evidence: dict = {f"{k}": float(i.value) for k, i in active.items()}
        evidence["indicators"] = ",".join(sorted(active))
        return [self._event(frame, cell, onset, "runaway_precursor", "critical", evidence)]


def _check_units(frame: Frame, name: str, unit: str) -> None:
    if frame.units.get(name, unit) != unit:
        raise FrameError(frame.stream, f"units.{name}", f"expected {unit!r}")
