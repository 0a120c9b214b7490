"""Frame envelope codecs: round trips (hypothesis) and rejection of malformed input."""

from __future__ import annotations

import contextlib
import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stream.codec import (
    PREAMBLE,
    FrameDecoder,
    encode_header,
    encode_json,
    encode_multipart,
    encode_payload,
)
from stream.frame import Frame, FrameError, register_kind

from .helpers import assert_frames_equal, echem_frame

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
dtypes = st.sampled_from(["<f8", "<f4", "<i8", "<i4", "<u2", "|u1", "|b1", ">f8"])
arrays = dtypes.flatmap(lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0,
                                                                               max_dims=3,
                                                                               max_side=6)))
meta_values = st.one_of(st.integers(-10**6, 10**6), st.text(max_size=8), st.booleans(),
                        st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def frames(draw) -> Frame:
    n = draw(st.integers(0, 5))
    arrs = {}
    for name in draw(st.lists(names, max_size=5, unique=True)):
        if name == "t":
            continue
        arrs[name] = draw(arrays)
    if draw(st.booleans()):
        arrs["t"] = np.arange(n, dtype=np.float64) * draw(st.floats(0.001, 10))
    part = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True)
    stream = "/".join(draw(part) for _ in range(3))
    kind = draw(st.sampled_from(["echem", "pressure", "image", "result.capacity", "event"]))
    return Frame(stream, kind, draw(st.integers(0, 2**63 - 1)),
                 draw(st.integers(-(2**63), 2**63 - 1)), arrs,
                 draw(st.dictionaries(names, st.text(max_size=5), max_size=3)),
                 draw(st.dictionaries(names, meta_values, max_size=3)))


@given(frames())
@settings(max_examples=200, deadline=None)
def test_multipart_round_trip(frame: Frame) -> None:
    parts = encode_multipart(frame, b"topic")
    wire = [bytes(memoryview(p).cast("B")) if isinstance(p, np.ndarray) else p for p in parts]
    assert_frames_equal(FrameDecoder().decode_multipart(wire[1:]), frame)


@given(frames())
@settings(max_examples=200, deadline=None)
def test_payload_round_trip(frame: Frame) -> None:
    assert_frames_equal(FrameDecoder().decode_payload(encode_payload(frame)), frame)


@given(frames())
@settings(max_examples=100, deadline=None)
def test_json_round_trip_for_scalar_frames(frame: Frame) -> None:
    frame.arrays = {k: v.ravel() for k, v in frame.arrays.items() if v.dtype.kind in "fiub"}
    frame.arrays = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v)
                    for k, v in frame.arrays.items()}
    decoded = FrameDecoder().decode_json(encode_json(frame))
    for arr in frame.arrays.values():  # JSON has no infinities: they travel as null -> NaN
        if arr.dtype.kind == "f":
            arr[~np.isfinite(arr)] = np.nan
    assert_frames_equal(decoded, frame)


def test_json_keeps_nan_as_null() -> None:
    f = echem_frame()
    f.arrays["voltage"][3] = np.nan
    doc = json.loads(encode_json(f))
    assert doc["data"]["voltage"][3] is None
    back = FrameDecoder().decode_payload(encode_json(f))
    assert math.isnan(back.arrays["voltage"][3])


def test_hand_written_json_frame_is_accepted() -> None:
    doc = {"v": 1, "stream": "e/c/thermo", "kind": "temperature", "seq": 0, "t0_ns": 10,
           "data": {"temperature": [25.0, 25.5]}}
    f = FrameDecoder().decode_payload(json.dumps(doc).encode())
    assert f.arrays["temperature"].tolist() == [25.0, 25.5]


def test_multipart_receiver_views_buffers_without_copy() -> None:
    f = echem_frame()
    parts = encode_multipart(f, b"t")
    buf = bytearray(memoryview(parts[2]).cast("B"))
    decoded = FrameDecoder().decode_multipart([parts[1], buf, parts[3], parts[4]])
    buf[:8] = struct.pack("<d", 42.0)
    assert decoded.arrays["t"][0] == 42.0  # a view of the buffer, not a copy


def _reject(fn, *args) -> FrameError:
    with pytest.raises(FrameError) as info:
        fn(*args)
    return info.value


def test_rejects_wrong_version() -> None:
    f = echem_frame()
    f.v = 2
    err = _reject(FrameDecoder().decode_payload, encode_payload(f))
    assert err.field == "v" and err.stream == f.stream


def test_rejects_unknown_kind() -> None:
    f = echem_frame()
    f.kind = "teleport"
    err = _reject(FrameDecoder().decode_payload, encode_payload(f))
    assert err.field == "kind" and "teleport" in str(err) and f.stream in str(err)


def test_registered_kind_is_accepted() -> None:
    register_kind("humidity")
    f = echem_frame()
    f.kind = "humidity"
    assert FrameDecoder().decode_payload(encode_payload(f)).kind == "humidity"


def test_rejects_byte_length_mismatch() -> None:
    f = echem_frame()
    parts = encode_multipart(f, b"t")
    short = bytes(memoryview(parts[3]).cast("B"))[:-8]
    err = _reject(FrameDecoder().decode_multipart, [parts[1], parts[2], short, parts[4]])
    assert err.field == "arrays.voltage" and "byte length" in str(err)


def test_rejects_truncated_payload() -> None:
    payload = encode_payload(echem_frame())
    err = _reject(FrameDecoder().decode_payload, payload[:-40])
    assert err.stream == "exp1/cell01/potentiostat" and err.field.startswith("arrays.")


def test_rejects_payload_over_limit() -> None:
    payload = encode_payload(echem_frame(n=1000))
    err = _reject(FrameDecoder(max_payload_bytes=1000).decode_payload, payload)
    assert err.field == "payload" and "limit" in str(err)


def test_rejects_non_finite_timestamps() -> None:
    f = echem_frame()
    f.arrays["t"] = f.arrays["t"].copy()
    f.arrays["t"][4] = np.inf
    err = _reject(FrameDecoder().decode_payload, encode_payload(f))
    assert err.field == "arrays.t" and "non-finite" in str(err)
    doc = json.loads(encode_json(echem_frame()))
    doc["t0_ns"] = float("nan")
    err = _reject(FrameDecoder().decode_json, json.dumps(doc))
    assert err.field == "t0_ns"


def test_rejects_bad_headers() -> None:
    dec = FrameDecoder()
    assert _reject(dec.decode_payload, b"garbage!" * 5).field == "header"
    header = encode_header(echem_frame())
    broken = header[:PREAMBLE.size] + b"{not json" + header[PREAMBLE.size + 9:]
    assert _reject(dec.decode_multipart, [broken]).field == "header"
    f = echem_frame()
    f.stream = "no-slashes"
    assert _reject(dec.decode_payload, encode_payload(f)).field == "stream"


def _edit_descriptor(frame: Frame, old: bytes, new: bytes) -> bytes:
    header = encode_header(frame)
    desc = header[PREAMBLE.size:].replace(old, new, 1)
    _, v, flags, _, seq, t0 = PREAMBLE.unpack_from(header)
    return PREAMBLE.pack(b"OPMF", v, flags, len(desc), seq, t0) + desc


def test_rejects_object_dtype_and_bad_shape() -> None:
    f = echem_frame()
    err = _reject(FrameDecoder().decode_multipart, [_edit_descriptor(f, b'"<f8"', b'"|O"')])
    assert err.field == "arrays.t.dtype" and err.stream == f.stream
    err = _reject(FrameDecoder().decode_multipart,
                  [_edit_descriptor(f, b'"shape":[10]', b'"shape":[-1]')])
    assert err.field == "arrays.t.shape"


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_fuzzed_bytes_never_crash_the_decoder(data: bytes) -> None:
    dec = FrameDecoder()
    for fn in (dec.decode_payload, lambda d: dec.decode_multipart([d]), dec.decode_json):
        with contextlib.suppress(FrameError):
            fn(data)


@given(st.binary(min_size=1, max_size=64), st.integers(0, 200))
@settings(max_examples=300, deadline=None)
def test_fuzzed_corruption_of_valid_payload(noise: bytes, at: int) -> None:
    payload = bytearray(encode_payload(echem_frame()))
    at = at % len(payload)
    payload[at:at + len(noise)] = noise
    with contextlib.suppress(FrameError):
        FrameDecoder().decode_payload(bytes(payload))


def test_deeply_nested_json_is_a_frame_error() -> None:
    err = _reject(FrameDecoder().decode_payload, b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}")
    assert err.field == "header"


def test_same_descriptor_with_another_version_is_rejected() -> None:
    dec = FrameDecoder()
    f = echem_frame()
    dec.decode_payload(encode_payload(f))  # cached as version 1
    f.v = 2
    assert _reject(dec.decode_payload, encode_payload(f)).field == "v"


def test_json_strings_in_numeric_arrays_are_rejected() -> None:
    doc = json.loads(encode_json(echem_frame()))
    doc["data"]["voltage"][0] = "3.7"
    err = _reject(FrameDecoder().decode_json, json.dumps(doc))
    assert err.field == "data.voltage"


def test_zeromq_batch_of_packed_and_zero_copy_frames() -> None:
    from stream.codec import PACK_BELOW_BYTES, encode_parts
    small = [echem_frame(seq=s) for s in range(3)]
    big = Frame("e/c/detector", "image", 0, 5,
                {"image": np.arange(PACK_BELOW_BYTES, dtype=np.uint16).reshape(256, -1)})
    parts = [p for f in (small[0], big, small[1], small[2]) for p in encode_parts(f)]
    assert len(parts) == 1 + 2 + 1 + 1  # small frames packed, the image as header + buffer
    frames, error = FrameDecoder().decode_batch(parts)
    assert error is None
    for got, want in zip(frames, (small[0], big, small[1], small[2]), strict=True):
        assert_frames_equal(got, want)


def test_bad_frame_inside_a_batch_keeps_the_frames_before_it() -> None:
    from stream.codec import encode_parts
    good = [encode_parts(echem_frame(seq=s))[0] for s in range(3)]
    frames, error = FrameDecoder().decode_batch([good[0], good[1][:-16], good[2]])
    assert [f.seq for f in frames] == [0]
    assert error is not None and error.stream == "exp1/cell01/potentiostat"
