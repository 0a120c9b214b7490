"""Electrochemistry: capacities per half cycle against EC-Lab's own columns; resistance at current
steps and state of charge against the simulator's truth; block-size independence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import lfilter

from adapters.biologic import MptError, read_mpt
from adapters.sim import engine as E
from adapters.sim.experiment import CellTemplate, Scenario, SimExperiment, Step, load_scenario
from processors.electrochem import ElectrochemConfig, ElectrochemProcessor
from processors.kernels.resistance import N_ROW_FIXED, current_steps
from processors.kernels.resistance import new_state as new_steps_state
from stream.frame import Frame
from tests.helpers import assert_frames_equal

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
GCPL = REAL / "potentiostat" / "gcpl.pr_182.1.mpt"


def _frames(arrays: dict, block: int, meta: dict) -> list[Frame]:
    t = arrays["t"]
    frames = []
    for k, s in enumerate(range(0, t.size, block)):
        sl = slice(s, min(t.size, s + block))
        frames.append(Frame("lab/cell1/potentiostat", "echem", k, int(round(t[s] * 1e9)),
                            {"t": t[sl] - t[s], "voltage": arrays["voltage"][sl],
                             "current": arrays["current"][sl]}, {}, meta))
    return frames


@pytest.mark.skipif(not GCPL.exists(), reason=f"real data not found at {GCPL}")
@pytest.mark.parametrize("block", [1, 37, 500])
def test_half_cycle_capacities_match_ec_lab_within_half_a_percent(block: int) -> None:
    data = read_mpt(GCPL)
    assert not data.errors and len(data.data["time/s"]) == 2533  # every data line of the file
    arrays, _ = data.standard()
    proc = ElectrochemProcessor()
    out = [r for f in _frames(arrays, block, {"current_kind": "interval_mean"})
           for r in proc.process(f)] + proc.flush()
    ours = [(int(f.arrays["direction"][0]), f.arrays["capacity_Ah"][0] * 1e3)
            for f in out if f.kind == "result.half_cycle"]
    ec_lab = []
    for h in np.unique(arrays["half_cycle"]):
        m = arrays["half_cycle"] == h
        q_ch, q_dis = arrays["q_charge_Ah"][m][-1] * 1e3, arrays["q_discharge_Ah"][m][-1] * 1e3
        ec_lab.append((1, q_ch) if q_ch > 0 else (-1, q_dis))
    assert len(ours) == len(ec_lab) == 8
    for (d_ours, q_ours), (d_ref, q_ref) in zip(ours, ec_lab, strict=True):
        assert d_ours == d_ref
        assert q_ours == pytest.approx(q_ref, rel=0.005)
    cycles = [f for f in out if f.kind == "result.cycle"]
    assert cycles  # discharge-first half cell: a cycle closes at every discharge after a charge


@pytest.mark.skipif(not GCPL.exists(), reason=f"real data not found at {GCPL}")
def test_trapezoid_on_interval_means_is_measurably_off() -> None:
    """Why the current kind matters: integrating EC-Lab's <I> as instantaneous samples misses
    the reference by more than the 0.5 % allowed."""
    arrays, _ = read_mpt(GCPL).standard()
    proc = ElectrochemProcessor()
    out = [r for f in _frames(arrays, 50, {}) for r in proc.process(f)]
    first_charge = next(f for f in out if f.kind == "result.half_cycle"
                        and f.arrays["direction"][0] == 1)
    assert abs(first_charge.arrays["capacity_Ah"][0] * 1e3 / 2.61607 - 1) > 0.005


def test_mpt_reader_decimal_comma_cp1252_and_bad_rows(tmp_path: Path) -> None:
    text = ("EC-Lab ASCII FILE\r\nNb header lines : 4\r\nAcquisition started on : x\r\n"
            "time/s\tEwe/V\t<I>/mA\tQ charge/mA.h\tTemperature/°C\r\n"
            "0,0\t3,1\t0,5\t0,0\t25,0\r\n"
            "1,0\t3,2\t0,5\r\n"
            "2,0\tx\t0,5\t0,1\t25,0\r\n"
            "3,0\t3,3\t0,5\t0,2\t25,1\r\n")
    path = tmp_path / "comma.mpt"
    path.write_bytes(text.encode("cp1252"))
    data = read_mpt(path)
    arrays, units = data.standard()
    np.testing.assert_allclose(arrays["voltage"], [3.1, 3.3])
    np.testing.assert_allclose(arrays["current"], [5e-4, 5e-4])
    assert units["temperature"] == "degC" and arrays["temperature"][1] == 25.1
    assert len(data.errors) == 2
    assert "line 6" in data.errors[0] and "3 fields" in data.errors[0]
    assert "line 7" in data.errors[1] and "'Ewe/V'" in data.errors[1]
    path.write_text("not an mpt\n")
    with pytest.raises(MptError, match="line 1"):
        read_mpt(path)


# -- resistance at current steps -----------------------------------------------------------

def _steps_reference(t: np.ndarray, v: np.ndarray, i: np.ndarray, min_step: float,
                     fraction: float, delays: list[float], trend_s: float) -> np.ndarray:
    """Slow reference: steps from np.diff, the pre-step slope as an EWMA (scipy lfilter) of
    dV/dt restarted after each step, delayed samples by np.searchsorted."""
    di = np.diff(i)
    i_max = np.maximum.accumulate(np.abs(i))[1:]
    steps = np.flatnonzero((np.abs(di) > min_step) & (np.abs(di) > fraction * i_max)) + 1
    rows = []
    for n, k in enumerate(steps):
        start = steps[n - 1] + 1 if n else 1  # slope updates after the previous step
        dt = np.diff(t)[start - 1:k - 1]
        rate = np.diff(v)[start - 1:k - 1] / dt
        slope = 0.0
        if trend_s > 0 and rate.size:
            alpha = 1 - np.exp(-dt[0] / trend_s)  # uniform sampling in this test
            slope = lfilter([alpha], [1, alpha - 1], rate)[-1]
        r0 = (v[k] - v[k - 1] - slope * (t[k] - t[k - 1])) / (i[k] - i[k - 1])
        r_delayed = []
        for d in delays:
            j = int(np.searchsorted(t, t[k] + d - 1e-6))
            next_step = steps[n + 1] if n + 1 < steps.size else t.size
            ok = j < next_step and t[j] <= t[k] + 1.5 * d
            r_delayed.append((v[j] - v[k - 1]) / (i[k] - i[k - 1]) if ok else np.nan)
        rows.append([t[k], i[k] - i[k - 1], i[k - 1], v[k - 1], t[k] - t[k - 1], r0, *r_delayed])
    return np.array(rows)


def test_current_steps_kernel_matches_reference() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(20_000) * 0.1
    level = np.where((t // 300) % 3 == 0, 0.0, np.where((t // 300) % 3 == 1, 0.05, -0.03))
    level[(t > 1234.0) & (t < 1236.0)] = 0.02  # a short pulse: the next step cuts R_10s
    i = level + rng.normal(0, 1e-6, t.size)
    v = 3.7 + 0.002 * np.cumsum(i) + 0.08 * i + rng.normal(0, 2e-4, t.size)
    delays = [1.0, 10.0]
    for trend_s in (0.0, 10.0):
        state = new_steps_state(len(delays))
        ours = np.vstack([current_steps(t[s:s + 333], v[s:s + 333], i[s:s + 333], 1e-5, 0.2,
                                        np.array(delays), trend_s, state)
                          for s in range(0, t.size, 333)])
        ref = _steps_reference(t, v, i, 1e-5, 0.2, delays, trend_s)
        assert ours.shape == ref.shape and ours.shape[0] == 8  # 6 level changes, a pulse
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert np.isnan(ours[:, N_ROW_FIXED + 2]).sum() >= 1  # the pulse is shorter than 10 s


def _sim_arrays(scenario: Scenario, seconds: int, seed: int) -> tuple[SimExperiment, dict]:
    sim = SimExperiment("t", scenario, 1, seed)
    frames, soc_true = [], []
    for _ in range(seconds):
        frames.append(next(f for f in sim.step() if f.kind == "echem"))
        soc_true.append(sim.last_soc[0])
    arrays = {name: np.concatenate([f.arrays[name] for f in frames])
              for name in ("voltage", "current", "temperature")}
    arrays["t"] = np.arange(arrays["voltage"].size) * sim.dt
    arrays["soc_true"] = np.array(soc_true)  # at the last sample of each second
    return sim, arrays


def _cycling(**cell: float) -> Scenario:
    sc = load_scenario("cycling")
    return sc.model_copy(update={"detectors": [], "cell": sc.cell.model_copy(update=cell)})


def test_resistance_on_the_simulator_matches_the_cell_model() -> None:
    """A 1 Ah cell at 1C (80 mV ohmic step, 0.2 mV voltage noise) at 10 Hz. The expected value
    follows the simulator: R0 = r0 (1 + 0.02 (25 - T)) at the step's temperature; the RC branch
    adds nothing at the first sample (explicit Euler: the current enters V_RC one sample later;
    a continuous model would add r1 (1 - exp(-0.1 s / 60 s)) = 0.08 % of r0). After d seconds:
    + r1 (1 - (1 - dt/tau)^(d/dt)) + (OCV(SOC + I d / 3600 C) - OCV(SOC)) / I."""
    sim, a = _sim_arrays(_cycling(capacity_Ah=1.0), 5 * 3600, seed=1)
    p = sim.params[0]
    r0, r1, tau, dt = p[E.P_R0], p[E.P_R1], p[E.P_R1] * p[E.P_C1], sim.dt
    proc = ElectrochemProcessor()
    out = [r for f in _frames(a, 10, {}) for r in proc.process(f)] + proc.flush()
    steps = [f for f in out if f.kind == "result.resistance"]
    assert len(steps) == 5  # rest->discharge, discharge->rest, rest->charge, ... (not CV end)
    worst = {}
    for f in steps:
        k = int(round(f.t0_ns / 1e8))  # sample index: the run starts at t0_ns = 0
        assert a["current"][k] - a["current"][k - 1] == pytest.approx(f.arrays["delta_i_A"][0])

        def r0_at(j: int) -> float:
            return r0 * (1 + 0.02 * (25 - a["temperature"][j]))

        errors = {"r0_ohm": f.arrays["r0_ohm"][0] / r0_at(k) - 1}
        if f.arrays["i_before_A"][0] == 0.0:  # from rest: SOC known, OCV term computable
            soc0, i_step = a["soc_true"][k // 10 - 1], f.arrays["delta_i_A"][0]
            for d, name in ((1, "r_1s_ohm"), (10, "r_10s_ohm")):
                m = int(round(d / dt))
                expected = (r0_at(k + m) + r1 * (1 - (1 - dt / tau) ** m)
                            + (E._ocv(soc0 + i_step * d / (3600 * sim.state[0, E.S_CAP]))
                               - E._ocv(soc0)) / i_step)
                errors[name] = f.arrays[name][0] / expected - 1
        for name, err in errors.items():
            worst[name] = max(worst.get(name, 0.0), abs(err))
    print("worst relative error:", {k: f"{v:.2%}" for k, v in worst.items()})
    assert set(worst) == {"r0_ohm", "r_1s_ohm", "r_10s_ohm"}
    assert all(err < 0.015 for err in worst.values())


@pytest.mark.skipif(not GCPL.exists(), reason=f"real data not found at {GCPL}")
def test_ec_lab_steps_are_found_but_event_logging_makes_r0_a_late_reading() -> None:
    data = read_mpt(GCPL)
    arrays, _ = data.standard()
    proc = ElectrochemProcessor()
    out = [r for f in _frames(arrays, 100, {"current_kind": "interval_mean"})
           for r in proc.process(f)] + proc.flush()
    steps = [f for f in out if f.kind == "result.resistance"]
    t_steps = {f.t0_ns for f in steps}
    t_ns = np.round(arrays["t"] * 1e9).astype(np.int64)
    sequence_changes = np.flatnonzero(data.data["Ns changes"] == 1)
    assert len(sequence_changes) == 9 and set(t_ns[sequence_changes]) <= t_steps
    assert len(steps) == 18  # plus the ends of the potential holds and of each charge
    dt = np.array([f.arrays["dt_s"][0] for f in steps])
    # the first sample after a step comes 0.4 ms or ~48 ms (or 600 s) after the last one before
    assert dt.min() < 1e-3 and dt.max() >= 600.0


# -- state of charge -----------------------------------------------------------------------

def _soc_run(scenario: Scenario, seconds: int, seed: int, **config: object) -> tuple:
    sim, a = _sim_arrays(scenario, seconds, seed)
    proc = ElectrochemProcessor(ElectrochemConfig(**config))
    out = [r for f in _frames(a, 10, {}) for r in proc.process(f)]
    soc = np.array([f.arrays["soc"][0] for f in out if f.kind == "result.echem"])
    return sim, a, out, soc


def test_soc_tracks_the_simulator_with_capacity_fade() -> None:
    """5 cycles at 1C with 1 % fade per cycle; nominal capacity 0.05 Ah while this cell has
    0.052 Ah (the simulator's cell-to-cell spread): the error in the first discharge is the
    nominal's 4 %; once a full discharge has measured the capacity it stays below 2 %."""
    sim, a, out, soc = _soc_run(_cycling(fade_per_cycle=0.01), 12 * 3600, 3, soc_v_full=4.2,
                                soc_v_empty=2.8, nominal_capacity_Ah=0.05)
    err = np.abs(soc - a["soc_true"])
    first_anchor = int(np.argmax(np.isfinite(soc)))
    assert np.all(np.isnan(soc[:first_anchor])) and 3000 < first_anchor < 4000  # end of CV
    assert np.all(np.isfinite(soc[first_anchor:]))
    halves = [f for f in out if f.kind == "result.half_cycle"]
    first_discharge_end = int(round((halves[1].t0_ns - out[0].t0_ns) / 1e9))
    nominal_error = abs(sim.params[0, E.P_CAP] / 0.05 - 1)
    assert err[first_anchor:first_discharge_end].max() < nominal_error + 0.01
    late = err[first_discharge_end:]
    print(f"SOC error after the first full discharge: max {late.max():.4f}, "
          f"rms {np.sqrt(np.mean(late ** 2)):.4f}; before it {err[first_anchor:].max():.4f}")
    assert late.max() < 0.02
    assert sim.state[0, E.S_CYCLE] >= 5 and sim.state[0, E.S_CAP] < 0.96 * sim.params[0, E.P_CAP]


def test_soc_from_the_ocv_table_after_a_rest() -> None:
    """Half-charged cell, unknown capacity: SOC comes from the OCV table after 300 s of rest."""
    sc = Scenario(name="ocv", cell=CellTemplate(initial_soc=0.6, sei_rate_mol_s=0.0),
                  detectors=[], formation=[Step(kind="rest", s=900.0)],
                  protocol=[Step(kind="cc", c_rate=-1.0, v=2.8), Step(kind="rest", s=600.0)])
    table = [(float(x), float(y)) for x, y in zip(E.OCV_SOC, E.OCV_V, strict=True)]
    sim, a, _, soc = _soc_run(sc, 3000, 2, ocv_table=table, ocv_rest_s=300.0,
                              nominal_capacity_Ah=0.05, soc_v_empty=2.8)
    assert np.all(np.isnan(soc[:299])) and np.all(np.isfinite(soc[300:]))
    assert np.max(np.abs(soc[300:900] - a["soc_true"][300:900])) < 0.005
    assert np.max(np.abs(soc - a["soc_true"])[300:]) < 0.6 * 0.02 + 0.005  # 2 % nominal error


# -- every new output: block by block, deterministic ---------------------------------------

def _all_outputs(arrays: dict, block: int, config: ElectrochemConfig) -> list[Frame]:
    proc = ElectrochemProcessor(config)
    return [r for f in _frames(arrays, block, {}) for r in proc.process(f)] + proc.flush()


def _assert_close_frames(a: list[Frame], b: list[Frame]) -> None:
    assert [(f.kind, f.seq) for f in a] == [(f.kind, f.seq) for f in b]
    for x, y in zip(a, b, strict=True):
        assert abs(x.t0_ns - y.t0_ns) <= 1 and x.meta == y.meta and list(x.arrays) == list(y.arrays)
        for name in x.arrays:  # the stream time base differs by float rounding between cuts
            np.testing.assert_allclose(x.arrays[name], y.arrays[name], rtol=1e-9, atol=1e-12)


def test_new_outputs_do_not_depend_on_the_block_size() -> None:
    sc = Scenario(name="fast", cell=CellTemplate(initial_soc=0.3, sei_rate_mol_s=0.0),
                  detectors=[], protocol=[Step(kind="cccv", c_rate=2.0, v=4.2),
                                          Step(kind="rest", s=120.0),
                                          Step(kind="cc", c_rate=-2.0, v=2.8),
                                          Step(kind="rest", s=120.0)])
    _, arrays = _sim_arrays(sc, 7200, seed=5)
    config = ElectrochemConfig(dqdv_partial_s=300.0, soc_v_full=4.2, soc_v_empty=2.8,
                               nominal_capacity_Ah=0.05)
    runs = {block: _all_outputs(arrays, block, config) for block in (1, 10, 1000)}
    kinds = ("result.dqdv", "result.half_cycle", "result.cycle", "result.resistance")
    for kind in kinds:
        per_block = {b: [f for f in out if f.kind == kind] for b, out in runs.items()}
        assert per_block[1000], kind
        _assert_close_frames(per_block[1], per_block[1000])
        _assert_close_frames(per_block[10], per_block[1000])
    partial = [f for f in runs[1000] if f.kind == "result.dqdv" and not f.arrays["complete"][0]]
    assert len(partial) > 10
    # per-block echem results: SOC and charge at the samples where every run has a result
    ends = {b: [f for f in out if f.kind == "result.echem"] for b, out in runs.items()}
    for b in (1, 10):
        picked = ends[b][1000 // b - 1::1000 // b]
        for name in ("soc", "charge_Ah"):
            np.testing.assert_allclose([f.arrays[name][0] for f in picked],
                                       [f.arrays[name][0] for f in ends[1000]], rtol=1e-9)
    assert np.isfinite(ends[1000][-1].arrays["soc"][0])
    # the same frames in give the same frames out, bit for bit
    for x, y in zip(runs[10], _all_outputs(arrays, 10, config), strict=True):
        assert_frames_equal(x, y)


def test_config_rejects_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="ocv_table"):
        ElectrochemConfig(ocv_table=[(0.0, 3.5), (1.0, 3.0)])
    with pytest.raises(ValueError, match="bins"):
        ElectrochemConfig(dqdv_v_min=0.0, dqdv_v_max=5.0, dqdv_bin_V=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        ElectrochemConfig(resistance_delays_s=[10.0, 1.0])
