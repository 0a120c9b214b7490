"""The vectorised line-protocol encoder: byte-identical to influxdb-client's Point for the same
points (hypothesis-generated frames, a real EC-Lab file, the simulated pipeline's results), the
numba float/int text against Python's repr/str, escaping and refused names, tags, types, NaN,
unique timestamps and the InfluxDB-style line splitter."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client import Point

from adapters.biologic import read_mpt
from stream.frame import Frame
from stream.influx import numfmt
from stream.lineprotocol import (
    LineEncoder,
    LineProtocolError,
    check_name,
    encode_frame,
    encode_points,
    escape_measurement,
    escape_tag,
    format_float,
    frame_fields,
    frame_tags,
    measurement_for,
    split_lines,
    string_field,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "potentiostat"
T0 = 1_767_225_600_000_000_000


def point_lines(frames: list[Frame]) -> list[bytes]:
    """The reference: one influxdb-client Point per sample, Python values."""
    out = []
    for frame in frames:
        fields = {k: (v.tolist() if isinstance(v, np.ndarray) else [v] * frame.n_samples)
                  for k, v in frame_fields(frame).items()}
        for i, t_ns in enumerate(frame.times_ns().tolist()):
            point = Point(measurement_for(frame.kind))
            for key, value in frame_tags(frame).items():
                point.tag(key, value)
            for key, values in fields.items():
                point.field(key, values[i])
            line = point.time(t_ns).to_line_protocol()
            if line:
                out.append(line.encode())
    return out


def encoded(frames: list[Frame]) -> list[bytes]:
    encoder = LineEncoder()
    return [line for f in frames for data, _ in encoder.encode(f) for line in split_lines(data)]


# -- numbers ----------------------------------------------------------------------------------
def test_float_text_is_python_repr_without_trailing_zero() -> None:
    rng = np.random.default_rng(5)
    random_bits = rng.integers(0, 2**63, 200_000, dtype=np.int64).view(np.float64)
    special = [0.0, -0.0, 1.0, -1.0, 0.1, 0.3, 1e16, 9999999999999998.0, 2.0**53, 2.0**53 + 2,
               1e-4, 1e-5, 1.5e-7, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
               1e22, 1e23, 123456789012345680.0, 1e100, -1e-100, 100.0, 1234.5, 2.5e-4]
    values = np.concatenate([random_bits[np.isfinite(random_bits)], special,
                             rng.standard_normal(50_000) * 10.0 ** rng.integers(-12, 12, 50_000),
                             np.round(rng.standard_normal(20_000) * 1e4, rng.integers(0, 5))])
    expected = [format_float(v) for v in values.tolist()]
    assert numfmt.format_floats(values) == expected
    assert numfmt.format_floats(np.array([np.nan, np.inf, -np.inf])) == ["nan", "inf", "-inf"]


@given(st.floats(allow_nan=False, allow_infinity=False))
@settings(max_examples=2000, deadline=None)
def test_float_text_any_double(x: float) -> None:
    assert numfmt.format_floats(np.array([x])) == [format_float(x)]
    assert float(numfmt.format_floats(np.array([x]))[0]) == x or x == 0


def test_int_text_is_str() -> None:
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.integers(-2**63, 2**63 - 1, 50_000, dtype=np.int64),
                             np.array([0, -1, 1, 2**63 - 1, -2**63], dtype=np.int64)])
    assert numfmt.format_ints(values) == [str(v) for v in values.tolist()]


# -- byte-identical to influxdb-client --------------------------------------------------------
_NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\")
_tag_values = st.text(_NAME_CHARS, min_size=1, max_size=12)
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def frames(draw: st.DrawFn) -> list[Frame]:
    n = draw(st.integers(1, 6))
    gas = draw(_tag_values)
    columns = {
        "f": np.array(draw(st.lists(_floats, min_size=n, max_size=n)), dtype=np.float64),
        "g": np.array(draw(st.lists(st.floats(-1e6, 1e6).map(round), min_size=n, max_size=n)),
                      dtype=np.float64),
        "i": np.array(draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n)),
                      dtype=np.int64),
        "ok": np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        "x32": np.array(draw(st.lists(st.floats(width=32, allow_nan=False), min_size=n,
                                      max_size=n)), dtype=np.float32),
    }
    count = draw(st.integers(1, 4))
    out = []
    for k in range(count):
        arrays = {"t": np.arange(n) * 0.25, **columns} if n > 1 else dict(columns)
        out.append(Frame(f"exp-1/cell.{k % 2}/gas_{k % 3}", "result.gas", k, T0 + k * 10**10,
                         arrays, {}, {"tags": {"gas": gas, "seq": "7"}}))
    return out


@given(frames())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_same_bytes_as_point(batch: list[Frame]) -> None:
    reference = point_lines(batch)
    assert encoded(batch) == reference  # frame by frame, in order
    data, n_lines, refused = LineEncoder().encode_many(batch)
    assert not refused and n_lines == len(reference)
    assert sorted(split_lines(data)) == sorted(reference)


def test_same_bytes_as_point_real_ec_lab_file() -> None:
    path = REAL / "gcpl.pr_182.1.mpt"
    if not path.exists():
        pytest.skip(f"{path} missing")
    arrays, units = read_mpt(path).standard()
    arrays["step"] = arrays["step"].astype(np.int64)
    n = arrays["t"].shape[0]
    blocks = []
    for k, lo in enumerate(range(0, n, 100)):
        block = {name: a[lo:lo + 100] for name, a in arrays.items()}
        t0 = T0 + round(block["t"][0] * 1e9)
        block["t"] = block["t"] - block["t"][0]
        blocks.append(Frame("real/gcpl182/potentiostat", "echem", k, t0, block, units))
    reference = point_lines(blocks)
    assert len(reference) == n
    assert encoded(blocks) == reference
    data, n_lines, _ = LineEncoder().encode_many(blocks)
    assert n_lines == n and sorted(split_lines(data)) == sorted(reference)


def test_same_bytes_as_point_for_pipeline_results() -> None:
    """Results as the processors make them: single-sample frames of many kinds."""
    from processors.electrochem import ElectrochemProcessor
    from processors.gas import GasProcessor
    from tests.helpers import echem_frame

    echem = ElectrochemProcessor()
    results = []
    for seq in range(200):
        results += echem.process(echem_frame(seq=seq, n=10))
    gas_frames = [Frame("exp1/cell01/gas", "result.gas", k, T0 + k * 10**9,
                        {"rate_mol_s": np.array([1e-9 * k]), "amount_mol": np.array([2e-7 * k])},
                        {}, {"tags": {"gas": g}}) for k in range(50) for g in ("H2", "CO2")]
    assert GasProcessor.type_name == "gas"
    frames_ = results + gas_frames
    assert len(results) >= 200
    data, n_lines, _ = LineEncoder().encode_many(frames_)
    assert sorted(split_lines(data)) == sorted(point_lines(frames_))


# -- escaping and names -----------------------------------------------------------------------
def test_escaping_rules() -> None:
    assert escape_measurement("a,b c=d") == r"a\,b\ c=d"
    assert escape_tag("k,v=w x") == r"k\,v\=w\ x"
    assert string_field('say "hi" \\ ok') == r'"say \"hi\" \\ ok"'
    data = encode_points("m x,y", {"t k": "v=1,2 3"}, {"f,=": 1.5, "s": 'a"b\\c'}, [5])
    assert data == b'm\\ x\\,y,t\\ k=v\\=1\\,2\\ 3 f\\,\\==1.5,s="a\\"b\\\\c" 5\n'


@pytest.mark.parametrize(("name", "what", "reason"), [
    ("a\nb", "tag value", "newline"),
    ("tab\there", "field key", "newline"),
    ("ends\\", "tag value", "backslash"),
    ("x\\,y", "tag key", "backslash"),
    ("#comment", "measurement", "comment"),
    ("time", "field key", "time"),
    ("", "field key", "empty"),
])
def test_names_influxdb_cannot_store_are_refused(name: str, what: str, reason: str) -> None:
    with pytest.raises(LineProtocolError, match=reason):
        check_name(name, what)


def test_backslashes_that_round_trip_are_kept() -> None:
    for name in ("a\\b", "a\\\\", "a\\\\,b", "\\x"):
        assert check_name(name, "tag value") == name


def test_refused_frame_names_the_field() -> None:
    frame = Frame("e/c/gas", "result.gas", 0, T0, {"rate": np.array([1.0])}, {},
                  {"tags": {"gas": "H2\nO"}})
    with pytest.raises(LineProtocolError, match="tag value"):
        LineEncoder().encode(frame)
    data, n, refused = LineEncoder().encode_many([frame, frame])
    assert n == 0 and [f for f, _ in refused] == [frame, frame]


# -- schema -----------------------------------------------------------------------------------
def test_tags_are_the_allowed_ones_sorted() -> None:
    frame = Frame("exp1/cell01/gas", "result.gas", 9, T0, {"rate": np.array([2.0])}, {},
                  {"tags": {"peak": "NMC(003)", "gas": "H2", "seq": "9", "time": "x",
                            "channel": "3"}})
    line = encode_frame(frame)
    assert line == ("result_gas,cell=cell01,experiment=exp1,gas=H2,instrument=gas,"
                    f"peak=NMC(003) rate=2 {T0}\n")
    assert "seq" not in line and "channel" not in line


def test_types_timestamps_and_event_meta() -> None:
    t = np.array([0.0, 0.1, 1e-9, 2.0000000004])
    frame = Frame("e/c/i", "echem", 0, T0, {"t": np.sort(t), "v": np.array([1.0, 2.5, -0.0, 3.0]),
                                           "n": np.arange(4, dtype=np.int32),
                                           "u": np.arange(4, dtype=np.uint16),
                                           "b": np.array([True, False, True, False]),
                                           "spectrum": np.ones((4, 3)), "z": np.ones(4) * 1j})
    lines = encode_frame(frame).splitlines()
    assert lines[0] == f"echem,cell=c,experiment=e,instrument=i b=true,n=0i,u=0i,v=1 {T0}"
    assert lines[1] == f"echem,cell=c,experiment=e,instrument=i b=false,n=1i,u=1i,v=2.5 {T0 + 1}"
    assert lines[2].endswith(f"v=-0 {T0 + 100_000_000}")
    assert [int(x.rsplit(" ", 1)[1]) - T0 for x in lines] == [0, 1, 100_000_000, 2_000_000_000]
    event = Frame("e/c/events", "event", 0, T0, {"dv": np.array([0.5])}, {},
                  {"event": "hard_short", "severity": "critical", "onset_ns": T0, "ok": True,
                   "nested": {"a": 1}, "tags": {"gas": "H2"}})
    assert encode_frame(event) == (f"event,cell=c,experiment=e,gas=H2,instrument=events dv=0.5,"
                                   f'event="hard_short",ok=true,onset_ns={T0}i,'
                                   f'severity="critical" {T0}\n')


def test_nan_and_inf_are_left_out_and_empty_samples_counted() -> None:
    frame = Frame("e/c/i", "echem", 0, T0, {"t": np.arange(4.0), "a": np.array([1, np.nan, 3,
                                                                                np.nan]),
                                           "b": np.array([np.inf, 2, 3, np.nan])})
    encoder = LineEncoder()
    [(data, n)] = encoder.encode(frame)
    assert data.decode().splitlines() == [
        f"echem,cell=c,experiment=e,instrument=i a=1 {T0}",
        f"echem,cell=c,experiment=e,instrument=i b=2 {T0 + 10**9}",
        f"echem,cell=c,experiment=e,instrument=i a=3,b=3 {T0 + 2 * 10**9}"]
    assert n == 3 and encoder.empty == 1


# -- unique points ----------------------------------------------------------------------------
def test_samples_sharing_a_nanosecond_are_moved_apart() -> None:
    frame = Frame("e/c/i", "echem", 0, T0, {"t": np.array([0.0, 0.0, 0.0, 1e-9, 5.0]),
                                           "v": np.arange(5.0)})
    encoder = LineEncoder()
    data = encoder.encode(frame)[0][0]
    times = [int(line.rsplit(b" ", 1)[1]) - T0 for line in split_lines(data)]
    assert times == [0, 1, 2, 3, 5 * 10**9] and encoder.nudged == 3


def test_frames_landing_on_written_points_are_moved() -> None:
    def event(seq: int, t0: int, instrument: str = "events") -> Frame:
        return Frame(f"e/c/{instrument}", "event", seq, t0, {"x": np.array([float(seq)])}, {},
                     {"event": "short"})
    encoder = LineEncoder(window=8)
    frames_ = [event(0, T0), event(1, T0), event(2, T0 + 5), event(3, T0 + 1),
               event(4, T0, "other"), event(5, T0 - 7)]
    times = [int(encoder.encode(f)[0][0].rsplit(b" ", 1)[1]) - T0 for f in frames_]
    # same series: T0 taken, then T0+1; an earlier one out of order lands on T0+1 -> T0+2;
    # another processor (instrument tag) keeps T0; a free earlier time is kept
    assert times == [0, 1, 5, 2, 0, -7] and encoder.nudged == 2


def test_encode_many_falls_back_frame_by_frame_on_mixed_layouts() -> None:
    a = Frame("e/c/p", "result.x", 0, T0, {"v": np.array([1], dtype=np.int64)})
    b = Frame("e/c/p", "result.x", 1, T0 + 1, {"v": np.array([1.5])})
    c = Frame("e/c/p", "result.x", 2, T0 + 2, {"v": np.array([2.0, 3.0])})
    data, n, refused = LineEncoder().encode_many([a, b, c])
    assert not refused and n == 2  # c has two values but no sample times: no storable field
    assert sorted(split_lines(data)) == sorted(point_lines([a, b]))


def test_chunks_of_max_lines() -> None:
    frame = Frame("e/c/i", "echem", 0, T0, {"t": np.arange(25.0), "v": np.arange(25.0)})
    chunks = LineEncoder().encode(frame, max_lines=10)
    assert [n for _, n in chunks] == [10, 10, 5]
    assert b"".join(d for d, _ in chunks) == encode_frame(frame).encode()


def test_split_lines_keeps_newlines_inside_strings() -> None:
    body = (b'm,t=a\\ "b f="x\ny",g=1 1\n'
            b'm f="q\\"\n" 2\n'
            b"# a comment\n"
            b"m f=1 3\n")
    assert split_lines(body) == [b'm,t=a\\ "b f="x\ny",g=1 1', b'm f="q\\"\n" 2', b"m f=1 3"]


def test_float32_written_as_its_exact_double() -> None:
    x = np.array([0.1], dtype=np.float32)
    data = encode_points("m", {}, {"x": x}, [1])
    value = float(data.split(b"=")[1].split()[0])
    assert value == float(x[0]) and struct.pack("<f", value) == x.tobytes()
    assert not math.isclose(value, 0.1, rel_tol=1e-12)
