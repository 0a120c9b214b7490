"""``opmon demo``: a simulated multi-cell experiment with a fault, on the embedded in-process
default. No broker, database or Docker needed. Leaves a run folder with the recording, the
results in line protocol, the health counters, the config used and the ground truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .alerts.defaults import default_rules

DEFAULT_DURATION_S = 2 * 3600.0
DEFAULT_SPEED = 300.0
DEFAULT_SCENARIO = "thermal-runaway-precursor"


def demo_config(run_dir: Path, cells: int = 4, duration_s: float = DEFAULT_DURATION_S,
                speed: float | str = DEFAULT_SPEED, start_ns: int | None = None,
                scenario: str = DEFAULT_SCENARIO, influx: dict[str, Any] | None = None,
                mqtt_url: str | None = None) -> dict[str, Any]:
    """The embedded demo as a config dict (``opmon demo --print-config`` prints it as TOML).

    ``influx`` adds an InfluxDB sink (its config keys: url, api, database or org + bucket,
    token_env ...) fed with results, events, alerts, health and the raw pressure frames the
    pressure dashboard reads; ``mqtt_url`` adds the retained alert topics with acknowledgements
    and publishes events and alerts on that broker."""
    services: list[dict[str, Any]] = []
    if influx:
        services.append({"type": "influxdb", "spool_dir": str(run_dir / "spool"),
                         "kinds": ["result.*", "event", "alert", "health", "pressure"],
                         **influx})
    if mqtt_url:
        services += [{"type": "alert_mqtt", "url": mqtt_url},
                     {"type": "publish", "kinds": ["event", "alert"],
                      "transport": {"url": mqtt_url, "qos": 1}}]
    return {
        "experiment": {"id": "demo", "description": f"opmon demo: scenario {scenario}"},
        "node": {"queue_size": 1024, "health_interval_s": 2.0},
        "sim": {"speed": speed, **({"start_ns": start_ns} if start_ns is not None else {})},
        "simulations": [{"scenario": scenario, "cells": cells, "seed": 7,
                         "duration_s": duration_s}] if cells else [],
        "processors": [
            {"type": "electrochem", "soc_v_full": 4.2, "soc_v_empty": 2.8,
             "nominal_capacity_Ah": 0.05},
            {"type": "gas"},
            {"type": "pressure", "name": "pressure_cell", "headspace_mL": 10.0,
             "leak_per_s": 2e-7},
            {"type": "events"},
            {"type": "gas_events"},
            {"type": "sensor_faults"},
            {"type": "peaks", "name": "xrd_peaks", "input_kind": "pattern",
             "weighting": "poisson", "peaks": [
                 {"name": "NMC(003)", "position": 4.88, "fwhm": 0.08, "range": [4.6, 5.2],
                  "hkl": [0, 0, 3], "lattice": "hexagonal"},
                 {"name": "Al(111)", "position": 9.98, "fwhm": 0.08, "window": 0.4,
                  "hkl": [1, 1, 1]}]},
            {"type": "peaks", "name": "raman_peaks", "input_kind": "spectrum",
             "weighting": "poisson", "peaks": [
                 {"name": "G", "position": 1580.0, "fwhm": 20.0, "window": 60.0}]},
        ],
        "alerts": [
            {"name": "voltage_collapse", "kind": "result.echem", "field": "voltage", "op": "<",
             "threshold": 2.5, "hysteresis": 0.2, "for_s": 1.0, "severity": "critical",
             "labels": {"fault": "short"}},
            {"name": "over_temperature", "kind": "echem", "field": "temperature", "op": ">",
             "threshold": 45.0, "hysteresis": 2.0, "for_s": 3.0, "severity": "critical",
             "labels": {"fault": "thermal"}},
            {"name": "pressure_rise", "kind": "pressure", "field": "pressure", "op": ">",
             "threshold": 1.05e5, "hysteresis": 1e3, "for_s": 5.0, "severity": "warning",
             "labels": {"fault": "gassing"}},
            *default_rules(),  # event rules: gassing onset, shorts, plating, runaway
        ],
        "sinks": [
            # raw frames, events, alerts and health: results are recomputed on replay
            {"type": "record", "path": str(run_dir / "recording.mcap"),
             "kinds": ["echem", "pressure", "ms.ion_current", "pattern", "spectrum", "image",
                       "event", "alert", "health"]},
            {"type": "lineprotocol", "path": str(run_dir / "results.lp")},
            {"type": "lineprotocol", "name": "health", "path": str(run_dir / "health.lp"),
             "kinds": ["health"]},
            {"type": "console"},
            *services,
        ],
    }


def new_run_dir(base: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(base) / f"demo-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(base) / f"demo-{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir
