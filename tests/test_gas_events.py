"""Gassing onsets and the runaway precursor, on synthetic rates and on the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.sim.experiment import FaultSpec, SimExperiment, load_scenario
from processors.electrochem import ElectrochemProcessor
from processors.events import EventProcessor
from processors.gas import GasConfig, GasProcessor
from processors.gas_events import GasEventProcessor
from stream.frame import Frame

T0 = 1_700_000_000_000_000_000


def _rate_frames(rates: np.ndarray, gas: str = "CO2", per_frame: int = 10) -> list[Frame]:
    return [Frame("e/c1/gas", "result.gas", k // per_frame, T0 + k * 1_000_000_000,
                  {"t": np.arange(min(per_frame, rates.size - k), dtype=np.float64),
                   "rate_mol_s": rates[k:k + per_frame]}, {"rate_mol_s": "mol/s"},
                  {"tags": {"gas": gas}})
            for k in range(0, rates.size, per_frame)]


def _onsets(rates: np.ndarray, **config) -> list[Frame]:
    proc = GasEventProcessor(GasEventProcessor.Config(**config))
    return [e for f in _rate_frames(rates) for e in proc.process(f)]


def test_no_onset_in_a_day_of_noise_and_a_burst_found_at_its_start() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(1e-11, 1e-10, 86_400)
    assert _onsets(noise) == []
    burst = noise.copy()
    burst[50_000:] += 3e-9
    (onset,) = _onsets(burst)
    assert onset.meta["event"] == "gas_onset" and onset.meta["severity"] == "warning"
    assert onset.t0_ns == T0 + 50_000 * 1_000_000_000  # placed at the start of the excursion
    assert onset.arrays["rate_mol_s"][0] == pytest.approx(3e-9, rel=0.2)


def test_small_persistent_gassing_found_by_the_block_cusum_as_info() -> None:
    rng = np.random.default_rng(4)
    rates = rng.normal(0.0, 1e-10, 20_000)
    rates[10_000:] += 1e-10  # one sample sigma: invisible sample by sample
    (onset,) = _onsets(rates)
    t = (onset.t0_ns - T0) / 1e9
    assert onset.meta["severity"] == "info"
    assert 9_000 <= t <= 11_000
    assert onset.arrays["statistic"][0] > 15.0


def _run(scenario: str, seconds: int, cells: int, cell_type: str = "closed",
         faults: list | None = None) -> tuple[SimExperiment, list[Frame]]:
    sc = load_scenario(scenario)
    sc.detectors = []
    sc.cell.cell_type = cell_type
    if faults is not None:
        sc.faults = faults
    ex = SimExperiment("t", sc, cells, 0)
    procs = [ElectrochemProcessor(), GasProcessor(GasConfig(cell_type=cell_type)),
             EventProcessor(), GasEventProcessor()]
    events = []
    for _ in range(seconds):
        queue = ex.step()
        while queue:
            frame = queue.pop()
            for proc in procs:
                if proc.wants(frame.kind):
                    for out in proc.process(frame):
                        (events if out.kind == "event" else queue).append(out)
    return ex, events


def _alarms(events: list[Frame]) -> list[tuple[str, str]]:
    return [(e.cell, e.meta["event"]) for e in events if e.meta["severity"] != "info"]


def test_runaway_precursor_before_the_temperature_criterion() -> None:
    ex, events = _run("thermal-runaway-precursor", 4300, cells=2)
    precursor = [e for e in events if e.meta["event"] == "runaway_precursor"]
    runaway = [e for e in events if e.meta["event"] == "thermal_runaway"]
    assert [e.cell for e in precursor] == ["cell01"] and [e.cell for e in runaway] == ["cell01"]
    onset = next(g for g in ex.ground_truth if g["kind"] == "runaway_precursor")["onset_ns"]
    assert onset <= precursor[0].t0_ns < runaway[0].t0_ns
    assert "_growth" in precursor[0].meta["indicators"]
    assert ("cell02", "runaway_precursor") not in _alarms(events)


def test_gas_burst_in_a_flow_cell_within_two_time_constants() -> None:
    burst = FaultSpec(kind="gas_burst", cells=[1], at_s=5000.0, until_s=5600.0,
                      magnitude=2e-9)
    ex, events = _run("cycling", 5400, cells=2, cell_type="flow", faults=[burst])
    assert _alarms(events) == [("cell02", "gas_onset")]
    onset = [e for e in events if e.meta["severity"] == "warning"][0]
    assert onset.meta["gas"] == "CO2"
    tau = 0.5 / 1.0 * 60  # flow volume / flow: 30 s
    detected = (onset.t0_ns - ex.ground_truth[0]["onset_ns"]) / 1e9
    assert -tau <= detected <= 2 * tau
    assert np.isfinite(onset.arrays["voltage_V"][0])


def test_clean_cycling_raises_no_gas_alarms() -> None:
    _, events = _run("cycling", 4 * 3600, cells=3)
    assert _alarms(events) == []


def test_bursts_after_a_burst_and_on_top_of_everyday_gassing_found_at_their_start() -> None:
    rng = np.random.default_rng(8)
    rates = rng.normal(1e-11, 1e-11, 40_000)
    rates[20_000:20_600] += 3e-9
    rates[20_600:] += 3e-11     # after the first burst the rate stays above its old baseline
    rates[26_000:26_600] += 1.6e-9
    rates[30_000:] += 2e-10     # everyday gassing, 20 sample sigmas up: a record ...
    rates[33_000:33_600] += 1.6e-9  # ... with a burst on top
    events = _onsets(rates)
    warnings = [(e.t0_ns - T0) / 1e9 for e in events if e.meta["severity"] == "warning"]
    assert warnings == [20_000.0, 26_000.0, 33_000.0]
    for e in events:  # detected after the onset it reports
        assert e.arrays["latency_s"][0] >= 0.0


@pytest.mark.parametrize("cell_type", ["closed", "flow"])
def test_the_smallest_burst_after_a_burst_and_at_high_soc_within_two_time_constants(
        cell_type: str) -> None:
    # the second burst, of the smallest size the benchmark injects, comes during the next
    # charge's everyday CO2 and O2 release, an hour and a half after the first
    bursts = [FaultSpec(kind="gas_burst", cells=[0], at_s=4000.0, until_s=4600.0,
                        magnitude=2.2e-9),
              FaultSpec(kind="gas_burst", cells=[0], at_s=11000.0, until_s=11600.0,
                        magnitude=1.6e-9)]
    ex, events = _run("cycling", 12000, cells=2, cell_type=cell_type, faults=bursts)
    assert _alarms(events) == [("cell01", "gas_onset")] * 2
    tau = 30.0  # flow: V/Q = 0.5 mL / 1 mL/min; closed: the 30 s slope window
    found = [e for e in events if e.meta["severity"] == "warning"]
    for e, fault in zip(found, ex.ground_truth, strict=True):
        assert e.meta["gas"] == "CO2"
        assert -tau <= (e.t0_ns - fault["onset_ns"]) / 1e9 <= 2 * tau


def test_ion_current_spikes_raise_no_gas_onset_and_a_burst_beside_them_is_found() -> None:
    # m2 (H2) spikes x21 with p = 0.2 per second for 5 min, bursts of up to three in a row
    # among them; each spike swings the 30-s slope of H2 by ~1e-8 mol/s for half a window
    faults = [FaultSpec(kind="sensor_spikes", cells=[0], instrument="oems", at_s=5000.0,
                        until_s=5300.0, magnitude=1.0),
              FaultSpec(kind="gas_burst", cells=[1], at_s=5100.0, until_s=5700.0,
                        magnitude=1.6e-9)]
    ex, events = _run("cycling", 6000, cells=2, faults=faults)
    assert _alarms(events) == [("cell02", "gas_onset")]
    burst = next(e for e in events if e.meta["severity"] == "warning")
    assert 0.0 <= (burst.t0_ns - ex.ground_truth[1]["onset_ns"]) / 1e9 <= 60.0
