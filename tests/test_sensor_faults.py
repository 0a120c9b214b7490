"""Sensor-fault detectors: scored on the simulator's injected faults, checked one by one on
synthetic series against numpy references, and run on real instrument files."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import lfilter

from adapters.biologic import read_mpt
from adapters.ixdat_csv import read_ixdat_csv
from adapters.sim.experiment import FaultSpec, SimExperiment, load_scenario
from processors.kernels import sensor as K
from processors.sensor_faults import (
    DropoutDetector,
    RangeDetector,
    SensorFaultProcessor,
    SensorFaultsConfig,
    SpikeDetector,
    StuckDetector,
)
from stream.frame import Frame, FrameError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
GCPL = REAL / "potentiostat" / "gcpl.pr_182.1.mpt"
NEWARE = REAL / "potentiostat" / "neware_uio.csv"
FHI = REAL / "aux_pressure_log" / "fhimcpt_measurement.csv"
ECMS = REAL / "ecms" / "the_good_bit.csv"

# -- the simulator's faults ------------------------------------------------------------------
INSTRUMENTS = ("potentiostat", "pressure", "oems")   # on cell01, cell02, cell03
PERIOD = {"potentiostat": 0.1, "pressure": 1.0, "oems": 1.0}
ALL_CHANNELS = {"potentiostat": {"voltage", "current", "temperature"},
                "pressure": {"pressure", "temperature"},
                "oems": {f"m{mz}" for mz in (2, 26, 27, 28, 32, 40, 44)}}
FIRST_CHANNEL = {"potentiostat": {"voltage"}, "pressure": {"pressure"}, "oems": {"m2"}}
EPISODES = ((600.0, 700.0), (900.0, 960.0))  # two per instrument: the detectors must re-arm
# worst-case latency (detection - injected onset), from the defaults: stuck_s = 10 s;
# dropout: no sample for max(2 s, 5 periods); spikes: 3 within 60 s; range: 2 s and 3 samples
LATENCY_S = {"sensor_stuck": 10.0, "sensor_dropout": 5.0, "sensor_spikes": 60.0,
             "sensor_out_of_range": 3.0}


def _simulate(faults: list[FaultSpec], seconds: int, cells: int,
              config: SensorFaultsConfig | None = None) -> tuple[SimExperiment, list[Frame]]:
    sc = load_scenario("cycling")
    sc.detectors = []
    sc.faults = faults
    ex = SimExperiment("t", sc, cells, 0)
    proc = SensorFaultProcessor(config)
    events = []
    for _ in range(seconds):
        for f in ex.step():
            if proc.wants(f.kind):
                events += proc.process(f)
    return ex, events


@pytest.mark.parametrize("kind", ["sensor_stuck", "sensor_dropout", "sensor_spikes",
                                  "sensor_out_of_range"])
def test_every_injected_fault_is_found_on_its_cell_stream_and_channel(kind: str) -> None:
    # The simulator spikes the first channel of a frame by x(1 + 20 magnitude) with p = 0.2
    # per second. On the OEMS that is m2, whose signal (~5e-14 A) sits at the 2e-14 A noise
    # floor: a x2 spike (the default magnitude) is 2-3 sigma and cannot be told from noise, so
    # the OEMS case uses x21.
    faults = [FaultSpec(kind=kind, cells=[c], instrument=inst, at_s=a, until_s=b,
                        magnitude=1.0 if kind == "sensor_spikes" and inst == "oems" else 0.0)
              for c, inst in enumerate(INSTRUMENTS) for a, b in EPISODES]
    ex, events = _simulate(faults, 1100, cells=4)  # cell04 has no fault
    expected_channels = FIRST_CHANNEL if kind in ("sensor_spikes", "sensor_out_of_range") \
        else ALL_CHANNELS
    found = {}
    for e in events:
        assert e.kind == "event" and e.meta["severity"] == "warning"
        assert e.stream == f"t/{e.cell}/sensor_faults"
        key = (e.meta["source"], e.meta["event"], e.meta["channel"])
        found.setdefault(key, []).append(e)
    truth = [g for g in ex.ground_truth if g["kind"] == kind]
    assert len(truth) == 6
    expected = set()
    for g in truth:
        inst = g["stream"].rsplit("/", 1)[1]
        for channel in expected_channels[inst]:
            expected.add((g["stream"], kind, channel))
    # right cell, stream and channel, and nothing anywhere else
    assert set(found) == expected
    for (stream, _, _), hits in found.items():
        inst = stream.rsplit("/", 1)[1]
        onsets = sorted(g["onset_s"] for g in truth if g["stream"] == stream)
        assert len(hits) == len(onsets)  # one event per episode: re-armed in between
        for e, onset in zip(hits, onsets, strict=True):
            t_s = (e.t0_ns - ex.start_ns) * 1e-9
            # a stuck run starts at the last good sample, one period before the fault
            assert onset - PERIOD[inst] - 1e-6 <= t_s <= onset + LATENCY_S[kind]
            detected = t_s + e.arrays["latency_s"][0]
            assert onset <= detected <= onset + LATENCY_S[kind] + 1e-6


def test_clean_cycling_raises_no_sensor_events() -> None:
    # 4 h of 1C CC-CV cycling on 4 cells: CC, CV (voltage plateau), rests with the current at
    # exactly 0 A, step changes of current and voltage
    _, events = _simulate([], 4 * 3600, cells=4)
    assert events == []


def test_blocking_does_not_change_the_events() -> None:
    """The same samples cut into frames of 1, 7, 100 or 3000 samples give the same events, in order
    of detection across channels."""
    t = np.arange(3000) * 0.1
    rng = np.random.default_rng(5)
    v = 3.7 + 1e-4 * t + rng.normal(0, 2e-4, t.size)
    v[1000:1200] = v[999]                      # stuck
    v[1500:1540] = np.nan                      # dropout
    v[[2000, 2100, 2150]] *= 2.0               # spikes
    v[2500:2600] = 9.0                         # out of range
    i = 0.05 + rng.normal(0, 5e-6, t.size)
    i[500:540] = np.nan                        # dropout, before any on the voltage
    i[2200:2400] = i[2199]                     # stuck, between the voltage's spikes and range
    results = []
    for block in (1, 7, 100, 3000):
        proc = SensorFaultProcessor()
        out = []
        for k, s in enumerate(range(0, t.size, block)):
            sl = slice(s, s + block)
            out += proc.process(Frame("x/c/pot", "echem", k, int(round(t[s] * 1e9)),
                                      {"t": t[sl] - t[s], "voltage": v[sl], "current": i[sl]},
                                      {"voltage": "V", "current": "A"}))
        results.append([(e.meta["event"], e.meta["channel"], e.t0_ns,
                         e.t0_ns * 1e-9 + e.arrays["latency_s"][0]) for e in out])
    assert [r[:2] for r in results[0]] == [
        ("sensor_dropout", "current"), ("sensor_stuck", "voltage"), ("sensor_dropout", "voltage"),
        ("sensor_spikes", "voltage"), ("sensor_stuck", "current"),
        ("sensor_out_of_range", "voltage")]
    detected = [r[3] for r in results[0]]
    assert detected == sorted(detected)
    for other in results[1:]:
        assert [r[:3] for r in other] == [r[:3] for r in results[0]]
        np.testing.assert_allclose([r[3] for r in other], detected, rtol=0, atol=1e-6)


def test_malformed_frames_name_stream_and_field() -> None:
    proc = SensorFaultProcessor()
    t = np.arange(5) * 0.1
    cases = {
        "arrays.t": {"voltage": np.ones(5)},
        "arrays.voltage": {"t": t, "voltage": np.ones(4)},
        "arrays.flag": {"t": t, "flag": np.ones(5, dtype=bool)},
    }
    for field, arrays in cases.items():
        with pytest.raises(FrameError) as err:
            proc.process(Frame("x/c/pot", "echem", 0, 0, arrays))
        assert err.value.stream == "x/c/pot" and err.value.field == field
    with pytest.raises(FrameError) as err:
        proc.process(Frame("x/c/pot", "echem", 0, 0, {"t": t[::-1], "voltage": np.ones(5)}))
    assert err.value.field == "arrays.t"
    with pytest.raises(FrameError) as err:  # default limits are in Pa
        proc.process(Frame("x/c/p", "pressure", 0, 0, {"t": t, "pressure": np.full(5, 1013.0)},
                           {"pressure": "mbar"}))
    assert (err.value.stream, err.value.field) == ("x/c/p", "units.pressure")


# -- each detector on synthetic series -------------------------------------------------------
def _noise(n: int, seed: int = 0, dt: float = 0.1, level: float = 3.7,
           sigma: float = 2e-4) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n) * dt, level + np.random.default_rng(seed).normal(0, sigma, n)


def test_stuck_fires_once_per_frozen_run_at_the_reference_sample() -> None:
    t, x = _noise(4000)
    x[1000:1300] = x[999]      # frozen for 30 s
    x[2500:2650] = x[2499]     # 15 s, after a re-arm
    x[3000:3040] = x[2999]     # 4 s only: shorter than stuck_s
    det = StuckDetector()
    alarms = det.update_many(t, x)
    assert len(alarms) == 2
    for alarm, first in zip(alarms, (999, 2499), strict=True):
        # reference: the first sample at which the run of equal values has lasted 10 s
        run = np.flatnonzero(x[first:] != x[first])[0]
        assert run * 0.1 >= 10.0
        k = first + int(np.flatnonzero(t[first:first + run] - t[first] >= 10.0)[0])
        assert alarm.event == "sensor_stuck"
        assert alarm.onset_s == t[first] and alarm.detected_s == t[k]
        assert alarm.evidence["value"] == x[first]
        assert alarm.evidence["samples"] == k - first + 1


def test_stuck_learned_unchanged_fraction_matches_an_ewma_reference() -> None:
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(0, 1.0, 5000))   # coarse: about 28 % repeats
    x[-1] = 99.0                                    # end on a change
    t = np.arange(x.size) * 1.0
    det = StuckDetector(stuck_s=1e9)                # learn only
    det.update_many(t, x)
    a = 1.0 / SensorFaultsConfig().stuck_learn_samples
    unchanged = (x[1:] == x[:-1]).astype(float)
    ref = lfilter([a], [1.0, -(1.0 - a)], unchanged, zi=[(1.0 - a) * 1.0])[0][-1]
    assert det.p_unchanged == pytest.approx(ref, rel=1e-12)
    assert 0.2 < ref < 0.4


def test_stuck_ignores_rest_at_zero_and_coarse_channels() -> None:
    t, i = _noise(3000, level=0.05, sigma=5e-6)
    i[1000:2000] = 0.0  # 100 s at rest: the cycler reads exactly 0 A
    assert StuckDetector(zero_ok=True).update_many(t, i) == []
    assert len(StuckDetector(zero_ok=False).update_many(t, i)) == 1  # sensitive otherwise
    # a channel that mostly repeats (coarse resolution) is not known to move: no alarm
    coarse = np.round(np.random.default_rng(2).normal(0, 0.3, 3000))
    coarse[2000:2300] = coarse[1999]
    det = StuckDetector()
    assert det.update_many(t, coarse) == [] and det.p_unchanged > 0.5
    # within a resolution epsilon
    _, v = _noise(3000)
    v[1000:1300] = v[999] + np.random.default_rng(3).uniform(-1e-6, 1e-6, 300)
    assert StuckDetector().update_many(t, v) == []
    assert len(StuckDetector(resolution=3e-6).update_many(t, v)) == 1


def test_dropout_nan_runs_and_time_gaps() -> None:
    t, x = _noise(3000)
    x[1000:1030] = np.nan      # 3 s
    x[1500:1510] = np.nan      # 1 s: shorter than dropout_s
    x[2000:2025] = np.nan      # 2.5 s ...
    x[2030:2060] = np.nan      # ... and again 0.5 s later: the same episode (rearm_s = 5 s)
    alarms = DropoutDetector().update_many(t, x)
    assert [a.onset_s for a in alarms] == [t[1000], t[2000]]
    # reference: the first sample with no finite value for more than 2 s
    first = 1000 + int(np.flatnonzero(t[1000:] - t[999] > 2.0)[0])
    assert alarms[0].detected_s == t[first]
    assert alarms[0].evidence["cause"] == "nan"
    assert alarms[0].evidence["nan_samples"] == first - 1000 + 1
    # a time gap: 5 s without samples; a single lost 1-s frame is not one
    tg = np.concatenate([t[:1000], t[1000:2000] + 1.0, t[2000:] + 6.0])
    alarms = DropoutDetector().update_many(tg, np.zeros(tg.size) + x[0])
    assert len(alarms) == 1
    assert alarms[0].evidence["cause"] == "gap"
    assert alarms[0].detected_s == tg[2000]
    assert alarms[0].evidence["missing_s"] == pytest.approx(tg[2000] - tg[1999])
    assert alarms[0].onset_s == pytest.approx(tg[1999] + 0.1)


def test_frames_lost_in_transport_are_not_a_sensor_dropout() -> None:
    """A gap in ``seq`` is the link's loss (the sequence tracker counts it): the time the lost
    frames covered is not missing data. The same gap in time with no frame lost is a dropout,
    and so is a NaN run that lost frames interrupt."""
    rng = np.random.default_rng(6)

    def frames(lost: set[int], seq_gaps: bool, nan: range = range(0)) -> list[Frame]:
        out = []
        for k in range(300):  # 10 Hz in 1-s frames
            if k in lost:
                continue
            v = 3.7 + rng.normal(0, 2e-4, 10)
            if k in nan:
                v[:] = np.nan
            out.append(Frame("x/c/pot", "echem", k if seq_gaps else len(out),
                             k * 1_000_000_000, {"t": np.arange(10) * 0.1, "voltage": v,
                                                 "current": 0.05 + rng.normal(0, 5e-6, 10)},
                             {"voltage": "V", "current": "A"}))
        return out

    lost = {100, 101, 102, 200, 201}                 # 3.1 s and 2.1 s without samples
    assert _events(frames(lost, seq_gaps=True)) == []
    gaps = _events(frames(lost, seq_gaps=False))     # the instrument sent nothing
    assert [(e.meta["channel"], e.meta["cause"]) for e in gaps] == \
        [("voltage", "gap"), ("current", "gap")] * 2
    nan = _events(frames({252, 253}, seq_gaps=True, nan=range(250, 256)))
    assert [(e.meta["channel"], e.meta["cause"]) for e in nan] == [("voltage", "nan")]
    assert nan[0].t0_ns == 250_000_000_000           # the NaN run keeps its onset


def _robust_z_reference(x: np.ndarray, spikes: np.ndarray, warmup: int,
                        alpha: float) -> np.ndarray:
    """z of each sample after the warm-up against the EWMA level/scale of the samples before
    it, spikes left out: median/MAD start, then EWMAs via lfilter over the kept samples."""
    start = x[:warmup]
    level0 = np.median(start)
    scale0 = np.median(np.abs(start - level0)) * K.MAD_TO_MEAN_ABS
    rest = np.arange(warmup, x.size)
    kept = rest[~np.isin(rest, spikes)]
    b, a = [alpha], [1.0, -(1.0 - alpha)]
    level = lfilter(b, a, x[kept], zi=[(1.0 - alpha) * level0])[0]
    prev_level = np.concatenate([[level0], level[:-1]])
    scale = lfilter(b, a, np.abs(x[kept] - prev_level), zi=[(1.0 - alpha) * scale0])[0]
    # state before each sample: that after the last kept sample before it
    before = np.searchsorted(kept, rest) - 1
    lvl = np.where(before >= 0, level[np.maximum(before, 0)], level0)
    scl = np.where(before >= 0, scale[np.maximum(before, 0)], scale0)
    return np.abs(x[rest] - lvl) / (K.MEAN_ABS_TO_SIGMA * scl)


def test_spike_robust_z_matches_a_numpy_reference() -> None:
    t, x = _noise(5000, seed=4, level=10.0, sigma=1.0)
    spikes = np.array([700, 1900, 3300, 4100])
    x[spikes] += 40.0
    det = SpikeDetector(spike_rel_floor=0.0)
    z = []
    for tk, xk in zip(t, x, strict=True):
        det.update(tk, xk)
        z.append(det.z)
    cfg = SensorFaultsConfig()
    ref = _robust_z_reference(x, spikes, cfg.spike_warmup, cfg.spike_alpha)
    assert np.all(np.isnan(z[:cfg.spike_warmup]))
    np.testing.assert_allclose(z[cfg.spike_warmup:], ref, rtol=1e-9)
    assert np.all(ref[spikes - cfg.spike_warmup] > 20)   # the spikes stand out
    others = np.setdiff1d(np.arange(ref.size), spikes - cfg.spike_warmup)
    assert ref[others].max() < cfg.spike_z_return          # and nothing else does


def test_spikes_one_is_noise_a_burst_is_a_fault_a_step_is_neither() -> None:
    t, x = _noise(3000)
    one = x.copy()
    one[1000] *= 2.0
    assert SpikeDetector().update_many(t, one) == []
    burst = x.copy()
    burst[[1000, 1200, 1201, 1400]] *= 2.0     # 4 spikes in 40 s, two back to back
    alarms = SpikeDetector().update_many(t, burst)
    assert len(alarms) == 1
    assert alarms[0].onset_s == t[1000]
    assert alarms[0].detected_s == t[1202]     # the third spike, seen isolated one sample on
    assert alarms[0].evidence["value"] in (burst[1200], burst[1201])  # the burst that fired
    # level steps (a cycler's IR step at every pulse) are not spikes, nor is a frozen stretch
    steps = x + 0.01 * ((t // 10) % 2)
    steps[2000:2500] = steps[1999]
    assert SpikeDetector().update_many(t, steps) == []
    # three spikes that are farther apart than the window
    sparse = x.copy()
    sparse[[100, 900, 1700]] *= 2.0
    assert SpikeDetector().update_many(t, sparse) == []


def test_range_persistence_and_hysteresis() -> None:
    t = np.arange(2000) * 0.1
    v = np.full(t.size, 4.0)
    v[100:115] = 5.6      # 1.5 s out: shorter than range_s
    v[300:500] = 5.7      # out ...
    v[500:600] = 5.48     # ... back, but inside the 0.05 V hysteresis band
    v[600:700] = 5.8      # out again: the same episode
    v[1000:1100] = 5.9    # after 30 s well inside: a new episode
    alarms = RangeDetector(-0.5, 5.5, 0.05).update_many(t, v)
    assert [a.onset_s for a in alarms] == [t[300], t[1000]]
    for alarm, first in zip(alarms, (300, 1000), strict=True):
        out = np.flatnonzero(t[first:] - t[first] >= 2.0)
        assert alarm.detected_s == t[first + out[0]]
        assert alarm.evidence["value"] == v[first]
    # a single sample beyond the limits is a spike, not out of range
    one = np.full(t.size, 4.0)
    one[500] = 8.0
    assert RangeDetector(-0.5, 5.5, 0.05).update_many(t, one) == []


# -- real instrument files -------------------------------------------------------------------
def _blocks(stream: str, kind: str, t: np.ndarray, arrays: dict[str, np.ndarray],
            units: dict[str, str], block: int) -> list[Frame]:
    return [Frame(stream, kind, k, int(round(t[s] * 1e9)),
                  {"t": t[s:s + block] - t[s], **{n: a[s:s + block] for n, a in arrays.items()}},
                  units)
            for k, s in enumerate(range(0, t.size, block))]


def _events(frames: list[Frame], **config: object) -> list[Frame]:
    proc = SensorFaultProcessor(SensorFaultsConfig(**config))
    return [e for f in frames for e in proc.process(f)]


@pytest.mark.skipif(not NEWARE.exists(), reason=f"real data not found at {NEWARE}")
def test_real_neware_cycling_has_no_sensor_faults() -> None:
    # 6 days at 60 s: voltage to 0.1 mV (repeats for up to 6 samples at rest), current to
    # 10 nA, and exactly 0 A at rest (for up to 12 h)
    with open(NEWARE, newline="") as f:
        rows = list(csv.DictReader(f))
    t = np.array([sum(float(p) * m for p, m in zip(r["Cumulative Time"].split(":"),
                                                    (3600, 60, 1), strict=True)) for r in rows])
    v = np.array([float(r["Voltage(V)"]) for r in rows])
    i = np.array([float(r["Current(A)"]) for r in rows])
    changes = np.concatenate([[-1], np.flatnonzero(np.diff(i) != 0)])
    assert np.max(np.diff(changes)) * 60 >= 12 * 3600  # the first rest: 12 h at exactly 0 A
    frames = _blocks("lab/c1/potentiostat", "echem", t, {"voltage": v, "current": i},
                     {"voltage": "V", "current": "A"}, 60)
    assert _events(frames) == []


@pytest.mark.skipif(not ECMS.exists(), reason=f"real data not found at {ECMS}")
def test_real_ec_ms_session_has_no_sensor_faults() -> None:
    # 750 s of CVs (0.01-1.70 V at 20 mV/s, 3 Hz) and 7 ion currents (1.5 s per cycle) from
    # 6e-15 to 5e-10 A, with H2 and O2 peaks at the CV vertices
    data = read_ixdat_csv(ECMS)
    frames = [data.echem_frame("lab/c1/potentiostat"), data.ms_frame("lab/c1/oems")]
    proc = SensorFaultProcessor()
    assert [e for f in frames for e in proc.process(f)] == []
    # every ion current got its four detectors; the per-channel sample times are no channel
    assert proc.channels("lab/c1/oems") == [f"m{mz}" for mz in (2, 4, 18, 28, 32, 40, 44)]
    assert proc.channels("lab/c1/potentiostat") == ["voltage", "current"]


@pytest.mark.skipif(not GCPL.exists(), reason=f"real data not found at {GCPL}")
def test_real_event_logged_file_only_real_gaps() -> None:
    # EC-Lab logs on change: 0.3 s at a step start, up to 600 s at rest. Gaps against the
    # learned period are all the detector can report, and each is a real interval of the file
    arrays, units = read_mpt(GCPL).standard()
    t = arrays["t"]
    frames = _blocks("lab/c1/potentiostat", "echem", t,
                     {"voltage": arrays["voltage"], "current": arrays["current"]},
                     {"voltage": "V", "current": "A"}, 50)
    events = _events(frames)
    assert events and {e.meta["event"] for e in events} == {"sensor_dropout"}
    intervals = np.diff(t)
    for e in events:
        assert e.meta["cause"] == "gap"
        missing = e.arrays["missing_s"][0]
        assert np.min(np.abs(intervals - missing)) < 1e-6 and missing > 2.0
    # with the longest logging interval as the dropout time, nothing at all
    assert _events(frames, dropout_s=601.0) == []


@pytest.mark.skipif(not FHI.exists(), reason=f"real data not found at {FHI}")
def test_real_sensor_log_range_onset_matches_the_data() -> None:
    # 28 h at 60 s: a pressure in mbar and a furnace temperature T_f that passes 150 degC
    with open(FHI) as f:
        lines = f.read().splitlines()
    names = [h.strip() for h in lines[0].split(";")]
    rows = [line.split(";") for line in lines[2:] if line.strip()]
    t = np.array([sum(int(n) * m for n, m in zip(
        re.match(r"\s*(\d+)h\s*(\d+)m\s*(\d+)s", r[1]).groups(), (3600, 60, 1), strict=True))
        for r in rows], dtype=float)
    mbar = np.array([float(r[names.index("pressure")]) for r in rows])
    temp = np.array([float(r[names.index("T_f")]) for r in rows])
    frames = _blocks("lab/c1/pressure", "pressure", t, {"pressure": mbar * 100.0,
                                                         "temperature": temp},
                     {"pressure": "Pa", "temperature": "degC"}, 30)
    events = _events(frames)
    assert [(e.meta["event"], e.meta["channel"]) for e in events] == \
        [("sensor_out_of_range", "temperature")]
    first = int(np.flatnonzero(temp > 150.0)[0])
    assert np.all(temp[first:first + 3] > 150.0)
    assert abs(events[0].t0_ns - round(t[first] * 1e9)) < 1000
    assert events[0].arrays["latency_s"][0] == pytest.approx(t[first + 2] - t[first])
    with pytest.raises(FrameError) as err:  # the same log with the pressure left in mbar
        _events(_blocks("lab/c1/pressure", "pressure", t, {"pressure": mbar},
                        {"pressure": "mbar"}, 30))
    assert err.value.field == "units.pressure"
