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


# -- robustness: readings that are not the cell's voltage ---------------------------------------
def _echem_frames(v: np.ndarray, i: np.ndarray, step: np.ndarray | None = None,
                  hz: float = 10.0) -> list[Frame]:
    """1-s echem frames of samples at ``hz`` (step 1 throughout unless given)."""
    n = int(hz)
    step = np.ones(v.size) if step is None else step
    return [Frame("x/cell01/potentiostat", "echem", k, k * 1_000_000_000,
                  {"t": np.arange(n) / hz, "voltage": v[k * n:(k + 1) * n],
                   "current": i[k * n:(k + 1) * n], "step": step[k * n:(k + 1) * n]},
                  {"t": "s", "voltage": "V", "current": "A"})
            for k in range(v.size // n)]


def _detect(frames: list[Frame]) -> list[tuple[str, float, Frame]]:
    proc = EventProcessor()
    return [(e.meta["event"], e.t0_ns / 1e9, e) for f in frames for e in proc.process(f)]


def test_spikes_rails_and_a_bouncing_short_make_one_hard_short() -> None:
    rng = np.random.default_rng(11)
    t = np.arange(6000) / 10.0                       # 10 min of a 1C discharge at 10 Hz
    v = 3.7 - 1e-4 * t + rng.normal(0, 2e-4, t.size)
    i = np.full(t.size, -0.05)
    spikes = (t >= 100) & (t < 400) & (rng.random(t.size) < 0.02)
    v[spikes] *= 21.0                                # the sensor spikes to ~78 V every ~5 s
    v[[4500, 4600, 4700]] += 0.8                     # single samples up, within the limits
    v[(t >= 480) & (t < 530)] = 1e9                  # pinned at the rail for 50 s
    short = t >= 560                                 # a short that bounces: 2 s down, 2 s up
    v[short & ((t - 560) % 4 < 2)] = 1.4
    events = _detect(_echem_frames(v, i))
    assert [(name, t_s) for name, t_s, _ in events] == [("hard_short", 560.0)]
    assert events[0][2].arrays["voltage_drop_V"][0] == pytest.approx(2.25, abs=0.01)


def test_one_jump_does_not_raise_the_soft_short_sigma_lasting_noise_does() -> None:
    rng = np.random.default_rng(12)
    t = np.arange(9000) / 10.0                       # a 1C CC charge at 10 Hz
    drop = np.zeros(t.size)
    for at in (100.0, 200.0, 300.0):                 # micro-shorts of 80 mV, 1.5 s recovery
        after = t >= at
        drop[after] += 0.08 * np.exp(-(t[after] - at) / 1.5)
    v = 3.6 + 3e-4 * t - drop + rng.normal(0, 2e-4, t.size)
    noisy = t >= 600.0                               # then a soft short's 4 mV of noise
    v[noisy] += rng.normal(0, 4e-3, noisy.sum())
    events = _detect(_echem_frames(v, np.full(t.size, 0.05)))
    micro = [t_s for name, t_s, _ in events if name == "micro_short" and t_s < 600]
    assert micro == [100.0, 200.0, 300.0]
    soft = [(t_s, e) for name, t_s, e in events if name == "soft_short"]
    assert len(soft) == 1
    assert 600.0 <= soft[0][0] <= 630.0
    assert soft[0][1].arrays["voltage_sigma_V"][0] > 2e-3


def test_a_frozen_reading_let_go_and_readings_after_a_gap_are_not_a_drop() -> None:
    rng = np.random.default_rng(13)
    t = np.arange(7000) / 10.0                       # a fast discharge: -1 mV/s
    v = 3.9 - 1e-3 * t + rng.normal(0, 2e-4, t.size)
    i = -0.05 * (1 + rng.normal(0, 1e-4, t.size))
    frozen = (t >= 100) & (t < 400)                  # the sensor freezes for 300 s ...
    v[frozen], i[frozen] = v[999], i[999]            # ... and lets go 0.3 V lower
    v[(t >= 450) & (t < 560)] = 1e9                  # readings skipped for 110 s
    assert _detect(_echem_frames(v, i)) == []


def test_micro_short_at_the_current_limit_of_a_cv_hold() -> None:
    """Late in a CC-CV charge the cycler answers a micro-short's EMF drop with current, up to
    its CC limit; past it, V falls while I rises."""
    rng = np.random.default_rng(14)
    r0, limit, t_micro = 0.08, 0.05, 700.0
    t = np.arange(8000) / 10.0
    step = np.where(t < 20, 1.0, 2.0)                # rest, then the CC-CV step
    ocv = np.where(t < 20, 4.15, np.minimum(4.15 + 1.5e-3 * (t - 20), 4.2 - limit * r0))
    i = np.where(t < 20, 0.0, limit)
    cv = (t >= 20) & (ocv + limit * r0 >= 4.2)
    t_cv = t[cv][0]
    i[cv] = limit * np.exp(-(t[cv] - t_cv) / 200.0)  # the current tapers in the CV phase
    v = np.where(t < 20, 4.15, np.minimum(ocv + limit * r0, 4.2))
    emf = np.where(t >= t_micro, 0.06 * np.exp(-(t - t_micro) / 1.5), 0.0)
    wanted = i + emf / r0                            # the current that would hold 4.2 V
    v = np.where(cv & (wanted > limit), v - (emf - (limit - i) * r0), v)
    i = np.where(cv, np.minimum(wanted, limit), i)
    v += rng.normal(0, 2e-4, t.size)
    i *= 1 + rng.normal(0, 1e-4, t.size)
    assert i[int(t_micro * 10)] == pytest.approx(limit, rel=1e-3)  # at the limit
    events = _detect(_echem_frames(v, i, step))
    assert [(name, t_s) for name, t_s, _ in events] == [("micro_short", t_micro)]
    assert events[0][2].arrays["depth_V"][0] == pytest.approx(0.06, rel=0.1)
