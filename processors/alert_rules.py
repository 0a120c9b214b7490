"""The alert engine as a processor (``alerts``): rules on result fields and on events, evaluated
inside the node on frame time. Each notified state change (firing, acknowledged, resolved) is an
``alert`` frame on ``<experiment>/<cell>/<processor name>``; acknowledgements arrive as
``command`` frames. The state machine is ``stream.alerts.engine``.
"""

from __future__ import annotations

import numpy as np
from pydantic import field_validator

from stream.alerts.config import AlertRule, check_unique_names
from stream.alerts.engine import AlertEngine, Transition
from stream.frame import Frame

from .base import Processor, ProcessorConfig

__all__ = ["AlertRule", "AlertRuleProcessor", "AlertRulesConfig"]


class AlertRulesConfig(ProcessorConfig):
    rules: list[AlertRule] = []

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[AlertRule]) -> list[AlertRule]:
        check_unique_names(rules)
        return rules


class AlertRuleProcessor(Processor):
    type_name = "alerts"
    consumes = ("*",)  # every kind but alert and health: event rules age on any frame of a cell
    Config = AlertRulesConfig

    def __init__(self, config: AlertRulesConfig | None = None):
        super().__init__(config)
        self.engine = AlertEngine(self.config.rules)

    def wants(self, kind: str) -> bool:
        return kind not in ("alert", "health")

    def process(self, frame: Frame) -> list[Frame]:
        transitions = self.engine.on_frame(frame)
        return [self._frame(tr) for tr in transitions] if transitions else []

    def _frame(self, tr: Transition) -> Frame:
        a = tr.alert
        where = Frame(f"{a.experiment}/{a.cell}/_", "alert", 0, tr.t_ns)  # names the cell
        return self.emit(where, "alert", tr.t_ns,
                         {"value": np.array([tr.value]), "threshold": np.array([tr.threshold])},
                         {}, tr.meta())
