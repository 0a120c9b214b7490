"""Simulated potentiostat/cycler: the virtual cell, sampled at ``sample_hz``, published in blocks
of ``block_s`` seconds as ``echem`` frames (t, voltage, current, temperature, step)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stream.frame import Frame

from ..base import Adapter, AdapterConfig
from .cell import (
    MODE_NAMES,
    S_SHORT,
    CellParams,
    initial_state,
    ocv_table,
    params_vector,
    step_cell,
)
from .clock import SimClock


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["hard_short"]
    at_s: float
    resistance_ohm: float = 0.02


class SimPotentiostatConfig(AdapterConfig):
    cell: CellParams = Field(default_factory=CellParams)
    sample_hz: float = 10.0
    block_s: float = 1.0
    duration_s: float = 3600.0
    seed: int = 0
    faults: list[FaultSpec] = []


class SimPotentiostat(Adapter):
    type_name = "sim.potentiostat"
    Config = SimPotentiostatConfig

    def __init__(self, stream: str, config: SimPotentiostatConfig | None = None,
                 clock: SimClock | None = None):
        super().__init__(stream, config)
        self.clock = clock or SimClock(speed=math.inf)
        c = self.config
        self.rng = np.random.default_rng(c.seed)
        self.state = initial_state(c.cell)
        self.params = params_vector(c.cell)
        self.ocv_soc, self.ocv_v = ocv_table()
        self.dt = 1.0 / c.sample_hz
        self.n_block = max(1, int(round(c.block_s * c.sample_hz)))
        self.ground_truth = [{"kind": f.kind, "onset_s": f.at_s,
                              "onset_ns": self.clock.epoch_ns(f.at_s)} for f in c.faults]

    def block(self, t_start: float) -> Frame:
        """Simulate one block starting at sim time ``t_start``."""
        c, n = self.config, self.n_block
        parts, done = [], 0
        for fault in sorted(c.faults, key=lambda f: f.at_s):
            k = math.ceil((fault.at_s - t_start) / self.dt - 1e-9)
            if done <= k < n:
                if k > done:
                    parts.append(self._step(k - done))
                    done = k
                self.state[S_SHORT] = fault.resistance_ohm
        parts.append(self._step(n - done))
        arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        voltage = arrays["voltage"] + self.rng.normal(0.0, c.cell.noise_voltage_V, n)
        current = arrays["current"] * (1.0 + self.rng.normal(0.0, c.cell.noise_current_rel, n))
        return Frame(
            self.stream, "echem", self.next_seq(), self.clock.epoch_ns(t_start),
            {"t": np.arange(n) * self.dt, "voltage": voltage, "current": current,
             "temperature": arrays["temperature"], "step": arrays["step"].astype(np.int32)},
            {"t": "s", "voltage": "V", "current": "A", "temperature": "degC"},
            {"mode": MODE_NAMES[int(arrays["mode"][-1])], "cycle": int(self.state[5])},
        )

    def _step(self, n: int) -> dict[str, np.ndarray]:
        out = {k: np.empty(n) for k in ("voltage", "current", "temperature", "mode", "step")}
        step_cell(self.state, self.params, self.dt, n, self.ocv_soc, self.ocv_v, out["voltage"],
                  out["current"], out["temperature"], out["mode"], out["step"])
        return out

    async def frames(self) -> AsyncIterator[Frame]:
        t, block_s = 0.0, self.n_block * self.dt
        while t < self.config.duration_s:
            await self.clock.wait_until(t + block_s)
            yield self.block(t)
            t += block_s
