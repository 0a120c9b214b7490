"""Pressure cell: moles, the charge as-of join, z and the reversible/irreversible split, closed
loop against the simulator's true headspace, plus a real sensor log."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import cumulative_trapezoid

from adapters.sim import engine as E
from adapters.sim.experiment import (
    FaultSpec,
    Scenario,
    SimExperiment,
    Step,
    load_scenario,
)
from processors.gas import R_GAS
from processors.pressure import FARADAY, DischargeSlope, PressureConfig, PressureProcessor
from stream.frame import Frame, FrameError

from .test_gas import _quiet_cell  # a cell that makes no gas of its own

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
AUX_LOG = REAL / "aux_pressure_log" / "fhimcpt_measurement.csv"
T0_NS = 1_767_225_600_000_000_000


def _sigma_n(headspace_mL: float = 10.0, temp_C: float = 25.0) -> float:
    """Moles of the simulator's 2 Pa pressure noise."""
    return 2.0 * headspace_mL * 1e-6 / (R_GAS * (temp_C + 273.15))


def _run(ex: SimExperiment, procs: list[PressureProcessor], seconds: int,
         hook=None) -> tuple[list[list[Frame]], dict[str, np.ndarray]]:
    """Step the simulator, feed each processor the cell's echem and pressure frames; per second
    the true headspace moles, gas generation rate (mol/s) and current (A)."""
    results: list[list[Frame]] = [[] for _ in procs]
    truth: dict[str, list] = {"n": [], "gen": [], "current": []}
    for s in range(seconds):
        if hook is not None:
            hook(ex, s)
        frames = [f for f in ex.step() if f.kind in ("echem", "pressure")]
        for proc, out in zip(procs, results, strict=True):
            for f in frames:
                out += proc.process(f)
        truth["n"].append(ex.state[0, E.S_GAS_HEAD:E.S_GAS_HEAD + E.N_GAS].sum())
        truth["gen"].append(ex.last_rates[0].sum(axis=1).mean())
        truth["current"].append(next(f for f in frames if f.kind == "echem").arrays["current"])
    for proc, out in zip(procs, results, strict=True):
        out += proc.flush()
    return results, {k: np.array(v) for k, v in truth.items()}


def _cat(frames: list[Frame], name: str) -> np.ndarray:
    return np.concatenate([f.arrays[name] for f in frames if f.kind == "result.pressure"])


def _times_ns(frames: list[Frame]) -> np.ndarray:
    return np.concatenate([f.times_ns() for f in frames if f.kind == "result.pressure"])


def test_moles_track_true_headspace_and_temperature_compensation_matters() -> None:
    """A sealed cell at rest whose climate chamber steps from 25 to 45 degC: the gas amount is
    constant while the pressure rises ~5 % and the sensor's offset drifts 3 Pa/K."""
    sc = Scenario(name="warm", protocol=[Step(kind="rest", s=1e9)], detectors=[],
                  cell=_quiet_cell(leak_per_s=0.0, electrode_expansion_mL=0.0))
    ex = SimExperiment("t", sc, 1, 0)
    full = PressureProcessor(PressureConfig(offset_Pa_per_K=3.0))
    no_offset = PressureProcessor(PressureConfig())
    fixed = PressureProcessor(PressureConfig(temperature_source="fixed", temperature_C=25.0,
                                             offset_Pa_per_K=3.0))

    def chamber(ex: SimExperiment, s: int) -> None:
        ex.params[0, E.P_AMB] = 45.0

    (r_full, r_no_offset, r_fixed), truth = _run(ex, [full, no_offset, fixed], 3000, chamber)
    assert ex.state[0, E.S_TEMP] > 39.0  # the cell did warm up
    sigma = _sigma_n()
    err = _cat(r_full, "moles") - truth["n"]
    assert np.abs(err).max() < 5 * sigma
    assert abs(err.mean()) < 0.2 * sigma
    late = slice(2400, None)  # 12+ K above the reference
    assert np.abs(_cat(r_no_offset, "moles") - truth["n"])[late].mean() > 10 * sigma
    assert np.abs(_cat(r_fixed, "moles") - truth["n"])[late].mean() > 1000 * sigma
    # delta from the first sample; one output sample per pressure sample, on its time
    assert _cat(r_full, "delta_moles")[0] == 0.0
    np.testing.assert_array_equal(_times_ns(r_full), T0_NS + np.arange(3000) * 1_000_000_000)


def _join_frames(seed: int) -> tuple[list[Frame], list[Frame], np.ndarray, np.ndarray]:
    """Irregular echem blocks (current steps) and pressure blocks on one cell, as frames with the
    absolute sample times (s after T0_NS) of each stream."""
    rng = np.random.default_rng(seed)
    t_e = 5.0 + np.cumsum(rng.uniform(0.02, 0.3, 6000))
    current = np.where((t_e // 60) % 3 == 0, 0.05, np.where((t_e // 60) % 3 == 1, 0.0, -0.04))
    current = current + rng.normal(0, 1e-4, t_e.size)
    voltage = 3.7 + 0.1 * np.sin(t_e / 50)
    t_p = np.cumsum(rng.uniform(0.3, 2.0, 900))  # starts before the first echem sample
    t_p = t_p[t_p < t_e[-1]]
    pressure = 1e5 + rng.normal(0, 2.0, t_p.size)

    def blocks(t: np.ndarray, sizes: tuple[int, int]) -> list[slice]:
        out, k = [], 0
        while k < t.size:
            n = int(rng.integers(*sizes))
            out.append(slice(k, min(k + n, t.size)))
            k += n
        return out

    echem = []
    for seq, sl in enumerate(blocks(t_e, (1, 11))):
        t0 = T0_NS + round(t_e[sl][0] * 1e9)
        echem.append(Frame("x/c1/cycler", "echem", seq, t0,
                           {"t": t_e[sl] - (t0 - T0_NS) * 1e-9, "voltage": voltage[sl],
                            "current": current[sl]}, {"current": "A"}))
    press = []
    for seq, sl in enumerate(blocks(t_p, (1, 4))):
        t0 = T0_NS + round(t_p[sl][0] * 1e9)
        press.append(Frame("x/c1/gauge", "pressure", seq, t0,
                           {"t": t_p[sl] - (t0 - T0_NS) * 1e-9, "pressure": pressure[sl],
                            "temperature": np.full(sl.stop - sl.start, 25.0)},
                           {"pressure": "Pa", "temperature": "degC"}))
    return echem, press, t_e, t_p


def _deliver(streams: list[tuple[list[Frame], float, float]], seed: int) -> list[Frame]:
    """Frames in arrival order: each stream's frames leave after their last sample plus a random
    delay in [lo, hi) s, in order within the stream, interleaved in any order between streams."""
    rng = np.random.default_rng(seed)
    arrivals = []
    for frames, lo, hi in streams:
        last = -np.inf
        for f in frames:
            last = max(last, (f.t0_ns - T0_NS) * 1e-9 + f.arrays["t"][-1] + rng.uniform(lo, hi))
            arrivals.append((last, len(arrivals), f))
    return [f for _, _, f in sorted(arrivals, key=lambda a: a[:2])]


def test_asof_join_with_interleaved_arrival_matches_searchsorted() -> None:
    echem, press, t_e, t_p = _join_frames(0)
    # slow reference: the whole charge curve, then the last echem sample at or before each t
    q_ref = np.concatenate([[0.0], cumulative_trapezoid(
        np.concatenate([f.arrays["current"] for f in echem]), t_e)]) / 3600.0
    idx = np.searchsorted(t_e, t_p, side="right") - 1
    expected = np.where(idx >= 0, q_ref[np.maximum(idx, 0)], np.nan)
    assert np.isnan(expected[:3]).all() and np.isfinite(expected[-100:]).all()

    outputs = {}
    # arrival delays (s) below max_lag_s; an echem block spans <= 3 s
    for name, frames in (("in order", _deliver([(echem, 0, 0), (press, 0, 0)], 1)),
                         ("echem late", _deliver([(echem, 4, 6), (press, 0, 0)], 2)),
                         ("pressure late", _deliver([(echem, 0, 0), (press, 4, 6)], 3)),
                         ("interleaved", _deliver([(echem, 0, 5), (press, 0, 5)], 4))):
        proc = PressureProcessor(PressureConfig(max_lag_s=10.0))
        out, buffered = [], 0
        for f in frames:
            out += proc.process(f)
            cell = proc._cells["x/c1"]
            buffered = max(buffered, len(cell.echem_t) + len(cell.pending))
        out += proc.flush()
        got_t = (_times_ns(out) - T0_NS) * 1e-9
        np.testing.assert_allclose(got_t, t_p, rtol=0, atol=1e-9)
        np.testing.assert_allclose(_cat(out, "charge_Ah"), expected, rtol=1e-12, atol=1e-15,
                                   err_msg=name)
        assert out[-1].meta["stale_joins"] == 0 and out[-1].meta["late_samples"] == 0
        # bounded: about max_lag_s plus a block of echem samples (<= 50 Hz) and of pressure
        assert buffered < (10.0 + 3.0) * 50 + 10, name
        outputs[name] = out
    # the arrival order changes neither the join nor anything computed from it (the time
    # origin is the first frame to arrive, hence float rounding differences only)
    for name in ("moles", "delta_moles", "rate_mol_s", "n_irreversible", "z_half_cycle"):
        ref = _cat(outputs["in order"], name)
        for other in ("echem late", "pressure late", "interleaved"):
            np.testing.assert_allclose(_cat(outputs[other], name), ref, rtol=1e-9, atol=1e-18)

    # echem later than max_lag_s: pressure samples go out with the charge known so far
    proc = PressureProcessor(PressureConfig(max_lag_s=1.0))
    out = [r for f in _deliver([(echem, 5, 5), (press, 0, 0)], 5) for r in proc.process(f)]
    assert out[-1].meta["stale_joins"] > 0
    assert (np.nan_to_num(_cat(out, "charge_Ah")) <= np.nan_to_num(expected[:len(
        _cat(out, "charge_Ah"))]) + 1e-15).sum() > 0


def test_z_recovers_electrons_per_molecule_of_a_current_driven_gas() -> None:
    """A gas made at I/(2F) during a constant-current charge (as H2 from 2 H+ + 2 e-): z = 2."""
    current = 0.2 * 0.05  # C/5 of the nominal 50 mAh
    sc = Scenario(name="h2", detectors=[], cell=_quiet_cell(leak_per_s=0.0,
                                                            electrode_expansion_mL=0.0),
                  protocol=[Step(kind="rest", s=600.0), Step(kind="cc", c_rate=0.2, v=4.2)],
                  faults=[FaultSpec(kind="gas_burst", at_s=600.0, until_s=2400.0,
                                    magnitude=current / (2 * FARADAY))])
    ex = SimExperiment("t", sc, 1, 0)
    proc = PressureProcessor(PressureConfig(z_window_s=900.0, rate_window_s=60.0))
    (out,), truth = _run(ex, [proc], 2400)
    # truth from the simulator: its own current and headspace (the cell's capacity differs
    # from nominal by a few %, so z differs from 2 by as much)
    i_true = truth["current"].mean(axis=1)
    z_true = i_true[600:].sum() / (FARADAY * (truth["n"][-1] - truth["n"][599]))
    assert z_true == pytest.approx(2.0, rel=0.05)
    z, z_hc = _cat(out, "z_electrons_per_molecule"), _cat(out, "z_half_cycle")
    assert np.isnan(z[:590]).all()  # no gas yet: |dn| under z_min_mol
    assert z[-1] == pytest.approx(z_true, rel=0.01)
    assert z_hc[-1] == pytest.approx(z_true, rel=0.01)
    rate = _cat(out, "rate_mol_s")
    assert rate[1000:].mean() == pytest.approx(truth["gen"][1000:].mean(), rel=0.01)
    np.testing.assert_allclose(_cat(out, "rate_umol_min"), rate * 6e7)


def test_reversible_irreversible_split_over_cycles() -> None:
    """1C cycling with a swelling electrode (0.02 mL at full charge), O2 at high state of charge
    and an MS capillary leak: the split recovers the headspace's true change in gas.

    Tolerance: 5 sigma of one sample's pressure noise, plus 3 % of the reversible swing (each
    discharge chunk slope carries ~2 % noise; the median of several is better)."""
    sc = load_scenario("cycling")
    sc.detectors = []
    sc.cell.electrode_expansion_mL = 0.02
    ex = SimExperiment("t", sc, 1, 0)
    proc = PressureProcessor(PressureConfig(offset_Pa_per_K=3.0, leak_per_s=sc.cell.leak_per_s))
    (out,), truth = _run(ex, [proc], 9 * 3600)
    true_irr = truth["n"] - truth["n"][0]
    delta = _cat(out, "delta_moles")
    q_state = _cat(out, "charge_Ah") - _cat(out, "charge_Ah")[0]
    beta_true = np.polyfit(q_state, delta - true_irr, 1)[0]  # from the simulator's truth
    assert out[-1].meta["beta_mol_per_Ah"] == pytest.approx(beta_true, rel=0.03)
    swing = beta_true * np.abs(q_state).max()
    tol = 5 * _sigma_n() + 0.03 * swing
    after = slice(9000, None)  # after the first full cycle's discharge
    irr = _cat(out, "n_irreversible")
    assert np.abs(irr - true_irr)[after].max() < tol
    assert np.abs(delta - true_irr)[after].max() > 5 * tol  # without the split: far off
    np.testing.assert_allclose(_cat(out, "n_reversible") + irr, delta, rtol=0, atol=1e-15)
    # the irreversible part is gas made minus gas leaked: the gas really did change
    assert np.ptp(true_irr) > 10 * tol


def test_configured_expansion_splits_from_the_first_sample() -> None:
    sc = load_scenario("cycling")
    sc.detectors = []
    sc.cell.electrode_expansion_mL = 0.02
    ex = SimExperiment("t", sc, 1, 0)
    capacity = float(ex.params[0, E.P_CAP])
    proc = PressureProcessor(PressureConfig(
        offset_Pa_per_K=3.0, leak_per_s=sc.cell.leak_per_s, expansion_mL_per_soc=0.02,
        capacity_Ah=capacity))
    (out,), truth = _run(ex, [proc], 9000)
    err = _cat(out, "n_irreversible") - (truth["n"] - truth["n"][0])
    assert np.abs(err).max() < 5 * _sigma_n()
    assert out[-1].meta["beta_source"] == "configured"


def test_discharge_slope_chunks_equal_polyfit() -> None:
    rng = np.random.default_rng(4)
    t = np.cumsum(rng.uniform(0.5, 1.5, 12000))
    discharging = (t // 1500) % 2 == 1
    q = np.cumsum(np.where(discharging, -1e-5, 1e-5) * rng.uniform(0.5, 1.5, t.size))
    y = 1.6e-5 * q + rng.normal(0, 5e-9, t.size)
    est = DischargeSlope(chunk_s=400.0, keep=100)
    for k in range(1, t.size):
        est.interval((t[k - 1], q[k - 1], y[k - 1]), (t[k], q[k], y[k]),
                     bool(q[k] < q[k - 1]))
    # reference: the same chunks (intervals while discharging, closed at 400 s or when the
    # discharge stops, kept if >= 200 s), each fitted by np.polyfit
    ref: list[float] = []
    chunk: list[int] = []

    def close() -> None:
        if len(chunk) >= 3 and t[chunk[-1]] - t[chunk[0]] >= 200.0:
            ref.append(np.polyfit(q[chunk], y[chunk], 1)[0])
        chunk.clear()

    for k in range(1, t.size):
        if q[k] < q[k - 1]:
            chunk.extend([k - 1, k] if not chunk else [k])
            if t[k] - t[chunk[0]] >= 400.0:
                close()
        else:
            close()
    assert len(ref) > 10
    np.testing.assert_allclose(list(est.slopes), ref, rtol=1e-9)
    assert est.beta == pytest.approx(np.median(ref))
    assert est.beta == pytest.approx(1.6e-5, rel=0.02)


def test_malformed_frames_name_stream_and_field() -> None:
    proc = PressureProcessor()
    good = {"t": np.zeros(2), "pressure": np.full(2, 1e5), "temperature": np.full(2, 25.0)}
    cases = [
        ({k: v for k, v in good.items() if k != "pressure"}, {}, "arrays.pressure"),
        ({k: v for k, v in good.items() if k != "temperature"}, {}, "arrays.temperature"),
        ({**good, "pressure": np.full(3, 1e5)}, {}, "arrays.pressure"),
        ({**good, "pressure": np.array(["1e5", "1e5"])}, {}, "arrays.pressure"),
        (good, {"pressure": "psi"}, "units.pressure"),
    ]
    for arrays, units, field in cases:
        with pytest.raises(FrameError) as info:
            proc.process(Frame("x/c1/gauge", "pressure", 0, T0_NS, arrays, units))
        assert (info.value.stream, info.value.field) == ("x/c1/gauge", field)
    echem = {"t": np.arange(3) * 0.1, "voltage": np.full(3, 3.7), "current": np.full(3, 0.01)}
    with pytest.raises(FrameError) as info:
        proc.process(Frame("x/c1/cycler", "echem", 0, T0_NS,
                           {k: v for k, v in echem.items() if k != "current"}))
    assert (info.value.stream, info.value.field) == ("x/c1/cycler", "arrays.current")
    with pytest.raises(FrameError) as info:
        proc.process(Frame("x/c1/cycler", "echem", 0, T0_NS, {**echem, "t": np.zeros(3)}))
    assert (info.value.stream, info.value.field) == ("x/c1/cycler", "arrays.t")
    # a fixed temperature needs no temperature array
    fixed = PressureProcessor(PressureConfig(temperature_source="fixed", max_lag_s=0.0))
    out = fixed.process(Frame("x/c1/gauge", "pressure", 0, T0_NS,
                              {"t": np.zeros(1), "pressure": np.full(1, 1e5)}))
    assert _cat(out, "moles")[0] == pytest.approx(1e5 * 10e-6 / (R_GAS * 298.15), rel=1e-12)
    with pytest.raises(ValueError, match="capacity_Ah"):
        PressureConfig(expansion_mL_per_soc=0.02)


def test_pressure_dropout_is_skipped_and_counted() -> None:
    sc = Scenario(name="dropout", protocol=[Step(kind="rest", s=1e9)], detectors=[],
                  cell=_quiet_cell(leak_per_s=0.0, electrode_expansion_mL=0.0),
                  faults=[FaultSpec(kind="sensor_dropout", instrument="pressure", at_s=100.0,
                                    until_s=130.0),
                          FaultSpec(kind="gas_burst", at_s=50.0, until_s=400.0,
                                    magnitude=2e-9)])
    ex = SimExperiment("t", sc, 1, 0)
    proc = PressureProcessor(PressureConfig(rate_window_s=30.0))
    (out,), truth = _run(ex, [proc], 400)
    assert out[-1].meta["skipped_samples"] == 30
    kept = np.concatenate([np.arange(100), np.arange(130, 400)])
    np.testing.assert_array_equal(_times_ns(out), T0_NS + kept * 1_000_000_000)
    for name in ("moles", "delta_moles", "rate_mol_s", "n_irreversible"):
        assert np.isfinite(_cat(out, name)).all(), name
    assert np.abs(_cat(out, "moles") - truth["n"][kept]).max() < 5 * _sigma_n()
    # the rate over the gap and after it is the burst's
    assert _cat(out, "rate_mol_s")[-200:].mean() == pytest.approx(2e-9, rel=0.05)


def _aux_log() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch ns, pressure mbar, T_cal degC) of the real FHI sensor log."""
    with AUX_LOG.open() as f:
        rows = list(csv.reader(f, delimiter=";"))
    names = [n.strip() for n in rows[0]]
    units = [u.strip() for u in rows[1]]
    ip, it = names.index("pressure"), names.index("T_cal")
    assert (units[ip], units[it]) == ("mbar", "degC")
    data = [r for r in rows[2:] if r]
    t_ns = np.array([int(datetime.strptime(r[0].strip(), "%Y-%m-%d-%H-%M-%S")
                         .replace(tzinfo=UTC).timestamp()) * 1_000_000_000 for r in data])
    return t_ns, np.array([float(r[ip]) for r in data]), np.array([float(r[it]) for r in data])


@pytest.mark.skipif(not AUX_LOG.exists(), reason=f"real data not found at {AUX_LOG}")
def test_real_sensor_log_moles_follow_p_over_t() -> None:
    t_ns, p_mbar, temp = _aux_log()
    assert t_ns.size == 1662 and np.ptp(temp) > 2.0
    proc = PressureProcessor(PressureConfig(headspace_mL=25.0))
    out = []
    for seq, s in enumerate(range(0, t_ns.size, 60)):
        sl = slice(s, s + 60)
        out += proc.process(Frame("fhi/mcpt/gauge", "pressure", seq, int(t_ns[s]),
                                  {"t": (t_ns[sl] - t_ns[s]) * 1e-9, "pressure": p_mbar[sl],
                                   "temperature": temp[sl]},
                                  {"pressure": "mbar", "temperature": "degC"}))
    out += proc.flush()
    np.testing.assert_array_equal(_times_ns(out), t_ns)
    moles = _cat(out, "moles")
    assert np.isfinite(moles).all() and np.isfinite(_cat(out, "rate_mol_s")).all()
    # n = pV/RT: n T / p is the constant V/R, whatever p and T did
    np.testing.assert_allclose(moles * (temp + 273.15) / (p_mbar * 100.0), 25e-6 / R_GAS,
                               rtol=1e-12)
    np.testing.assert_allclose(_cat(out, "delta_moles"), moles - moles[0], rtol=0, atol=1e-18)
    # no potentiostat on this channel: no charge, so no z and no reversible part
    assert np.isnan(_cat(out, "charge_Ah")).all()
    assert np.isnan(_cat(out, "z_electrons_per_molecule")).all()
    assert (_cat(out, "n_reversible") == 0).all()
