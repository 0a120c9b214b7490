"""dQ/dV: the binning kernel against numpy references, and peak positions on real cycler files
(a Neware export with its own dQ/dV and capacity columns, and the EC-Lab GCPL file)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from adapters.biologic import read_mpt
from processors.electrochem import ElectrochemConfig, ElectrochemProcessor
from processors.kernels.dqdv import bin_charge, new_state
from stream.frame import Frame

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "potentiostat"
NEWARE = REAL / "neware_uio.csv"
GCPL = REAL / "gcpl.pr_182.1.mpt"
BIN = 0.005
PEAK_TOL_V = 0.010  # two bins


def _overlap_reference(v: np.ndarray, q: np.ndarray, edges: np.ndarray,
                       use: np.ndarray) -> np.ndarray:
    """Slow reference: each interval's charge shared by the overlap of [v0, v1] with each bin."""
    lo, hi = np.minimum(v[:-1], v[1:]), np.maximum(v[:-1], v[1:])
    dq = np.diff(q) * use[1:]
    overlap = np.clip(np.minimum(hi[:, None], edges[None, 1:])
                      - np.maximum(lo[:, None], edges[None, :-1]), 0.0, None)
    span = hi - lo
    share = np.where(span[:, None] > 0, overlap / np.where(span > 0, span, 1.0)[:, None], 0.0)
    flat = span == 0  # a flat interval goes to the bin holding its voltage
    idx = np.searchsorted(edges, lo[flat], side="right") - 1
    ok = (idx >= 0) & (idx < edges.size - 1)
    share[np.flatnonzero(flat)[ok], idx[ok]] = 1.0
    return dq @ share


def _run_kernel(v: np.ndarray, q: np.ndarray, i: np.ndarray, n_bins: int, v_lo: float,
                block: int, fraction: float = 0.0) -> np.ndarray:
    bins, state = np.zeros(n_bins), new_state()
    for s in range(0, v.size, block):
        bin_charge(v[s:s + block], q[s:s + block], i[s:s + block], state, bins, v_lo, BIN,
                   fraction)
    return bins


def test_bin_charge_matches_overlap_reference_on_a_noisy_path() -> None:
    rng = np.random.default_rng(4)
    n = 4000
    v = 3.0 + 1.2 * np.linspace(0, 1, n) ** 1.5 + rng.normal(0, 0.002, n)  # goes back and forth
    flat = np.arange(97, n, 97)
    v[flat] = v[flat - 1]  # some intervals without a voltage change
    i = np.full(n, 0.05)
    i[1500:1800] = 0.02  # a slower stretch, dropped below 0.9 of the largest current
    q = np.concatenate([[0.0], np.cumsum(i[1:] * 1.0 / 3600)])
    edges = 3.1 + BIN * np.arange(181)  # part of the path lies outside the grid
    ours = _run_kernel(v, q, i, 180, 3.1, 37, fraction=0.9)
    ref = _overlap_reference(v, q, edges, i >= 0.9 * 0.05)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)
    # charge is conserved: everything inside the grid is binned, the rest is dropped
    used = np.diff(q)[i[1:] >= 0.045]
    inside = ((np.minimum(v[:-1], v[1:]) >= edges[0])
              & (np.maximum(v[:-1], v[1:]) < edges[-1]))[i[1:] >= 0.045]
    assert used[inside].sum() < ours.sum() < used.sum()


def test_bin_charge_on_a_monotonic_path_is_the_difference_of_q_at_the_edges() -> None:
    v = np.linspace(3.4, 4.1, 3001) + 0.05 * np.sin(np.linspace(0, 3, 3001))
    q = 0.05 * (v - 3.4) + 0.01 * np.tanh((v - 3.7) / 0.02)  # a peak at 3.7 V
    i = np.full(v.size, 0.05)
    edges = 3.4 + BIN * np.arange(131)  # the path runs 3.40-4.11 V
    ours = _run_kernel(v, q, i, 130, 3.4, 1000)
    np.testing.assert_allclose(ours, np.diff(np.interp(edges, v, q)), rtol=1e-9, atol=1e-14)
    # dQ/dV per bin against np.gradient of Q(V) at the bin centres: close on a smooth curve
    centres = 0.5 * (edges[1:] + edges[:-1])
    grad = np.gradient(np.interp(centres, v, q), centres)
    inner = slice(2, -2)
    np.testing.assert_allclose(ours[inner] / BIN, grad[inner], rtol=0.02)
    assert abs(centres[np.argmax(ours / BIN)] - 3.7) < BIN


def _main_peaks(v: np.ndarray, y: np.ndarray, prominence: float = 0.15) -> np.ndarray:
    peaks, _ = find_peaks(np.abs(y), prominence=prominence * np.abs(y).max())
    return v[peaks]


def _reference_curve(v: np.ndarray, dq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.histogram of each interval's charge at its mid voltage, Gaussian as ours (1 bin)."""
    edges = BIN * np.arange(int(round(5.0 / BIN)) + 1)
    hist, _ = np.histogram(0.5 * (v[1:] + v[:-1]), bins=edges, weights=dq)
    return 0.5 * (edges[1:] + edges[:-1]), gaussian_filter1d(hist / BIN, 1.0, mode="constant")


def _assert_same_peaks(ours: np.ndarray, ref: np.ndarray, what: str) -> float:
    assert ours.size == ref.size and ours.size > 0, (what, ours, ref)
    worst = float(np.max(np.abs(ours - ref)))
    assert worst <= PEAK_TOL_V + 1e-9, (what, ours, ref)
    return worst


def _dqdv_frames(t: np.ndarray, v: np.ndarray, i: np.ndarray, **config: object) -> list[Frame]:
    proc = ElectrochemProcessor(ElectrochemConfig(**config))
    frame = Frame("lab/cell1/cycler", "echem", 0, 0, {"t": t, "voltage": v, "current": i}, {}, {})
    return [f for f in proc.process(frame) + proc.flush() if f.kind == "result.dqdv"]


@pytest.mark.skipif(not NEWARE.exists(), reason=f"real data not found at {NEWARE}")
def test_neware_peaks_match_the_files_own_dqdv_and_capacity_columns() -> None:
    """Minimal parse of the Neware export (issue 6 builds the adapter). Our curve integrates
    Current(A); the references bin the file's Capacity(Ah) column, and the charge implied by
    its dQ/dV(mAh/V) column (dQ = dQ/dV x dV), per CC step."""
    with NEWARE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    col = {name: np.array([float(r[name]) for r in rows])
           for name in ("Current(A)", "Voltage(V)", "Capacity(Ah)", "dQ/dV(mAh/V)")}
    h, m, s = np.array([r["Cumulative Time"].split(":") for r in rows], dtype=float).T
    t, v, i = h * 3600 + m * 60 + s, col["Voltage(V)"], col["Current(A)"]
    step = np.array([(int(r["Cycle Index"]), int(r["Step Index"])) for r in rows])
    ours = _dqdv_frames(t, v, i)
    # the main CC step of each half-cycle (later, slower discharge steps are left out of ours)
    main_steps = [(1, 2), (1, 8), (2, 2), (2, 8), (3, 2), (3, 8), (3, 11), (3, 13), (4, 11),
                  (4, 13)]
    assert len(ours) == len(main_steps) == 10
    worst = 0.0
    for frame, (cycle, index) in zip(ours, main_steps, strict=True):
        sel = np.flatnonzero((step[:, 0] == cycle) & (step[:, 1] == index))
        direction = 1 if i[sel].mean() > 0 else -1
        assert frame.arrays["direction"][0] == direction
        peaks = _main_peaks(frame.arrays["voltage"], frame.arrays["dqdv"])
        x, from_capacity = _reference_curve(v[sel], direction * np.diff(col["Capacity(Ah)"][sel]))
        worst = max(worst, _assert_same_peaks(peaks, _main_peaks(x, from_capacity), "capacity"))
        x, from_column = _reference_curve(v[sel], np.diff(v[sel]) * col["dQ/dV(mAh/V)"][sel][1:]
                                          * 1e-3)
        worst = max(worst, _assert_same_peaks(peaks, _main_peaks(x, from_column), "column"))
        # graphite/Si delithiation and lithiation peaks lie well inside 0.05-1.0 V
        assert np.all((peaks > 0.06) & (peaks < 0.5))
    print(f"Neware: worst main-peak offset {worst * 1e3:.1f} mV over 10 half-cycles")


@pytest.mark.skipif(not GCPL.exists(), reason=f"real data not found at {GCPL}")
def test_ec_lab_curves_integrate_to_the_cc_charge_and_peak_where_ec_lab_does() -> None:
    data = read_mpt(GCPL)
    arrays, _ = data.standard()
    t, v, i = arrays["t"], arrays["voltage"], arrays["current"]
    q_ref, cc = data.data["(Q-Qo)/mA.h"] * 1e-3, data.data["mode"] == 1  # EC-Lab's own Q, CC
    ours = _dqdv_frames(t, v, i, current_kind="interval_mean")
    halves = [h for h in np.unique(arrays["half_cycle"])
              if np.any(np.abs(i[arrays["half_cycle"] == h]) > 1e-5)]
    assert len(ours) == len(halves) == 8
    assert [int(f.arrays["complete"][0]) for f in ours] == [1] * 7 + [0]
    for frame, h in zip(ours, halves, strict=True):
        sel = np.flatnonzero(arrays["half_cycle"] == h)
        sel = np.concatenate([[sel[0] - 1], sel])  # the interval into the first sample
        dq = np.diff(q_ref[sel]) * cc[sel][1:]  # CC part: the potential holds are left out
        area = frame.arrays["dqdv"].sum() * BIN
        assert area == pytest.approx(dq.sum(), rel=0.01)
        x, ref = _reference_curve(v[sel], dq)
        # main peaks above 30 mV: below, the curve ends in the lower cut-off
        above = frame.arrays["voltage"] > 0.03
        peaks = _main_peaks(frame.arrays["voltage"][above], frame.arrays["dqdv"][above])
        _assert_same_peaks(peaks, _main_peaks(x[x > 0.03], ref[x > 0.03]), f"half-cycle {h}")
