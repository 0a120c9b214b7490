"""Event detectors on the potentiostat stream (first two of issue 4's list).

- **hard short**: the cell voltage falls by more than ``short_drop_V`` within ``short_window_s``.
  That is far above the IR step of a cycler's own step change (tens of mV), and the collapse
  usually trips the cycler's voltage limit in the same sample, so step changes do not mask it.
  Detected on the first sample past the threshold: the latency is one sample.
- **thermal runaway, temperature criterion** (GB 38031-2020): dT/dt of at least 1 °C/s held for
  more than 3 s.

Each event is an ``event`` frame at the onset sample with ``meta`` = {event, severity, source,
...evidence}, and each detector fires once per episode (re-armed when the condition clears).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from stream.frame import Frame

from .base import Processor, ProcessorConfig
from .electrochem import require_arrays


class EventsConfig(ProcessorConfig):
    short_drop_V: float = 0.5
    short_window_s: float = 1.0
    runaway_dTdt_C_s: float = 1.0
    runaway_hold_s: float = 3.0


@dataclass
class _State:
    window: deque = field(default_factory=deque)  # (t_s, voltage)
    short_armed: bool = True
    runaway_since: float | None = None
    runaway_armed: bool = True
    last_temp: tuple[float, float] | None = None


class EventProcessor(Processor):
    type_name = "events"
    consumes = ("echem",)
    Config = EventsConfig

    def __init__(self, config: EventsConfig | None = None):
        super().__init__(config)
        self._cells: dict[str, _State] = {}

    def process(self, frame: Frame) -> list[Frame]:
        (t, voltage) = require_arrays(frame, ("t", "voltage"))
        temp = frame.arrays.get("temperature")
        st = self._cells.get(frame.stream)
        if st is None:
            st = self._cells[frame.stream] = _State()
        t_abs = self.stream_seconds(frame, t)
        out: list[Frame] = []
        c = self.config
        for k in range(t.size):
            tk, vk = float(t_abs[k]), float(voltage[k])
            win = st.window
            win.append((tk, vk))
            while win[0][0] < tk - c.short_window_s:
                win.popleft()
            drop = max(v for (_, v) in win) - vk
            if st.short_armed and drop > c.short_drop_V:
                st.short_armed = False
                out.append(self.emit_event(frame, tk, "hard_short", "critical",
                                       {"voltage_drop_V": drop, "voltage_V": vk}))
            elif not st.short_armed and drop < 0.1 * c.short_drop_V and vk > 2.5:
                st.short_armed = True
            if temp is not None:
                out.extend(self._runaway(frame, st, tk, float(temp[k])))
        return out

    def _runaway(self, frame: Frame, st: _State, t: float, temp: float) -> list[Frame]:
        c = self.config
        prev, st.last_temp = st.last_temp, (t, temp)
        if prev is None or t <= prev[0]:
            return []
        rate = (temp - prev[1]) / (t - prev[0])
        if rate >= c.runaway_dTdt_C_s:
            if st.runaway_since is None:
                st.runaway_since = prev[0]
            if st.runaway_armed and t - st.runaway_since > c.runaway_hold_s:
                st.runaway_armed = False
                return [self.emit_event(frame, st.runaway_since, "thermal_runaway", "critical",
                                    {"dTdt_C_s": rate, "temperature_C": temp,
                                     "criterion": "GB 38031: dT/dt >= 1 degC/s for > 3 s"})]
        else:
            st.runaway_since = None
            if rate < 0:
                st.runaway_armed = True
        return []
