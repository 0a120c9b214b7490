"""Default alert rules: page on the faults the detectors report (README "Event detection").

Event rules, one alert per cell (per gas for gassing), latched until acknowledged: a fault seen
once stays on the dashboard until someone has looked at it. ``repeat_s`` reminds of the critical
ones while nobody has acknowledged them.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_RULES: list[dict[str, Any]] = [
    {"name": "gassing_onset", "event": "gas_onset", "min_event_severity": "warning",
     "group_by": ["gas"], "severity": "warning", "latch": True, "resolve_after_s": 1800.0,
     "labels": {"fault": "gassing"}},
    {"name": "hard_short", "event": "hard_short", "severity": "critical", "latch": True,
     "repeat_s": 1800.0, "labels": {"fault": "short"}},
    {"name": "soft_short", "event": "soft_short", "severity": "critical", "latch": True,
     "repeat_s": 3600.0, "labels": {"fault": "short"}},
    {"name": "self_discharge", "event": "self_discharge", "severity": "warning", "latch": True,
     "resolve_after_s": 3600.0, "labels": {"fault": "short"}},
    {"name": "plating", "event": "plating", "severity": "warning", "latch": True,
     "labels": {"fault": "plating"}},
    {"name": "runaway_precursor", "event": "runaway_precursor", "severity": "critical",
     "latch": True, "repeat_s": 900.0, "labels": {"fault": "thermal"}},
    {"name": "thermal_runaway", "event": "thermal_runaway", "severity": "critical",
     "latch": True, "repeat_s": 300.0, "labels": {"fault": "thermal"}},
]


def default_rules() -> list[dict[str, Any]]:
    """A fresh copy of the default rules, as config dicts (``[[alerts]]`` entries)."""
    return copy.deepcopy(DEFAULT_RULES)
