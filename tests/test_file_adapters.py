"""File adapters (EC-Lab .mpt/.mpr, Neware CSV, generic CSV) against the real files: every row
published once and in order while a task writes the file in irregular chunks cut mid-line and
mid-character, through rotation, replacement and truncation; bad input named by file, line and
column and counted; parser fuzzing; the adapter inside a node through the electrochem
processor."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from galvani.BioLogic import MPR_MAGIC, read_VMP_modules
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import REGISTRY
from adapters.biologic import (
    BiologicMprAdapter,
    BiologicMptAdapter,
    MptError,
    MptFormat,
    read_mpr,
    read_mpt,
)
from adapters.generic_csv import CsvAdapter
from adapters.neware import NewareCsvAdapter
from adapters.tabular import TableReader, TabularAdapter
from stream.build import build_node
from stream.config import ConfigError, parse_config
from stream.frame import Frame
from stream.sinks.base import Sink

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
GCPL = REAL / "potentiostat" / "gcpl.pr_182.1.mpt"
GCPL_MPR = GCPL.with_suffix(".mpr")
NEWARE = REAL / "potentiostat" / "neware_uio.csv"
ZILIEN_V1 = REAL / "ecms" / "zilien_v1_full_set"
CP = ZILIEN_V1 / "2022-04-06 16_17_23 full set_01_01_CP_DUSB0_C01.mpt"
CVA = ZILIEN_V1 / "2022-04-06 16_17_23 full set_01_02_CVA_DUSB0_C01.mpt"
COMMA_MPT = REAL / "ecms" / "zilien_v2_ec_included" / "2024-01-17 15_21_57 ec-included_01_C01.mpt"
FHI = REAL / "aux_pressure_log" / "fhimcpt_measurement.csv"
STREAM = "lab/cell1/cycler"
FAST = {"poll_s": 0.005, "idle_timeout_s": 0.4}


def needs(*paths: Path) -> pytest.MarkDecorator:
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"real data not found: {missing}")


# -- independent readings of the files (plain str/float/csv, not the adapters' parser) --------

def mpt_reference(data: bytes) -> dict[str, np.ndarray]:
    lines = data.decode("cp1252").splitlines()
    n = int(lines[1].split(":")[1])
    names = lines[n - 1].rstrip("\t").split("\t")
    rows = [line.rstrip("\t").split("\t") for line in lines[n:] if line.strip()]

    def col(name: str) -> np.ndarray:
        return np.array([float(r[names.index(name)].replace(",", ".")) for r in rows])

    current = "<I>/mA" if "<I>/mA" in names else "I/mA"
    out = {"t": col("time/s"), "voltage": col("Ewe/V"), "current": col(current) * 1e-3}
    if "Ns" in names:
        out["step"] = col("Ns").astype(np.int32)
    return out


def hms(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def csv_reference(data: bytes, delimiter: str = ",", encoding: str = "ascii",
                  names: tuple[str, ...] = ("Cumulative Time", "Voltage(V)", "Current(A)",
                                            "Step Index", "Step Type")) -> dict[str, np.ndarray]:
    """t (h:m:s), voltage, current, step and the step type of a Neware-like table."""
    rows = list(csv.reader(io.StringIO(data.decode(encoding)), delimiter=delimiter))
    header, rows = rows[0], [r for r in rows[1:] if r]
    index = [header.index(n) for n in names]

    def number(text: str) -> float:
        return float(text.replace(",", "."))

    return {"t": np.array([hms(r[index[0]]) for r in rows]),
            "voltage": np.array([number(r[index[1]]) for r in rows]),
            "current": np.array([number(r[index[2]]) for r in rows]),
            "step": np.array([int(r[index[3]]) for r in rows], dtype=np.int32),
            "mode": np.array([r[index[4]] for r in rows], dtype=object)}


def published(frames: list[Frame], file_number: int | None = None) -> dict[str, np.ndarray]:
    """The rows of the frames (of one file), concatenated; ``t_abs`` on the raw instrument
    clock (ns) and ``mode``/``step`` meta per row."""
    frames = [f for f in frames if file_number is None or f.meta["file_number"] == file_number]
    out: dict[str, list] = {"t_abs": []}
    for f in frames:
        n = f.n_samples
        out["t_abs"].append(f.meta["clock"]["instrument_t0_ns"]
                            + np.round(f.arrays["t"] * 1e9).astype(np.int64))
        for name, values in f.arrays.items():
            out.setdefault(name, []).append(values)
        for key in ("mode", "step", "loop"):
            if key in f.meta:
                out.setdefault(f"meta_{key}", []).append(np.array([f.meta[key]] * n,
                                                                  dtype=object))
    return {k: np.concatenate(v) for k, v in out.items()}


def assert_rows(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got["voltage"].size == want["voltage"].size
    np.testing.assert_array_equal(got["voltage"], want["voltage"])
    np.testing.assert_array_equal(got["current"], want["current"])
    t_rel = (got["t_abs"] - got["t_abs"][0]) * 1e-9
    np.testing.assert_allclose(t_rel, want["t"] - want["t"][0], rtol=0, atol=2e-9)
    if "step" in want:
        np.testing.assert_array_equal(got["step"], want["step"])
        np.testing.assert_array_equal(got["meta_step"], want["step"])  # one step per frame
    if "mode" in want:
        np.testing.assert_array_equal(got["meta_mode"], want["mode"])


async def run(adapter: TabularAdapter | BiologicMprAdapter,
              during: Awaitable[None] | None = None) -> list[Frame]:
    """The adapter's frames, validated, while ``during`` runs (a writer)."""
    frames: list[Frame] = []

    async def collect() -> None:
        async for frame in adapter.frames():
            frames.append(frame.validate())

    task = asyncio.create_task(collect())
    if during is not None:
        await during
    await asyncio.wait_for(task, 60)
    assert [f.seq for f in frames] == list(range(len(frames)))
    return frames


# -- simulated live writing -------------------------------------------------------------------

async def write_chunks(path: Path, data: bytes, seed: int, n_chunks: int = 60) -> None:
    """Appends ``data`` in ``n_chunks`` pieces cut at random bytes (mid-line, and inside every
    multi-byte character's first two bytes), sleeping 0-6 ms between writes."""
    rng = np.random.default_rng(seed)
    multibyte = [i + 1 for i in range(len(data)) if data[i] >= 0xC0]  # UTF-8 lead bytes
    cuts = np.unique(np.concatenate([rng.integers(1, len(data), n_chunks),
                                     np.array(multibyte[:20], dtype=np.int64)]))
    with path.open("ab") as fh:
        previous = 0
        for cut in [*cuts.tolist(), len(data)]:
            fh.write(data[previous:cut])
            fh.flush()
            previous = cut
            await asyncio.sleep(float(rng.uniform(0, 0.006)))


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def write_then_switch(path: Path, first: bytes, second: bytes, how: str,
                            adapter: TabularAdapter, n_first: int) -> None:
    """``first`` in chunks; once the adapter has it (all but a last line without newline),
    the file is rotated, replaced or truncated and ``second`` is written the same way."""
    await write_chunks(path, first, seed=1)
    await until(lambda: adapter.rows_published >= n_first - (not first.endswith(b"\n")))
    if how == "rotate":
        path.rename(path.with_name(path.name + ".1"))
        await asyncio.sleep(0.02)  # the writer is slow to create the next file
    elif how == "replace":
        tmp = path.with_name("incoming.tmp")
        tmp.write_bytes(second[:500])
        os.replace(tmp, path)
        second = second[500:]
    else:
        with path.open("r+b") as fh:
            fh.truncate(0)
    await write_chunks(path, second, seed=2)


def neware_text(n_rows: int | None = None) -> bytes:
    lines = NEWARE.read_bytes().split(b"\n")
    return b"\n".join(lines[: None if n_rows is None else n_rows + 1]) + b"\n"


LABELS = {"Rest": "Ruhe – Pause", "CC Chg": "Laden ⚡ CC", "CC DChg": "Entladen ↓ CC"}


def generic_text(n_rows: int) -> bytes:
    """A semicolon-separated, decimal-comma, UTF-8 table made from the Neware rows, with
    multi-byte step labels: what a European lab's own logger might write."""
    ref = csv_reference(neware_text(n_rows))
    out = ["Gesamtzeit;Spannung/V;Strom/mA;Schritt;Schrittart;Temperatur/°C"]
    for t, v, i, step, mode in zip(ref["t"], ref["voltage"], ref["current"], ref["step"],
                                   ref["mode"], strict=True):
        h, rest = divmod(int(t), 3600)
        out.append(f"{h}:{rest // 60:02d}:{rest % 60:02d};{v:.4f};{i * 1e3:.5f};{step};"
                   f"{LABELS[mode]};21,5".replace(".", ","))
    return ("\n".join(out) + "\n").encode("utf-8")


GENERIC = {"kind": "echem", "delimiter": ";", "decimal": ",",
           "time": {"column": "Gesamtzeit", "format": "hms"},
           "columns": {"voltage": {"column": "Spannung/V"},
                       "current": {"column": "Strom/mA", "scale": 1e-3},
                       "step": {"column": "Schritt", "integer": True},
                       "mode": {"column": "Schrittart", "meta": True},
                       "temperature": {"column": "Temperatur/°C"}},
           "split_on": ["step"]}


def generic_reference(data: bytes) -> dict[str, np.ndarray]:
    return csv_reference(data, ";", "utf-8", ("Gesamtzeit", "Spannung/V", "Strom/mA", "Schritt",
                                              "Schrittart"))


CASES = {
    "mpt": (lambda: GCPL.read_bytes(), lambda: CP.read_bytes(), BiologicMptAdapter, {},
            mpt_reference),
    "neware": (lambda: neware_text(), lambda: neware_text(1500), NewareCsvAdapter, {},
               lambda d: csv_reference(d)),
    "generic": (lambda: generic_text(3000), lambda: generic_text(800), CsvAdapter, GENERIC,
                generic_reference),
}


@needs(GCPL, CP, NEWARE)
@pytest.mark.parametrize("how", ["rotate", "replace", "truncate"])
@pytest.mark.parametrize("case", list(CASES))
async def test_live_writing_publishes_every_row_once_in_order(tmp_path: Path, case: str,
                                                             how: str) -> None:
    first_text, second_text, cls, params, reference = CASES[case]
    first, second = first_text(), second_text()
    want_first, want_second = reference(first), reference(second)
    if case == "generic":  # the independent reading converts mA itself
        for want in (want_first, want_second):
            want["current"] = want["current"] * 1e-3
    path = tmp_path / f"live.{'mpt' if case == 'mpt' else 'csv'}"
    adapter = cls(STREAM, cls.Config.model_validate({"path": str(path), **FAST, **params}))
    n_first = want_first["voltage"].size
    frames = await run(adapter, write_then_switch(path, first, second, how, adapter, n_first))
    assert adapter.rejects == 0, adapter.errors
    assert adapter.reader.files == 2  # the header was read again for the new file
    assert_rows(published(frames, 1), want_first)
    assert_rows(published(frames, 2), want_second)
    assert all(f.meta["clock"]["mode"] == "estimate" for f in frames)  # followed: estimated
    if case == "generic":
        assert {f.meta["mode"] for f in frames} == set(LABELS.values())
        assert all(np.all(f.arrays["temperature"] == 21.5) for f in frames)


@needs(ZILIEN_V1)
async def test_followed_glob_moves_to_the_next_technique_file(tmp_path: Path) -> None:
    """EC-Lab writes one file per technique of a linked experiment: the CP file, then the CVA
    file; the adapter follows the glob and reports the technique change."""
    params = {"path": str(tmp_path / "run_*_C01.mpt"), "utc_offset_h": 2.0, **FAST}
    adapter = BiologicMptAdapter(STREAM, BiologicMptAdapter.Config.model_validate(params))

    async def write_both() -> None:
        await asyncio.sleep(0.05)  # nothing there yet
        await write_chunks(tmp_path / "run_01_01_CP_C01.mpt", CP.read_bytes(), 3, 10)
        await asyncio.sleep(0.05)
        await write_chunks(tmp_path / "run_01_02_CVA_C01.mpt", CVA.read_bytes(), 4, 30)

    frames = await run(adapter, write_both())
    assert adapter.rejects == 0, adapter.errors
    assert [f.meta["technique"] for f in frames[:1] + frames[-1:]] == \
        ["Chronopotentiometry", "Cyclic Voltammetry Advanced"]
    start = datetime(2022, 4, 6, 16, 19, 1, tzinfo=timezone(timedelta(hours=2)))
    start_ns = int(start.timestamp()) * 1_000_000_000  # 'Acquisition started on', both files
    for number, source in ((1, CP), (2, CVA)):
        got, want = published(frames, number), mpt_reference(source.read_bytes())
        assert_rows(got, want)
        assert got["t_abs"][0] == start_ns + round(want["t"][0] * 1e9)
    assert frames[0].meta["current_kind"] == "instantaneous"  # CP has I/mA, CVA <I>/mA
    assert frames[-1].meta["current_kind"] == "interval_mean"


# -- replays of the real files ----------------------------------------------------------------

def replay(cls: type, path: Path, **params: object) -> tuple[list[Frame], object]:
    adapter = cls(STREAM, cls.Config.model_validate({"path": str(path), "follow": False,
                                                     **params}))
    return asyncio.run(run(adapter)), adapter


@needs(GCPL)
def test_mpt_replay_matches_an_independent_reading_and_trusts_the_instrument_clock() -> None:
    frames, adapter = replay(BiologicMptAdapter, GCPL, block_rows=100, block_s=3600.0)
    assert adapter.rejects == 0
    assert_rows(published(frames), mpt_reference(GCPL.read_bytes()))
    for f in frames:
        assert f.n_samples <= 100 and f.arrays["t"][-1] <= 3600.0
        assert f.t0_ns == f.meta["clock"]["instrument_t0_ns"]  # replay: mode "instrument"
        assert f.meta["clock"]["mode"] == "instrument" and f.meta["current_kind"] == \
            "interval_mean"
        assert np.all(f.arrays["step"] == f.meta["step"])
    assert {f.units["current"] for f in frames} == {"A"}
    assert frames[0].meta["start_source"] == "first read"  # a 3-line header has no start


@needs(GCPL)
def test_configured_offset_overrides_the_clock_and_start_time_places_t0() -> None:
    frames, _ = replay(BiologicMptAdapter, GCPL, start_time="2024-05-07T10:00:00+02:00",
                       clock={"offset_s": 1.5})
    start_ns = int(datetime(2024, 5, 7, 8, tzinfo=UTC).timestamp()) * 10**9
    assert frames[0].meta["clock"]["instrument_t0_ns"] == start_ns
    assert frames[0].t0_ns == start_ns + 1_500_000_000
    assert {f.meta["clock"]["mode"] for f in frames} == {"fixed"}


@needs(COMMA_MPT)
def test_decimal_comma_export_is_read() -> None:
    frames, adapter = replay(BiologicMptAdapter, COMMA_MPT)
    want = mpt_reference(COMMA_MPT.read_bytes())
    assert adapter.rejects == 0 and want["voltage"].size == 447
    assert_rows(published(frames), want)
    assert frames[0].meta["technique"] == "Cyclic Voltammetry"


@needs(CP)
def test_loop_changes_start_frames_and_are_in_the_meta(tmp_path: Path) -> None:
    text = CP.read_bytes().replace(b"Nb header lines : 59", b"Nb header lines : 60")
    text = text.replace(b"Number of loops : 1\r\nLoop 0 from point number 0 to 10",
                        b"Number of loops : 2\r\nLoop 0 from point number 0 to 3\r\n"
                        b"Loop 1 from point number 4 to 10")
    text = text.replace(b"Number of loops : 1\nLoop 0 from point number 0 to 10",
                        b"Number of loops : 2\nLoop 0 from point number 0 to 3\n"
                        b"Loop 1 from point number 4 to 10")
    assert b"Loop 1" in text
    path = tmp_path / "loops.mpt"
    path.write_bytes(text)
    frames, adapter = replay(BiologicMptAdapter, path)
    assert adapter.rejects == 0
    np.testing.assert_array_equal(published(frames)["meta_loop"], [0] * 4 + [1] * 7)


@needs(GCPL, GCPL_MPR)
def test_mpr_voltage_current_and_time_agree_with_the_mpt() -> None:
    mpr, mpt = read_mpr(GCPL_MPR), mpt_reference(GCPL.read_bytes())
    arrays, units = mpr.standard()
    assert mpr.derived == ["<I>/mA"] and units["current"] == "A"
    np.testing.assert_allclose(arrays["t"], mpt["t"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(arrays["voltage"], mpt["voltage"], rtol=1e-6)  # float32 in .mpr
    np.testing.assert_allclose(arrays["current"], mpt["current"], rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(arrays["step"], mpt["step"])
    frames, adapter = replay(BiologicMprAdapter, GCPL_MPR)
    got = published(frames)
    assert adapter.rejects == 0 and got["voltage"].size == mpt["voltage"].size
    np.testing.assert_allclose(got["current"], mpt["current"], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose((got["t_abs"] - got["t_abs"][0]) * 1e-9, mpt["t"] - mpt["t"][0],
                               atol=2e-9)
    assert frames[0].meta["current_kind"] == "interval_mean"


def mpr_with_records(raw: bytes, k: int) -> bytes:
    """The real .mpr cut to its first ``k`` records, with the data module's length and point
    count set to match: a file as EC-Lab has written it so far (galvani's module layout)."""
    fh = io.BytesIO(raw)
    fh.read(len(MPR_MAGIC))
    data = next(m for m in read_VMP_modules(fh) if m["shortname"] == b"VMP data  ")
    start, length = data["offset"], data["length"]
    n_points = struct.unpack_from("<I", raw, start)[0]
    record = (length - 406) // n_points
    new_length = 406 + k * record
    out = bytearray(raw[:start + new_length])
    struct.pack_into("<I", out, start, k)
    field = out.rfind(struct.pack("<I", length), 0, start)  # the length in the module header
    struct.pack_into("<I", out, field, new_length)
    return bytes(out)


@needs(GCPL_MPR)
async def test_followed_mpr_publishes_new_records_as_ec_lab_writes_them(tmp_path: Path) -> None:
    raw = GCPL_MPR.read_bytes()
    path = tmp_path / "growing.mpr"
    adapter = BiologicMprAdapter(STREAM, BiologicMprAdapter.Config(
        path=str(path), follow=True, poll_s=0.005, idle_timeout_s=0.3))

    async def grow() -> None:
        for k in (1, 40, 41, 700, 1500, 2533):
            with path.open("wb") as fh:  # rewritten in place: reads may see half a file
                part = mpr_with_records(raw, k)
                fh.write(part[: len(part) // 2])
                fh.flush()
                await asyncio.sleep(0.01)
                fh.write(part[len(part) // 2:])
            await asyncio.sleep(0.03)

    frames = await run(adapter, grow())
    want, _ = read_mpr(GCPL_MPR).standard()
    got = published(frames)
    assert adapter.rejects == 0, adapter.errors
    np.testing.assert_array_equal(got["voltage"], want["voltage"])
    np.testing.assert_array_equal(got["current"], want["current"])
    np.testing.assert_array_equal(np.concatenate([f.meta["records"] for f in frames])[::2],
                                  [f.meta["records"][0] for f in frames])


@needs(NEWARE)
def test_neware_replay_on_the_cyclers_clock() -> None:
    frames, adapter = replay(NewareCsvAdapter, NEWARE, utc_offset_h=2.0)
    want = csv_reference(NEWARE.read_bytes())
    assert adapter.rejects == 0 and want["voltage"].size == 9065
    got = published(frames)
    assert_rows(got, want)
    first_date = datetime(2022, 5, 18, 16, 27, 52, tzinfo=timezone(timedelta(hours=2)))
    assert got["t_abs"][0] == int(first_date.timestamp()) * 10**9  # Date - Cumulative Time
    assert set(got["meta_mode"]) == {"Rest", "CC Chg", "CC DChg"}
    np.testing.assert_array_equal(np.unique(got["cycle"]), [1, 2, 3, 4])
    wall, _ = replay(NewareCsvAdapter, NEWARE, utc_offset_h=2.0, time_source="date")
    dates = [r[20] for r in csv.reader(io.StringIO(NEWARE.read_text()))][1:]
    expected = [int(datetime.fromisoformat(d).replace(tzinfo=first_date.tzinfo).timestamp())
                * 10**9 for d in dates]
    np.testing.assert_array_equal(published(wall)["t_abs"], expected)


@needs(FHI)
def test_generic_csv_reads_a_real_sensor_log_with_timestamps_and_mbar() -> None:
    frames, adapter = replay(CsvAdapter, FHI, kind="pressure", delimiter=";", units_row=2,
                             utc_offset_h=1.0,
                             time={"column": "timestamp", "format": "%Y-%m-%d-%H-%M-%S"},
                             columns={"pressure": {"column": "pressure", "scale": 100.0},
                                      "temperature": {"column": "T_f"}})
    rows = [r for r in csv.reader(io.StringIO(FHI.read_text()), delimiter=";")][2:]
    got = published(frames)
    assert adapter.rejects == 0 and got["pressure"].size == len(rows) == 1662
    np.testing.assert_allclose(got["pressure"], [float(r[13]) * 100 for r in rows])
    np.testing.assert_array_equal(got["temperature"], [float(r[2]) for r in rows])
    utc = [datetime.strptime(r[0], "%Y-%m-%d-%H-%M-%S") - timedelta(hours=1) for r in rows]
    np.testing.assert_array_equal(got["t_abs"], [int(u.replace(tzinfo=UTC).timestamp())
                                                 * 10**9 for u in utc])
    assert frames[0].units == {"t": "s", "pressure": "Pa", "temperature": "degC"}


def test_generic_csv_config_errors_say_what_to_do() -> None:
    base = {"path": "x.csv", "time": {"column": 1}}
    with pytest.raises(ValueError, match="scale"):
        CsvAdapter.Config.model_validate({**base, "columns": {
            "voltage": {"column": 2}, "current": {"column": 3, "unit": "mA"}}})
    with pytest.raises(ValueError, match="needs columns"):
        CsvAdapter.Config.model_validate({**base, "columns": {"voltage": {"column": 2}}})
    with pytest.raises(ValueError, match="delimiter"):
        CsvAdapter.Config.model_validate({**base, "decimal": ",", "kind": "pressure",
                                          "columns": {"pressure": {"column": 2}}})
    with pytest.raises(ValueError, match="kind"):
        CsvAdapter.Config.model_validate({**base, "kind": "sparkle"})
    with pytest.raises(ValueError, match="unknown|extra"):
        CsvAdapter.Config.model_validate({**base, "colums": {}})


# -- bad input --------------------------------------------------------------------------------

def bad_mpt(path: Path) -> tuple[dict[int, str | None], dict[str, np.ndarray]]:
    """The real GCPL header and first 60 rows with bad lines put in: returns the bad lines
    (line number -> the column name the error must give) and the reference of the good rows."""
    lines = GCPL.read_bytes().split(b"\n")[:63]
    head, rows = lines[:3], lines[3:]
    names = head[2].decode("cp1252").rstrip("\t").split("\t")
    fields = rows[5].split(b"\t")

    def with_cell(index: int, cell: bytes) -> bytes:
        return b"\t".join(fields[:index] + [cell] + fields[index + 1:])

    cut = rows[10][:70]
    bad = [(cut, names[cut.count(b"\t") + 1]),                    # truncated: first missing
           (rows[11] + b"\t1.0", None),                            # one field too many
           (with_cell(names.index("time/s"), b"3,4,5"), "time/s"),  # garbled number
           (with_cell(names.index("Ewe/V"), b"NaN"), "Ewe/V"),      # NaN row
           (with_cell(names.index("<I>/mA"), b""), "<I>/mA"),       # empty required cell
           (with_cell(2, b"\x81"), names[2]),                       # not cp1252
           (b"#%&! not data", names[1])]                           # one field
    out, named = list(head), {}
    for k, row in enumerate(rows):
        if k % 8 == 4 and bad:
            line, column = bad.pop(0)
            out.append(line)
            named[len(out)] = column
        out.append(row)
        if k == 30:
            out.append(b"   ")  # blank: skipped silently
    path.write_bytes(b"\r\n".join(out))
    return named, mpt_reference(b"\n".join(head + rows))


@needs(GCPL)
async def test_bad_lines_are_named_counted_and_skipped_while_following(tmp_path: Path) -> None:
    path = tmp_path / "bad.mpt"
    named, want = bad_mpt(tmp_path / "source.mpt")
    data = (tmp_path / "source.mpt").read_bytes()
    adapter = BiologicMptAdapter(STREAM, BiologicMptAdapter.Config(path=str(path), **FAST))
    frames = await run(adapter, write_chunks(path, data, seed=5, n_chunks=25))
    assert adapter.rejects == len(named) == 7
    assert_rows(published(frames), want)
    for message, (line, column) in zip(adapter.errors, named.items(), strict=True):
        assert f"{path}: line {line}, column " in message, message
        if column is not None:
            assert f"({column!r})" in message, message
    reasons = " | ".join(adapter.errors)
    for reason in ("truncated row", "unknown column", "not a number: '3,4,5'",
                   "no value (empty or NaN) in required column 'voltage'",
                   "required column 'current'", "not valid cp1252"):
        assert reason in reasons


def test_not_an_mpt_is_counted_and_the_replacement_is_read(tmp_path: Path) -> None:
    path = tmp_path / "x.mpt"
    path.write_bytes(b"hello\nworld\n")
    with pytest.raises(MptError, match="line 1"):
        read_mpt(path)

    async def scenario() -> list[Frame]:
        adapter = BiologicMptAdapter(STREAM, BiologicMptAdapter.Config(path=str(path), **FAST))

        async def replace() -> None:
            await until(lambda: adapter.rejects == 1)
            tmp = tmp_path / "new.mpt"
            tmp.write_bytes(b"EC-Lab ASCII FILE\nNb header lines : 3\ntime/s\tEwe/V\tI/mA\n"
                            b"0\t3.1\t1\n1\t3.2\t1\n")
            os.replace(tmp, path)

        frames = await run(adapter, replace())
        assert "line 1" in adapter.errors[0] and "not an EC-Lab ASCII file" in adapter.errors[0]
        return frames

    frames = asyncio.run(scenario())
    np.testing.assert_array_equal(published(frames)["voltage"], [3.1, 3.2])


async def test_unreadable_path_is_counted_once_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "later.mpt"
    path.mkdir()  # not a file (yet): open() fails with an OSError
    adapter = BiologicMptAdapter(STREAM, BiologicMptAdapter.Config(path=str(path), **FAST))

    async def fix() -> None:
        await until(lambda: adapter.rejects == 1)
        await asyncio.sleep(0.05)  # several more polls fail the same way
        path.rmdir()
        path.write_bytes(b"EC-Lab ASCII FILE\nNb header lines : 3\ntime/s\tEwe/V\tI/mA\n"
                         b"0\t3.1\t1\n")

    frames = await run(adapter, fix())
    assert adapter.rejects == 1 and "cannot read" in adapter.errors[0]
    np.testing.assert_array_equal(published(frames)["voltage"], [3.1])


def test_missing_columns_are_named_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "nocurrent.mpt"
    path.write_bytes(b"EC-Lab ASCII FILE\nNb header lines : 3\ntime/s\tEwe/V\n0\t3.1\n")
    frames, adapter = replay(BiologicMptAdapter, path)
    assert frames == [] and adapter.rejects == 1
    assert "line 3" in adapter.errors[0] and "'current'" in adapter.errors[0]
    csv_path = tmp_path / "log.csv"
    csv_path.write_text("time,U,I\n0,3.1,0.5\n1,3.2,0.5\n")
    frames, adapter = replay(CsvAdapter, csv_path, columns={
        "voltage": {"column": "U"}, "current": {"column": "I"},
        "temperature": {"column": "T"}})  # optional and absent: counted, rows still read
    assert adapter.rejects == 1 and "no column 'T'" in adapter.errors[0]
    assert "line 1" in adapter.errors[0]
    np.testing.assert_array_equal(published(frames)["voltage"], [3.1, 3.2])
    frames, adapter = replay(CsvAdapter, tmp_path / "absent.csv", columns={
        "voltage": {"column": "U"}, "current": {"column": "I"}})
    assert frames == [] and "file not found" in adapter.errors[0]
    neware = tmp_path / "units.csv"
    neware.write_text("Cycle Index,Step Index,Step Type,Cumulative Time,Current(mA),Voltage(V),"
                      "Capacity(Wh)\n1,1,Rest,00:00:00,0.5,3.1,0\n1,1,Rest,00:01:00,0.5,3.2,0\n")
    frames, adapter = replay(NewareCsvAdapter, neware)
    assert adapter.rejects == 1 and "column 7 ('Capacity(Wh)'): unit not understood" in \
        adapter.errors[0]
    assert "q_step_Ah" not in frames[0].arrays and frames[0].units["current"] == "A"
    np.testing.assert_array_equal(frames[0].arrays["current"], [5e-4, 5e-4])


def test_neware_bad_cells_and_garbled_rows(tmp_path: Path) -> None:
    if not NEWARE.exists():
        pytest.skip(f"real data not found: {NEWARE}")
    lines = neware_text(50).split(b"\n")
    lines[10] = lines[10].replace(b",Rest,", b",Rest,xx,", 1)          # an extra field
    lines[20] = b",".join(lines[20].split(b",")[:7] + [b"abc"] + lines[20].split(b",")[8:])
    lines[30] = lines[30][:40]                                           # truncated
    lines[40] = b",".join(lines[40].split(b",")[:5] + [b"1:xx:00"] + lines[40].split(b",")[6:])
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\n".join(lines))
    frames, adapter = replay(NewareCsvAdapter, path)
    assert adapter.rejects == 4
    assert "line 11" in adapter.errors[0] and "unknown column" in adapter.errors[0]
    assert "line 21, column 8 ('Voltage(V)'): not a number: 'abc'" in adapter.errors[1]
    assert "line 31" in adapter.errors[2] and "truncated" in adapter.errors[2]
    assert "line 41, column 6 ('Cumulative Time'): not a duration" in adapter.errors[3]
    assert published(frames)["voltage"].size == 50 - 4


@needs(GCPL_MPR)
def test_truncated_mpr_is_counted_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.mpr"
    path.write_bytes(GCPL_MPR.read_bytes()[:150_000])
    frames, adapter = replay(BiologicMprAdapter, path)
    assert frames == [] and adapter.rejects == 1 and str(path) in adapter.errors[0]


# -- parser fuzzing ---------------------------------------------------------------------------

MPT_HEADER = [b"EC-Lab ASCII FILE", b"Nb header lines : 3", b"time/s\tEwe/V\t<I>/mA\tNs"]
MPT_ROW = st.tuples(st.floats(0, 1e6), st.floats(-5, 5), st.floats(-1, 1),
                    st.integers(0, 20)).map(lambda r: "\t".join(map(str, r)).encode())
CSV_HEADER = [b'"when","U/V","I/A","state"']
CSV_ROW = st.tuples(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1)), st.floats(-5, 5),
                    st.floats(-1, 1), st.sampled_from(["Rest", "CC, charge", '"Q" hold'])).map(
    lambda r: (f'"{r[0].isoformat()}",{r[1]},{r[2]},"' + r[3].replace('"', '""') + '"').encode())
CSV_CONFIG = CsvAdapter.Config(path="fuzz.csv", quote='"', time={"column": "when",
                                                                 "format": "iso"},
                               columns={"voltage": {"column": "U/V"},
                                        "current": {"column": "I/A"},
                                        "state": {"column": "state", "meta": True}})
FORMATS = {"mpt": (MptFormat, MPT_HEADER, MPT_ROW, "\t"),
           "quoted csv": (lambda: CsvAdapter("a/b/c", CSV_CONFIG).make_format(), CSV_HEADER,
                          CSV_ROW, ",")}


def lines_of(row: st.SearchStrategy, sep: str) -> st.SearchStrategy:
    return st.one_of(row, st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
                     row.map(lambda b: b[: len(b) // 2]),
                     row.map(lambda b: b.replace(b".", b",", 1)),
                     row.map(lambda b: b + sep.encode() + b"1"),
                     st.text(max_size=40).map(lambda s: s.replace("\n", "").encode("utf-8")))


def fed(name: str, lines: list[bytes], cuts: list[int]) -> tuple[list[np.ndarray], TableReader]:
    make, header, _, _ = FORMATS[name]
    reader = TableReader(make(), Path("fuzz.txt"), "cp1252", decimal=".", utc_offset_h=0.0)
    reader.feed(header, 1)
    first = len(header) + 1
    parts, bounds = [], sorted({0, len(lines), *[c % (len(lines) + 1) for c in cuts]})
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = reader.feed(lines[a:b], first + a)
        if rows is not None:
            parts.append(rows.lines)
    return parts, reader


@pytest.mark.parametrize("name", list(FORMATS))
@settings(max_examples=200, deadline=None)
@given(data=st.data(), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_fuzzed_lines_never_raise_and_every_bad_line_is_counted(name: str, data: st.DataObject,
                                                                cuts: list[int]) -> None:
    _, header, row, sep = FORMATS[name]
    lines = data.draw(st.lists(lines_of(row, sep), max_size=40))
    parts, reader = fed(name, lines, cuts)
    n_rows = sum(p.size for p in parts)
    first = len(header) + 1
    assert n_rows + len(reader.errors) == sum(1 for ln in lines if ln.strip())
    bad_lines = [e.line for e in reader.errors]
    assert len(set(bad_lines)) == len(bad_lines)  # one error per bad line
    assert all(e.path == Path("fuzz.txt") and first <= e.line < first + len(lines)
               for e in reader.errors)
    whole, _ = fed(name, lines, [])  # chunking does not change what is read
    np.testing.assert_array_equal(np.concatenate(parts or [np.zeros(0, np.int64)]),
                                  np.concatenate(whole or [np.zeros(0, np.int64)]))


def test_quoted_csv_keeps_separators_inside_quotes(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text('"when","U/V","I/A","state"\n'
                    '"2024-01-17T15:22:05",3.1,0.5,"CC, charge"\n'
                    '"2024-01-17T15:22:06",3.2,0.5,"CC, charge",9\n'
                    '"2024-01-17T15:22:07",3.3,0.5,"say ""hold"""\n')
    frames, adapter = replay(CsvAdapter, path, **CSV_CONFIG.model_dump(
        exclude={"path", "follow", "utc_offset_h"}), utc_offset_h=0.0)
    assert adapter.rejects == 1 and "line 3, column 5: 5 fields" in adapter.errors[0]
    assert [(f.meta["state"], f.arrays["voltage"].tolist()) for f in frames] == \
        [("CC, charge", [3.1]), ('say "hold"', [3.3])]
    t0 = int(datetime(2024, 1, 17, 15, 22, 5, tzinfo=UTC).timestamp()) * 10**9
    assert published(frames)["t_abs"].tolist() == [t0, t0 + 2 * 10**9]


# -- inside a node --------------------------------------------------------------------------

class Collect(Sink):
    type_name = "collect"

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    async def write(self, frame: Frame) -> None:
        self.frames.append(frame)


@needs(GCPL)
async def test_node_electrochem_half_cycles_match_ec_labs_own_charge(monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "biologic.mpt", "adapters.biologic:BiologicMptAdapter")
    cfg = parse_config({
        "experiment": {"id": "lab"},
        "cells": [{"id": "cell1", "instruments": [{
            "id": "potentiostat", "adapter": "biologic.mpt",
            "params": {"path": str(GCPL), "follow": False, "block_rows": 37}}]}],
        "processors": [{"type": "electrochem"}]})
    sink = Collect()
    snapshot = await build_node(cfg, sinks=[sink], handle_signals=False).run()
    assert snapshot["process"]["rejects"] == 0
    assert snapshot["source.lab.cell1.potentiostat"]["rejects"] == 0
    halves = [(int(f.arrays["direction"][0]), f.arrays["capacity_Ah"][0])
              for f in sink.frames if f.kind == "result.half_cycle"]
    data = read_mpt(GCPL).data  # EC-Lab's own Q columns, per half cycle
    ec_lab = []
    for h in np.unique(data["half cycle"]):
        m = data["half cycle"] == h
        q_charge, q_discharge = data["Q charge/mA.h"][m][-1], data["Q discharge/mA.h"][m][-1]
        ec_lab.append((1, q_charge * 1e-3) if q_charge > 0 else (-1, q_discharge * 1e-3))
    assert len(halves) == len(ec_lab) == 8
    for (d_ours, q_ours), (d_ref, q_ref) in zip(halves, ec_lab, strict=True):
        assert d_ours == d_ref and q_ours == pytest.approx(q_ref, rel=0.005)


def test_config_validation_names_bad_adapter_keys(monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "neware.csv", "adapters.neware:NewareCsvAdapter")
    with pytest.raises(ConfigError, match=r"params\.pol_s: unknown key"):
        parse_config({"experiment": {"id": "lab"}, "cells": [{"id": "c", "instruments": [
            {"id": "n", "adapter": "neware.csv", "params": {"path": "a.csv", "pol_s": 1}}]}]})
