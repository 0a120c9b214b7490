"""The alert rule schema (``[[alerts]]`` in the config, ``rules`` of the ``alerts`` processor)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
COMPARISONS = (">", ">=", "<", "<=", "==", "!=")


class AlertRule(BaseModel):
    """A field rule (``kind`` + ``field``: a value crossing a threshold) or an event rule
    (``event``: a detector's event, optionally with a condition on one of its evidence values)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")  # part of MQTT topics and idempotency keys
    kind: str | None = None            # field rule: frame kind (glob), e.g. "result.gas"
    event: str | None = None           # event rule: event name (glob), e.g. "gas_onset"
    field: str | None = None           # array of that frame (event rules: an evidence value)
    op: Literal[">", ">=", "<", "<=", "==", "!=", "present"] | None = None
    threshold: float | None = None
    hysteresis: float = Field(0.0, ge=0)   # field rules: resolves once back past threshold by this
    for_s: float = Field(0.0, ge=0)        # field rules: condition must hold this long (frame time)
    severity: Severity = "warning"
    labels: dict[str, str] = {}
    match: dict[str, str] = {}         # glob per key: tags (gas, peak), event meta, cell, instrument
    min_event_severity: Severity = "info"   # event rules: ignore events below this severity
    group_by: list[str] = []           # event rules: one alert per value of these meta keys
    resolve_after_s: float = Field(600.0, gt=0)  # event rules: no matching event this long clears
    latch: bool = False                # stays firing after the condition clears, until acknowledged
    repeat_s: float = Field(0.0, ge=0)  # re-notify a firing, unacknowledged alert at most this
    #                                     often (frame time); 0 = never

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        if (self.kind is None) == (self.event is None):
            raise ValueError("give either kind (a field rule) or event (an event rule)")
        if self.name == "ack":
            raise ValueError("'ack' is the acknowledgement topic; pick another rule name")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        if self.event is not None:
            if self.op is None:
                self.op = "present"
            if self.for_s or self.hysteresis:
                raise ValueError("for_s and hysteresis apply to field rules; event rules clear "
                                 "after resolve_after_s without a matching event")
        elif self.op == "present" or self.op is None:
            raise ValueError(f"a field rule needs op, one of {', '.join(COMPARISONS)}")
        if self.op == "present":
            if self.field is not None or self.threshold is not None:
                raise ValueError("op 'present' takes no field or threshold")
        elif self.field is None or self.threshold is None:
            raise ValueError(f"op {self.op!r} needs field and threshold")
        if self.op in ("==", "!=") and self.hysteresis:
            raise ValueError(f"hysteresis does not apply to op {self.op!r}")
        return self


def check_unique_names(rules: list[AlertRule]) -> None:
    """Rule names identify alerts (topics, idempotency keys): they must be unique."""
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"alert rule name {rule.name!r} is used twice")
        seen.add(rule.name)
