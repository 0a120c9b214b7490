"""The potentiostat-stream event detectors: kernel pieces against numpy references, then each
detector scored on the simulator's fault scenarios (ground truth from the simulator)."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.sim.experiment import FaultSpec, Scenario, SimExperiment, Step, load_scenario
from processors.electrochem import ElectrochemProcessor
from processors.events import EventProcessor
from processors.kernels import echem_events as K
from stream.frame import Frame


def test_ew_update_matches_weighted_least_squares() -> None:
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.05, 0.3, 400))
    y = 0.3 * t + rng.normal(0, 0.2, t.size)
    sums = np.zeros(K.EW)
    tau = 5.0
    for k in range(t.size):
        slope = K.ew_update(sums, t[k] - t[k - 1] if k else 0.0, y[k], tau)
        if k >= 5:
            w = np.exp(-(t[k] - t[:k + 1]) / tau)
            ref = np.polyfit(t[:k + 1], y[:k + 1], 1, w=np.sqrt(w))[0]
            assert slope == pytest.approx(ref, rel=1e-8, abs=1e-10)


def test_sliding_max_matches_numpy_window() -> None:
    rng = np.random.default_rng(2)
    t = np.cumsum(rng.uniform(0.01, 0.2, 2000))
    v = np.cumsum(rng.normal(0, 1, t.size))
    st = K.new_state()
    for k in range(t.size):
        got = K._sliding_max(st, t[k], v[k], 1.0)
        assert got == v[(t >= t[k] - 1.0) & (t <= t[k])].max()


def _run(name: str | Scenario, seconds: int, cells: int, faults: list | None = None,
         with_cycles: bool = False) -> tuple[SimExperiment, list[Frame]]:
    sc = load_scenario(name) if isinstance(name, str) else name
    sc.detectors = []
    if faults is not None:
        sc.faults = faults
    ex = SimExperiment("t", sc, cells, 0)
    events, electrochem, proc = [], ElectrochemProcessor(), EventProcessor()
    for _ in range(seconds):
        for f in ex.step():
            if f.kind != "echem":
                continue
            events += proc.process(f)
            if with_cycles:
                for r in electrochem.process(f):
                    if r.kind == "result.cycle":
                        events += proc.process(r)
    return ex, events


def _by_cell(events: list[Frame]) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for e in events:
        out.setdefault((e.cell, e.meta["event"]), []).append(e.t0_ns)
    return out


def test_soft_short_micro_shorts_and_self_discharge() -> None:
    ex, events = _run("soft-short", 16 * 3600, cells=4)
    found = _by_cell(events)
    truth = {(g["cell"], g["kind"]): g for g in ex.ground_truth}
    # soft short: within one charge of its onset (the CC charge that follows it)
    onset = truth[("cell01", "soft_short")]["onset_ns"]
    assert 0 <= found[("cell01", "soft_short")][0] - onset < 3600e9
    # every micro-short of 20 mV or more, each within one sample
    micro = sorted(g["onset_ns"] for g in ex.ground_truth if g["kind"] == "micro_short")
    got = found[("cell02", "micro_short")]
    assert len(got) == len(micro)
    assert all(0 <= a - b <= 100_000_000 for a, b in zip(got, micro, strict=True))
    # self-discharge: found at the next long rest; leak current and R_isc close to the truth
    sd = [e for e in events if e.cell == "cell03" and e.meta["event"] == "self_discharge"]
    assert sd and sd[0].t0_ns > truth[("cell03", "self_discharge")]["onset_ns"]
    r_true = truth[("cell03", "self_discharge")]["magnitude"]
    assert sd[0].arrays["r_isc_ohm"][0] == pytest.approx(r_true, rel=0.25)
    # nothing at all on the clean cell
    assert not [e for e in events if e.cell == "cell04"]


def test_plating_in_the_relaxation_after_fast_charge_only_on_the_plating_cell() -> None:
    ex, events = _run("plating-fast-charge", 4 * 3600, cells=3)
    kinds = {(e.cell, e.meta["event"]) for e in events}
    assert kinds == {("cell01", "plating")}
    plating = [e for e in events if e.meta["event"] == "plating"][0]
    assert plating.arrays["dVdt_V_s"][0] == pytest.approx(-2e-4, rel=0.1)  # the sim's stripping


def test_micro_short_under_constant_voltage_shows_as_a_current_jump() -> None:
    fault = FaultSpec(kind="micro_short", cells=[0], at_s=9000.0, magnitude=0.03)
    sc = load_scenario("high-voltage-hold")
    sc.protocol.insert(0, Step(kind="rest", s=60.0))  # rest -> CC gives the resistance
    ex, events = _run(sc, 9100, cells=2, faults=[fault])
    assert [(e.cell, e.meta["event"]) for e in events] == [("cell01", "micro_short")]
    assert events[0].t0_ns - ex.ground_truth[0]["onset_ns"] <= 100_000_000
    assert events[0].arrays["depth_V"][0] == pytest.approx(0.03, rel=0.3)


def test_coulombic_efficiency_drop_against_the_cells_own_history() -> None:
    # 3 kohm: a leak of C/35, below the CV's C/20 end, so the cycler still completes cycles
    leak = FaultSpec(kind="self_discharge", cells=[0], at_s=10 * 3600.0, magnitude=3000.0)
    ex, events = _run("cycling", 12 * 3600, cells=2, faults=[leak], with_cycles=True)
    drops = [e for e in events if e.meta["event"] == "ce_drop"]
    assert [e.cell for e in drops] == ["cell01"]
    assert drops[0].t0_ns > ex.ground_truth[0]["onset_ns"]
    assert drops[0].arrays["drop"][0] > 0.01
