"""A single simulated potentiostat/cycler channel, for configs that list instruments one by one:
the virtual cell of ``engine`` under 1C CC-CV cycling, published as ``echem`` frames."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stream.frame import Frame

from ..base import Adapter, AdapterConfig
from .clock import SimClock
from .experiment import CellTemplate, FaultSpec, Scenario, SimExperiment, Step


class ShortSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["hard_short", "soft_short", "self_discharge"] = "hard_short"
    at_s: float
    resistance_ohm: float = 0.05


class SimPotentiostatConfig(AdapterConfig):
    cell: CellTemplate = Field(default_factory=lambda: CellTemplate(initial_soc=0.02,
                                                                     sei_rate_mol_s=0.0))
    charge_c_rate: float = 1.0
    discharge_c_rate: float = 1.0
    v_max: float = 4.2
    v_min: float = 2.8
    rest_s: float = 600.0
    sample_hz: float = 10.0
    duration_s: float = 3600.0
    seed: int = 0
    faults: list[ShortSpec] = []


class SimPotentiostat(Adapter):
    type_name = "sim.potentiostat"
    Config = SimPotentiostatConfig

    def __init__(self, stream: str, config: SimPotentiostatConfig | None = None,
                 clock: SimClock | None = None):
        super().__init__(stream, config)
        c = self.config
        self.clock = clock or SimClock(speed=math.inf)
        scenario = Scenario(
            name="potentiostat", duration_s=c.duration_s, cell=c.cell,
            potentiostat_hz=c.sample_hz,
            protocol=[Step(kind="cccv", c_rate=c.charge_c_rate, v=c.v_max),
                      Step(kind="rest", s=c.rest_s),
                      Step(kind="cc", c_rate=-c.discharge_c_rate, v=c.v_min),
                      Step(kind="rest", s=c.rest_s)],
            faults=[FaultSpec(kind=f.kind, cells=[0], at_s=f.at_s, magnitude=f.resistance_ohm)
                    for f in c.faults])
        experiment, cell, _ = stream.split("/")
        self.sim = SimExperiment(experiment, scenario, 1, c.seed, self.clock.start_ns)
        self.sim.cells = [cell]
        self.ground_truth = [{**g, "stream": stream} for g in self.sim.ground_truth]

    async def frames(self) -> AsyncIterator[Frame]:
        while self.sim.t < self.config.duration_s:
            await self.clock.wait_until(self.sim.t + 1.0)
            frame = self.sim.step()[0]
            frame.stream = self.stream
            yield frame
