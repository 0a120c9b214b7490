"""Gassing onsets and the thermal-runaway precursor, from the gas processor's rates, the pressure
cell and the cell temperature (run after the ``gas`` processor).

- **gassing onset, per gas:** a one-sided CUSUM on the rate standardised by a baseline mean and
  sigma learnt online (EWMA) while the gas is quiet. The onset is placed where the CUSUM last left
  zero, and reported with the cell voltage, the charge and (when the electrochem processor gives
  one) the state of charge at that time. Onsets at rates of ``alarm_rate_mol_s`` or more are
  warnings; smaller ones (the everyday O2/CO2 release at high state of charge) are ``info``
  records of the onset voltage. The CUSUM restarts at each cycler step change, and a
  detector re-arms once the rate is back at its baseline.
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
from .kernels.echem_events import EW, ew_update


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


@dataclass
class _Baseline:
    """EWMA mean and variance, with a plain running mean while warming up."""
    mean: float = 0.0
    var: float = 0.0
    n: int = 0

    def learn(self, x: float, weight: float, warm: int) -> None:
        a = max(weight, 1.0 / (self.n + 1)) if self.n < warm else weight
        diff = x - self.mean
        self.mean += a * diff
        self.var = (1 - a) * (self.var + a * diff * diff)
        self.n += 1


@dataclass
class _Onset:
    sample: _Baseline = field(default_factory=_Baseline)
    block: _Baseline = field(default_factory=_Baseline)
    block_sum: float = 0.0
    block_n: int = 0
    block_t0: float = math.nan
    cusum: float = 0.0
    left_zero_t: float = math.nan
    fast_since: float = math.nan
    armed: bool = True
    alarmed: bool = False             # this episode has had a warning-level onset
    quiet_since: float = math.nan
    last_t: float = math.nan
    growth: np.ndarray = field(default_factory=lambda: np.zeros(EW))  # of log(rate)
    growth_history: deque = field(default_factory=lambda: deque(maxlen=256))  # (t, growth)


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
    gases: dict[str, _Onset] = field(default_factory=dict)
    indicators: dict[str, _Indicator] = field(default_factory=dict)
    pressure_fit: np.ndarray = field(default_factory=lambda: np.zeros(EW))
    temp_fit: np.ndarray = field(default_factory=lambda: np.zeros(EW))
    last_p_t: float = math.nan
    last_temp_t: float = math.nan
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

    def _cell(self, frame: Frame) -> _Cell:
        key = frame.stream.rsplit("/", 1)[0]
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(frame.t0_ns)
        return cell

    def _times(self, cell: _Cell, frame: Frame, t: np.ndarray) -> np.ndarray:
        return (frame.t0_ns - cell.origin_ns) * 1e-9 + np.ravel(t).astype(np.float64)

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
            return self._slope_indicator(frame, cell, "dpdt", self._times(cell, frame, t),
                                         np.ravel(p), cell.pressure_fit, "last_p_t",
                                         self.config.dpdt_Pa_s)
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
                    onset.cusum = 0.0
        cell.history.append((float(ts[-1]), float(np.ravel(v)[-1]), cell.charge_Ah, cell.soc))
        temp = frame.arrays.get("temperature")
        if temp is None:
            return []
        return self._slope_indicator(frame, cell, "dTdt", ts, np.ravel(temp), cell.temp_fit,
                                     "last_temp_t", self.config.dTdt_C_s)

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
        if gas not in c.gases and gas not in c.runaway_gases:
            return []
        t, rate = require_arrays(frame, ("t", "rate_mol_s"))
        ts = self._times(cell, frame, t)
        st = cell.gases.setdefault(gas, _Onset())
        out = []
        for tk, rk in zip(ts, np.ravel(rate), strict=True):
            tk, rk = float(tk), float(rk)
            if not math.isfinite(rk) or (math.isfinite(st.last_t) and tk <= st.last_t):
                continue
            dt = 0.0 if math.isnan(st.last_t) else tk - st.last_t
            st.last_t = tk
            event = self._onset_update(st, tk, rk, dt)
            if event is not None and gas in c.gases:
                onset_t, z = event
                v, q, soc = self._at(cell, onset_t)
                severity = "warning" if rk >= c.alarm_rate_mol_s else "info"
                st.alarmed = st.alarmed or severity == "warning"
                out.append(self._event(frame, cell, onset_t, "gas_onset", severity, {
                    "gas": gas, "rate_mol_s": rk, "baseline_mol_s": st.block.mean,
                    "baseline_sigma_mol_s": math.sqrt(st.sample.var), "voltage_V": v, "charge_Ah": q,
                    "soc": soc, "statistic": z}))
            if gas in c.runaway_gases:
                out += self._growth(frame, cell, st, gas, tk, rk, dt)
        return out

    def _onset_update(self, st: _Onset, t: float, rate: float, dt: float
                      ) -> tuple[float, float] | None:
        """Two paths to an onset: a CUSUM over block means (small, persistent gassing) and a
        sample-level excursion of ``fast_z`` sigmas held ``fast_hold_s`` (bursts)."""
        c = self.config
        warm = st.block.n >= c.warmup_blocks and st.block.var > 0 and st.sample.var > 0
        z = (rate - st.sample.mean) / math.sqrt(st.sample.var) if warm else 0.0
        onset = None
        if warm and z > c.fast_z:
            if math.isnan(st.fast_since):
                st.fast_since = t
            # an episode of info-level gassing escalates when a burst above the alarm rate comes
            escalates = not st.armed and not st.alarmed and rate >= c.alarm_rate_mol_s
            if (st.armed or escalates) and t - st.fast_since >= c.fast_hold_s \
                    and rate > c.min_rate_mol_s:
                onset = (st.fast_since, z)
        else:
            st.fast_since = math.nan
        if math.isnan(st.block_t0):
            st.block_t0 = t
        st.block_sum += rate
        st.block_n += 1
        if t - st.block_t0 >= c.block_s:
            mean = st.block_sum / st.block_n
            st.block_sum, st.block_n, st.block_t0 = 0.0, 0, t
            if warm:
                zb = (mean - st.block.mean) / math.sqrt(st.block.var)
                if st.cusum == 0.0:
                    st.left_zero_t = t - c.block_s
                st.cusum = max(0.0, st.cusum + zb - c.cusum_k)
                if st.armed and st.cusum > c.cusum_h and mean > c.min_rate_mol_s \
                        and onset is None:
                    onset = (st.left_zero_t, st.cusum)
                quiet, typical = zb < 0.5, abs(zb) < 3.0
            else:
                quiet = typical = True
            if st.armed and typical:
                st.block.learn(mean, 1.0 - math.exp(-c.block_s / c.baseline_tau_s),
                               c.warmup_blocks)
            self._rearm(st, t, quiet)
        if not warm or (st.armed and abs(z) < 3.0):
            st.sample.learn(rate, 1.0 - math.exp(-dt / c.baseline_tau_s) if dt > 0 else 0.0,
                            10 ** 9 if not warm else 0)
        if onset is not None:
            st.armed = False
            st.quiet_since = math.nan
        return onset

    def _rearm(self, st: _Onset, t: float, quiet: bool) -> None:
        """After an onset, blocks back at the baseline for ``rearm_s`` re-arm the detector."""
        if st.armed:
            return
        if not quiet:
            st.quiet_since = math.nan
        elif math.isnan(st.quiet_since):
            st.quiet_since = t
        elif t - st.quiet_since >= self.config.rearm_s:
            st.armed, st.alarmed, st.cusum = True, False, 0.0

    def _growth(self, frame: Frame, cell: _Cell, st: _Onset, gas: str, t: float, rate: float,
                dt: float) -> list[Frame]:
        """Accelerating gas: the slope of log(rate) above 1/growth_time_s while the rate is above
        the onset level (baseline + cusum_h sigmas' worth of evidence, i.e. the alarm)."""
        c = self.config
        level = st.sample.mean + 4.0 * math.sqrt(st.sample.var)
        if st.block.n < c.warmup_blocks or rate <= level or rate <= 0:
            st.growth[:] = 0.0
            st.growth_history.clear()
            return self._indicator(frame, cell, gas + "_growth", t, False, math.nan)
        growth = ew_update(st.growth, dt, math.log(rate), c.growth_tau_s)
        history = st.growth_history
        history.append((t, growth))
        while history[0][0] < t - c.growth_lag_s:
            history.popleft()
        # an exponential keeps its growth rate; a step through a first-order instrument loses it
        earlier = history[0][1]
        accelerating = (math.isfinite(growth) and growth > 1.0 / c.growth_time_s
                        and t - history[0][0] >= 0.5 * c.growth_lag_s
                        and growth >= 0.5 * earlier)
        return self._indicator(frame, cell, gas + "_growth", t, accelerating, growth)

    def _slope_indicator(self, frame: Frame, cell: _Cell, name: str, ts: np.ndarray,
                         values: np.ndarray, fit: np.ndarray, last_attr: str,
                         limit: float) -> list[Frame]:
        out = []
        for tk, xk in zip(ts, values, strict=True):
            tk, xk = float(tk), float(xk)
            last = getattr(cell, last_attr)
            if not math.isfinite(xk) or (math.isfinite(last) and tk <= last):
                continue
            dt = 0.0 if math.isnan(last) else tk - last
            setattr(cell, last_attr, tk)
            slope = ew_update(fit, dt, xk, self.config.slope_tau_s)
            out += self._indicator(frame, cell, name, tk, math.isfinite(slope) and slope > limit,
                                   slope)
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
