"""Scoring detectors against ground truth: the matching rules, then a real scenario."""

from __future__ import annotations

from adapters.sim.experiment import load_scenario
from adapters.sim.scoring import Run, run_scenario, score


def _event(cell: str, event: str, t_s: float, severity: str = "warning",
           stream: str = "x/cell01/potentiostat") -> dict:
    return {"cell": cell, "event": event, "severity": severity, "stream": stream, "t_s": t_s,
            "gas": None, "channel": None, "values": {}}


def _truth(cell: str, kind: str, onset_s: float, magnitude: float = 0.05,
           stream: str = "x/cell01/potentiostat") -> dict:
    return {"cell": cell, "kind": kind, "onset_s": onset_s, "end_s": onset_s + 60,
            "magnitude": magnitude, "stream": stream}


def test_matching_rules_latency_windows_consequences_and_false_alarms() -> None:
    truth = [_truth("cell01", "hard_short", 100.0), _truth("cell02", "hard_short", 100.0),
             _truth("cell03", "soft_short", 1000.0), _truth("cell04", "micro_short", 50.0),
             _truth("cell04", "micro_short", 500.0, magnitude=0.01),
             _truth("cell01", "clock_offset", 0.0)]
    events = [
        _event("cell01", "hard_short", 100.4),          # within 1 s: detected
        _event("cell02", "hard_short", 101.5),          # too late: missed
        _event("cell03", "soft_short", 2500.0),         # before the charge ends at 3000 s
        _event("cell04", "micro_short", 50.1),
        _event("cell01", "thermal_runaway", 130.0),     # follows the short: a consequence
        _event("cell05", "gas_onset", 10.0, "info"),    # a record
        _event("cell05", "micro_short", 900.0),         # nothing explains it: a false alarm
    ]
    run = Run("t", 5, 4000.0, "closed", 0, truth, events,
              {"cell03": [(0.0, 800.0), (1200.0, 3000.0)]})
    s = score(run)
    assert s.detected("hard_short") == (1, 2)
    assert s.detected("soft_short") == (1, 1)
    assert s.detected("micro_short") == (1, 1)  # the 10 mV one is below the 20 mV criterion
    assert s.not_scored == {"clock_offset": 1, "micro_short below 20 mV": 1}
    # the late hard-short event answers nothing: its cell has a fault that explains it
    assert s.consequences == {"thermal_runaway": 1, "hard_short": 1}
    assert s.info == {"gas_onset": 1}
    assert [(e["cell"], e["event"]) for e in s.false_alarms] == [("cell05", "micro_short")]
    assert s.table["no fault"] == {"micro_short": 1}
    assert "missed" in s.render()


def test_consequences_a_gas_onset_estimated_a_block_early_and_repeated_plating() -> None:
    truth = [_truth("cell01", "runaway_precursor", 3600.0), _truth("cell02", "plating", 0.0),
             _truth("cell03", "runaway_precursor", 3600.0)]
    early = _event("cell01", "gas_onset", 3543.0)        # the CUSUM block began before ...
    early["values"] = {"latency_s": 180.0}              # ... but it was detected after
    before = _event("cell03", "gas_onset", 3543.0)      # detected before the fault began
    before["values"] = {"latency_s": 10.0}
    too_early = _event("cell03", "gas_onset", 3500.0)   # more than a block before
    too_early["values"] = {"latency_s": 400.0}
    events = [_event("cell01", "runaway_precursor", 3700.0), early, before, too_early,
              _event("cell02", "plating", 2000.0), _event("cell02", "plating", 14000.0)]
    s = score(Run("t", 3, 20000.0, "closed", 0, truth, events, {}))
    assert s.consequences == {"gas_onset": 1, "plating": 1}
    assert [(e["cell"], e["t_s"]) for e in s.false_alarms] == [("cell03", 3543.0),
                                                             ("cell03", 3500.0)]


def test_runaway_scenario_every_fault_found_and_no_false_alarm() -> None:
    run = run_scenario(load_scenario("thermal-runaway-precursor"), cells=3, seconds=5500)
    s = score(run)
    assert s.detected("runaway_precursor") == (1, 1)
    assert s.detected("hard_short") == (1, 1)
    assert s.latencies["hard_short"][0] <= 1.0
    assert s.false_alarms == []
    assert s.not_scored["clock_offset"] == 3
