"""Live status on the terminal: a line per cell at a fixed wall-clock interval, and every alert,
event and closed cycle as it happens."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from ..frame import Frame
from .base import Sink, SinkConfig


class ConsoleConfig(SinkConfig):
    kinds: list[str] = ["result.echem", "result.cycle", "event", "alert", "health"]
    status_interval_s: float = 2.0
    event_severities: list[str] = ["warning", "critical"]  # info events stay off the terminal


def _clock(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / 1e9, tz=UTC).strftime("%H:%M:%S")


class ConsoleSink(Sink):
    type_name = "console"
    Config = ConsoleConfig

    def __init__(self, config: ConsoleConfig | None = None, out: TextIO | None = None):
        super().__init__(config)
        self.out = out or sys.stdout
        self._latest: dict[str, Frame] = {}
        self._last_status = 0.0
        self._health: dict[str, float] = {}
        self.alerts: list[str] = []

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    async def write(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == "result.echem":
            self._latest[frame.cell] = frame
        elif kind == "alert":
            m = frame.meta
            line = (f"ALERT {m.get('state', '?').upper():8s} [{m.get('severity')}] "
                    f"{m.get('rule')} on {m.get('source')} at {_clock(frame.t0_ns)}: "
                    f"{m.get('field')}={float(frame.arrays['value'][0]):.4g} "
                    f"(threshold {float(frame.arrays['threshold'][0]):.4g})"
                    + (f" (reminder {m['repeat']}, not acknowledged)" if m.get("repeat") else ""))
            self.alerts.append(line)
            self._print(line)
        elif kind == "event" and frame.meta.get("severity") in self.config.event_severities:
            m = frame.meta
            evidence = ", ".join(f"{k}={float(v[0]):.4g}" for k, v in frame.arrays.items()
                                 if k != "t" and v.size == 1)
            labels = "".join(f" {k}={m[k]}" for k in ("gas", "channel", "indicators") if k in m)
            self._print(f"EVENT {m.get('event', '?'):8s} [{m.get('severity')}] on "
                        f"{m.get('source', frame.stream)} at {_clock(frame.t0_ns)}:{labels} "
                        f"{evidence}" + (f" ({m['criterion']})" if "criterion" in m else ""))
        elif kind == "result.cycle":
            a = frame.arrays
            self._print(f"cycle {int(a['cycle'][0])} done on {frame.cell}: charge "
                        f"{a['charge_Ah'][0] * 1e3:.2f} mAh, discharge "
                        f"{a['discharge_Ah'][0] * 1e3:.2f} mAh, CE "
                        f"{a['coulombic_efficiency'][0] * 100:.2f} %")
        elif kind == "health" and frame.instrument == "process":
            self._health = {k: float(v[0]) for k, v in frame.arrays.items()}
        now = time.monotonic()
        if now - self._last_status >= self.config.status_interval_s and self._latest:
            self._last_status = now
            self.status()

    def status(self) -> None:
        parts = []
        for cell, f in sorted(self._latest.items()):
            a = f.arrays
            parts.append(f"{cell} {float(a['voltage'][0]):.3f} V {float(a['current'][0]) * 1e3:+7.2f}"
                         f" mA cyc {int(a['cycle'][0])}")
        t = max(f.t0_ns for f in self._latest.values())
        health = ""
        if self._health:
            health = (f" | in {int(self._health.get('frames_in', 0))} rej "
                      f"{int(self._health.get('rejects', 0))} p99 "
                      f"{self._health.get('latency_p99_ms', 0):.1f} ms")
        self._print(f"[{_clock(t)}] " + " | ".join(parts) + health)
