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

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .kernels.nnls import nnls_many
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
    sample: running sums over a window, with times taken relative to the window's first sample
    so the sums stay well conditioned."""

    def __init__(self, width: int, window_s: float):
        self.window_s = window_s
        self.samples: deque[tuple[float, np.ndarray]] = deque()
        self.t_ref: float | None = None
        self.n = 0
        self.st = self.stt = 0.0
        self.sx = np.zeros(width)
        self.stx = np.zeros(width)

    def _add(self, t: float, x: np.ndarray, sign: float) -> None:
        u = t - self.t_ref
        self.n += int(sign)
        self.st += sign * u
        self.stt += sign * u * u
        self.sx += sign * x
        self.stx += sign * u * x

    def update(self, t: float, x: np.ndarray) -> np.ndarray:
        if self.t_ref is None or t - self.t_ref > 1e4:  # re-anchor now and then
            self.t_ref = t
            self.n, self.st, self.stt = 0, 0.0, 0.0
            self.sx[:] = 0.0
            self.stx[:] = 0.0
            for ts, xs in self.samples:
                self._add(ts, xs, 1.0)
        self.samples.append((t, x))
        self._add(t, x, 1.0)
        while self.samples[0][0] < t - self.window_s:
            ts, xs = self.samples.popleft()
            self._add(ts, xs, -1.0)
        denom = self.n * self.stt - self.st * self.st
        if self.n < 3 or denom <= 0:
            return np.zeros_like(x)
        return (self.n * self.stx - self.st * self.sx) / denom


@dataclass
class _GasState:
    slope: SlidingSlope
    amount: np.ndarray | None = None
    n0: np.ndarray | None = None
    last_t: float | None = None


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

    def process(self, frame: Frame) -> list[Frame]:
        c = self.config
        try:
            signals = np.column_stack([np.ravel(frame.arrays[f"m{mz}"]).astype(np.float64)
                                       for mz in c.channels])
        except KeyError as exc:
            raise FrameError(frame.stream, f"arrays.{exc.args[0]}",
                             f"channel missing; configured m/z {c.channels}") from None
        if not np.isfinite(signals).all():
            raise FrameError(frame.stream, "arrays", "non-finite ion current (dropout?)")
        x = nnls_many(self.matrix, signals)
        if self.ar is not None:
            ar = x[:, self.ar:self.ar + 1]
            if (ar <= 0).any():
                raise FrameError(frame.stream, f"arrays.m{c.channels[0]}",
                                 "no internal-standard signal")
            x = x * (c.ar_fraction / ar) if c.cell_type == "flow" else x / x.sum(axis=1,
                                                                                  keepdims=True)
        st = self._state.get(frame.stream)
        if st is None:
            st = self._state[frame.stream] = _GasState(SlidingSlope(x.shape[1], c.window_s))
        t_rel = frame.arrays.get("t", np.zeros(len(x)))
        t_s = self.stream_seconds(frame, np.ravel(t_rel)) - self.shift
        out_rates = np.empty_like(x)
        for k in range(len(x)):
            slope = st.slope.update(float(t_s[k]), x[k])
            if c.cell_type == "closed":
                out_rates[k] = slope * self.n_total
            else:
                out_rates[k] = self.q_molar * (x[k] + self.tau * slope)
        if c.cell_type == "closed":
            n_now = x[-1] * self.n_total
            if st.n0 is None:
                st.n0 = x[0] * self.n_total
            amount = n_now - st.n0
        else:
            dt = 0.0 if st.last_t is None else t_s[-1] - st.last_t
            st.amount = (np.zeros(x.shape[1]) if st.amount is None else st.amount) + \
                out_rates[-1] * dt
            amount = st.amount
        st.last_t = t_s[-1]
        t0_ns = self.stream_ns(frame, float(t_s[0]))
        frames = []
        for j, gas in enumerate(c.gases):
            if j == self.ar:
                continue
            rate = out_rates[:, j]
            arrays = {"t": t_s - t_s[0], "rate_mol_s": rate, "rate_umol_min": rate * 6e7,
                      "amount_mol": np.full(len(rate), amount[j]),
                      "mole_fraction": x[:, j]}
            if c.electrode_area_cm2:
                arrays["rate_mol_s_cm2"] = rate / c.electrode_area_cm2
            if c.active_mass_g:
                arrays["rate_mol_s_g"] = rate / c.active_mass_g
            frames.append(self.emit(frame, "result.gas", t0_ns, arrays,
                                    {"t": "s", "rate_mol_s": "mol/s", "rate_umol_min": "umol/min",
                                     "amount_mol": "mol"},
                                    {"tags": {"gas": gas}, "cell_type": c.cell_type,
                                     "time_shift_s": -self.shift}))
        return frames
