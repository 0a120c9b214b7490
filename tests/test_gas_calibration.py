"""Sensitivity factors F (C/mol): calibration-gas steps against the simulator's mass-spec model
(known F), electrochemical calibration on a synthetic CV with known F and on the real HER/OER
calibration CVs (the_good_bit.csv), and the Calibration object into the gas processor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters.ixdat_csv import read_ixdat_csv
from adapters.sim.experiment import CellTemplate, FaultSpec, Scenario, SimExperiment, Step
from processors.gas import GasConfig, GasProcessor
from processors.gas_calibration import (
    FARADAY,
    Calibration,
    CalibrationError,
    GasStep,
    cv_vertices,
    ec_calibration,
    ec_calibration_frames,
    gas_step_calibration,
    molar_flow,
    steady_plateau,
    steps_from_fractions,
)
from processors.mass_spec import CRACKING, SENSITIVITY

GOOD_BIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ecms" / \
    "the_good_bit.csv"
BACKGROUND = 2e-10                                      # mol/s CO2 from a constant source
LEVELS = [(300.0, 600.0, 1e-9), (600.0, 900.0, 2e-9), (900.0, 1200.0, 4e-9)]


@pytest.fixture(scope="module")
def sim_steps() -> dict:
    """A flow cell whose CO2 flux steps up in known amounts on a constant background; the
    simulator's OEMS (cracking pattern x relative sensitivity x 1 nA per unit fraction, stirred
    tank tau = V/Q, capillary delay, 0.5 % noise) gives the m/z 44 ion current."""
    cell = CellTemplate(sei_rate_mol_s=0.0, crosstalk_rate_mol_s=0.0, o2_rate_mol_s=0.0,
                        cell_type="flow")
    faults = [FaultSpec(kind="gas_burst", at_s=0.0, until_s=1e9, magnitude=BACKGROUND)]
    faults += [FaultSpec(kind="gas_burst", at_s=a, until_s=b, magnitude=m) for a, b, m in LEVELS]
    ex = SimExperiment("cal", Scenario(name="cal", protocol=[Step(kind="rest", s=1e9)],
                                       detectors=[], cell=cell, faults=faults), 1, 0)
    frames = [next(f for f in ex.step() if f.kind == "ms.ion_current") for _ in range(1500)]
    t = np.array([(f.t0_ns - ex.start_ns) * 1e-9 for f in frames])
    y = np.array([f.arrays["m44"][0] for f in frames])
    carrier = molar_flow(cell.flow_mL_min, cell.pressure_Pa, cell.ambient_C)
    # I = 1 nA * SENSITIVITY * cracking * x, and x = flux / Q in steady state
    f_true = 1e-9 * SENSITIVITY["CO2"] * CRACKING["CO2"][44] / carrier
    tau = cell.flow_volume_mL / cell.flow_mL_min * 60.0
    steps = [GasStep(0.0, 300.0, 0.0)] + [GasStep(a, b, m) for a, b, m in LEVELS] + \
        [GasStep(1200.0, 1500.0, 0.0)]
    return {"t": t, "y": y, "frames": frames, "carrier": carrier, "f_true": f_true,
            "tau": tau, "delay": cell.capillary_delay_s, "steps": steps}


def test_gas_steps_recover_the_simulators_sensitivity(sim_steps: dict) -> None:
    s = sim_steps
    result = gas_step_calibration(s["t"], s["y"], s["steps"], "CO2", 44, date="sim")
    sens = result.sensitivity
    assert sens.F_C_per_mol == pytest.approx(s["f_true"], rel=0.01)
    assert sens.n_points == 3 and sens.relative_spread < 0.01
    assert sens.method == "gas_steps" and sens.mz == 44.0
    # the background (the constant CO2 source) is taken from the zero-flux steps
    bg_true = s["f_true"] * BACKGROUND
    assert result.background_A[2] == pytest.approx(bg_true, rel=0.02)
    # the plateaus start after the capillary delay and the stirred tank's settling (> 3 tau)
    for step, plateau in zip(s["steps"][1:4], result.plateaus[1:4], strict=True):
        assert plateau.t_start - step.t_start > s["delay"] + 3 * s["tau"]
        assert plateau.n >= 50
    # averaging whole step windows instead would be biased by the transients
    naive = [s["y"][(s["t"] >= st.t_start) & (s["t"] <= st.t_end)].mean() for st in s["steps"]]
    f_naive = np.mean([(naive[k] - naive[0]) / s["steps"][k].flux_mol_s for k in (1, 2, 3)])
    assert abs(f_naive / s["f_true"] - 1) > 0.05
    # the same steps as mole fractions of the carrier give the same F
    windows = [(st.t_start, st.t_end) for st in s["steps"]]
    fractions = [st.flux_mol_s / s["carrier"] for st in s["steps"]]
    again = gas_step_calibration(s["t"], s["y"], steps_from_fractions(windows, fractions,
                                                                      s["carrier"]), "CO2", 44)
    assert again.sensitivity.F_C_per_mol == pytest.approx(sens.F_C_per_mol, rel=1e-12)
    # without zero-flux steps, the background is the fitted intercept
    fitted = gas_step_calibration(s["t"], s["y"], s["steps"][1:4], "CO2", 44)
    assert fitted.intercept_A == pytest.approx(bg_true, rel=0.1)
    assert fitted.sensitivity.F_C_per_mol == pytest.approx(s["f_true"], rel=0.01)


def test_calibration_drives_the_gas_processor(sim_steps: dict) -> None:
    """The calibrated F, turned into GasConfig settings, makes the gas processor report the
    simulator's true CO2 flux."""
    s = sim_steps
    cal = Calibration().add(gas_step_calibration(s["t"], s["y"], s["steps"], "CO2", 44,
                                                 date="sim").sensitivity)
    config = GasConfig(cell_type="flow", internal_standard=None, window_s=10.0,
                       sensitivity_A=5e-9)
    settings = cal.gas_settings(config)
    assert set(settings) == {"sensitivities_A"}
    proc = GasProcessor(config.model_copy(update=settings))
    out = [r for f in s["frames"] for r in proc.process(f) if r.meta["tags"]["gas"] == "CO2"]
    rate = np.concatenate([r.arrays["rate_mol_s"] for r in out])
    for a, b, flux in LEVELS:
        steady = rate[int(a) + 150:int(b)]
        assert np.median(steady) == pytest.approx(BACKGROUND + flux, rel=0.02)
    # the uncalibrated setting (5 nA) would be off by the factor it got wrong
    wrong = GasProcessor(config)
    rate_wrong = np.concatenate([r.arrays["rate_mol_s"] for f in s["frames"]
                                 for r in wrong.process(f) if r.meta["tags"]["gas"] == "CO2"])
    assert np.median(rate_wrong[1050:1200]) < 0.3 * (BACKGROUND + 4e-9)


def test_plateau_errors_name_the_step(sim_steps: dict) -> None:
    s = sim_steps
    with pytest.raises(CalibrationError, match=r"step 300-340 s: no steady plateau"):
        steady_plateau(s["t"], s["y"], 300.0, 340.0)
    with pytest.raises(CalibrationError, match=r"step 300-303 s: 4 samples"):
        steady_plateau(s["t"], s["y"], 300.0, 303.0)
    with pytest.raises(CalibrationError, match="zero-flux"):
        gas_step_calibration(s["t"], s["y"], s["steps"][1:2], "CO2", 44)


# -- electrochemical calibration -------------------------------------------------------------

def _synthetic_cv(f_true: float, n_cycles: int = 4, seed: int = 1) -> dict:
    """Triangle CV 0.0-1.2 V at 20 mV/s: double-layer current C dE/dt, a Tafel HER current near
    the cathodic vertex; the MS sees the H2 flux delayed by 2 s and smeared by a 4 s exponential
    response, times F, on a background with noise."""
    rng = np.random.default_rng(seed)
    dt, rate = 0.2, 0.02
    period = 2 * 1.2 / rate
    t = np.arange(0.0, n_cycles * period + period / 2, dt)
    phase = (t % period) / period
    e = np.where(phase < 0.5, 1.2 - 2.4 * phase, 2.4 * phase - 1.2)
    i_dl = 20e-6 * np.gradient(e, t)                     # 20 uF * dE/dt
    i_her = -2e-4 * np.exp(-e / 0.03)                    # cathodic, Tafel slope 69 mV/dec
    current = i_dl + i_her
    n_dot = -i_her / (2 * FARADAY)
    kernel_t = np.arange(0.0, 40.0, dt)
    kernel = np.where(kernel_t >= 2.0, np.exp(-(kernel_t - 2.0) / 4.0), 0.0)
    response = np.convolve(n_dot, kernel / kernel.sum())[:t.size]
    t_ms = t[::5] + 0.07
    ion = f_true * np.interp(t_ms, t, response) + 5e-12 + rng.normal(0, 2e-14, t_ms.size)
    return {"t": t, "e": e, "i": current, "t_ms": t_ms, "ion": ion}


def test_ec_calibration_recovers_a_known_f() -> None:
    cv = _synthetic_cv(f_true=0.3)
    assert [s for _, s in cv_vertices(cv["e"])] == [-1, 1] * 4
    # net charge within 0.3 V of the vertex: the double-layer charge cancels between sweeps
    rev = ec_calibration(cv["t"], cv["e"], cv["i"], cv["t_ms"], cv["ion"], "H2",
                         reversible_window_V=0.3)
    assert rev.sensitivity.n_points == 4
    assert rev.sensitivity.F_C_per_mol == pytest.approx(0.3, rel=0.02)
    # the cathodic stretch (current above 5 % of its peak) misses the HER charge of the Tafel
    # foot, whose H2 the MS still sees: F a few % high, less so with a lower threshold
    plain = ec_calibration(cv["t"], cv["e"], cv["i"], cv["t_ms"], cv["ion"], "H2")
    assert 0.3 < plain.sensitivity.F_C_per_mol < 0.3 * 1.06
    low = ec_calibration(cv["t"], cv["e"], cv["i"], cv["t_ms"], cv["ion"], "H2",
                         threshold_fraction=0.01)
    assert abs(low.sensitivity.F_C_per_mol - 0.3) < abs(plain.sensitivity.F_C_per_mol - 0.3)
    assert plain.sensitivity.relative_spread < 0.01
    with pytest.raises(CalibrationError, match="no anodic evolution stretch"):
        ec_calibration(cv["t"], cv["e"], np.minimum(cv["i"], 0), cv["t_ms"], cv["ion"], "O2")


@pytest.fixture(scope="module")
def good_bit():
    if not GOOD_BIT.exists():
        pytest.skip(f"{GOOD_BIT} not available")
    data = read_ixdat_csv(GOOD_BIT)
    return data.echem_frame("cal/cell01/potentiostat"), data.ms_frame("cal/cell01/ms")


@pytest.mark.parametrize("gas, sign", [("H2", -1), ("O2", 1)])
def test_ec_calibration_on_real_cvs(good_bit, gas: str, sign: int) -> None:
    echem, ms = good_bit
    result = ec_calibration_frames(echem, ms, gas)
    sens = result.sensitivity
    # one event per complete CV: as many as the selector counts cycles (4)
    cycles = int(np.count_nonzero(np.diff(echem.arrays["selector"])))
    assert cycles == 4 and sens.n_points == 4 and not result.skipped
    assert sens.relative_spread < 0.05               # cycle-to-cycle consistency
    assert 0.01 < sens.F_C_per_mol < 1.0             # order of magnitude of chip EC-MS
    assert sens.date.startswith("2022-07-19")
    t, voltage = echem.arrays["t"], echem.arrays["voltage"]
    for event in result.events:
        st = event.stretch
        assert st.sign == sign and np.sign(st.peak_A) == sign
        assert st.t_start <= t[st.i_vertex] <= st.t_end     # the stretch holds the vertex
        extreme = voltage.min() if sign < 0 else voltage.max()
        assert voltage[st.i_vertex] == pytest.approx(extreme, abs=0.01)
        # the ion current's span starts with the stretch (no earlier than one MS sample) and
        # ends after it: the MS lags and tails
        assert st.t_start - 1.5 <= event.ms_start and event.ms_end > st.t_end + 5.0
        assert event.q_ms_C > 0 and event.n_mol == pytest.approx(
            event.q_ec_C / ({"H2": 2, "O2": 4}[gas] * FARADAY))


def test_ec_calibration_reversible_window_on_real_her(good_bit) -> None:
    """On Pt, hydrogen adsorbed on the cathodic sweep (and some H2) is oxidised after the
    vertex; the net charge near the vertex counts less charge per H2 seen, so F comes out larger,
    and it is as consistent between cycles."""
    echem, ms = good_bit
    plain = ec_calibration_frames(echem, ms, "H2").sensitivity
    rev = ec_calibration_frames(echem, ms, "H2", reversible_window_V=0.3).sensitivity
    assert rev.n_points == 4 and rev.relative_spread < 0.05
    assert rev.F_C_per_mol > 1.3 * plain.F_C_per_mol


def test_calibration_round_trip_and_gas_settings(good_bit, tmp_path: Path) -> None:
    echem, ms = good_bit
    cal = Calibration()
    for gas in ("H2", "O2"):
        cal.add(ec_calibration_frames(echem, ms, gas).sensitivity)
    cal.save(tmp_path / "cal.toml")
    loaded = Calibration.load(tmp_path / "cal.toml")
    assert loaded == cal
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert 'method = "electrochemical"' in cal.to_toml()
    with pytest.raises(CalibrationError, match="calibration table"):
        Calibration.from_dict({"gas": {"H2": {"F": 1.0}}})
    # each gas keeps its own sensitivity, although H2 and O2 differ by more than 5 %
    config = GasConfig()
    q = molar_flow(config.flow_mL_min, config.pressure_Pa, config.temperature_C)
    implied = {g: s.F_C_per_mol * q / SENSITIVITY[g] for g, s in cal.gases.items()}
    assert abs(implied["H2"] / implied["O2"] - 1) > 0.05
    settings = cal.gas_settings(config)
    assert settings["sensitivities_A"]["O2"] == pytest.approx(cal.gases["O2"].F_C_per_mol * q)
