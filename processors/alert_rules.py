"""Threshold alert rules on result fields: pending -> firing -> resolved, with hysteresis and a
for-duration. Each state change is an ``alert`` frame.

A rule fires when ``field <op> threshold`` has held for ``for_s`` seconds of sample time, and
resolves when the value is back past ``threshold`` by ``hysteresis``.
"""

from __future__ import annotations

import fnmatch
import operator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from stream.frame import Frame

from .base import Processor, ProcessorConfig

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class AlertRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str                     # frame kind pattern, e.g. "result.echem"
    field: str                    # array name in that frame
    op: Literal[">", ">=", "<", "<="]
    threshold: float
    hysteresis: float = 0.0
    for_s: float = 0.0
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = {}


class AlertRulesConfig(ProcessorConfig):
    rules: list[AlertRule] = []


@dataclass
class _RuleState:
    state: str = "inactive"       # inactive | pending | firing
    since_ns: int = 0


class AlertRuleProcessor(Processor):
    type_name = "alerts"
    consumes = ("result.*", "echem", "pressure", "temperature", "ms.ion_current")
    Config = AlertRulesConfig

    def __init__(self, config: AlertRulesConfig | None = None):
        super().__init__(config)
        self._states: dict[tuple[str, str], _RuleState] = {}
        self._rules_for: dict[str, list[AlertRule]] = {}

    def process(self, frame: Frame) -> list[Frame]:
        rules = self._rules_for.get(frame.kind)
        if rules is None:
            rules = self._rules_for[frame.kind] = [
                r for r in self.config.rules if fnmatch.fnmatchcase(frame.kind, r.kind)]
        out: list[Frame] = []
        for rule in rules:
            values = frame.arrays.get(rule.field)
            if values is None:
                continue
            out.extend(self._evaluate(rule, frame, np.asarray(values, dtype=np.float64).ravel()))
        return out

    def _evaluate(self, rule: AlertRule, frame: Frame, values: np.ndarray) -> list[Frame]:
        key = (rule.name, frame.stream)
        st = self._states.setdefault(key, _RuleState())
        op = _OPS[rule.op]
        active = op(values, rule.threshold)
        if st.state == "inactive" and not active.any():
            return []
        sign = 1.0 if rule.op in (">", ">=") else -1.0
        cleared = ~op(values, rule.threshold - sign * rule.hysteresis)
        times = frame.times_ns() if values.shape[0] == frame.n_samples else \
            np.full(values.shape[0], frame.t0_ns)
        out = []
        for k in range(values.shape[0]):
            t_ns = int(times[k])
            if st.state == "inactive" and active[k]:
                st.state, st.since_ns = "pending", t_ns
            elif st.state == "pending" and not active[k]:
                st.state = "inactive"
            elif st.state == "firing" and cleared[k]:
                st.state = "inactive"
                out.append(self._alert(rule, frame, "resolved", t_ns, values[k]))
                continue
            if st.state == "pending" and (t_ns - st.since_ns) >= rule.for_s * 1e9:
                st.state = "firing"
                out.append(self._alert(rule, frame, "firing", t_ns, values[k]))
        return out

    def _alert(self, rule: AlertRule, frame: Frame, state: str, t_ns: int, value: float) -> Frame:
        return self.emit(frame, "alert", t_ns,
                         {"value": np.array([value]), "threshold": np.array([rule.threshold])},
                         {},
                         {"rule": rule.name, "state": state, "severity": rule.severity,
                          "source": frame.stream, "field": rule.field, "labels": rule.labels,
                          "onset_ns": self._states[(rule.name, frame.stream)].since_ns})
