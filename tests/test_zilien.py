"""Zilien EC-MS TSV (v1, v2) and ixdat CSV readers on the real files; EC-Lab data moved onto the
Zilien time base with the recorded offset; malformed input named by file, line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters.biologic import read_mpt
from adapters.ixdat_csv import read_ixdat_csv
from adapters.zilien import (
    OFFSET_SOURCE_RECORDED,
    TableError,
    clock_alignment,
    find_mpts,
    parse_header,
    read_zilien,
    zilien_frames,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ecms"
V1 = REAL / "zilien_v1_full_set" / "2022-04-06 16_17_23 full set.tsv"
V2 = REAL / "zilien_v2_ec_included" / "2024-01-17 15_21_57 ec-included.tsv"
GOOD_BIT = REAL / "the_good_bit.csv"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def test_v1_mass_channels_and_metadata() -> None:
    zf = read_zilien(_need(V1))
    assert zf.version == 1
    channels = zf.mass_channels()
    assert sorted(channels) == [2.0, 4.0, 18.0, 28.0, 32.0]
    for t, current in channels.values():
        assert len(t) == len(current) == 404
        assert np.all(np.diff(t) > 0)
        assert current.min() >= 1e-10 and current.max() <= 4e-8
    t_all = np.concatenate([t for t, _ in channels.values()])
    assert round(t_all.min(), 1) == 0.5 and round(t_all.max(), 1) == 216.7
    # the other series: the potentiostat read-out every ~0.157 s, gauges every ~0.47 s
    t_pot, pot = zf.series("pot")
    assert list(pot) == ["Voltage [V]", "Current [mA]", "Cycle [n]"]
    assert np.median(np.diff(t_pot)) == pytest.approx(0.157, abs=0.01)
    assert np.median(np.diff(zf.series("Iongauge value")[0])) == pytest.approx(0.47, abs=0.02)
    assert zf.recorded_offset_s == pytest.approx(95.21071)
    assert "file name" in zf.start_source


def test_v2_mass_channels_embedded_ec_and_start_time() -> None:
    zf = read_zilien(_need(V2))
    assert zf.version == 2
    channels = zf.mass_channels()
    assert sorted(channels) == [2.0, 4.0, 18.0, 28.0, 32.0, 40.0, 44.0]
    for t, _ in channels.values():
        assert len(t) == 48
        assert np.diff(t).mean() == pytest.approx(0.67, abs=0.005)
    assert zf.start_ns == pytest.approx(1705501321.146614e9, abs=1e3)
    assert zf.start_source == "metadata start_time_unix"
    t_ec, ec = zf.series("EC-lab")
    assert np.median(np.diff(t_ec)) == pytest.approx(0.05, abs=1e-3)
    # the embedded EC-Lab series is the .mpt on the Zilien base: t = t_mpt + recorded offset
    mpt = read_mpt(find_mpts(V2)[0])
    np.testing.assert_allclose(t_ec, mpt.data["time/s"] + zf.recorded_offset_s, atol=1e-5)
    np.testing.assert_allclose(ec["Ewe/V"], mpt.data["Ewe/V"], rtol=1e-6)


@pytest.mark.parametrize("path, offset, absolute", [(V1, 95.21071, 98.0),
                                                     (V2, 4.877258, 4.601386)])
def test_ec_lab_moved_with_the_recorded_offset(path: Path, offset: float, absolute: float) -> None:
    frames = zilien_frames(_need(path), "exp", "cell01")
    ms, echem = frames[0], frames[1:]
    assert ms.kind == "ms.ion_current" and all(f.kind == "echem" for f in echem)
    assert len(echem) == len(find_mpts(path)) >= 1
    zf = read_zilien(path)
    for f in frames:
        f.validate()
        assert f.meta["zilien_start_ns"] == zf.start_ns
    for f in echem:
        assert f.meta["time_offset_s"] == pytest.approx(offset)
        assert f.meta["offset_source"] == OFFSET_SOURCE_RECORDED
        assert f.meta["absolute_clock_offset_s"] == pytest.approx(absolute, abs=1e-3)
        assert f.meta["clock_disagreement_s"] == pytest.approx(absolute - offset, abs=1e-3)
        assert f.units["current"] == "A"
    # Zilien's own potentiostat read-out is on the Zilien base: with the recorded offset the
    # EC-Lab potential lies on it; with the absolute clocks it does not
    t_pot, pot = zf.series("pot")
    for path_mpt in find_mpts(path):
        mpt = read_mpt(path_mpt)
        align = clock_alignment(zf, mpt)
        t, e = mpt.data["time/s"], mpt.data["Ewe/V"]

        def rms(shift: float, t: np.ndarray = t, e: np.ndarray = e) -> float:
            tz = t + shift
            inside = (tz > t_pot[0]) & (tz < t_pot[-1])
            return float(np.sqrt(np.mean((np.interp(tz[inside], t_pot, pot["Voltage [V]"])
                                          - e[inside]) ** 2)))
        assert rms(align.time_offset_s) < 1e-3
        assert rms(align.absolute_clock_offset_s) > 3 * rms(align.time_offset_s)
    # frame times: the first EC-Lab sample sits at offset + its own time on the Zilien base
    first = min(echem, key=lambda f: f.t0_ns)
    mpt = read_mpt(find_mpts(path)[0])
    assert (first.t0_ns - zf.start_ns) * 1e-9 == pytest.approx(mpt.data["time/s"][0] + offset,
                                                               abs=1e-6)
    t_m2 = (ms.t0_ns - zf.start_ns) * 1e-9 + ms.arrays["t_m2"]
    np.testing.assert_allclose(t_m2, zf.mass_channels()[2.0][0], atol=1e-9)


def test_ixdat_csv_reader() -> None:
    data = read_ixdat_csv(_need(GOOD_BIT))
    assert data.header.fields["technique"] == "EC-MS"
    assert sorted(data.mass_columns()) == [2.0, 4.0, 18.0, 28.0, 32.0, 40.0, 44.0]
    echem = data.echem_frame("exp/cell01/potentiostat").validate()
    ms = data.ms_frame("exp/cell01/ms").validate()
    t = echem.arrays["t"]
    assert echem.n_samples == 2270 and t[-1] == pytest.approx(750.0, abs=1.0)
    assert np.median(np.diff(t)) == pytest.approx(0.333, abs=0.001)
    assert echem.arrays["voltage"].min() == pytest.approx(0.01, abs=0.005)
    assert echem.arrays["voltage"].max() == pytest.approx(1.70, abs=0.005)
    assert set(np.unique(echem.arrays["selector"])) == {0.0, 1.0, 2.0, 3.0, 4.0}
    assert np.abs(echem.arrays["current"]).max() < 2e-4          # mA -> A
    assert echem.meta["current_kind"] == "interval_mean"
    assert echem.t0_ns == pytest.approx((1658217752.0 + 5000.2336) * 1e9, abs=1e6)
    assert np.median(np.diff(ms.arrays["t"])) == pytest.approx(1.455, abs=0.002)
    assert ms.n_samples == 515            # complete scans: M44 has one point fewer
    t_m2, m2 = data.series_of("M2")
    np.testing.assert_array_equal(ms.arrays["m2"], m2[:515])
    assert ((ms.t0_ns - echem.t0_ns) * 1e-9 + ms.arrays["t_m2"][0]) == pytest.approx(
        t_m2[0] - data.series_of("Ewe/V")[0][0], abs=1e-6)


# -- malformed input ---------------------------------------------------------------------------

def _copy_lines(src: Path, dst: Path, edit) -> Path:
    lines = src.read_text().splitlines(keepends=True)
    dst.write_text("".join(edit(lines)))
    return dst


def test_truncated_zilien_files(tmp_path: Path) -> None:
    src = _need(V1)
    # cut in the middle of a data row: the short row is named
    cut = _copy_lines(src, tmp_path / src.name, lambda ls: ls[:300] + [ls[300][:40]])
    with pytest.raises(TableError, match=r"line 301: .*fields, expected 34") as info:
        read_zilien(cut)
    assert info.value.path == cut and info.value.line == 301
    # cut between rows: the series counts in the header no longer match
    short = _copy_lines(src, tmp_path / ("b" + src.name), lambda ls: ls[:300])
    with pytest.raises(TableError, match=r"series 'pot' has 183 points, the header says 733"):
        read_zilien(short)
    # cut inside the header
    head = _copy_lines(src, tmp_path / ("c" + src.name), lambda ls: ls[:50])
    with pytest.raises(TableError, match=r"line 50: header needs 115 metadata lines"):
        read_zilien(head)


def test_garbled_numbers_name_line_and_column(tmp_path: Path) -> None:
    src = _need(V2)

    def garble(index: int, text: str):
        def edit(lines: list[str]) -> list[str]:
            cells = lines[199].split("\t")
            cells[index] = text
            lines[199] = "\t".join(cells)
            return lines
        return edit
    # a data cell of the 'pot' series (136 rows), then padding cells of 'C0M2' (48 rows)
    bad = _copy_lines(src, tmp_path / src.name, garble(1, "1.2e-1x"))
    with pytest.raises(TableError) as info:
        read_zilien(bad)
    err = info.value
    assert (err.path, err.line, err.column) == (bad, 200, 2)
    assert err.column_name == "Voltage [V]" and "'1.2e-1x'" in str(err)
    assert f"{bad}: line 200, column 2 ('Voltage [V]')" in str(err)
    bad = _copy_lines(src, tmp_path / ("p" + src.name), garble(25, "oops"))
    with pytest.raises(TableError, match=r"line 200, column 26 \('M2-H2 \[A\]'\): not a number"):
        read_zilien(bad)
    bad = _copy_lines(src, tmp_path / ("q" + src.name), garble(25, "1e-12"))
    with pytest.raises(TableError, match=r"line 200, column 26 \('M2-H2 \[A\]'\): value without"):
        read_zilien(bad)

    def garble_meta(lines: list[str]) -> list[str]:
        lines[2] = lines[2].replace("\t119", "\tabc")
        return lines
    bad = _copy_lines(src, tmp_path / ("m" + src.name), garble_meta)
    with pytest.raises(TableError, match=r"line 3, column 5 \('value'\): int value expected"):
        read_zilien(bad)


def test_malformed_ixdat_csv(tmp_path: Path) -> None:
    src = _need(GOOD_BIT)

    def garble(lines: list[str]) -> list[str]:
        lines[999] = lines[999].replace(",", ",oops", 1)
        return lines
    bad = _copy_lines(src, tmp_path / "bad.csv", garble)
    with pytest.raises(TableError) as info:
        read_ixdat_csv(bad)
    assert (info.value.line, info.value.column, info.value.column_name) == (1000, 2, "Ewe/V")
    cut = _copy_lines(src, tmp_path / "cut.csv", lambda ls: ls[:500] + [ls[500][:30]])
    with pytest.raises(TableError, match=r"cut.csv: line 501: .*fields, expected 18"):
        read_ixdat_csv(cut)
    headless = _copy_lines(src, tmp_path / "headless.csv", lambda ls: ls[:10])
    with pytest.raises(TableError, match=r"no 'N_header_lines = N' line"):
        read_ixdat_csv(headless)


def test_chunked_feeding_matches_whole_file() -> None:
    """A live follower feeds the lines appended to a growing file in arbitrary chunks."""
    path = _need(V1)
    lines = path.read_text().splitlines()
    header = parse_header(path, lines[:200])
    table = header.new_table()
    rng = np.random.default_rng(3)
    k = header.data_start_line - 1
    while k < len(lines):
        n = int(rng.integers(1, 60))
        table.add_lines(lines[k:k + n], k + 1)
        k += n
    whole = read_zilien(path)
    for s in header.series:
        t_chunked, v_chunked = table.series(s.name)
        t_whole, v_whole = whole.series(s.name)
        np.testing.assert_array_equal(t_chunked, t_whole)
        for column in v_whole:
            np.testing.assert_array_equal(v_chunked[column], v_whole[column])
    # the v1 start time comes from the file name, in the zone given
    shifted = read_zilien(path, utc_offset_h=2.0)
    assert whole.start_ns - shifted.start_ns == 2 * 3600 * 10**9
    assert shifted.start_source == "file name (local time, UTC+2 h)"
