"""Physical consistency of the virtual cell and its instruments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from adapters.sim import engine as E
from adapters.sim.experiment import SimExperiment, load_scenario, scenario_names
from processors.mass_spec import cracking_matrix


def _run(name: str, seconds: int, cells: int = 2, seed: int = 3) -> tuple[SimExperiment, list]:
    ex = SimExperiment("t", load_scenario(name), cells, seed)
    frames = [f for _ in range(seconds) for f in ex.step()]
    return ex, frames


def _series(frames: list, stream: str, name: str) -> np.ndarray:
    return np.concatenate([f.arrays[name] for f in frames if f.stream == stream])


def test_named_scenarios_exist() -> None:
    assert {"formation", "high-voltage-hold", "soft-short", "thermal-runaway-precursor",
            "plating-fast-charge"} <= set(scenario_names())


def test_charge_conservation() -> None:
    """SOC change equals the integral of the current over the capacity (no short)."""
    ex, frames = _run("cycling", 4000, cells=1)
    i = _series(frames, "t/cell01/potentiostat", "current")
    q_Ah = np.sum(i) * ex.dt / 3600.0 / (1 + 0 * i[0])  # the noise on I averages out
    d_soc = ex.state[0, E.S_SOC] - 0.02
    assert abs(q_Ah / ex.state[0, E.S_CAP] - d_soc) < 2e-3


def test_ideal_gas_round_trip() -> None:
    """1 ppm of a 10 mL headspace at 1 bar and 298 K is 0.404 nmol."""
    n = 1e-6 * 1e5 * 10e-6 / (E.R_GAS * 298.0)
    assert n == pytest.approx(0.404e-9, rel=1e-3)


def test_pressure_is_n_r_t_over_v() -> None:
    ex, frames = _run("formation", 1200, cells=1)
    f = [x for x in frames if x.kind == "pressure"][-1]
    head = ex.state[0, E.S_GAS_HEAD:E.S_GAS_HEAD + E.N_GAS].sum()
    T = f.arrays["temperature"][0] + 273.15
    c = ex.sc.cell
    volume = (c.headspace_mL - c.electrode_expansion_mL * ex.last_soc[0]) * 1e-6
    assert f.arrays["pressure"][0] == pytest.approx(head * E.R_GAS * T / volume, abs=20.0)


def test_deconvolution_recovers_a_known_mix() -> None:
    channels = [26, 27, 28, 44]
    m = cracking_matrix(channels, ("C2H4", "CO", "CO2")) / np.array([2.3, 1.05, 1.4])
    signal = m @ np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(signal, [0.530, 0.624, 3.294, 3.0], rtol=1e-12)
    flux, _ = nnls(m, signal)
    np.testing.assert_allclose(flux, [1.0, 2.0, 3.0], rtol=1e-9)


def test_sei_gas_early_in_first_charge_only() -> None:
    ex = SimExperiment("t", load_scenario("formation"), 1, 0)
    c2h4 = []
    for _ in range(6 * 3600):
        ex.step()
        c2h4.append(ex.last_rates[0, -1, E.C2H4])
    c2h4 = np.array(c2h4)
    onset = np.flatnonzero(c2h4 > 0)
    assert onset.size and onset[0] < 60            # from the start of the first charge
    assert c2h4[-1] == 0.0                          # gone once the graphite is lithiated


def test_o2_release_above_80_percent_soc() -> None:
    ex = SimExperiment("t", load_scenario("high-voltage-hold"), 1, 0)
    socs, o2 = [], []
    for _ in range(4 * 3600):
        ex.step()
        socs.append(ex.last_soc[0])
        o2.append(ex.last_rates[0, -1, E.O2])
    socs, o2 = np.array(socs), np.array(o2)
    assert o2[socs < 0.79].max() == 0.0 and o2[socs > 0.9].min() > 0.0


def test_runaway_precursor_order_and_rate() -> None:
    ex, frames = _run("thermal-runaway-precursor", 4300, cells=1)
    temp = _series(frames, "t/cell01/potentiostat", "temperature")
    dTdt = np.diff(temp) / ex.dt
    assert dTdt.max() >= 1.0  # GB 38031: at least 1 degC/s
    onset = load_scenario("thermal-runaway-precursor").faults[0].at_s
    assert np.argmax(dTdt > 1.0) * ex.dt > onset


def test_hard_short_collapses_voltage() -> None:
    ex, frames = _run("thermal-runaway-precursor", 5420, cells=3)
    v = _series(frames, "t/cell03/potentiostat", "voltage")
    t_short = 5400.0
    before, after = v[int((t_short - 5) / ex.dt)], v[int((t_short + 1) / ex.dt)]
    assert before > 3.0 and after < 2.0


def test_determinism_by_seed() -> None:
    _, a = _run("soft-short", 300, seed=5)
    _, b = _run("soft-short", 300, seed=5)
    _, c = _run("soft-short", 300, seed=6)
    for x, y in zip(a, b, strict=True):
        for k in x.arrays:
            np.testing.assert_array_equal(x.arrays[k], y.arrays[k])
    assert not np.array_equal(a[0].arrays["voltage"], c[0].arrays["voltage"])


def test_ground_truth_matches_injected_data() -> None:
    ex, frames = _run("plating-fast-charge", 12400, cells=2)
    kinds = {(g["cell"], g["kind"]) for g in ex.ground_truth}
    assert ("cell01", "plating") in kinds and ("cell02", "sensor_stuck") in kinds
    stuck = next(g for g in ex.ground_truth if g["kind"] == "sensor_stuck")
    p = [f for f in frames if f.stream == "t/cell02/pressure"]
    t = np.array([(f.t0_ns - ex.start_ns) / 1e9 for f in p])
    values = np.array([f.arrays["pressure"][0] for f in p])
    inside = values[(t >= stuck["onset_s"] + 1) & (t < stuck["end_s"])]
    assert np.ptp(inside) == 0.0 and np.ptp(values[t < stuck["onset_s"]]) > 0
    dropout = next(g for g in ex.ground_truth if g["kind"] == "sensor_dropout")
    oems = [f for f in frames if f.stream == "t/cell02/oems"]
    t = np.array([(f.t0_ns - ex.start_ns) / 1e9 for f in oems])
    nan = np.array([np.isnan(f.arrays["m44"][0]) for f in oems])
    assert nan[(t >= dropout["onset_s"]) & (t < dropout["end_s"])].all() and not nan[:100].any()
    lost = [f.seq for f in frames if f.stream == "t/cell02/potentiostat"]
    assert len(lost) < lost[-1] + 1  # frame loss shows as seq gaps


def test_clock_offset_is_applied_and_reported() -> None:
    ex, frames = _run("thermal-runaway-precursor", 100, cells=1)
    oems = [f for f in frames if f.kind == "ms.ion_current"]
    pot = [f for f in frames if f.kind == "echem"]
    shift = (oems[50].t0_ns - pot[50].t0_ns) / 1e9
    assert shift == pytest.approx(2.5 + 50e-6 * 50, abs=1e-6)
    assert oems[0].meta["raw_clock_offset_s"] == 2.5


def test_flow_cell_stirred_tank_and_capillary_delay() -> None:
    """A step in CO2 rate: the outlet fraction rises as 1 - exp(-t/tau) towards r/Q, and the MS
    sees it a capillary delay later."""
    from adapters.sim.experiment import CellTemplate, FaultSpec, Scenario, Step
    cell = CellTemplate(cell_type="flow", sei_rate_mol_s=0.0, crosstalk_rate_mol_s=0.0,
                        o2_rate_mol_s=0.0, flow_mL_min=1.0, flow_volume_mL=0.5,
                        capillary_delay_s=4.0)
    rate = 1e-9
    sc = Scenario(name="flow", protocol=[Step(kind="rest", s=1e9)], cell=cell,
                  faults=[FaultSpec(kind="gas_burst", at_s=10.0, magnitude=rate)])
    ex = SimExperiment("t", sc, 1, 0)
    x, m44 = [], []
    for _ in range(200):
        frames = ex.step()
        x.append(ex.state[0, E.S_GAS_X + E.CO2])
        m44.append(next(f for f in frames if f.kind == "ms.ion_current").arrays["m44"][0])
    q = ex.params[0, E.P_FLOW]
    tau = ex.params[0, E.P_FLOW_V] / q
    assert tau == pytest.approx(30.0, rel=1e-6)  # 0.5 mL at 1 mL/min
    x = np.array(x)
    k = int(10 + tau) - 1  # one time constant after the step (x[k] is at t = k + 1)
    assert x[k] / (rate / q) == pytest.approx(1 - np.exp(-1), abs=0.03)
    assert x[-1] / (rate / q) == pytest.approx(1.0, abs=0.01)
    m44 = np.array(m44)
    first_x = np.argmax(x > 0.05 * rate / q)
    first_ms = np.argmax(m44 > m44[:5].mean() + 0.05 * (m44[-1] - m44[:5].mean()))
    assert first_ms - first_x == pytest.approx(4, abs=1)


def test_simulate_command_writes_recording_and_truth(tmp_path) -> None:
    import json

    from stream.cli import main
    from stream.recording import describe
    out = tmp_path / "sim.mcap"
    assert main(["simulate", "soft-short", "--cells", "3", "--duration", "10m", "--out",
                 str(out)]) == 0
    summary = describe(out)
    kinds = {s["kind"] for s in summary["streams"]}
    assert {"echem", "pressure", "ms.ion_current", "pattern", "spectrum"} == kinds
    assert len(summary["streams"]) == 3 * 5
    truth = json.loads(out.with_suffix(".truth.json").read_text())
    assert truth == [] or all(g["onset_s"] < 600 for g in truth)
    assert "ground_truth" in summary["metadata"]


def test_soft_short_micro_shorts_and_self_discharge_show_in_the_voltage() -> None:
    sc = load_scenario("soft-short")
    sc.detectors = []
    ex = SimExperiment("t", sc, 3, 0)
    frames = [f for _ in range(15700) for f in ex.step()]
    v = {c: _series(frames, f"t/cell0{c}/potentiostat", "voltage") for c in (1, 2, 3)}
    i = {c: _series(frames, f"t/cell0{c}/potentiostat", "current") for c in (1, 2, 3)}
    hz = 10
    # micro-shorts on cell02: drops of the injected size, recovering within seconds
    for fault in (f for f in sc.faults if f.kind == "micro_short"):
        k = int(fault.at_s * hz)
        drop = v[2][k - 5:k].mean() - v[2][k:k + 3].min()
        assert drop == pytest.approx(fault.magnitude, rel=0.25)
        assert v[2][k + 100] - v[2][k - 5:k].mean() > -0.01
    # soft short on cell01: voltage noise in CC charge well above the clean cell's
    on = int(10800 * hz)
    cc = (i[1] > 0.04) & (np.arange(v[1].size) > on)
    cc_clean = (i[3] > 0.04) & (np.arange(v[3].size) < 7200 * hz)
    rough = np.std(np.diff(v[1][cc]))
    assert rough > 5 * np.std(np.diff(v[3][cc_clean]))
    # self-discharge on cell03: in the rest after a charge the voltage keeps falling once the
    # fault is on (R_isc 3 kohm), far more than in the same rest before it
    def rest_drop(after_s: float) -> float:
        charged_rest = np.flatnonzero((i[3] == 0) & (v[3] > 4.0) &
                                      (np.arange(v[3].size) > after_s * hz))
        start = charged_rest[0]
        return v[3][start + 300 * hz] - v[3][start + 1000 * hz]

    assert rest_drop(7300) > 0.005 and rest_drop(7300) > 5 * abs(rest_drop(0))


def test_plating_plateau_in_relaxation_after_fast_charge() -> None:
    sc = load_scenario("plating-fast-charge")
    sc.detectors = []
    ex = SimExperiment("t", sc, 2, 0)
    frames = [f for _ in range(5000) for f in ex.step()]
    hz = 10
    curves = {}
    for c in (1, 2):
        v = _series(frames, f"t/cell0{c}/potentiostat", "voltage")
        i = _series(frames, f"t/cell0{c}/potentiostat", "current")
        end = np.flatnonzero(i > 0)[-1] + 1          # end of the 3C charge
        curves[c] = v[end + 20 * hz:end + 300 * hz]    # the first minutes of relaxation
    plated, clean = curves
    # plating holds the voltage up after the charge: higher and flatter than the clean cell
    assert curves[plated].mean() - curves[clean].mean() > 0.02
