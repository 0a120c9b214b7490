"""Score event detectors against the simulator's ground truth.

``run_scenario`` drives a simulated experiment through the detector chain (electrochem, gas,
events, gas_events, sensor_faults) the way a node would, feeding results back, and keeps the
events and what is needed to judge them. ``score`` matches each injected fault with the event
that answers it, under the issue's criteria:

- hard short: within 1 s of onset; micro-short: within 1 s; soft short: before the end of the
  first charge that ends after onset; gas burst: a gas onset within two instrument time
  constants; runaway precursor: after onset and before the GB 38031 temperature criterion;
  self-discharge, plating: any time after onset (latency reported); sensor faults: the same
  kind on the same stream, from onset to a minute after the fault ends.

Events that answer no fault are consequences when they follow a fault on the same cell that
explains them (a shorted cell loses coulombic efficiency; a plating cell plates again after the
next fast charge; a soft short's voltage noise at a CC-CV charge's voltage limit makes the
cycler's current dip for single samples, which the spike detector reports), informational when their severity is ``info`` (everyday gas release at high
state of charge), and false alarms otherwise. A gas onset follows a fault when it was detected
after the fault's onset and its estimated onset lies at most one CUSUM block before it (the
resolution of that estimate).
Clock offsets and frame loss are not event faults (sequence numbers expose loss) and are listed
as not scored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processors.base import Processor
from processors.electrochem import ElectrochemProcessor
from processors.events import EventProcessor
from processors.gas import GasConfig, GasProcessor
from processors.gas_events import GasEventProcessor, GasEventsConfig
from processors.sensor_faults import SensorFaultProcessor
from stream.frame import Frame, FrameError

from .experiment import FaultSpec, Scenario, SimExperiment

NOT_SCORED = {"clock_offset", "frame_loss"}
_GAS_BLOCK_S = GasEventsConfig().block_s  # resolution of a gas onset's estimated time
ANSWERS = {  # fault kind -> event names that detect it
    "hard_short": {"hard_short"},
    "soft_short": {"soft_short"},
    "micro_short": {"micro_short"},
    "self_discharge": {"self_discharge"},
    "plating": {"plating"},
    "gas_burst": {"gas_onset"},
    "runaway_precursor": {"runaway_precursor"},
    "sensor_stuck": {"sensor_stuck"},
    "sensor_dropout": {"sensor_dropout"},
    "sensor_spikes": {"sensor_spikes"},
    "sensor_out_of_range": {"sensor_out_of_range"},
}
_ELECTRICAL = {"micro_short", "soft_short", "self_discharge", "ce_drop", "hard_short",
               "plating"}
CONSEQUENCES = {  # fault kind -> events that may follow it on the same cell
    "hard_short": _ELECTRICAL | {"thermal_runaway", "gas_onset", "sensor_out_of_range"},
    # the soft short's voltage noise at a CC-CV charge's voltage limit makes the cycler's
    # current dip for single samples: real isolated outliers on the current channel
    "soft_short": _ELECTRICAL | {"sensor_spikes"},
    "self_discharge": _ELECTRICAL,
    "micro_short": {"micro_short"},
    "plating": {"ce_drop", "plating"},  # the cell plates again after every fast charge
    "gas_burst": {"gas_onset"},
    "runaway_precursor": {"thermal_runaway", "gas_onset"},
    "sensor_stuck": {"sensor_stuck", "sensor_dropout"},
    "sensor_dropout": {"sensor_dropout"},
    "sensor_spikes": {"sensor_spikes"},
    "sensor_out_of_range": {"sensor_out_of_range", "sensor_spikes"},
}


@dataclass
class Run:
    scenario: str
    cells: int
    seconds: float
    cell_type: str
    start_ns: int
    truth: list[dict[str, Any]]
    events: list[dict[str, Any]]
    charges: dict[str, list[tuple[float, float]]]  # per cell: (start_s, end_s) of each charge
    rejects: Counter = field(default_factory=Counter)  # (processor, field) -> frames rejected


def detector_chain(cell_type: str) -> list[Processor]:
    return [ElectrochemProcessor(), GasProcessor(GasConfig(cell_type=cell_type)),
            EventProcessor(), GasEventProcessor(), SensorFaultProcessor()]


def run_scenario(sc: Scenario, cells: int, seconds: float | None = None, seed: int = 0,
                 experiment: str = "score") -> Run:
    sc = sc.model_copy(deep=True)
    sc.detectors = []
    seconds = sc.duration_s if seconds is None else seconds
    ex = SimExperiment(experiment, sc, cells, seed)
    chain = detector_chain(sc.cell.cell_type)
    events: list[dict[str, Any]] = []
    charging: dict[str, float | None] = {}
    charges: dict[str, list[tuple[float, float]]] = {c: [] for c in ex.cells}
    rejects: Counter = Counter()
    while ex.t < seconds:
        queue = ex.step()
        while queue:
            frame = queue.pop()
            if frame.kind == "echem":
                _track_charges(ex, frame, charging, charges)
            for proc in chain:
                if not proc.wants(frame.kind):
                    continue
                try:
                    results = proc.process(frame)
                except FrameError as exc:  # rejected and counted, as the node does
                    rejects[(proc.name, exc.field)] += 1
                    continue
                for out in results:
                    if out.kind == "event":
                        events.append(_event_record(out, ex.start_ns))
                    else:
                        queue.append(out)
    for proc in chain:
        proc.flush()
    for cell, since in charging.items():
        if since is not None:
            charges[cell].append((since, ex.t))
    truth = [g for g in ex.ground_truth if g["onset_s"] < seconds]
    return Run(sc.name, cells, seconds, sc.cell.cell_type, ex.start_ns, truth, events, charges,
               rejects)


def _track_charges(ex: SimExperiment, frame: Frame, charging: dict, charges: dict) -> None:
    t = (frame.t0_ns - ex.start_ns) / 1e9
    on = float(np.mean(frame.arrays["current"])) > 0
    since = charging.get(frame.cell)
    if on and since is None:
        charging[frame.cell] = t
    elif not on and since is not None:
        charges[frame.cell].append((since, t))
        charging[frame.cell] = None


def _event_record(e: Frame, start_ns: int) -> dict[str, Any]:
    return {"cell": e.cell, "event": e.meta["event"], "severity": e.meta["severity"],
            "stream": e.meta["source"], "t_s": (e.t0_ns - start_ns) / 1e9,
            "gas": e.meta.get("gas"), "channel": e.meta.get("channel"),
            "values": {k: float(v[0]) for k, v in e.arrays.items()}}


@dataclass
class Score:
    table: dict[str, Counter] = field(default_factory=dict)   # truth row -> event column
    latencies: dict[str, list[float]] = field(default_factory=dict)
    missed: list[dict[str, Any]] = field(default_factory=list)
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    info: Counter = field(default_factory=Counter)
    consequences: Counter = field(default_factory=Counter)
    not_scored: Counter = field(default_factory=Counter)

    def add(self, other: Score) -> Score:
        for row, counts in other.table.items():
            self.table.setdefault(row, Counter()).update(counts)
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, []).extend(values)
        self.missed += other.missed
        self.false_alarms += other.false_alarms
        self.info.update(other.info)
        self.consequences.update(other.consequences)
        self.not_scored.update(other.not_scored)
        return self

    def detected(self, kind: str) -> tuple[int, int]:
        row = self.table.get(kind, Counter())
        return sum(n for k, n in row.items() if k != "missed"), sum(row.values())

    def render(self) -> str:
        columns = sorted({k for row in self.table.values() for k in row} - {"missed"})
        columns.append("missed")
        corner = "truth / detected"
        head = f"{corner:22s}" + "".join(f"{c[:13]:>14s}" for c in columns)
        lines = [head, "-" * len(head)]
        for row in sorted(self.table):
            counts = self.table[row]
            lines.append(f"{row:22s}" + "".join(f"{counts.get(c, 0) or '.':>14}"
                                                for c in columns))
        lines.append("")
        for kind in sorted(self.latencies):
            lat = np.array(self.latencies[kind])
            found, total = self.detected(kind)
            lines.append(f"{kind:22s} detected {found}/{total}; latency s: median "
                         f"{np.median(lat):.2f}, max {lat.max():.2f}")
        lines.append(f"false alarms (warning/critical with no fault): {len(self.false_alarms)}")
        lines.append(f"consequences of a fault on the same cell: {dict(self.consequences)}")
        lines.append(f"informational events with no fault: {dict(self.info)}")
        if self.not_scored:
            lines.append(f"faults not scored by events: {dict(self.not_scored)}")
        return "\n".join(lines)


def _time_constant(run: Run, sc_cell: Any = None) -> float:
    """Response time of the gas measurement: V/Q for a flow cell, else the slope window."""
    if run.cell_type == "flow":
        return 0.5 / 1.0 * 60.0 if sc_cell is None else \
            sc_cell.flow_volume_mL / sc_cell.flow_mL_min * 60.0
    return GasConfig().window_s


def _window(run: Run, fault: dict[str, Any]) -> tuple[float, float]:
    """When an answering event must start, in seconds of the run."""
    onset, kind = fault["onset_s"], fault["kind"]
    if kind in ("hard_short", "micro_short"):
        return onset, onset + 1.0
    if kind == "soft_short":
        ends = [end for start, end in run.charges.get(fault["cell"], []) if end > onset]
        return onset, ends[0] if ends else run.seconds
    if kind == "gas_burst":
        tau = _time_constant(run)
        return onset - tau, onset + 2 * tau
    if kind.startswith("sensor_"):
        return onset - 2.0, fault.get("end_s", run.seconds) + 60.0
    if kind == "runaway_precursor":
        runaway = [e["t_s"] for e in run.events
                   if e["cell"] == fault["cell"] and e["event"] == "thermal_runaway"]
        return onset, min(runaway) if runaway else run.seconds
    return onset, run.seconds


def _follows(event: dict[str, Any], onset_s: float) -> bool:
    """Whether an event can be a consequence of a fault that began at ``onset_s``: its estimated
    onset is not before the fault (2 s of clock tolerance). A gas onset is estimated to one
    CUSUM block, so it may lie up to a block before the fault when it was detected after it
    (its ``latency_s``)."""
    if event["event"] == "gas_onset":
        detected = event["t_s"] + event["values"].get("latency_s", 0.0)
        return detected >= onset_s and event["t_s"] + _GAS_BLOCK_S >= onset_s
    return onset_s <= event["t_s"] + 2.0


def score(run: Run, min_micro_V: float = 0.02) -> Score:
    result = Score()
    used: set[int] = set()
    for fault in sorted(run.truth, key=lambda g: g["onset_s"]):
        kind = fault["kind"]
        if kind in NOT_SCORED:
            result.not_scored[kind] += 1
            continue
        if kind == "micro_short" and fault["magnitude"] < min_micro_V:
            result.not_scored["micro_short below 20 mV"] += 1
            continue
        lo, hi = _window(run, fault)
        match = None
        for k, e in enumerate(run.events):
            if k in used or e["cell"] != fault["cell"] or e["event"] not in ANSWERS[kind]:
                continue
            if kind.startswith("sensor_") and e["stream"] != fault["stream"]:
                continue
            if kind == "gas_burst" and e["severity"] == "info":
                continue
            if lo <= e["t_s"] <= hi:
                match = k
                break
        row = result.table.setdefault(kind, Counter())
        if match is None:
            row["missed"] += 1
            result.missed.append(fault)
        else:
            used.add(match)
            row[run.events[match]["event"]] += 1
            result.latencies.setdefault(kind, []).append(
                run.events[match]["t_s"] - fault["onset_s"])
    for k, e in enumerate(run.events):
        if k in used:
            continue
        explained = any(g["cell"] == e["cell"] and _follows(e, g["onset_s"])
                        and e["event"] in CONSEQUENCES.get(g["kind"], ())
                        for g in run.truth)
        if explained:
            result.consequences[e["event"]] += 1
        elif e["severity"] == "info":
            result.info[e["event"]] += 1
        else:
            result.false_alarms.append(e)
            result.table.setdefault("no fault", Counter())[e["event"]] += 1
    return result


def random_faults(kind: str, cells: int, seconds: float, count: int, rng: np.random.Generator,
                  magnitude: tuple[float, float], duration_s: float = 0.0,
                  instrument: str = "potentiostat", margin_s: float = 1800.0
                  ) -> list[FaultSpec]:
    """``count`` faults of one kind at random times (at least ``margin_s`` apart on a cell,
    after a first ``margin_s`` for the baselines) on random cells."""
    faults: list[FaultSpec] = []
    times: dict[int, list[float]] = {}
    while len(faults) < count:
        cell = int(rng.integers(cells))
        at = float(rng.uniform(margin_s, seconds - margin_s))
        if any(abs(at - t) < margin_s for t in times.get(cell, [])):
            continue
        times.setdefault(cell, []).append(at)
        until = at + duration_s if duration_s else 1e12
        faults.append(FaultSpec(kind=kind, cells=[cell], at_s=at, until_s=until,
                                magnitude=float(rng.uniform(*magnitude)), instrument=instrument))
    return faults
