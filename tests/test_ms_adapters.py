"""Mass-spectrometry file adapters on the real files: Spectro Inlets Zilien TSV (v1, v2) followed
live and read once, Pfeiffer QUADSTAR .sac scans and PV MassSpec .dat exports. Values are checked
against readings of the files made here (plain splitting, struct at the documented offsets);
live writing appends the files in irregular chunks that cut lines and scans in half, and
rotates or replaces them; bad input is counted and named; garbled bytes are fuzzed."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import tomllib
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.biologic import read_mpt
from adapters.pfeiffer import (
    DatConfig,
    PvMassSpecDatAdapter,
    QuadstarSacAdapter,
    SacConfig,
    SacReader,
    parse_dat_header,
    parse_dat_row,
)
from adapters.zilien import (
    OFFSET_SOURCE_EMBEDDED,
    OFFSET_SOURCE_RECORDED,
    TableError,
    ZilienAdapter,
    ZilienConfig,
    find_mpts,
    ms_frame,
    read_zilien,
)
from processors.gas import GasConfig, GasProcessor
from processors.sensor_faults import SensorFaultProcessor
from stream.frame import Frame
from stream.node import Node

from .test_node import CollectSink

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ecms"
V1 = REAL / "zilien_v1_full_set" / "2022-04-06 16_17_23 full set.tsv"
V2 = REAL / "zilien_v2_ec_included" / "2024-01-17 15_21_57 ec-included.tsv"
SAC = REAL / "quadstar_test.sac"
DAT = REAL / "prismapro_1_FC_1E-4.dat"
DOCS = Path(__file__).resolve().parents[1] / "adapters"
STREAM = "exp/cell01/ms"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available (the real files of shared/data/real; CI has them)")
    return path


async def _collect(adapter) -> list[Frame]:
    frames = [f async for f in adapter.frames()]
    for f in frames:
        f.validate()
    return frames


def _raw_t0(frame: Frame) -> int:
    """The instrument's own t0 (before the clock model), kept in meta.clock."""
    return frame.meta["clock"]["instrument_t0_ns"]


# -- independent readings ----------------------------------------------------------------------

def _zilien_columns(path: Path, skip: frozenset[int] = frozenset()
                    ) -> tuple[dict[str, tuple[np.ndarray, dict[str, np.ndarray]]], int]:
    """Every series of a Zilien TSV by plain splitting: {series: (times, {column: values})},
    rows whose time cell is empty or NaN left out; lines in ``skip`` (1-based) ignored.
    Also returns the start time from start_time_unix or the file name (read as UTC)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    n_meta = int(lines[0].split("\t")[4])
    meta = {f[0]: f[4] for f in (ln.split("\t") for ln in lines[:n_meta])}
    names, columns = lines[n_meta].split("\t"), lines[n_meta + 1].split("\t")
    starts = [i for i, n in enumerate(names) if n.strip()] + [len(columns)]
    rows = [ln.split("\t") for k, ln in enumerate(lines[n_meta + 2:], n_meta + 3)
            if k not in skip]
    out = {}
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        cells = [r[a:b] for r in rows if r[a].strip() and r[a].strip() != "NaN"]
        table = np.array([[float(x) for x in c] for c in cells]).reshape(-1, b - a)
        out[names[a]] = table[:, 0], {columns[i]: table[:, i - a] for i in range(a + 1, b)}
    if "start_time_unix" in meta:
        start_ns = int(Decimal(meta["start_time_unix"]) * 10**9)
    else:
        start_ns = int(np.datetime64(path.name[:19].replace("_", ":").replace(" ", "T"), "ns")
                       .astype(np.int64))
    return out, start_ns


def _mass_series(series: dict) -> dict[str, float]:
    return {name: float(name.split("M", 1)[1]) for name in series
            if name.startswith("C") and "M" in name and name.split("M", 1)[1].isdigit()}


def _ms_from_frames(frames: list[Frame]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """m<mz> -> (absolute instrument time in s, ion current) from consecutive MS frames."""
    out: dict[str, tuple[list, list]] = {}
    for f in frames:
        base = _raw_t0(f) * 1e-9
        for name in f.arrays:
            if name.startswith("m"):
                t, i = out.setdefault(name, ([], []))
                t.append(base + f.arrays[f"t_{name}"])
                i.append(f.arrays[name])
    return {k: (np.concatenate(t), np.concatenate(i)) for k, (t, i) in out.items()}


def _check_ms(frames: list[Frame], series: dict, start_ns: int) -> None:
    got = _ms_from_frames(frames)
    masses = _mass_series(series)
    assert sorted(got) == sorted(f"m{mz:g}" for mz in masses.values())
    n = min(len(series[name][0]) for name in masses)      # complete scans
    for name, mz in masses.items():
        t, values = series[name]
        t_got, i_got = got[f"m{mz:g}"]
        np.testing.assert_allclose(t_got, start_ns * 1e-9 + t[:n], rtol=0, atol=2e-6)
        np.testing.assert_array_equal(i_got, next(iter(values.values()))[:n])
    for f in frames:
        assert f.kind == "ms.ion_current" and f.units[f"m{masses[next(iter(masses))]:g}"] == "A"
        np.testing.assert_array_equal(f.arrays["t"], np.min(
            [f.arrays[f"t_m{mz:g}"] for mz in masses.values()], axis=0))


def _echem_from_frames(frames: list[Frame]) -> dict[str, np.ndarray]:
    out = {"t_abs": np.concatenate([_raw_t0(f) * 1e-9 + f.arrays["t"] for f in frames])}
    for name in ("voltage", "current"):
        out[name] = np.concatenate([f.arrays[name] for f in frames])
    return out


# -- Zilien: read once -------------------------------------------------------------------------

@pytest.mark.parametrize("path", [V1, V2], ids=["v1", "v2"])
def test_zilien_replay_matches_the_file(path: Path) -> None:
    _need(path)
    series, start_ns = _zilien_columns(path)
    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(path), follow=False, block_rows=100,
                                                 ms_instrument="oems", ec_instrument="ec"))
    frames = asyncio.run(_collect(adapter))
    assert adapter.rejects == 0, adapter.errors
    ms = [f for f in frames if f.kind == "ms.ion_current"]
    ec = [f for f in frames if f.kind == "echem"]
    assert {f.stream for f in ms} == {"exp/cell01/oems"}
    assert {f.stream for f in ec} == {"exp/cell01/ec"}
    assert [f.seq for f in ms] == list(range(len(ms))) and [f.seq for f in ec] == \
        list(range(len(ec)))
    assert max(f.n_samples for f in frames) <= 100
    _check_ms(ms, series, start_ns)
    # a replay keeps the instrument clock: t0 is the Zilien time as recorded
    assert all(f.meta["clock"]["mode"] == "instrument" and f.t0_ns == _raw_t0(f) for f in frames)
    version = 2 if path == V2 else 1
    assert {f.meta["zilien_version"] for f in ms} == {version}
    got = _echem_from_frames(ec)
    if version == 2:   # the embedded EC-lab series, already on the Zilien base
        t, values = series["EC-lab"]
        assert {f.meta["offset_source"] for f in ec} == {OFFSET_SOURCE_EMBEDDED}
        assert {f.meta["time_offset_s"] for f in ec} == {4.877258}
        expected_t = t
        voltage, current = values["Ewe/V"], values["<I>/mA"] * 1e-3
    else:              # the two .mpt files beside it, moved by the recorded offset
        mpts = [read_mpt(p) for p in find_mpts(path)]
        assert len(mpts) == 2
        assert {f.meta["offset_source"] for f in ec} == {OFFSET_SOURCE_RECORDED}
        assert {f.meta["time_offset_s"] for f in ec} == {95.21071}
        expected_t = np.concatenate([m.data["time/s"] for m in mpts]) + 95.21071
        voltage = np.concatenate([m.data["Ewe/V"] for m in mpts])
        current = np.concatenate([m.data.get("I/mA", m.data.get("<I>/mA")) for m in mpts]) * 1e-3
    np.testing.assert_allclose(got["t_abs"], start_ns * 1e-9 + expected_t, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(got["voltage"], voltage)
    np.testing.assert_allclose(got["current"], current, rtol=1e-12)
    assert all(f.units["current"] == "A" and f.units["voltage"] == "V" for f in ec)


def test_zilien_pot_readout_and_config_errors() -> None:
    series, start_ns = _zilien_columns(_need(V1))
    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(V1), follow=False, ec_source="pot"))
    ec = [f for f in asyncio.run(_collect(adapter)) if f.kind == "echem"]
    t, values = series["pot"]
    got = _echem_from_frames(ec)
    np.testing.assert_allclose(got["t_abs"], start_ns * 1e-9 + t, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got["current"], values["Current [mA]"] * 1e-3, rtol=1e-12)
    assert {f.meta["series"] for f in ec} == {"pot"}
    # v1 has no embedded EC-lab series: named, counted, the MS data still published
    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(V1), follow=False,
                                                 ec_source="embedded"))
    frames = asyncio.run(_collect(adapter))
    assert adapter.rejects == 1 and "the file has no 'EC-lab' series" in adapter.errors[0]
    assert {f.kind for f in frames} == {"ms.ion_current"}
    with pytest.raises(ValidationError, match="path"):
        ZilienConfig()
    with pytest.raises(ValidationError, match="extra"):
        ZilienConfig(path="x.tsv", unknown_key=1)


# -- simulated live writing --------------------------------------------------------------------

async def _append_in_chunks(data: bytes, dst: Path, rng: np.random.Generator,
                            max_chunk: int, max_pause_s: float) -> None:
    """Append ``data`` to ``dst`` in chunks of random size (cutting lines, characters and scans
    anywhere) at random intervals, flushing each, as an instrument program does."""
    k = 0
    with dst.open("ab") as f:
        while k < len(data):
            n = int(rng.integers(1, max_chunk))
            f.write(data[k:k + n])
            f.flush()
            k += n
            await asyncio.sleep(float(rng.uniform(0, max_pause_s)))


async def _follow_while(adapter, writer) -> list[Frame]:
    collected, task = asyncio.create_task(_collect(adapter)), asyncio.create_task(writer)
    await task
    return await asyncio.wait_for(collected, 30)


def test_zilien_followed_live_rotated_and_replaced(tmp_path: Path) -> None:
    """Zilien v1 and its two .mpt files written in chunks, then the TSV renamed away and a v2
    file written under the same name, then that file truncated and v1 written into it again:
    every scan and EC row published once, in order, each file from its own header."""
    _need(V1), _need(V2)
    live = tmp_path / V1.name
    mpts = [tmp_path / p.name for p in find_mpts(V1)]
    rng = np.random.default_rng(7)

    async def writer() -> None:
        await asyncio.gather(_append_in_chunks(V1.read_bytes(), live, rng, 6000, 0.01),
                             *[_append_in_chunks(p.read_bytes(), dst, rng, 6000, 0.01)
                               for p, dst in zip(find_mpts(V1), mpts, strict=True)])
        await asyncio.sleep(0.1)
        live.rename(tmp_path / "rotated.tsv")                       # rotation
        await _append_in_chunks(V2.read_bytes(), live, rng, 6000, 0.01)
        await asyncio.sleep(0.1)
        os.truncate(live, 0)                                        # replaced in place
        await asyncio.sleep(0.1)
        await _append_in_chunks(V1.read_bytes(), live, rng, 6000, 0.01)

    config = ZilienConfig(path=str(live), poll_s=0.01, idle_timeout_s=0.5)
    adapter = ZilienAdapter(STREAM, config)
    frames = asyncio.run(_follow_while(adapter, writer()))
    assert adapter.rejects == 0, adapter.errors
    assert adapter.counters()["file_restarts"] == 2
    ms = [f for f in frames if f.kind == "ms.ion_current"]
    # the three files in order, none mixed: v1, then v2, then v1 again
    versions = [f.meta["zilien_version"] for f in ms]
    cuts = [0] + [k for k in range(1, len(ms)) if versions[k] != versions[k - 1]] + [len(ms)]
    assert [versions[a] for a in cuts[:-1]] == [1, 2, 1]
    v1, v1_start = _zilien_columns(V1)
    v2, v2_start = _zilien_columns(V2)
    for (a, b), (series, start) in zip(zip(cuts[:-1], cuts[1:], strict=True),
                                       [(v1, v1_start), (v2, v2_start), (v1, v1_start)],
                                       strict=True):
        _check_ms(ms[a:b], series, start)
    assert len(ms) > 10                     # published in many blocks as the file grew
    assert [f.seq for f in ms] == list(range(len(ms)))
    # followed: the clock model estimates the offset; the raw clock is in meta
    assert {f.meta["clock"]["mode"] for f in frames} == {"estimate"}
    # EC: the .mpt rows beside v1, for each of the two v1 files (a new TSV starts afresh and
    # reads its .mpt files again), and v2's embedded series (its source is the live file's
    # name) in between
    ec = [f for f in frames if f.kind == "echem"]
    kinds = ["mpt" if f.meta["source"].endswith(".mpt") else "embedded" for f in ec]
    assert [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]] == \
        ["mpt", "embedded", "mpt"]
    mpt = [read_mpt(p) for p in find_mpts(V1)]
    t_mpt = v1_start * 1e-9 + 95.21071 + np.concatenate([m.data["time/s"] for m in mpt])
    e_mpt = np.concatenate([m.data["Ewe/V"] for m in mpt])
    first = kinds.index("embedded")
    last = len(kinds) - kinds[::-1].index("embedded")
    for part in (ec[:first], ec[last:]):
        got = _echem_from_frames(part)
        np.testing.assert_allclose(got["t_abs"], t_mpt, rtol=0, atol=2e-6)
        np.testing.assert_array_equal(got["voltage"], e_mpt)
    got = _echem_from_frames(ec[first:last])
    np.testing.assert_allclose(got["t_abs"], v2_start * 1e-9 + v2["EC-lab"][0], rtol=0,
                               atol=2e-6)
    np.testing.assert_array_equal(got["voltage"], v2["EC-lab"][1]["Ewe/V"])


def test_zilien_unknown_version_then_a_good_file(tmp_path: Path) -> None:
    """A file of an unknown format version is refused (named, counted); the adapter keeps
    following and reads the good file that replaces it."""
    src = _need(V2)
    text = src.read_text(encoding="utf-8").replace("file_format_version\tVersion of the file "
                                                    "format\t\tint\t2", "file_format_version\t"
                                                    "Version of the file format\t\tint\t3")
    live = tmp_path / src.name

    async def writer() -> None:
        live.write_text(text, encoding="utf-8")
        await asyncio.sleep(0.15)
        shutil.copy(src, tmp_path / "new.tsv")
        os.replace(tmp_path / "new.tsv", live)

    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(live), poll_s=0.01,
                                                 idle_timeout_s=0.3))
    frames = asyncio.run(_follow_while(adapter, writer()))
    assert adapter.rejects == 1
    assert adapter.errors[0] == (f"{STREAM}: {live}: line 4, column 5 ('value'): file format "
                                 "version 3 is not supported (Zilien writes 1 and 2)")
    series, start = _zilien_columns(src)
    _check_ms([f for f in frames if f.kind == "ms.ion_current"], series, start)


# -- Zilien: bad input --------------------------------------------------------------------------

def _edit_lines(src: Path, dst: Path, edit) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(edit(lines)), encoding="utf-8")
    return dst


def _replay(path: Path, **params) -> tuple[ZilienAdapter, list[Frame]]:
    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(path), follow=False, **params))
    return adapter, asyncio.run(_collect(adapter))


def test_zilien_garbled_and_truncated_rows_are_named_and_skipped(tmp_path: Path) -> None:
    src = _need(V2)

    def garble(lines: list[str]) -> list[str]:
        for index, column, text in ((199, 1, "1.2e-1x"), (209, 25, "1e-12"), (219, 0, "9e99")):
            cells = lines[index].split("\t")
            cells[column] = text
            lines[index] = "\t".join(cells)
        return lines
    bad = _edit_lines(src, tmp_path / src.name, garble)
    adapter, frames = _replay(bad)
    skipped = frozenset({200, 210, 220})
    messages = adapter.errors
    assert messages[:3] == [
        f"{STREAM}: {bad}: line 200, column 2 ('Voltage [V]'): not a number: '1.2e-1x'",
        f"{STREAM}: {bad}: line 210, column 26 ('M2-H2 [A]'): value without a time",
        f"{STREAM}: {bad}: line 220, column 1 ('Time [s]'): time 9e+99 s is out of range"]
    # the rest is published as if those rows were not there; each series that lost a point
    # is reported at the end (the header's counts no longer match)
    series, start = _zilien_columns(src, skip=skipped)
    _check_ms([f for f in frames if f.kind == "ms.ion_current"], series, start)
    whole, _ = _zilien_columns(src)
    short = [name for name in whole if len(whole[name][0]) != len(series[name][0])]
    assert short and adapter.rejects == 3 + len(short)
    assert all(any(f"series {name!r} has" in m for m in messages[3:]) for name in short)
    assert adapter.counters()["rows"] == 566 - 119 - 3

    # cut in the middle of a row: the short row named, what came before published
    cut = _edit_lines(src, tmp_path / ("cut " + src.name), lambda ls: ls[:300] + [ls[300][:50]])
    adapter, frames = _replay(cut)
    assert f"{cut}: line 301: " in adapter.errors[0] and "(truncated row?)" in adapter.errors[0]
    assert sum(f.n_samples for f in frames if f.kind == "ms.ion_current") == 48

    # a header cut short, and a file that is not a Zilien TSV at all
    head = _edit_lines(src, tmp_path / ("head " + src.name), lambda ls: ls[:60])
    adapter, frames = _replay(head)
    assert frames == [] and adapter.errors == [
        f"{STREAM}: {head}: line 60: the file ends inside its header (truncated?)"]
    other = tmp_path / "other.tsv"
    other.write_text("time\tvalue\n1\t2\n")
    adapter, frames = _replay(other)
    assert frames == [] and adapter.rejects == 1 and "not a Zilien TSV" in adapter.errors[0]
    adapter, frames = _replay(tmp_path / "missing.tsv")
    assert frames == [] and adapter.errors == [f"{STREAM}: {tmp_path / 'missing.tsv'}: "
                                               "file not found"]


_HEADER_V2: list[str] = []


def _v2_adapter() -> ZilienAdapter:
    """An adapter that has read V2's header (fed directly, no file)."""
    if not _HEADER_V2:
        lines = _need(V2).read_text(encoding="utf-8").splitlines()
        _HEADER_V2.extend(lines[:119])
    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(V2), follow=False, ec_source="none"))
    assert adapter.feed(list(_HEADER_V2), 1) == []
    return adapter


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet="0123456789.eE-+naNifx\t ", max_size=400), max_size=8))
def test_zilien_fuzzed_rows_never_raise(rows: list[str]) -> None:
    """Garbled data lines: each non-blank one is either a row or a counted reject."""
    adapter = _v2_adapter()
    for frame in adapter.feed(rows, 120):
        frame.validate()
    assert adapter.rows_read + adapter.rejects == sum(1 for r in rows if r.strip())


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 5))
def test_zilien_fuzzed_header_bytes_never_raise(noise: bytes, where: int) -> None:
    lines = _need(V2).read_bytes().splitlines()[:130]
    lines[where * 20] = noise
    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(V2), follow=False))
    frames = adapter.feed([ln.decode("utf-8", errors="replace") for ln in lines], 1)
    for frame in frames:
        frame.validate()
    assert adapter.zilien is not None or adapter.rejects >= 1   # read, or refused and named


# -- Zilien frames through the gas and sensor-fault processors, in a node ---------------------

async def test_zilien_in_a_node_feeds_the_gas_processor_unchanged() -> None:
    """The adapter in a node, its blocks through the gas and sensor-fault processors: the gas
    results equal those of read_zilien's whole-file frame processed in one piece."""
    _need(V2)
    adapter = ZilienAdapter(STREAM, ZilienConfig(path=str(V2), follow=False, block_rows=7))
    config = GasConfig(gases=["H2", "O2", "CO2", "Ar"], channels=[2, 32, 44, 40],
                       internal_standard="Ar", window_s=5.0)
    faults = SensorFaultProcessor()
    sink = CollectSink()
    snapshot = await Node("exp", [adapter], [GasProcessor(config), faults], [sink],
                          handle_signals=False).run()
    assert all(stage.get("rejects", 0) == 0 for stage in snapshot.values()), snapshot
    blocks = [f for f in sink.frames if f.kind == "result.gas"]
    whole = GasProcessor(config).process(ms_frame(read_zilien(V2), STREAM))
    for gas in ("H2", "O2", "CO2"):
        got = [r for r in blocks if r.meta["tags"]["gas"] == gas]
        ref = next(r for r in whole if r.meta["tags"]["gas"] == gas)
        assert sum(r.n_samples for r in got) == ref.n_samples == 48
        t = np.concatenate([(r.t0_ns - ref.t0_ns) * 1e-9 + r.arrays["t"] for r in got])
        np.testing.assert_allclose(t, ref.arrays["t"], atol=1e-6)
        for name in ("mole_fraction", "rate_mol_s"):
            np.testing.assert_allclose(np.concatenate([r.arrays[name] for r in got]),
                                       ref.arrays[name], rtol=1e-7, atol=1e-30)
        # the amount is one value per block, at its last sample: the end of the data
        assert got[-1].arrays["amount_mol"][-1] == pytest.approx(ref.arrays["amount_mol"][-1],
                                                                 rel=1e-9)
    masses = next(f for f in sink.frames if f.kind == "ms.ion_current").meta["masses"]
    assert sorted(faults.channels(STREAM)) == sorted(f"m{mz:g}" for mz in masses)
    assert sorted(faults.channels("exp/cell01/potentiostat")) == ["current", "voltage"]


# -- QUADSTAR .sac -----------------------------------------------------------------------------

def _sac_by_struct(data: bytes) -> dict:
    """The .sac file read with struct at the offsets yadg documents (0x64 n_timesteps, 0x68
    n_traces, 0x6a timestep length, 0xc2 UTC start, 0xc8 trace table, info + 0x7a first mass,
    + 0x7e scan width, + 0x80 values per amu; per scan 6 bytes before the first data: time)."""
    n_scans, = struct.unpack_from("<i", data, 0x64)
    n_traces, = struct.unpack_from("<h", data, 0x68)
    length, = struct.unpack_from("<i", data, 0x6A)
    base_s, base_tenths = struct.unpack_from("<IH", data, 0xC2)
    traces = []
    for k in range(n_traces):
        kind, info, pos = struct.unpack_from("<Bii", data, 0xC8 + 9 * k)
        if kind == 0x11:
            first, = struct.unpack_from("<f", data, info + 0x7A)
            width, = struct.unpack_from("<H", data, info + 0x7E)
            traces.append((k, pos, first, width, data[info + 0x80]))
    first_data = min(t[1] for t in traces)
    scans = []
    for n in range(n_scans):
        s, tenths = struct.unpack_from("<IH", data, first_data - 6 + n * length)
        time_ns = (base_s + s) * 10**9 + (base_tenths + tenths) * 10**5
        per_trace = []
        for k, pos, first, width, per_mass in traces:
            exponent, = struct.unpack_from("<h", data, pos + n * length + 4)
            values = np.frombuffer(data, "<f4", width * per_mass, pos + n * length + 6)
            per_trace.append((k, first + np.arange(width * per_mass) / per_mass, values,
                              10.0 ** exponent))
        scans.append((time_ns, per_trace))
    return {"n_scans": n_scans, "length": length, "first_scan": first_data - 6,
            "base_s": base_s, "scans": scans}


def _check_sac(frames: list[Frame], reference: dict, scans: range) -> None:
    expected = [(n, k, mass, values, fsr, reference["scans"][n][0])
                for n in scans for k, mass, values, fsr in reference["scans"][n][1]]
    assert len(frames) == len(expected)
    for f, (n, k, mass, values, fsr, time_ns) in zip(frames, expected, strict=True):
        assert (f.kind, f.meta["scan"], f.meta["trace"]) == ("spectrum", n, k)
        assert _raw_t0(f) == time_ns
        np.testing.assert_array_equal(f.arrays["mass"], mass)
        over = values > fsr
        np.testing.assert_array_equal(f.arrays["ion_current"],
                                      np.where(over, np.nan, values.astype(np.float64)))
        assert f.meta["saturated"] == int(over.sum()) and f.meta["full_scale_A"] == fsr
        assert (f.meta["x"], f.meta["y"]) == ("mass", "ion_current")
        assert f.units == {"mass": "amu", "ion_current": "A"}


def test_sac_replay_matches_struct_reading() -> None:
    data = _need(SAC).read_bytes()
    ref = _sac_by_struct(data)
    assert ref["n_scans"] == 188 and len(ref["scans"][0][1]) == 2
    assert (ref["scans"][-1][0] - ref["scans"][0][0]) / 3.6e12 == pytest.approx(2.66, abs=0.01)
    adapter = QuadstarSacAdapter(STREAM, SacConfig(path=str(SAC), follow=False))
    frames = asyncio.run(_collect(adapter))
    _check_sac(frames, ref, range(188))
    assert all(f.t0_ns == _raw_t0(f) for f in frames)      # a replay: the instrument clock
    first = frames[0].meta
    assert first["software_version"] == "7.10" and first["author"] == "Benjamin Kunz"
    assert (first["first_mass"], first["scan_width_amu"], first["values_per_mass"]) == \
        (0.0, 45, 32)
    # the header's wall clock is the UTC start in a whole-hour zone
    local = np.datetime64(first["header_local_start"], "s").astype(np.int64)
    assert (local - ref["base_s"]) % 3600 == 0
    # every saturated (scan, trace) is reported once, naming the scan, trace and first point
    # (the adapter keeps the last 100 messages)
    expected = []
    for n, (_, traces) in enumerate(ref["scans"]):
        for k, mass, values, fsr in traces:
            over = np.flatnonzero(values > fsr)
            if over.size:
                expected.append(f"{STREAM}: {SAC}: scan {n} trace {k} point {over[0]} "
                                f"({mass[over[0]]:g} amu): {over.size} points above the "
                                f"full-scale range {fsr:g} A: published as NaN")
    assert adapter.rejects == len(expected) == sum(1 for f in frames if f.meta["saturated"])
    assert adapter.errors == expected[-100:]
    # a trace selection
    adapter = QuadstarSacAdapter(STREAM, SacConfig(path=str(SAC), follow=False, traces=[2]))
    assert {f.meta["trace"] for f in asyncio.run(_collect(adapter))} == {2}


def test_sac_followed_in_chunks_that_cut_scans_then_replaced(tmp_path: Path) -> None:
    data = _need(SAC).read_bytes()
    ref = _sac_by_struct(data)
    first, length = ref["first_scan"], ref["length"]
    # the replacement: the header (scan count patched to 20) and the first 20 scans
    short = bytearray(data[:first + 20 * length])
    struct.pack_into("<i", short, 0x64, 20)
    live = tmp_path / "live.sac"
    rng = np.random.default_rng(11)

    async def writer() -> None:
        await _append_in_chunks(data, live, rng, int(1.7 * length), 0.004)
        await asyncio.sleep(0.1)
        (tmp_path / "next.sac").write_bytes(bytes(short))
        os.replace(tmp_path / "next.sac", live)

    adapter = QuadstarSacAdapter(STREAM, SacConfig(path=str(live), poll_s=0.01,
                                                   idle_timeout_s=0.3))
    frames = asyncio.run(_follow_while(adapter, writer()))
    assert adapter.counters()["file_restarts"] == 1
    assert adapter.counters()["rows"] == 188 + 20
    _check_sac(frames[:376], ref, range(188))
    _check_sac(frames[376:], ref, range(20))
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert not any("truncated" in m or "header says" in m for m in adapter.errors)


def test_sac_bad_input_named_and_skipped(tmp_path: Path) -> None:
    data = _need(SAC).read_bytes()
    ref = _sac_by_struct(data)
    first, length = ref["first_scan"], ref["length"]

    def replay(content: bytes, name: str) -> tuple[QuadstarSacAdapter, list[Frame]]:
        path = tmp_path / name
        path.write_bytes(content)
        adapter = QuadstarSacAdapter(STREAM, SacConfig(path=str(path), follow=False))
        return adapter, asyncio.run(_collect(adapter))

    # cut in the middle of scan 100
    cut = first + 100 * length + length // 2
    adapter, frames = replay(data[:cut], "cut.sac")
    _check_sac(frames, ref, range(100))
    path = tmp_path / "cut.sac"
    assert adapter.errors[-2:] == [
        f"{STREAM}: {path}: scan 100 at byte {first + 100 * length:#x}: truncated: "
        f"{length // 2} of {length} bytes",
        f"{STREAM}: {path}: byte 0x64 (n_scans): the header says 188 scans, the file holds 100"]
    # a garbled full-scale exponent in scan 185 and a garbled time in scan 187: those scans
    garbled = bytearray(data)
    trace_data = struct.unpack_from("<i", data, 0xC8 + 9 + 5)[0]
    struct.pack_into("<h", garbled, trace_data + 185 * length + 4, 300)
    struct.pack_into("<H", garbled, first + 187 * length + 4, 60000)
    adapter, frames = replay(bytes(garbled), "garbled.sac")
    assert sorted({f.meta["scan"] for f in frames}) == [n for n in range(187) if n != 185]
    path = tmp_path / "garbled.sac"
    assert f"{STREAM}: {path}: scan 185 trace 1 at byte {trace_data + 185 * length + 4:#x} " \
           "(full-scale range): exponent 300" in adapter.errors
    assert adapter.errors[-1] == f"{STREAM}: {path}: scan 187 at byte " \
        f"{first + 187 * length:#x} (time): 60000 tenths of a millisecond"
    # a header that cannot be right, and a file cut inside the header
    bad_header = bytearray(data)
    struct.pack_into("<h", bad_header, 0x68, 0)
    adapter, frames = replay(bytes(bad_header), "header.sac")
    assert frames == [] and adapter.errors == [
        f"{STREAM}: {tmp_path / 'header.sac'}: byte 0x68 (n_traces): 0 traces"]
    adapter, frames = replay(data[:0x150], "head.sac")
    assert frames == [] and adapter.errors == [
        f"{STREAM}: {tmp_path / 'head.sac'}: byte {0x150}: the file ends inside its header"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x240), st.integers(0, 255)), max_size=12),
       st.binary(max_size=600), st.integers(1, 4000))
def test_sac_fuzzed_bytes_never_raise(flips: list[tuple[int, int]], tail: bytes,
                                      chunk: int) -> None:
    """The real header with random bytes overwritten, plus two scans and random bytes, fed in
    chunks: scans come out or the damage is counted, never an exception."""
    data = bytearray(_need(SAC).read_bytes()[:0x226 + 2 * 7442])
    for at, value in flips:
        data[at] = value
    data += tail
    problems: list[str] = []
    reader = SacReader(SAC, lambda where, reason: problems.append(reason))
    spectra = []
    for k in range(0, len(data), chunk):
        spectra += reader.feed(bytes(data[k:k + chunk]))
    reader.finish()
    assert spectra or problems
    for s in spectra:
        assert s.mass.shape == s.ion_current.shape and np.isfinite(s.mass).all()


# -- PV MassSpec .dat --------------------------------------------------------------------------

def test_dat_scan_row_published_and_nan_rows_rejected() -> None:
    lines = _need(DAT).read_text(encoding="latin-1").splitlines()
    adapter = PvMassSpecDatAdapter(STREAM, DatConfig(path=str(DAT), follow=False))
    frames = asyncio.run(_collect(adapter))
    assert len(frames) == 1
    f = frames[0]
    header, row = lines[8].split("\t"), lines[9].split("\t")
    np.testing.assert_array_equal(f.arrays["mass"], [float(x) for x in header[4:]])
    np.testing.assert_array_equal(f.arrays["ion_current"], [float(x) for x in row[4:]])
    assert f.arrays["mass"][0] == 0.2 and f.arrays["mass"][-1] == 90.0
    assert _raw_t0(f) == 1582625650827000000 == f.t0_ns
    assert f.meta["sensor"] == "RGA PrismaPro 200 44527822" and f.meta["line"] == 10
    assert (f.meta["x"], f.meta["y"], f.meta["scan"], f.meta["step"]) == \
        ("mass", "ion_current", 0, 1)
    assert adapter.errors == [
        f"{STREAM}: {DAT}: line {n}, column 5 ('0.2 amu'): NaN row: 899 of 899 values are "
        "'-nan'; the scan is dropped" for n in (11, 12)]


def test_dat_followed_in_chunks_and_bad_input(tmp_path: Path) -> None:
    data = _need(DAT).read_bytes()
    live = tmp_path / "live.dat"
    adapter = PvMassSpecDatAdapter(STREAM, DatConfig(path=str(live), poll_s=0.01,
                                                     idle_timeout_s=0.3))
    writer = _append_in_chunks(data, live, np.random.default_rng(3), 3000, 0.01)
    frames = asyncio.run(_follow_while(adapter, writer))
    assert len(frames) == 1 and adapter.rejects == 2
    assert f"{live}: line 11, column 5" in adapter.errors[0]
    assert frames[0].meta["clock"]["mode"] == "estimate"

    lines = data.decode("latin-1").splitlines(keepends=True)
    header = lines[8].split("\t")
    header[7] = "abc"
    unknown = tmp_path / "unknown.dat"
    unknown.write_text("".join(lines[:8] + ["\t".join(header)] + lines[9:]), encoding="latin-1")
    adapter = PvMassSpecDatAdapter(STREAM, DatConfig(path=str(unknown), follow=False))
    assert asyncio.run(_collect(adapter)) == [] and adapter.errors == [
        f"{STREAM}: {unknown}: line 9, column 8 ('abc'): unknown column: not a mass in amu"]

    row = lines[9].split("\t")
    row[10] = "1.2x-10"
    cut = tmp_path / "cut.dat"
    cut.write_text("".join(lines[:9] + ["\t".join(row)] + [lines[10][:2000]]),
                   encoding="latin-1")
    adapter = PvMassSpecDatAdapter(STREAM, DatConfig(path=str(cut), follow=False))
    assert asyncio.run(_collect(adapter)) == []
    assert adapter.errors == [
        f"{STREAM}: {cut}: line 10, column 11 ('0.8 amu'): not a number: '1.2x-10'",
        f"{STREAM}: {cut}: line 11: {len(lines[10][:2000].split(chr(9)))} fields, expected 903 "
        "(truncated row?)",
        f"{STREAM}: {cut}: 2 scan rows, the header says 3 TimePoints (truncated?)"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789.eE-+naNif\t x", max_size=300))
def test_dat_fuzzed_rows_never_raise(text: str) -> None:
    lines = _need(DAT).read_text(encoding="latin-1").splitlines()
    header = parse_dat_header(DAT, lines[:9])
    assert header is not None
    row = lines[9].split("\t")
    for line in (text, "\t".join(row[:4]) + "\t" + text, lines[9][:len(text)] + text):
        try:
            scan = parse_dat_row(header, line, 10)
        except TableError as exc:
            assert exc.line == 10
        else:
            assert np.isfinite(scan.ion_current).all() and scan.ion_current.size == 899


# -- the README fragments ------------------------------------------------------------------------

@pytest.mark.parametrize("doc, classes", [
    ("zilien.md", {"zilien.tsv": ZilienConfig}),
    ("pfeiffer.md", {"pfeiffer.sac": SacConfig, "pfeiffer.dat": DatConfig})])
def test_documented_config_examples_validate(doc: str, classes: dict) -> None:
    text = (DOCS / doc).read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```toml")[1:]]
    seen = set()
    for block in blocks:
        for inst in tomllib.loads(block)["cells"]["instruments"]:  # [[cells.instruments]]
            classes[inst["adapter"]].model_validate(inst["params"])
            seen.add(inst["adapter"])
    assert seen == set(classes)
    for cls in classes.values():
        for key in cls.model_fields:
            assert f"`{key}`" in text, f"{doc} does not document {key}"

