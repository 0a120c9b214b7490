"""A simulated experiment: N virtual cells from a scenario, each with a potentiostat, a pressure
transducer and an OEMS, stepped together. Frames come out exactly as real adapters publish them.

Instrument-level faults (sensor stuck, dropout, spikes, out of range; clock offset and drift;
frame loss) are applied where a real instrument would introduce them, after the physics. Every
fault is listed in ``ground_truth`` with its cell, stream, kind and onset, so detectors can be
scored.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from processors.mass_spec import cracking_matrix
from stream.frame import Frame
from stream.sources import Source

from . import engine as E
from .clock import SimClock


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["rest", "cc", "cccv", "cv"]
    c_rate: float = 0.0           # + charge, - discharge (cc, cccv)
    v: float = 0.0                # cccv/cv voltage; cc voltage limit
    s: float = 0.0                # rest or cv duration


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["hard_short", "soft_short", "micro_short", "self_discharge", "gas_burst",
                  "runaway_precursor", "plating", "sensor_stuck", "sensor_dropout",
                  "sensor_spikes", "sensor_out_of_range", "clock_offset", "frame_loss"]
    cells: list[int] | Literal["all"] = [0]
    at_s: float = 0.0
    until_s: float = 1e12
    magnitude: float = 0.0        # ohm, V, mol/s, s (clock), probability (loss)...
    instrument: Literal["potentiostat", "pressure", "oems"] = "potentiostat"
    drift_ppm: float = 0.0        # clock_offset: drift


class CellTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity_Ah: float = 0.05
    r0_ohm: float = 0.08
    r1_ohm: float = 0.04
    c1_F: float = 1500.0
    fade_per_cycle: float = 0.0008
    ambient_C: float = 25.0
    heat_capacity_J_per_K: float = 40.0
    cooling_W_per_K: float = 0.02
    initial_soc: float = 0.0
    sei_soc_end: float = 0.12
    sei_rate_mol_s: float = 4e-10
    crosstalk_rate_mol_s: float = 1.5e-11
    o2_onset_soc: float = 0.8
    o2_rate_mol_s: float = 1.2e-10
    so2_rate_mol_s: float = 0.0
    o2_consumption_mol_s: float = 0.0
    cell_type: Literal["closed", "flow"] = "closed"
    headspace_mL: float = 10.0
    pressure_Pa: float = 1.0e5
    leak_per_s: float = 2e-7          # capillary sampling from a closed headspace
    flow_mL_min: float = 1.0          # flow cell carrier flow (Ar/He)
    flow_volume_mL: float = 0.5       # flow cell gas volume: tau = V/Q
    capillary_delay_s: float = 4.0
    ar_fraction: float = 0.01         # flow cell: Ar internal standard in the carrier
    electrode_expansion_mL: float = 0.02  # graphite swells ~13 %: headspace shrinks with SOC


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    duration_s: float = 24 * 3600.0
    cell: CellTemplate = Field(default_factory=CellTemplate)
    formation: list[Step] = []        # run once
    protocol: list[Step]              # then repeated
    faults: list[FaultSpec] = []
    potentiostat_hz: float = 10.0
    pressure_hz: float = 1.0
    oems_channels: list[int] = [2, 26, 27, 28, 32, 40, 44]
    oems_cycle_s: float = 1.0
    detectors: list[Literal["xrd", "raman", "xrd2d"]] = ["xrd", "raman"]  # [] for none
    spectrum_every_s: float = Field(5.0, gt=0)


def load_scenario(name_or_path: str) -> Scenario:
    """A named scenario shipped in ``adapters/sim/scenarios/`` or a TOML file."""
    if name_or_path.endswith(".toml"):
        with open(name_or_path, "rb") as f:
            data = tomllib.load(f)
    else:
        try:
            text = resources.files("adapters.sim").joinpath(f"scenarios/{name_or_path}.toml")
            data = tomllib.loads(text.read_text())
        except FileNotFoundError:
            raise KeyError(f"unknown scenario {name_or_path!r}; known: {scenario_names()}") \
                from None
    return Scenario.model_validate(data)


def scenario_names() -> list[str]:
    folder = resources.files("adapters.sim").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _protocol_rows(steps: list[Step]) -> list[list[float]]:
    rows = []
    for st in steps:
        if st.kind == "rest":
            rows.append([E.REST, 0.0, E.END_TIME, st.s])
        elif st.kind == "cc":
            end = E.END_V_ABOVE if st.c_rate > 0 else E.END_V_BELOW
            rows.append([E.CC, st.c_rate, end, st.v])
        elif st.kind == "cccv":
            rows.append([E.CCCV, st.c_rate, E.END_I_BELOW, st.v])
        else:
            rows.append([E.CV, st.v, E.END_TIME, st.s])
    return rows


def _param_vector(c: CellTemplate) -> np.ndarray:
    p = np.zeros(E.N_PARAM)
    T = c.ambient_C + 273.15
    p[E.P_CAP], p[E.P_R0], p[E.P_R1], p[E.P_C1] = c.capacity_Ah, c.r0_ohm, c.r1_ohm, c.c1_F
    p[E.P_FADE], p[E.P_AMB] = c.fade_per_cycle, c.ambient_C
    p[E.P_HEAT_CAP], p[E.P_COOL] = c.heat_capacity_J_per_K, c.cooling_W_per_K
    p[E.P_SEI_SOC], p[E.P_SEI_RATE] = c.sei_soc_end, c.sei_rate_mol_s
    p[E.P_XTALK_RATE], p[E.P_O2_SOC], p[E.P_O2_RATE] = (c.crosstalk_rate_mol_s, c.o2_onset_soc,
                                                         c.o2_rate_mol_s)
    p[E.P_SO2_RATE], p[E.P_O2_CONSUME] = c.so2_rate_mol_s, c.o2_consumption_mol_s
    if c.cell_type == "flow":
        rt = E.R_GAS * T
        p[E.P_FLOW] = c.pressure_Pa * c.flow_mL_min * 1e-6 / 60.0 / rt  # mol/s of carrier
        p[E.P_FLOW_V] = c.pressure_Pa * c.flow_volume_mL * 1e-6 / rt    # mol held in the cell
    p[E.P_LEAK], p[E.P_AR_FRAC] = c.leak_per_s, c.ar_fraction
    return p


@dataclass
class _InstrumentFaults:
    stuck: list[tuple[float, float]] = field(default_factory=list)
    dropout: list[tuple[float, float]] = field(default_factory=list)
    spikes: list[tuple[float, float, float]] = field(default_factory=list)
    out_of_range: list[tuple[float, float]] = field(default_factory=list)
    clock_offset_s: float = 0.0
    drift_ppm: float = 0.0
    loss: float = 0.0


class SimExperiment:
    """All cells of one simulated experiment; ``step()`` returns the frames of the next second."""

    def __init__(self, experiment: str, scenario: Scenario, n_cells: int = 1, seed: int = 0,
                 start_ns: int = 1_767_225_600_000_000_000):
        self.experiment, self.sc, self.n = experiment, scenario, n_cells
        self.rng = np.random.default_rng(seed)
        self.start_ns = start_ns
        self.t = 0.0
        c = scenario.cell
        self.cells = [f"cell{i + 1:02d}" for i in range(n_cells)]
        rows = _protocol_rows(scenario.formation) + _protocol_rows(scenario.protocol)
        self.protocol = np.zeros((n_cells, len(rows), 4))
        self.protocol[:] = np.array(rows)
        self.n_rows = np.tile([len(rows), len(scenario.formation)], (n_cells, 1)).astype(np.float64)
        self.params = np.tile(_param_vector(c), (n_cells, 1))
        # cell-to-cell spread: +-2 % capacity, +-5 % resistance
        self.params[:, E.P_CAP] *= 1 + 0.02 * self.rng.standard_normal(n_cells).clip(-2, 2)
        self.params[:, E.P_R0] *= 1 + 0.05 * self.rng.standard_normal(n_cells).clip(-2, 2)
        self.state = np.zeros((n_cells, E.N_STATE_ALL))
        self.state[:, E.S_SOC] = c.initial_soc
        self.state[:, E.S_TEMP] = c.ambient_C
        self.state[:, E.S_CAP] = self.params[:, E.P_CAP]
        T = c.ambient_C + 273.15
        self.state[:, E.S_GAS_HEAD + E.AR] = c.pressure_Pa * c.headspace_mL * 1e-6 / (E.R_GAS * T)
        self.dt = 1.0 / scenario.potentiostat_hz
        self.n_steps = int(round(scenario.potentiostat_hz))
        self.channels = scenario.oems_channels
        self.crack = cracking_matrix(self.channels, E.GASES)
        self.flow_history = np.zeros((n_cells, max(1, int(round(c.capillary_delay_s))) + 1,
                                      E.N_GAS))
        if c.cell_type == "flow":  # the carrier brings the Ar internal standard from the start
            self.flow_history[:, :, E.AR] = c.ar_fraction
            self.state[:, E.S_GAS_X + E.AR] = c.ar_fraction
        self.seq: dict[str, int] = {}
        self.ground_truth: list[dict[str, Any]] = []
        self.faults = np.zeros((n_cells, 0, 4))
        self.inst_faults: dict[tuple[int, str], _InstrumentFaults] = {}
        self._setup_faults()
        self._last: dict[tuple[int, str], np.ndarray] = {}
        self.spectrum_hook = None
        if scenario.detectors:
            from .spectra import attach_detectors
            attach_detectors(self, list(scenario.detectors))

    # -- faults -------------------------------------------------------------------------
    def _cells_of(self, f: FaultSpec) -> list[int]:
        return list(range(self.n)) if f.cells == "all" else [c for c in f.cells if c < self.n]

    def _setup_faults(self) -> None:
        physics = [f for f in self.sc.faults if f.kind in E.FAULT_KINDS]
        per_cell: list[list[list[float]]] = [[] for _ in range(self.n)]
        for f in physics:
            for c in self._cells_of(f):
                per_cell[c].append([E.FAULT_KINDS[f.kind], f.at_s, f.until_s, f.magnitude])
        width = max([len(x) for x in per_cell] + [1])
        self.faults = np.zeros((self.n, width, 4))
        for c, rows in enumerate(per_cell):
            if rows:
                self.faults[c, :len(rows)] = rows
        for f in self.sc.faults:
            for c in self._cells_of(f):
                inst = f.instrument if f.kind not in E.FAULT_KINDS else "potentiostat"
                self.ground_truth.append({
                    "cell": self.cells[c], "stream": self._stream(c, inst), "kind": f.kind,
                    "onset_s": f.at_s, "onset_ns": self.start_ns + int(f.at_s * 1e9),
                    "end_s": min(f.until_s, self.sc.duration_s), "magnitude": f.magnitude})
                if f.kind in E.FAULT_KINDS:
                    continue
                fx = self.inst_faults.setdefault((c, inst), _InstrumentFaults())
                if f.kind == "sensor_stuck":
                    fx.stuck.append((f.at_s, f.until_s))
                elif f.kind == "sensor_dropout":
                    fx.dropout.append((f.at_s, f.until_s))
                elif f.kind == "sensor_spikes":
                    fx.spikes.append((f.at_s, f.until_s, f.magnitude or 0.05))
                elif f.kind == "sensor_out_of_range":
                    fx.out_of_range.append((f.at_s, f.until_s))
                elif f.kind == "clock_offset":
                    fx.clock_offset_s, fx.drift_ppm = f.magnitude, f.drift_ppm
                elif f.kind == "frame_loss":
                    fx.loss = f.magnitude

    # -- stepping -----------------------------------------------------------------------
    def _stream(self, c: int, instrument: str) -> str:
        return f"{self.experiment}/{self.cells[c]}/{instrument}"

    def step(self) -> list[Frame]:
        """Advance one second of experiment time; the frames every instrument publishes."""
        n, k = self.n, self.n_steps
        out = {name: np.empty((n, k)) for name in ("v", "i", "temp", "soc", "step")}
        rates = np.empty((n, k, E.N_GAS))
        noise = self.rng.standard_normal((n, k))
        E.step_cells(self.state, self.params, self.protocol, self.n_rows, self.faults, self.dt,
                     k, noise, out["v"], out["i"], out["temp"], out["soc"], out["step"], rates)
        t0 = self.t
        self.t += k * self.dt
        self.last_rates = rates
        self.last_soc = out["soc"][:, -1].copy()
        frames: list[Frame] = []
        v_meas = out["v"] + self.rng.normal(0.0, 2e-4, (n, k))
        i_meas = out["i"] * (1 + self.rng.normal(0.0, 1e-4, (n, k)))
        t_rel = np.arange(k) * self.dt
        pressure, ion = self._pressure_and_ms(out["temp"][:, -1])
        rows = self.protocol[0, :, 0].astype(int)
        for c in range(n):
            step_row = int(self.state[c, E.S_ROW])
            frames.append(self._frame(c, "potentiostat", "echem", t0, {
                "t": t_rel, "voltage": v_meas[c], "current": i_meas[c],
                "temperature": out["temp"][c], "step": out["step"][c].astype(np.int32)},
                {"t": "s", "voltage": "V", "current": "A", "temperature": "degC"},
                {"mode": E.STEP_NAMES[int(rows[step_row])], "cycle": int(self.state[c, E.S_CYCLE])}))
            frames.append(self._frame(c, "pressure", "pressure", t0, {
                "t": np.zeros(1), "pressure": pressure[c:c + 1],
                "temperature": out["temp"][c, -1:]},
                {"t": "s", "pressure": "Pa", "temperature": "degC"}, {}))
            arrays = {"t": np.zeros(1)}
            arrays.update({f"m{mz}": ion[c, j:j + 1] for j, mz in enumerate(self.channels)})
            frames.append(self._frame(c, "oems", "ms.ion_current", t0, arrays,
                                      {f"m{mz}": "A" for mz in self.channels},
                                      {"cell_type": self.sc.cell.cell_type,
                                       "dwell_s": self.sc.oems_cycle_s / len(self.channels)}))
        if self.spectrum_hook is not None and t0 % self.sc.spectrum_every_s < 1e-9:
            frames.extend(self.spectrum_hook(self, t0))
        return [f for f in frames if f is not None]

    def _pressure_and_ms(self, temp_C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.sc.cell
        T = temp_C + 273.15
        head = self.state[:, E.S_GAS_HEAD:E.S_GAS_HEAD + E.N_GAS]
        n_total = head.sum(axis=1)
        volume = (c.headspace_mL - c.electrode_expansion_mL * self.last_soc.clip(0, 1)) * 1e-6
        pressure = n_total * E.R_GAS * T / volume
        pressure = pressure + self.rng.normal(0.0, 2.0, self.n) + 3.0 * (temp_C - c.ambient_C)
        if c.cell_type == "flow":
            x_now = self.state[:, E.S_GAS_X:E.S_GAS_X + E.N_GAS]
            self.flow_history = np.roll(self.flow_history, 1, axis=1)
            self.flow_history[:, 0] = x_now
            x = self.flow_history[:, -1]  # what reaches the MS after the capillary delay
        else:
            x = head / n_total[:, None]
        ion = 1e-9 * x @ self.crack.T
        ion = ion * (1 + self.rng.normal(0.0, 0.005, ion.shape)) + \
            self.rng.normal(0.0, 2e-14, ion.shape)
        return pressure, ion

    def _frame(self, c: int, instrument: str, kind: str, t0: float, arrays: dict,
               units: dict, meta: dict) -> Frame | None:
        stream = self._stream(c, instrument)
        seq = self.seq.get(stream, 0)
        self.seq[stream] = seq + 1
        fx = self.inst_faults.get((c, instrument))
        t0_ns = self.start_ns + int(round(t0 * 1e9))
        if fx is not None:
            if fx.loss and self.rng.random() < fx.loss:
                return None  # lost on the way: seq shows the gap
            t0_ns += int((fx.clock_offset_s + fx.drift_ppm * 1e-6 * t0) * 1e9)
            if fx.clock_offset_s or fx.drift_ppm:
                meta = {**meta, "raw_clock_offset_s": fx.clock_offset_s}
            arrays = self._sensor_faults(fx, c, instrument, t0, arrays)
        return Frame(stream, kind, seq, t0_ns, arrays, units, meta)

    def _sensor_faults(self, fx: _InstrumentFaults, c: int, instrument: str, t0: float,
                       arrays: dict) -> dict:
        def active(windows: list) -> bool:
            return any(a <= t0 < b for a, b, *_ in windows)

        key = (c, instrument)
        data = {k: np.array(v, dtype=np.float64) if k not in ("t", "step") else v
                for k, v in arrays.items()}
        fields = [k for k in data if k not in ("t", "step")]
        if active(fx.stuck) and key in self._last:
            for name in fields:
                data[name][:] = self._last[key][fields.index(name)]
        if active(fx.dropout):
            for name in fields:
                data[name][:] = np.nan
        for a, b, size in fx.spikes:
            if a <= t0 < b and self.rng.random() < 0.2:
                name = fields[0]
                data[name][-1] *= 1 + size * 20
        if active(fx.out_of_range):
            data[fields[0]][:] = 1e9
        self._last[key] = [data[name][-1] for name in fields]
        return data


class ScenarioSource(Source):
    """A simulated experiment as one source: every instrument of every cell, paced by a clock."""

    def __init__(self, experiment: str, scenario: str | Scenario, n_cells: int = 1, seed: int = 0,
                 clock: SimClock | None = None, duration_s: float | None = None):
        sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.clock = clock or SimClock(speed=math.inf)
        self.sim = SimExperiment(experiment, sc, n_cells, seed, self.clock.start_ns)
        self.duration_s = sc.duration_s if duration_s is None else duration_s
        self.name = f"sim.{sc.name}"

    @property
    def ground_truth(self) -> list[dict[str, Any]]:
        return [g for g in self.sim.ground_truth if g["onset_s"] < self.duration_s]

    async def frames(self) -> AsyncIterator[Frame]:
        while self.sim.t < self.duration_s:
            await self.clock.wait_until(self.sim.t + 1.0)
            for frame in self.sim.step():
                yield frame
