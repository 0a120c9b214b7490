"""Event detectors scored against the simulator's ground truth."""

from __future__ import annotations

from adapters.sim.experiment import SimExperiment, load_scenario
from processors.events import EventProcessor


def _run(name: str, seconds: int, cells: int) -> tuple[SimExperiment, list]:
    sc = load_scenario(name)
    sc.detectors = []
    ex = SimExperiment("t", sc, cells, 0)
    proc = EventProcessor()
    events = []
    for _ in range(seconds):
        for f in ex.step():
            if f.kind == "echem":
                events += proc.process(f)
    return ex, events


def test_hard_short_within_one_second_and_runaway_criterion() -> None:
    ex, events = _run("thermal-runaway-precursor", 5500, cells=3)
    truth = {(g["cell"], g["kind"]): g for g in ex.ground_truth}
    shorts = [e for e in events if e.meta["event"] == "hard_short"]
    assert [e.cell for e in shorts] == ["cell03"]  # no false alarm on the other cells
    onset = truth[("cell03", "hard_short")]["onset_ns"]
    assert 0 <= shorts[0].t0_ns - onset <= 1_000_000_000  # within 1 s at 10 Hz
    # the temperature criterion: the precursor on cell01, and the short's heating on cell03;
    # never on cell02, which has no fault
    runaway = {e.cell: e for e in events if e.meta["event"] == "thermal_runaway"}
    assert set(runaway) == {"cell01", "cell03"}
    assert runaway["cell01"].t0_ns > truth[("cell01", "runaway_precursor")]["onset_ns"]
    assert runaway["cell03"].t0_ns > onset
    assert all(e.arrays["dTdt_C_s"][0] >= 1.0 for e in runaway.values())


def test_clean_cycling_raises_no_events() -> None:
    _, events = _run("cycling", 4 * 3600, cells=4)
    assert events == []
