"""The alert state machine: deterministic, on frame time, no I/O.

One state per alert identity: rule + experiment + cell, plus the frame's tags (``gas``/``peak``)
for field rules and the ``group_by`` values for event rules. States:

- ``inactive`` -> ``pending`` when the condition becomes true (field rules with ``for_s``);
- ``pending`` -> ``firing`` once it held for ``for_s`` of sample time (at once without ``for_s``);
  back to ``inactive`` if it stops holding first (nothing is notified);
- ``firing`` -> ``resolved`` when it clears: the value back past ``threshold`` by
  ``hysteresis``; for event rules, ``resolve_after_s`` without a matching event;
- with ``latch``, a firing alert whose condition cleared stays ``firing`` until acknowledged;
- an acknowledgement turns a firing alert whose condition still holds into ``acknowledged``
  (no more repeats; it resolves when the condition clears) and resolves a latched one.

Deduplication: while an alert is firing or acknowledged, more crossings or matching events only
update it (its ``count``). Repeat rate: a firing, unacknowledged alert is notified again at
most every ``repeat_s`` of frame time. Every notified state change is a ``Transition`` with a
key that identifies it across retries and restarts (the idempotency key of the notifiers).

All times are frame times (epoch ns from the frames), so the same frames in the same order give
the same transitions, live or replayed.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..frame import Frame
from . import ACK_COMMAND, COMMAND_KIND
from .config import SEVERITY_RANK, AlertRule, check_unique_names

INACTIVE, PENDING, FIRING, ACKNOWLEDGED, RESOLVED = (
    "inactive", "pending", "firing", "acknowledged", "resolved")
NOTIFIED_STATES = (FIRING, ACKNOWLEDGED, RESOLVED)

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}
_TAG_KEYS = ("gas", "peak")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_IGNORED_KINDS = ("alert", "health")
_WHERE_KEYS = ("experiment", "cell", "instrument")
_RECENT_TIMES = 1024


def _safe(part: Any) -> str:
    return _UNSAFE.sub("_", str(part)) or "_"


@dataclass(slots=True)
class AlertState:
    rule: AlertRule
    experiment: str
    cell: str
    alert_id: str                 # rule/cell[/group...]: the MQTT topic suffix
    tags: dict[str, str]
    state: str = INACTIVE
    onset_ns: int = 0             # when the condition began (event rules: the event's onset)
    fired_ns: int = 0             # when this episode fired: part of every key of the episode
    last_t_ns: int = 0            # latest sample time evaluated
    last_notify_ns: int = 0
    last_match_ns: int = 0        # event rules: detection time of the latest matching event
    cleared: bool = False         # latched: the condition cleared, waiting for an ack
    count: int = 0                # crossings / matching events in this episode
    repeat: int = 0
    value: float = math.nan
    source: str = ""
    event: str | None = None
    acked_by: str | None = None


@dataclass(slots=True)
class Transition:
    """One notified state change of one alert."""

    state: str                    # firing | acknowledged | resolved
    t_ns: int
    alert: AlertState
    value: float
    repeat: int
    count: int
    acked_by: str | None = None

    @property
    def key(self) -> str:
        """Idempotency key: the same for a retried or replayed delivery of this state change."""
        a = self.alert
        key = f"{a.experiment}/{a.alert_id}/{a.fired_ns}/{self.state}"
        return f"{key}/{self.repeat}" if self.repeat else key

    @property
    def threshold(self) -> float:
        rule = self.alert.rule
        return 1.0 if rule.op == "present" else float(rule.threshold)

    def meta(self) -> dict[str, Any]:
        a, rule = self.alert, self.alert.rule
        meta: dict[str, Any] = {
            "rule": rule.name, "state": self.state, "severity": rule.severity,
            "source": a.source, "field": rule.field or "count", "onset_ns": a.onset_ns,
            "alert_id": a.alert_id, "key": self.key, "repeat": self.repeat, "count": self.count,
            "latch": rule.latch, "labels": dict(rule.labels)}
        if a.event is not None:
            meta["event"] = a.event
        if self.acked_by is not None:
            meta["acked_by"] = self.acked_by
        if a.tags:
            meta["tags"] = dict(a.tags)
        return meta


@dataclass
class _Compiled:
    rule: AlertRule
    compare: Any = None
    clear_at: float = math.nan      # field rules: the threshold moved by the hysteresis
    for_ns: int = 0
    resolve_ns: int = 0
    repeat_ns: int = 0
    min_rank: int = 0
    match_cacheable: bool = True

    @classmethod
    def of(cls, rule: AlertRule) -> _Compiled:
        c = cls(rule, _OPS.get(rule.op), for_ns=int(round(rule.for_s * 1e9)),
                resolve_ns=int(round(rule.resolve_after_s * 1e9)),
                repeat_ns=int(round(rule.repeat_s * 1e9)),
                min_rank=SEVERITY_RANK[rule.min_event_severity],
                match_cacheable=set(rule.match) <= {*_TAG_KEYS, *_WHERE_KEYS})
        if rule.threshold is not None:
            sign = -1.0 if rule.op in (">", ">=") else 1.0
            c.clear_at = rule.threshold + sign * rule.hysteresis
        return c

    def active(self, values: np.ndarray) -> np.ndarray:
        return self.compare(values, self.rule.threshold)

    def cleared(self, values: np.ndarray) -> np.ndarray:
        if self.rule.op in ("==", "!="):
            return ~self.compare(values, self.rule.threshold)
        return ~self.compare(values, self.clear_at)


def _first(mask: np.ndarray, start: int) -> int:
    """Index of the first True at or after ``start``, or -1."""
    if start >= mask.shape[0]:
        return -1
    k = int(np.argmax(mask[start:]))
    return start + k if mask[start + k] else -1


class AlertEngine:
    def __init__(self, rules: list[AlertRule]):
        check_unique_names(rules)
        self.rules = [_Compiled.of(r) for r in rules]
        self._compiled_by_name = {c.rule.name: c for c in self.rules}
        self._field_rules = [c for c in self.rules if c.rule.kind is not None]
        self._event_rules = [c for c in self.rules if c.rule.event is not None]
        self._by_kind: dict[str, list[_Compiled]] = {}
        self._match_cache: dict[tuple, bool] = {}
        self._states: dict[tuple, AlertState] = {}
        self._clock: dict[tuple[str, str], int] = {}          # (experiment, cell) -> latest time
        self._stream_clock: dict[str, int] = {}               # stream -> latest time
        self._ticking: dict[tuple[str, str], dict[int, AlertState]] = {}  # event alerts to age
        self._recent: dict[tuple[str, str], tuple[deque, set]] = {}

    # -- public ---------------------------------------------------------------------------
    def states(self) -> list[AlertState]:
        return list(self._states.values())

    def on_frame(self, frame: Frame) -> list[Transition]:
        kind = frame.kind
        if kind == COMMAND_KIND:
            return self._command(frame)
        if kind in _IGNORED_KINDS:
            return []
        experiment, cell, _ = frame.stream.split("/")
        where = (experiment, cell)
        t = frame.arrays.get("t")
        now = frame.t0_ns + (int(round(float(t[-1]) * 1e9)) if t is not None and t.ndim == 1
                             and t.shape[0] and math.isfinite(t[-1]) else 0)
        if now > self._clock.get(where, now - 1):
            self._clock[where] = now
        if now > self._stream_clock.get(frame.stream, now - 1):
            self._stream_clock[frame.stream] = now
        out: list[Transition] = []
        if kind == "event":
            out += self._event(frame, experiment, cell)
        else:
            rules = self._by_kind.get(kind)
            if rules is None:
                rules = self._by_kind[kind] = [c for c in self._field_rules
                                               if fnmatch.fnmatchcase(kind, c.rule.kind)]
            for c in rules:
                if c.rule.field in frame.arrays:
                    out += self._field(c, frame, experiment, cell, now)
        if where in self._ticking:
            out += self._tick(where, self._clock[where])
        return out

    # -- field rules ----------------------------------------------------------------------
    def _field(self, c: _Compiled, frame: Frame, experiment: str, cell: str,
               now: int) -> list[Transition]:
        tags = frame.meta.get("tags")
        tags = {k: str(tags[k]) for k in _TAG_KEYS if k in tags} if isinstance(tags, dict) else {}
        if c.rule.match:
            mkey = (c.rule.name, frame.stream, tuple(tags.items()))
            ok = self._match_cache.get(mkey)
            if ok is None:
                ok = self._matches(c.rule, frame, frame.meta, tags)
                if c.match_cacheable:  # the match depends on the stream and tags only
                    self._match_cache[mkey] = ok
            if not ok:
                return []
        st = self._state(c.rule, experiment, cell, tuple(tags.values()), tags)
        st.source = frame.stream
        values = np.asarray(frame.arrays[c.rule.field], dtype=np.float64).ravel()
        if values.shape[0] == 0:
            return []
        per_sample = values.shape[0] == frame.n_samples and "t" in frame.arrays
        finite = np.isfinite(values)
        if not finite.all():
            values = values[finite]
            if values.shape[0] == 0:
                return []
        else:
            finite = None
        active = c.active(values)
        state = st.state
        out: list[Transition] = []
        # quick exits: nothing that could change the state in this frame
        if state == INACTIVE and not active.any():
            st.last_t_ns = now
            return []
        cleared = c.cleared(values)
        if state in (FIRING, ACKNOWLEDGED) and not st.cleared and not cleared.any():
            st.last_t_ns, st.value = now, float(values[-1])
            return self._maybe_repeat(c, st, now)
        times = frame.times_ns() if per_sample else np.full(values.shape[0], frame.t0_ns)
        if finite is not None:
            times = times[finite] if per_sample else times[: values.shape[0]]
        out += self._step(c, st, times, values, active, cleared)
        st.last_t_ns = max(now, st.last_t_ns)
        if st.state in (FIRING, ACKNOWLEDGED):
            st.value = float(values[-1])
        out += self._maybe_repeat(c, st, now)
        return out

    def _step(self, c: _Compiled, st: AlertState, times: np.ndarray, values: np.ndarray,
              active: np.ndarray, cleared: np.ndarray) -> list[Transition]:
        out: list[Transition] = []
        n, k = values.shape[0], 0
        while k < n:
            if st.state == INACTIVE:
                j = _first(active, k)
                if j < 0:
                    break
                st.state, st.onset_ns, st.count, k = PENDING, int(times[j]), 0, j
            if st.state == PENDING:
                stop = _first(~active, k)
                stop = n if stop < 0 else stop
                due = _first(times[k:stop] >= st.onset_ns + c.for_ns, 0) if stop > k else -1
                if due >= 0:
                    k += due
                    st.count = 1
                    out.append(self._fire(st, int(times[k]), float(values[k])))
                    k += 1
                    continue
                if stop < n:
                    st.state = INACTIVE
                k = stop
                continue
            # firing or acknowledged
            if st.cleared:  # latched: waiting for an ack; the condition may come back
                j = _first(active, k)
                if j < 0:
                    break
                st.cleared, st.count, k = False, st.count + 1, j + 1
                continue
            j = _first(cleared, k)
            if j < 0:
                break
            if st.state == FIRING and st.rule.latch:
                st.cleared, k = True, j + 1
                continue
            out.append(self._resolve(st, int(times[j]), float(values[j])))
            k = j + 1
        return out

    # -- event rules ----------------------------------------------------------------------
    def _event(self, frame: Frame, experiment: str, cell: str) -> list[Transition]:
        meta = frame.meta
        name = meta.get("event")
        if not isinstance(name, str):
            return []
        rank = SEVERITY_RANK.get(meta.get("severity"), 0)
        out: list[Transition] = []
        for c in self._event_rules:
            rule = c.rule
            if rank < c.min_rank or not fnmatch.fnmatchcase(name, rule.event):
                continue
            if rule.match and not self._matches(rule, frame, meta, {}):
                continue
            value = math.nan
            if rule.op != "present":
                value = _evidence(frame, rule.field)
                if not math.isfinite(value) or not c.compare(value, rule.threshold):
                    continue
            group = tuple(str(meta.get(k, "")) for k in rule.group_by)
            tags = {k: str(meta[k]) for k in _TAG_KEYS if isinstance(meta.get(k), str)}
            st = self._state(rule, experiment, cell, group, tags)
            where = (experiment, cell)
            # detected when the data that shows it arrived: the latest time of the event's
            # source stream (an onset may be placed back where the evidence began)
            seen = self._stream_clock.get(meta.get("source"), self._clock.get(where, 0))
            detected = max(frame.t0_ns, seen)
            st.last_match_ns = max(st.last_match_ns, detected)
            st.last_t_ns = max(st.last_t_ns, detected)
            if st.state == INACTIVE:
                st.count, st.cleared, st.tags = 1, False, tags
                st.onset_ns = int(meta.get("onset_ns", frame.t0_ns))
                st.source, st.event = str(meta.get("source", frame.stream)), name
                st.value = 1.0 if rule.op == "present" else value
                out.append(self._fire(st, detected, st.value))
                self._ticking.setdefault(where, {})[id(st)] = st
            else:  # deduplicated into the alert already firing
                st.count += 1
                st.cleared = False
                st.value = float(st.count) if rule.op == "present" else value
        return out

    def _tick(self, where: tuple[str, str], now: int) -> list[Transition]:
        """Age the event alerts of one cell to ``now``: resolve (or latch) those whose last
        matching event is ``resolve_after_s`` old; repeat those due."""
        out: list[Transition] = []
        alerts = self._ticking[where]
        for key, st in list(alerts.items()):
            c = self._compiled_by_name[st.rule.name]
            if st.state in (FIRING, ACKNOWLEDGED) and not st.cleared \
                    and now >= st.last_match_ns + c.resolve_ns:
                t_clear = st.last_match_ns + c.resolve_ns
                if st.state == FIRING and st.rule.latch:
                    st.cleared = True
                else:
                    out.append(self._resolve(st, t_clear, st.value))
            if st.state not in (FIRING, ACKNOWLEDGED):
                del alerts[key]
                continue
            st.last_t_ns = max(st.last_t_ns, now)
            out += self._maybe_repeat(c, st, now)
        if not alerts:
            del self._ticking[where]
        return out

    # -- acknowledgements -----------------------------------------------------------------
    def _command(self, frame: Frame) -> list[Transition]:
        meta = frame.meta
        if meta.get("command") != ACK_COMMAND:
            return []
        experiment = frame.stream.split("/", 1)[0]
        rule_pat = str(meta.get("rule") or "*")
        cell_pat = str(meta.get("cell") or "*")
        by = str(meta.get("by") or "operator")
        out: list[Transition] = []
        for st in self._states.values():
            if st.state != FIRING or st.experiment != experiment \
                    or not fnmatch.fnmatchcase(st.rule.name, rule_pat) \
                    or not fnmatch.fnmatchcase(st.cell, cell_pat):
                continue
            t = max(st.last_t_ns, self._clock.get((experiment, st.cell), 0))
            st.acked_by = by
            if st.cleared:
                out.append(self._resolve(st, t, st.value))
            else:
                st.state = ACKNOWLEDGED
                out.append(self._transition(st, ACKNOWLEDGED, t, st.value))
        return out

    # -- helpers --------------------------------------------------------------------------
    def _state(self, rule: AlertRule, experiment: str, cell: str, group: tuple[str, ...],
               tags: dict[str, str]) -> AlertState:
        key = (rule.name, experiment, cell, group)
        st = self._states.get(key)
        if st is None:
            alert_id = "/".join([rule.name, _safe(cell), *(_safe(g) for g in group)])
            st = self._states[key] = AlertState(rule, experiment, cell, alert_id, tags)
        return st

    @staticmethod
    def _matches(rule: AlertRule, frame: Frame, meta: dict, tags: dict[str, str]) -> bool:
        experiment, cell, instrument = frame.stream.split("/")
        where = dict(zip(_WHERE_KEYS, (experiment, cell, instrument), strict=True))
        for key, pattern in rule.match.items():
            value = tags.get(key, meta.get(key, where.get(key)))
            if value is None or not fnmatch.fnmatchcase(str(value), pattern):
                return False
        return True

    def _fire(self, st: AlertState, t_ns: int, value: float) -> Transition:
        st.state, st.cleared, st.repeat, st.acked_by = FIRING, False, 0, None
        st.fired_ns = self._unique_time(st, t_ns)
        if not st.source:
            st.source = f"{st.experiment}/{st.cell}"
        return self._transition(st, FIRING, st.fired_ns, value, unique=False)

    def _resolve(self, st: AlertState, t_ns: int, value: float) -> Transition:
        st.state, st.cleared = INACTIVE, False
        return self._transition(st, RESOLVED, t_ns, value)

    def _maybe_repeat(self, c: _Compiled, st: AlertState, now: int) -> list[Transition]:
        if st.state != FIRING or not c.repeat_ns or now - st.last_notify_ns < c.repeat_ns:
            return []
        st.repeat += 1
        return [self._transition(st, FIRING, now, st.value)]

    def _transition(self, st: AlertState, state: str, t_ns: int, value: float,
                    unique: bool = True) -> Transition:
        if unique:
            t_ns = self._unique_time(st, t_ns)
        st.last_notify_ns = t_ns
        return Transition(state, t_ns, st, value, st.repeat, st.count,
                          st.acked_by if state != FIRING else None)

    def _unique_time(self, st: AlertState, t_ns: int) -> int:
        """Alert frames of one cell never share a timestamp, so no two collapse onto one point
        of the same series in InfluxDB."""
        order, used = self._recent.setdefault((st.experiment, st.cell), (deque(), set()))
        while t_ns in used:
            t_ns += 1
        used.add(t_ns)
        order.append(t_ns)
        if len(order) > _RECENT_TIMES:
            used.discard(order.popleft())
        return t_ns


def _evidence(frame: Frame, name: str | None) -> float:
    """An event's evidence value by name: a float array or a numeric meta entry."""
    arr = frame.arrays.get(name) if name else None
    if arr is not None and arr.size:
        return float(np.ravel(arr)[0])
    value = frame.meta.get(name) if name else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan
