"""OEMS gas quantification: ion currents -> mole fractions -> gas evolution rates and amounts.

Per sample: the m/z signals are deconvolved into gas mole fractions by non-negative least squares
through the cracking-pattern matrix (relative sensitivities included) and the calibration
``sensitivity_A`` (ion current of a pure gas of unit relative sensitivity at its base peak).
An Ar internal standard corrects the instrument's drift: fractions are scaled so that Ar reads
its known fraction (flow cell) or so that the fractions sum to one (closed headspace filled with
Ar). Then, per cell type:

- **closed headspace:** n_i = x_i * pV/RT; the rate is the slope of n_i over a sliding window;
- **continuous flow:** r_i = Q * (x_i + tau * dx_i/dt), tau = V/Q, on a time base shifted back by
  the capillary delay.

Outputs one ``result.gas`` frame per gas and input frame (tag ``gas``): ``rate_mol_s``,
``rate_umol_min``, ``amount_mol`` (cumulative) and, where an electrode area or mass is given,
``rate_mol_s_cm2`` / ``rate_mol_s_g``; ``meta.time_shift_s`` says how the time base was shifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .kernels import gas_rates as R
from .mass_spec import SENSITIVITY, cracking_matrix

R_GAS = 8.314462618


class GasConfig(ProcessorConfig):
    gases: list[str] = ["H2", "CO", "CO2", "C2H4", "O2", "Ar"]
    channels: list[int] = [2, 26, 27, 28, 32, 40, 44]
    sensitivity_A: float = 1e-9
    internal_standard: str | None = "Ar"
    cell_type: Literal["closed", "flow"] = "closed"
    headspace_mL: float = 10.0
    pressure_Pa: float = 1.0e5
    temperature_C: float = 25.0
    flow_mL_min: float = 1.0
    flow_volume_mL: float = 0.5
    capillary_delay_s: float = 4.0
    ar_fraction: float = 0.01          # flow cell: Ar in the carrier
    window_s: float = 30.0             # slope window for derivatives
    # calibrated gases: ion current (A) at the base peak per unit mole fraction, replacing
    # SENSITIVITY[gas] * sensitivity_A for them (see processors/gas_calibration.py)
    sensitivities_A: dict[str, float] = {}
    electrode_area_cm2: float | None = None
    active_mass_g: float | None = None


class SlidingSlope:
    """Least-squares slope of a vector signal over the last ``window_s`` seconds, O(1) per
    sample: running sums over a window, with times taken relative to an anchor re-set every
    1e4 s so the sums stay well conditioned (the numba kernel ``gas_rates.slope_update``)."""

    def __init__(self, width: int, window_s: float):
        self.window_s = window_s
        self.state = R.new_slope_state()
        self.sums = np.zeros((2, width))
        self.buf_t = np.zeros(0)
        self.buf_x = np.zeros((0, width))

    def reserve(self, room: int) -> None:
        """Make room in the window's ring buffer for ``room`` more samples."""
        self.buf_t, self.buf_x = R.grow_ring(self.state, self.buf_t, self.buf_x, room)

    def update(self, t: float, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Add sample (t, x); the slopes (into ``out`` when given)."""
        if self.state[R.COUNT] >= self.buf_t.shape[0]:
            self.reserve(1)
        if out is None:
            out = np.empty(self.sums.shape[1])
        R.slope_update(self.state, self.sums, self.buf_t, self.buf_x, float(t),
                       np.ascontiguousarray(x, dtype=np.float64), self.window_s, out)
        return out


@dataclass
class _GasState:
    slope: SlidingSlope
    acc: np.ndarray  # first amount (closed) or integrated amount (flow), per species


class GasProcessor(Processor):
    type_name = "gas"
    consumes = ("ms.ion_current",)
    Config = GasConfig

    def __init__(self, config: GasConfig | None = None):
        super().__init__(config)
        c = self.config
        self.matrix = cracking_matrix(c.channels, c.gases) * c.sensitivity_A
        for j, gas in enumerate(c.gases):
            if gas in c.sensitivities_A:
                self.matrix[:, j] *= c.sensitivities_A[gas] / (SENSITIVITY[gas] * c.sensitivity_A)
        self._state: dict[str, _GasState] = {}
        T = c.temperature_C + 273.15
        self.n_total = c.pressure_Pa * c.headspace_mL * 1e-6 / (R_GAS * T)
        self.q_molar = c.pressure_Pa * c.flow_mL_min * 1e-6 / 60.0 / (R_GAS * T)
        self.tau = c.flow_volume_mL / c.flow_mL_min * 60.0
        self.ar = c.gases.index(c.internal_standard) if c.internal_standard in c.gases else None
        self.shift = c.capillary_delay_s if c.cell_type == "flow" else 0.0
        # the deconvolution works on the matrix scaled to a largest element of 1
        self._scale = float(np.abs(self.matrix).max()) if self.matrix.size else 0.0
        self._scaled = self.matrix / self._scale if self._scale else self.matrix.copy()
        self._pinv, self._have = R.new_pinv_cache(len(c.channels), len(c.gases))
        self._params = np.zeros(R.N_GAS_PARAM)
        self._params[[R.P_AR, R.P_FLOW, R.P_AR_FRACTION, R.P_N_TOTAL, R.P_Q_MOLAR, R.P_TAU,
                      R.P_WINDOW, R.P_SHIFT]] = [
            -1 if self.ar is None else self.ar, c.cell_type == "flow", c.ar_fraction,
            self.n_total, self.q_molar, self.tau, c.window_s, self.shift]
        self._channel_names = [f"m{mz}" for mz in c.channels]
        self._reported = [(j, gas) for j, gas in enumerate(c.gases) if j != self.ar]
        self._units = {"t": "s", "rate_mol_s": "mol/s", "rate_umol_min": "umol/min",
                       "amount_mol": "mol"}

    def _signals(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """(samples, channels) ion currents and the sample times, as float64."""
        c = self.config
        try:
            columns = [frame.arrays[name] for name in self._channel_names]
        except KeyError as exc:
            raise FrameError(frame.stream, f"arrays.{exc.args[0]}",
                             f"channel missing; configured m/z {c.channels}") from None
        if any(column.ndim != 1 for column in columns):
            columns = [np.ravel(column) for column in columns]
        n = columns[0].size
        if len({column.size for column in columns}) > 1:
            raise FrameError(frame.stream, "arrays",
                             f"channels differ in length: m/z {c.channels}")
        if n == 0:
            raise FrameError(frame.stream, f"arrays.{self._channel_names[0]}", "no samples")
        signals = np.concatenate(columns)
        if signals.dtype.kind not in "fiu":
            raise FrameError(frame.stream, "arrays", f"ion currents of dtype {signals.dtype.str}")
        signals = signals.astype(np.float64, copy=False)
        signals = np.ascontiguousarray(signals.reshape(len(columns), n).T)
        t_rel = frame.arrays.get("t")
        t = np.zeros(n) if t_rel is None else \
            np.ascontiguousarray(np.ravel(t_rel), dtype=np.float64)
        if t.size != n:
            raise FrameError(frame.stream, "arrays.t", f"{t.size} times for {n} samples")
        return signals, t

    def process(self, frame: Frame) -> list[Frame]:
        c = self.config
        signals, t = self._signals(frame)
        n, n_species = t.size, len(c.gases)
        st = self._state.get(frame.stream)
        if st is None:
            st = self._state[frame.stream] = _GasState(SlidingSlope(n_species, c.window_s),
                                                       np.zeros(n_species))
        slope = st.slope
        slope.reserve(n)
        self._params[R.P_BASE] = (frame.t0_ns - self._origins.get(frame.stream, frame.t0_ns)) \
            * 1e-9
        x, rates, t_s = np.empty((n_species, n)), np.empty((n_species, n)), np.empty(n)
        status = R.gas_block(signals, t, self._scaled, self._scale, self._pinv, self._have,
                             self._params, slope.state, slope.sums, slope.buf_t, slope.buf_x,
                             st.acc, x, rates, t_s)
        if status == R.NON_FINITE:
            raise FrameError(frame.stream, "arrays", "non-finite ion current (dropout?)")
        if status == R.NO_STANDARD:
            raise FrameError(frame.stream, f"arrays.m{c.channels[0]}",
                             "no internal-standard signal")
        self._origins.setdefault(frame.stream, frame.t0_ns)
        amount = x[:, -1] * self.n_total - st.acc if c.cell_type == "closed" else st.acc
        amounts = np.repeat(amount, n).reshape(n_species, n)
        rates_umol = rates * 6e7
        per_area = rates / c.electrode_area_cm2 if c.electrode_area_cm2 else None
        per_mass = rates / c.active_mass_g if c.active_mass_g else None
        t0_ns = self.stream_ns(frame, float(t_s[0]))
        t_out = t_s - t_s[0]
        frames = []
        for j, gas in self._reported:
            arrays = {"t": t_out, "rate_mol_s": rates[j], "rate_umol_min": rates_umol[j],
                      "amount_mol": amounts[j], "mole_fraction": x[j]}
            if per_area is not None:
                arrays["rate_mol_s_cm2"] = per_area[j]
            if per_mass is not None:
                arrays["rate_mol_s_g"] = per_mass[j]
            frames.append(self.emit(frame, "result.gas", t0_ns, arrays, dict(self._units),
                                    {"tags": {"gas": gas}, "cell_type": c.cell_type,
                                     "time_shift_s": -self.shift}))
        return frames
