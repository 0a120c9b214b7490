"""Detector adapters: the DECTRIS SIMPLON stream consumer (v1 multipart JSON, v2 CBOR) against a
producer on a loopback PUSH socket that sends the published message formats, and the image-folder
watcher on files written, truncated and grown on disk. The real Pilatus frame goes through both
paths into the azimuthal integrator."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import fabio
import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.dectris import DectrisStreamAdapter, DectrisStreamConfig
from adapters.image_folder import (
    ImageFolderAdapter,
    ImageFolderConfig,
    IncompleteImage,
    read_fabio,
)
from processors.azimuthal import AzimuthalConfig, AzimuthalProcessor
from stream.frame import Frame

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "detector_2d"
PONI, TIF, XY = (REAL / f"CeO2_Pilatus1M.{ext}" for ext in ("poni", "tif", "xy"))
needs_real = pytest.mark.skipif(not TIF.exists(), reason=f"shared real data missing: {REAL}")
STREAM = "exp1/cell01/detector"
CONFIG_V1 = {"wavelength": 0.4066, "photon_energy": 30493.0, "detector_distance": 0.2087,
             "beam_center_x": 498.18, "beam_center_y": 515.77, "x_pixel_size": 172e-6,
             "y_pixel_size": 172e-6, "count_time": 3.0, "frame_time": 3.0,
             "description": "Dectris Pilatus 1M", "detector_number": "p1m0113",
             "x_pixels_in_detector": 981, "y_pixels_in_detector": 1043,
             "data_collection_date": "2015-02-27T13:52:42.250+01:00"}
TIMEOUT_S = 20.0


# -- a SIMPLON detector's stream end ---------------------------------------------------------------

def h5_chunk(image: np.ndarray, compression: dict[str, Any]) -> bytes:
    """``image`` compressed by the HDF5 filter (hdf5plugin's bitshuffle or LZ4), as the raw
    chunk: the framing DECTRIS uses for bitshuffle-LZ4 (v1 and v2) and LZ4 (v2)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        ds = f.create_dataset("x", data=image, chunks=image.shape, **compression)
        return ds.id.read_direct_chunk((0,) * image.ndim)[1]


V1_TYPES = {"<u2": "uint16", "<u4": "uint32", "<i4": "int32", ">u4": "uint32", "|u1": "uint8"}


class Detector:
    """A PUSH socket bound on loopback that sends SIMPLON stream messages (v1: dheader-1.0,
    dimage-1.0 + dimage_d-1.0 + blob + dconfig-1.0, dseries_end-1.0; v2: CBOR start, image,
    end)."""

    def __init__(self, port: int):
        self.sock = zmq.asyncio.Context.instance().socket(zmq.PUSH)
        self.sock.linger = 1000
        self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.sent: list[list[Any]] = []

    async def send(self, parts: list[Any]) -> list[Any]:
        self.sent.append(parts)
        await self.sock.send_multipart(parts, copy=False)
        return parts

    async def header(self, series: int, detail: str = "basic",
                     config: dict[str, Any] | None = None) -> None:
        parts: list[Any] = [json.dumps({"htype": "dheader-1.0", "series": series,
                                        "header_detail": detail}).encode()]
        if detail in ("basic", "all"):
            parts.append(json.dumps(CONFIG_V1 if config is None else config).encode())
        if detail == "all":
            shape = [981, 1043]
            for htype, dtype in (("dflatfield-1.0", "float32"), ("dpixelmask-1.0", "uint32"),
                                 ("dcountrate_table-1.0", "float32")):
                parts.append(json.dumps({"htype": htype, "shape": shape,
                                         "type": dtype}).encode())
                parts.append(np.zeros(16, np.dtype(dtype)).tobytes())
        await self.send(parts)

    async def image(self, series: int, frame: int, image: np.ndarray, encoding: str = "<",
                    start_ns: int = 0, blob: Any = None, appendix: bytes | None = None) -> None:
        if blob is None:
            blob = self.encode_v1(image, encoding)
        y, x = image.shape
        parts = [json.dumps({"htype": "dimage-1.0", "series": series, "frame": frame,
                             "hash": ""}).encode(),
                 json.dumps({"htype": "dimage_d-1.0", "shape": [x, y],
                             "type": V1_TYPES[image.dtype.str], "encoding": encoding,
                             "size": memoryview(blob).nbytes}).encode(),
                 blob,
                 json.dumps({"htype": "dconfig-1.0", "start_time": start_ns,
                             "stop_time": start_ns + 1000, "real_time": 1000}).encode()]
        await self.send(parts + ([appendix] if appendix is not None else []))

    @staticmethod
    def encode_v1(image: np.ndarray, encoding: str) -> Any:
        if encoding in ("<", ">"):
            return image
        if encoding == "lz4<":
            return lz4.block.compress(image.tobytes(), store_size=False)
        return h5_chunk(image, hdf5plugin.Bitshuffle(cname="lz4"))   # bs16/bs32-lz4<

    async def end(self, series: int) -> None:
        await self.send([json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()])

    async def cbor(self, message: dict[str, Any]) -> None:
        await self.send([cbor2.dumps(cbor2.CBORTag(55799, message), datetime_as_timestamp=False)])

    def close(self) -> None:
        self.sock.close()


V2_TAGS = {"<u2": 69, "<u4": 70, "<i4": 78, "|u1": 64}


def v2_array(image: np.ndarray, compression: str = "none") -> cbor2.CBORTag:
    """RFC 8746 multi-dimensional array, the typed array's bytes wrapped in DECTRIS tag 56500
    when compressed."""
    data: Any = image.tobytes()
    if compression == "bslz4":
        data = cbor2.CBORTag(56500, ["bslz4", image.itemsize,
                                     h5_chunk(image, hdf5plugin.Bitshuffle(cname="lz4"))])
    elif compression == "lz4":
        data = cbor2.CBORTag(56500, ["lz4", 0, h5_chunk(image, hdf5plugin.LZ4())])
    return cbor2.CBORTag(40, [list(image.shape), cbor2.CBORTag(V2_TAGS[image.dtype.str], data)])


async def consume(adapter: Any, n: int, timeout: float = TIMEOUT_S) -> list[Frame]:
    """The first ``n`` frames the adapter publishes."""
    out: list[Frame] = []
    frames = adapter.frames()

    async def run() -> None:
        async for frame in frames:
            out.append(frame)
            if len(out) >= n:
                return

    try:
        await asyncio.wait_for(run(), timeout)
    finally:
        await frames.aclose()
    return out


def zmq_owner(array: np.ndarray) -> memoryview | None:
    """The received ZeroMQ frame's buffer at the end of the array's base chain, if any."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, memoryview) and isinstance(base.obj, zmq.Frame) else None


@pytest.fixture
def detector(port: int) -> Any:
    det = Detector(port)
    yield det
    det.close()


def stream_adapter(port: int, **cfg: Any) -> DectrisStreamAdapter:
    return DectrisStreamAdapter(STREAM, DectrisStreamConfig(endpoint=f"tcp://127.0.0.1:{port}",
                                                            **cfg))


@pytest.fixture(scope="module")
def real_frame() -> np.ndarray:
    return fabio.open(str(TIF)).data


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.loadtxt(XY, comments="#")


@pytest.fixture(scope="module")
def integrator(tmp_path_factory: pytest.TempPathFactory, reference: np.ndarray
               ) -> AzimuthalProcessor:
    """The azimuthal integrator on the real calibration, as a PONI v2.1 whose orientation 2
    takes the detector's row order as it comes (Dioptas flipped the frame instead)."""
    config = {"pixel1": 172e-6, "pixel2": 172e-6, "max_shape": [1043, 981], "orientation": 2}
    text = PONI.read_text().replace("PixelSize1: 0.000172\nPixelSize2: 0.000172\n", "")
    text = text.replace("Distance:", "poni_version: 2.1\nDetector: Detector\n"
                        f"Detector_config: {json.dumps(config)}\nDistance:")
    path = tmp_path_factory.mktemp("poni") / "pilatus_v21.poni"
    path.write_text(text)
    return AzimuthalProcessor(AzimuthalConfig(poni_file=str(path), npt=reference.shape[0],
                                              mask_negative=False))


def integrate(integrator: AzimuthalProcessor, image: np.ndarray | Frame) -> np.ndarray:
    frame = image if isinstance(image, Frame) else Frame(
        STREAM, "image", 0, 0, {"image": image}, {"image": "counts"}, {})
    return integrator.process(frame)[0].arrays["intensity"]


def assert_matches_reference(integrator: AzimuthalProcessor, frame: Frame, direct: np.ndarray,
                             reference: np.ndarray) -> None:
    """The published frame integrates exactly like the file read directly, and like Dioptas."""
    pattern = integrate(integrator, frame)
    np.testing.assert_array_equal(pattern, integrate(integrator, direct))
    assert np.corrcoef(pattern, reference[:, 1])[0, 1] >= 0.999


# -- stream v1 ---------------------------------------------------------------------------------------

@needs_real
async def test_v1_real_pilatus_frame_zero_copy_into_the_integrator(
        port: int, detector: Detector, real_frame: np.ndarray, reference: np.ndarray,
        integrator: AzimuthalProcessor) -> None:
    adapter = stream_adapter(port, clock={"offset_s": 0.5})   # overrides the estimate
    task = asyncio.create_task(consume(adapter, 2))
    await detector.header(7, "all")
    await detector.image(7, 0, real_frame, start_ns=0)
    await detector.image(7, 1, real_frame, start_ns=3_000_000_000,
                         appendix=b'{"user": "beamline"}')
    await detector.end(7)
    frames = await task
    assert adapter.rejects == 0, adapter.errors
    for number, frame in enumerate(frames):
        frame.validate()
        image = frame.arrays["image"]
        assert (frame.kind, frame.seq, image.dtype.str, image.shape) == \
            ("image", number, "<i4", real_frame.shape)
        np.testing.assert_array_equal(image, real_frame)
        # zero-copy: a view of the received message's data part, not of what was sent
        owner = zmq_owner(image)
        assert owner is not None and np.shares_memory(image, np.frombuffer(owner, np.uint8))
        assert not np.shares_memory(image, real_frame)
        meta = frame.meta
        assert (meta["series"], meta["frame"], meta["encoding"]) == (7, number, "<")
        assert meta["wavelength_m"] == pytest.approx(CONFIG_V1["wavelength"] * 1e-10)
        assert meta["beam_center_px"] == [CONFIG_V1["beam_center_x"], CONFIG_V1["beam_center_y"]]
        assert meta["pixel_size_m"] == [172e-6, 172e-6]
        assert (meta["distance_m"], meta["count_time_s"], meta["detector"]) == \
            (CONFIG_V1["detector_distance"], 3.0, CONFIG_V1["description"])
    # the instrument clock: data_collection_date + start_time, kept raw in meta.clock
    date_ns = int(datetime.fromisoformat(CONFIG_V1["data_collection_date"]).timestamp()) * 10**9
    date_ns += 250_000_000
    assert [f.meta["clock"]["instrument_t0_ns"] for f in frames] == \
        [date_ns, date_ns + 3_000_000_000]
    assert [f.t0_ns for f in frames] == [date_ns + 500_000_000, date_ns + 3_500_000_000]
    assert_matches_reference(integrator, frames[0], real_frame, reference)


async def test_v1_compressed_encodings_decode_to_the_sent_image(port: int,
                                                                detector: Detector) -> None:
    rng = np.random.default_rng(3)
    images = [("bs32-lz4<", rng.poisson(5, (131, 97)).astype("<u4")),   # 12707 px: leftover
              ("bs16-lz4<", rng.poisson(50, (64, 80)).astype("<u2")),
              ("bs8-lz4<", rng.integers(0, 255, (33, 17)).astype("u1")),
              ("lz4<", rng.poisson(2, (50, 70)).astype("<u4")),
              (">", rng.integers(0, 2**31, (20, 30)).astype(">u4")),
              ("<", rng.poisson(9, (40, 40)).astype("<u2"))]
    adapter = stream_adapter(port)
    task = asyncio.create_task(consume(adapter, len(images)))
    await detector.header(1, "none")
    for number, (encoding, image) in enumerate(images):
        await detector.image(1, number, image, encoding)
    frames = await task
    assert adapter.rejects == 0, adapter.errors
    for frame, (encoding, image) in zip(frames, images, strict=True):
        frame.validate()
        got = frame.arrays["image"]
        assert got.dtype == image.dtype and frame.meta["encoding"] == encoding
        np.testing.assert_array_equal(got, image)
        # only raw blobs can be views of the message
        assert (zmq_owner(got) is not None) == (encoding in ("<", ">"))


async def test_v1_out_of_order_and_bad_messages_are_named_counted_and_skipped(
        port: int, detector: Detector) -> None:
    image = np.arange(12, dtype="<u2").reshape(3, 4)
    adapter = stream_adapter(port)
    task = asyncio.create_task(consume(adapter, 4))
    await detector.image(5, 0, image)                               # 1: before any header
    await detector.header(5, "none")
    await detector.image(5, 0, image)                               # published
    await detector.image(5, 2, image)                               # 2: skips frame 1, published
    await detector.image(5, 1, image)                               # 3: goes backwards
    await detector.image(6, 3, image)                               # 4: series id changes
    await detector.image(5, 3, image, blob=image.tobytes()[:-2])    # 5: blob 2 bytes short
    await detector.image(5, 4, image, encoding="bs16-lz4<",         # 6: not valid LZ4
                         blob=b"\x00" * 12 + b"\xff" * 40)
    await detector.send([b'{"htype": "dfancy-1.0", "series": 5}'])  # 7: unknown htype
    await detector.send([b"\x93\x00garbage", b"more"])              # 8: not JSON
    await detector.send([json.dumps({"htype": "dimage-1.0", "series": 5, "frame": 5}).encode()])
    #                                                                 9: 1 part of 4
    await detector.end(9)                                           # 10: ends another series
    await detector.image(5, 6, image)                               # published
    await detector.end(5)
    await detector.header(8, "basic", config={"wavelength": 1.0})
    await detector.image(8, 0, image)                               # a new series: published
    frames = await task
    assert [(f.meta["series"], f.meta["frame"]) for f in frames] == [(5, 0), (5, 2), (5, 6),
                                                                     (8, 0)]
    for frame in frames:
        np.testing.assert_array_equal(frame.arrays["image"], image)
    assert adapter.rejects == 10 and len(adapter.errors) == 10
    expected = [("message 1 (dimage-1.0) series 5 frame 0", "no open series"),
                ("series 5 frame 2", "frames 1 missing"),
                ("series 5 frame 1", "frame 1 after frame 2"),
                ("series 6 frame 3", "series 6 inside series 5"),
                ("series 5 frame 3 part 3", "22 bytes of image data, shape [4, 3] uint16 "
                                            "needs 24"),
                ("series 5 frame 4 part 3", "cannot decode 'bs16-lz4<'"),
                ("(dfancy-1.0) part 1", "unknown htype 'dfancy-1.0'"),
                ("message 10 part 1", "not JSON"),
                ("series 5 frame 5", "1 parts, expected 4"),
                ("(dseries_end-1.0) series 9", "series 9 inside series 5")]
    for error, (where, reason) in zip(adapter.errors, expected, strict=True):
        assert error.startswith(f"{STREAM}: ") and where in error and reason in error, error
    assert adapter.counters() == {"rejects": 10, "messages": 16, "images": 4, "series": 2}


async def test_v1_wrong_sizes_and_header_problems(port: int, detector: Detector) -> None:
    image = np.ones((6, 5), "<u4")
    adapter = stream_adapter(port)
    task = asyncio.create_task(consume(adapter, 2))
    await detector.header(2, "all", config=CONFIG_V1)
    # the description says [5, 6] uint32 but 4 bytes are missing, though size matches the blob
    blob = image.tobytes()[:-4]
    await detector.image(2, 0, image, blob=blob)
    # shape [x, y] as three numbers
    await detector.send([json.dumps({"htype": "dimage-1.0", "series": 2, "frame": 1}).encode(),
                         json.dumps({"htype": "dimage_d-1.0", "shape": [5, 6, 1],
                                     "type": "uint32", "encoding": "<"}).encode(),
                         image.tobytes(),
                         json.dumps({"htype": "dconfig-1.0", "start_time": 0}).encode()])
    await detector.image(2, 2, image)
    # a header with fewer parts than its detail says: the series opens, the problem is counted
    await detector.send([json.dumps({"htype": "dheader-1.0", "series": 3,
                                     "header_detail": "all"}).encode(), b"{}"])
    await detector.image(3, 0, image)
    frames = await task
    assert [(f.meta["series"], f.meta["frame"]) for f in frames] == [(2, 2), (3, 0)]
    assert adapter.rejects == 4, adapter.errors
    assert "series 2 frame 0 part 3: 116 bytes of image data, shape [5, 6] uint32 needs 120" \
        in adapter.errors[0]
    assert "series 2 frame 1 part 2: shape [5, 6, 1] is not [x, y]" in adapter.errors[1]
    assert "series 2 was not ended (1 images); starting series 3" in adapter.errors[2]
    assert "series 3: 2 parts, header_detail 'all' has 8" in adapter.errors[3]
    assert "wavelength_m" not in frames[1].meta and frames[0].meta["wavelength_m"] > 0


async def test_v1_detector_restart_the_consumer_reconnects(port: int) -> None:
    image = np.full((8, 8), 3, "<u2")
    adapter = stream_adapter(port)
    task = asyncio.create_task(consume(adapter, 2))
    first = Detector(port)
    await first.header(1, "none")
    await first.image(1, 0, image)
    await asyncio.sleep(0.3)
    first.close()                       # the DCU restarts: a new socket on the same port
    await asyncio.sleep(0.2)
    second = Detector(port)
    try:
        await second.header(2, "none")
        await second.image(2, 0, image)
        frames = await task
    finally:
        second.close()
    assert [(f.meta["series"], f.meta["frame"]) for f in frames] == [(1, 0), (2, 0)]
    assert adapter.rejects == 1 and "series 1 was not ended" in adapter.errors[0]


def test_configs_build_as_the_node_does(tmp_path: Path) -> None:
    """``cls(stream, cls.Config.model_validate(params))``, as stream.build does it."""
    for cls, params in ((DectrisStreamAdapter, {"endpoint": "tcp://10.0.0.20:31001",
                                                "channels": ["threshold_1"],
                                                "clock": {"offset_s": 1.5}}),
                        (ImageFolderAdapter, {"directory": str(tmp_path), "pattern": "*.cbf",
                                              "follow": False, "settle_s": 0.5})):
        adapter = cls(STREAM, cls.Config.model_validate(params))
        assert adapter.type_name in ("dectris.stream", "detector.folder")
        with pytest.raises(ValueError, match="extra"):
            cls.Config.model_validate({**params, "no_such_key": 1})
    assert adapter.timebase.mode == "instrument"    # the folder replay
    folder = ImageFolderAdapter(STREAM, ImageFolderAdapter.Config.model_validate(
        {"directory": str(tmp_path), "follow": False, "clock": {"offset_s": 2.0}}))
    assert folder.timebase.mode == "fixed"          # a configured offset wins
    live = ImageFolderAdapter(STREAM, ImageFolderAdapter.Config.model_validate(
        {"directory": str(tmp_path)}))
    assert live.timebase.mode == "estimate"


def _valid_v1(frame: int) -> list[bytes]:
    image = np.arange(6, dtype="<u2").reshape(2, 3)
    return [json.dumps({"htype": "dimage-1.0", "series": 1, "frame": frame}).encode(),
            json.dumps({"htype": "dimage_d-1.0", "shape": [3, 2], "type": "uint16",
                        "encoding": "<", "size": 12}).encode(),
            image.tobytes(), json.dumps({"htype": "dconfig-1.0", "start_time": frame}).encode()]


def cbor_control(parts: list[bytes]) -> bool:
    """A v2 start or end message that random bytes happen to spell (valid, no frame)."""
    try:
        msg = cbor2.loads(parts[0])
    except Exception:  # noqa: BLE001
        return False
    return isinstance(msg, dict) and msg.get("type") in ("start", "end")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=6),     # garbage parts
    st.tuples(st.integers(0, 3), st.integers(0, 40), st.binary(max_size=8)),  # mutated valid
    st.binary(max_size=64).map(lambda b: [b"\xd9\xd9\xf7" + b]),  # garbage after the CBOR tag
    st.just("header"), st.just("end")), max_size=20))
def test_garbage_never_breaks_the_consumer(messages: list[Any]) -> None:
    adapter = DectrisStreamAdapter(STREAM)
    frame_no = 0
    for message in messages:
        if message == "header":
            parts = [json.dumps({"htype": "dheader-1.0", "series": 1,
                                 "header_detail": "none"}).encode()]
        elif message == "end":
            parts = [json.dumps({"htype": "dseries_end-1.0", "series": 1}).encode()]
        elif isinstance(message, tuple):   # a valid image with one part cut and patched
            index, cut, patch = message
            parts = _valid_v1(frame_no)
            frame_no += 1
            parts[index] = parts[index][:cut] + patch
        else:
            parts = message
        before = adapter.rejects
        out = adapter.process_message(parts)
        for frame in out:   # what is published is a valid 2 x 3 image frame
            frame.validate()
            assert frame.arrays["image"].shape == (2, 3)
        assert out or adapter.rejects > before or parts[0].startswith(b'{"htype": "dheader') \
            or parts[0].startswith(b'{"htype": "dseries_end') or cbor_control(parts)
    assert adapter.messages == len(messages)
    assert adapter.rejects == len(adapter.errors) or len(adapter.errors) == 100


# -- stream v2 ---------------------------------------------------------------------------------------

def _v2_start(series: int, shape: tuple[int, int], **extra: Any) -> dict[str, Any]:
    return {"type": "start", "series_id": series, "series_unique_id": f"u{series}",
            "arm_date": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
            "channels": ["threshold_1", "threshold_2"], "count_time": 0.5,
            "incident_wavelength": 0.4066, "incident_energy": 30493.0,
            "beam_center_x": 498.18, "beam_center_y": 515.77, "pixel_size_x": 172e-6,
            "pixel_size_y": 172e-6, "image_size_x": shape[1], "image_size_y": shape[0],
            "detector_description": "Dectris EIGER2 test", **extra}


def _v2_image(series: int, number: int, data: dict[str, Any], start: int = 0) -> dict[str, Any]:
    return {"type": "image", "series_id": series, "series_unique_id": f"u{series}",
            "image_id": number, "series_date": datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC),
            "start_time": [start, 1_000_000], "stop_time": [start + 500_000, 1_000_000],
            "real_time": [500_000, 1_000_000], "data": data}


@needs_real
async def test_v2_cbor_channels_compression_and_the_real_frame(
        port: int, detector: Detector, real_frame: np.ndarray, reference: np.ndarray,
        integrator: AzimuthalProcessor) -> None:
    rng = np.random.default_rng(5)
    low = rng.poisson(3, real_frame.shape).astype("<u2")
    adapter = stream_adapter(port)
    task = asyncio.create_task(consume(adapter, 4))
    await detector.cbor(_v2_start(11, real_frame.shape))
    await detector.cbor(_v2_image(11, 0, {"threshold_1": v2_array(real_frame),
                                          "threshold_2": v2_array(low, "bslz4")}))
    await detector.cbor(_v2_image(11, 1, {"threshold_1": v2_array(real_frame, "lz4"),
                                          "threshold_2": v2_array(low)}, start=2_000_000))
    await detector.cbor({"type": "end", "series_id": 11, "series_unique_id": "u11"})
    frames = await task
    assert adapter.rejects == 0, adapter.errors
    channels = [(f.meta["frame"], f.meta["channel"]) for f in frames]
    assert channels == [(0, "threshold_1"), (0, "threshold_2"), (1, "threshold_1"),
                        (1, "threshold_2")]
    for frame, expect in zip(frames, [real_frame, low, real_frame, low], strict=True):
        frame.validate()
        assert frame.arrays["image"].dtype == expect.dtype
        np.testing.assert_array_equal(frame.arrays["image"], expect)
        assert frame.meta["wavelength_m"] == pytest.approx(0.4066e-10)
        assert frame.meta["real_time_s"] == 0.5 and frame.meta["series"] == 11
    series_ns = int(datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC).timestamp()) * 10**9
    assert [f.meta["clock"]["instrument_t0_ns"] for f in frames] == \
        [series_ns, series_ns, series_ns + 2_000_000_000, series_ns + 2_000_000_000]
    assert_matches_reference(integrator, frames[0], real_frame, reference)


async def test_v2_bad_messages_and_channel_choice(port: int, detector: Detector) -> None:
    image = np.arange(20, dtype="<u4").reshape(4, 5)
    adapter = stream_adapter(port, channels=["threshold_1"])
    task = asyncio.create_task(consume(adapter, 2))
    good = {"threshold_1": v2_array(image), "threshold_2": v2_array(image)}
    await detector.cbor(_v2_image(1, 0, good))                             # 1: before start
    await detector.cbor(_v2_start(1, (4, 5)))
    await detector.cbor(_v2_image(1, 0, good))                             # published (1 ch.)
    await detector.cbor(_v2_image(1, 0, good))                             # 2: repeated
    await detector.cbor(_v2_image(1, 1, {"threshold_1": v2_array(image[:2])}))   # 3: 2 x 5
    await detector.cbor(_v2_image(1, 2, {"threshold_1": cbor2.CBORTag(40, [[4, 5], cbor2.CBORTag(
        70, image.tobytes()[:-4])])}))                                     # 4: 4 bytes short
    await detector.cbor(_v2_image(1, 3, {"threshold_1": cbor2.CBORTag(40, [[4, 5], cbor2.CBORTag(
        70, cbor2.CBORTag(56500, ["zstd", 4, b"x"]))])}))                  # 5: unknown codec
    await detector.cbor({"type": "status", "series_id": 1})                # 6: unknown type
    await detector.send([b"\xd9\xd9\xf7\xa1\x61"])                        # 7: truncated CBOR
    await detector.cbor(_v2_image(1, 4, good))                             # published
    frames = await task
    assert [(f.meta["frame"], f.meta["channel"]) for f in frames] == [(0, "threshold_1"),
                                                                      (4, "threshold_1")]
    assert adapter.rejects == 7, adapter.errors
    expected = ["(image) series 1 image 0: no open series",
                "image 0: frame 0 after frame 0",
                "image 1 channel 'threshold_1': dimensions [2, 5] differ from the start "
                "message's image size [4, 5]",
                "image 2 channel 'threshold_1': 76 bytes of image data, [4, 5] <u4 needs 80",
                "image 3 channel 'threshold_1': compression 'zstd'",
                "(status) series 1: unknown message type 'status'",
                "message 9 (cbor): not CBOR"]
    for error, text in zip(adapter.errors, expected, strict=True):
        assert text in error, error


# -- the folder watcher ------------------------------------------------------------------------------

def folder_adapter(path: Path, **cfg: Any) -> ImageFolderAdapter:
    cfg = {"poll_s": 0.02, "settle_s": 0.2, **cfg}
    return ImageFolderAdapter(STREAM, ImageFolderConfig(directory=str(path), **cfg))


@needs_real
async def test_folder_real_pilatus_tiff_cbf_edf_into_the_integrator(
        tmp_path: Path, real_frame: np.ndarray, reference: np.ndarray,
        integrator: AzimuthalProcessor) -> None:
    shutil.copy(TIF, tmp_path / "ceo2_00001.tif")
    fabio.cbfimage.CbfImage(data=real_frame).write(str(tmp_path / "ceo2_00002.cbf"))
    fabio.edfimage.EdfImage(data=real_frame, header={"ExposureTime": "3.0"}).write(
        str(tmp_path / "ceo2_00010.edf"))
    (tmp_path / "notes.txt.part").write_text("ignored: a temporary name")
    adapter = folder_adapter(tmp_path, follow=False, header_keys=None)
    frames = [frame async for frame in adapter.frames()]   # a one-pass read ends by itself
    assert adapter.rejects == 0, adapter.errors
    assert [f.meta["file"] for f in frames] == ["ceo2_00001.tif", "ceo2_00002.cbf",
                                                "ceo2_00010.edf"]   # 2 before 10
    for frame in frames:
        frame.validate()
        assert frame.arrays["image"].dtype == real_frame.dtype
        np.testing.assert_array_equal(frame.arrays["image"], real_frame)
        # a replay: the file's mtime is the time base as it is
        mtime = (tmp_path / frame.meta["file"]).stat().st_mtime_ns
        assert frame.t0_ns == mtime and frame.meta["clock"]["mode"] == "instrument"
    assert frames[0].meta["header"]["Exposure_time"] == "3.0000000 s"   # the Pilatus header
    assert frames[2].meta["header"]["ExposureTime"] == "3.0"
    assert_matches_reference(integrator, frames[0], real_frame, reference)
    assert adapter.counters() == {"rejects": 0, "files": 3, "images": 3, "retries": 0}


async def _write_slowly(path: Path, data: bytes, pieces: int, pause_s: float,
                        long_pause_at: int, long_pause_s: float) -> None:
    with open(path, "wb") as f:
        for i, chunk in enumerate(np.array_split(np.frombuffer(data, np.uint8), pieces)):
            f.write(chunk.tobytes())
            f.flush()
            await asyncio.sleep(long_pause_s if i == long_pause_at else pause_s)


@needs_real
async def test_folder_file_written_slowly_is_published_once_complete(
        tmp_path: Path, real_frame: np.ndarray) -> None:
    adapter = folder_adapter(tmp_path, settle_s=0.15, retries=5)
    collected: list[Frame] = []

    async def watch() -> None:
        async for frame in adapter.frames():
            collected.append(frame)

    task = asyncio.create_task(watch())
    # a pause longer than settle_s halfway: the half file is tried, fails, and waits
    await _write_slowly(tmp_path / "slow_0001.tif", TIF.read_bytes(), 12, 0.03, 5, 0.35)
    source = tmp_path.parent / f"{tmp_path.name}_source.cbf"   # outside the watched folder
    fabio.cbfimage.CbfImage(data=real_frame[:300]).write(str(source))
    await _write_slowly(tmp_path / "slow_0002.cbf", source.read_bytes(), 6, 0.03, 2, 0.3)
    source.unlink()
    deadline = time.monotonic() + TIMEOUT_S
    while len(collected) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)   # nothing more comes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [f.meta["file"] for f in collected] == ["slow_0001.tif", "slow_0002.cbf"]
    np.testing.assert_array_equal(collected[0].arrays["image"], real_frame)
    np.testing.assert_array_equal(collected[1].arrays["image"], real_frame[:300])
    assert adapter.rejects == 0, adapter.errors
    # the partial files were tried at the long pauses, did not parse, and waited
    counters = adapter.counters()
    assert counters["files"] == 2 and counters["retries"] >= 2


@needs_real
async def test_folder_truncated_tiff_rejected_and_the_next_file_published(
        tmp_path: Path, real_frame: np.ndarray) -> None:
    data = TIF.read_bytes()
    (tmp_path / "a_0001.tif").write_bytes(data[: len(data) // 2])
    adapter = folder_adapter(tmp_path, settle_s=0.05, retries=2)
    task = asyncio.create_task(consume(adapter, 1))
    await asyncio.sleep(0.3)
    (tmp_path / "a_0002.tif").write_bytes(data)
    (frame,) = await task
    assert frame.meta["file"] == "a_0002.tif"
    np.testing.assert_array_equal(frame.arrays["image"], real_frame)
    assert adapter.rejects == 1
    (error,) = adapter.errors
    assert f"{tmp_path / 'a_0001.tif'}: TIFF image data beyond the end of the file" in error
    assert "(after 3 tries)" in error


async def test_folder_hdf5_stack_one_frame_per_image_and_growth(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    stack = rng.poisson(4, (5, 30, 40)).astype("<u4")
    path = tmp_path / "scan_master.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=stack[:3], maxshape=(None, 30, 40),
                         chunks=(1, 30, 40), **hdf5plugin.Bitshuffle(cname="lz4"))
    old = time.time_ns() - 10**10
    os.utime(path, ns=(old, old))
    adapter = folder_adapter(tmp_path, settle_s=0.1)
    collected: list[Frame] = []

    async def watch() -> None:
        async for frame in adapter.frames():
            collected.append(frame)

    task = asyncio.create_task(watch())
    deadline = time.monotonic() + TIMEOUT_S
    while len(collected) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    with h5py.File(path, "a") as f:   # the writer appends two images
        ds = f["entry/data/data"]
        ds.resize(5, axis=0)
        ds[3:] = stack[3:]
    while len(collected) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert adapter.rejects == 0, adapter.errors
    assert [f.meta["index"] for f in collected] == [0, 1, 2, 3, 4]
    assert [f.meta["images"] for f in collected] == [3, 3, 3, 5, 5]
    for frame, image in zip(collected, stack, strict=True):
        frame.validate()
        assert frame.meta["dataset"] == "/entry/data/data" and frame.meta["file"] == path.name
        np.testing.assert_array_equal(frame.arrays["image"], image)
    # live: the clock model estimates the offset of the mtimes
    assert collected[0].meta["clock"]["mode"] == "estimate"


SWMR_WRITER = """
import sys, time
import h5py, numpy as np
path, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stack = np.random.default_rng(11).poisson(6, (n, 24, 32)).astype("<u2")
with h5py.File(path, "w", libver="latest") as f:
    ds = f.create_dataset("entry/data/data", shape=(0, 24, 32), maxshape=(None, 24, 32),
                          dtype="<u2", chunks=(1, 24, 32))
    f.swmr_mode = True
    for i in range(n):
        ds.resize(i + 1, axis=0)
        ds[i] = stack[i]
        ds.flush()
        time.sleep(pause)
    print("written", flush=True)
    time.sleep(pause)
"""


async def test_folder_hdf5_swmr_writer_holding_the_file_open(tmp_path: Path) -> None:
    path = tmp_path / "swmr_0001.h5"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWMR_WRITER, str(path), "5", "0.25",
        stdout=asyncio.subprocess.PIPE)
    adapter = folder_adapter(tmp_path, settle_s=0.1)
    try:
        frames = await consume(adapter, 5)
    finally:
        out, _ = await writer.communicate()
    assert out.strip() == b"written"
    expected = np.random.default_rng(11).poisson(6, (5, 24, 32)).astype("<u2")
    assert [f.meta["index"] for f in frames] == [0, 1, 2, 3, 4]
    for frame, image in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(frame.arrays["image"], image)
    # read while the writer still appended: some images came before the stack was complete
    assert frames[0].meta["images"] < 5
    assert adapter.rejects == 0, adapter.errors


async def test_folder_start_from_now_and_order_by_mtime(tmp_path: Path) -> None:
    images = [np.full((4, 6), i, "<i4") for i in range(3)]
    fabio.edfimage.EdfImage(data=images[0]).write(str(tmp_path / "old.edf"))
    adapter = folder_adapter(tmp_path, start_from="now", order="mtime", pattern="*.edf",
                             settle_s=0.05)
    task = asyncio.create_task(consume(adapter, 2))
    await asyncio.sleep(0.1)
    now = time.time_ns() - 5 * 10**9
    for name, image, mtime in (("b.edf", images[1], now + 10**9), ("c.edf", images[2], now)):
        fabio.edfimage.EdfImage(data=image).write(str(tmp_path / f"{name}.tmp"))
        os.utime(tmp_path / f"{name}.tmp", ns=(mtime, mtime))
    for name in ("b.edf", "c.edf"):   # appear complete by rename, c older than b
        os.rename(tmp_path / f"{name}.tmp", tmp_path / name)
    (tmp_path / "old.edf").write_bytes((tmp_path / "old.edf").read_bytes())   # changes: ignored
    frames = await task
    assert [f.meta["file"] for f in frames] == ["c.edf", "b.edf"]
    np.testing.assert_array_equal(frames[0].arrays["image"], images[2])
    np.testing.assert_array_equal(frames[1].arrays["image"], images[1])
    assert adapter.rejects == 0 and "old.edf" not in [f.meta["file"] for f in frames]


SMALL_IMAGE = (np.arange(40 * 50, dtype="<i4").reshape(40, 50) * 7919) % 100_003 - 2


def _small_image_file(kind: str) -> bytes:
    """SMALL_IMAGE written by fabio as a TIFF, CBF or EDF file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"small.{kind}"
        {"tif": fabio.tifimage.TifImage, "cbf": fabio.cbfimage.CbfImage,
         "edf": fabio.edfimage.EdfImage}[kind](data=SMALL_IMAGE).write(str(path))
        return path.read_bytes()


SMALL_FILES: dict[str, bytes] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["tif", "cbf", "edf"]), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_are_never_published_partial(tmp_path: Path, kind: str,
                                                     cut: float) -> None:
    data = SMALL_FILES.setdefault(kind, _small_image_file(kind))
    folder = Path(tempfile.mkdtemp(dir=tmp_path))   # tmp_path is shared by the examples
    (folder / f"cut.{kind}").write_bytes(data[: int(len(data) * cut)])
    adapter = folder_adapter(folder, follow=False)

    async def read() -> list[Frame]:
        return [frame async for frame in adapter.frames()]

    frames = asyncio.run(read())
    if frames:   # a cut in trailing padding may leave a whole image: then it is exact
        (frame,) = frames
        np.testing.assert_array_equal(frame.arrays["image"], SMALL_IMAGE)
    else:
        assert adapter.rejects == 1 and str(folder / f"cut.{kind}") in adapter.errors[0]


def _sweep_cuts(size: int) -> list[int]:
    """Cuts through the headers (every 3rd of the first 650 bytes: the TIFF directory, the CBF
    binary-section header), every one of the last 60 bytes, every 97th between."""
    return sorted({*range(0, min(size, 650), 3), *range(max(0, size - 60), size),
                   *range(0, size, 97)})


def test_every_cut_of_tiff_cbf_edf_is_refused_or_whole(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """fabio alone hangs on some cut CBFs, and returns padded images for some cut TIFFs (whole
    rows missing) and every cut EDF; read_fabio refuses them all."""
    import tifffile

    caplog.set_level(logging.CRITICAL, logger="fabio")   # fabio logs every failed read

    files = {kind: (_small_image_file(kind), SMALL_IMAGE) for kind in ("tif", "cbf", "edf")}
    padded = np.pad(SMALL_IMAGE, ((0, 8), (0, 14)))   # 48 x 64: whole tiles
    for name, kwargs in (("strips.tif", {"rowsperstrip": 3}), ("tiles.tif", {"tile": (16, 16)})):
        tifffile.imwrite(tmp_path / name, padded, **kwargs)
        files[name] = ((tmp_path / name).read_bytes(), padded)
    for kind, (data, whole) in files.items():
        path = tmp_path / f"cut.{kind.rsplit('.', 1)[-1]}"
        accepted = 0
        for cut in _sweep_cuts(len(data)):
            path.write_bytes(data[:cut])
            try:
                (image,) = read_fabio(path)
            except IncompleteImage as exc:
                assert exc.where.startswith(str(path))
                continue
            accepted += 1
            np.testing.assert_array_equal(image.data, whole, err_msg=f"{kind} cut at {cut}")
        assert accepted < 60, kind   # only cuts in trailing padding or metadata
        path.write_bytes(data)
        np.testing.assert_array_equal(read_fabio(path)[0].data, whole)


async def test_folder_removed_files_hold_nothing_back(tmp_path: Path) -> None:
    image = np.arange(12, dtype="<u2").reshape(3, 4)
    adapter = folder_adapter(tmp_path, settle_s=0.3)
    task = asyncio.create_task(consume(adapter, 2))
    with open(tmp_path / "a_0001.edf", "wb") as f:   # a writer that gives up half way
        f.write(b"{\n")
        f.flush()
        await asyncio.sleep(0.1)
        (tmp_path / "a_0001.edf").unlink()
    for name in ("a_0002.edf", "a_0001.edf"):       # a new a_0001 is a new file
        fabio.edfimage.EdfImage(data=image).write(str(tmp_path / name))
        await asyncio.sleep(0.05)
    frames = await task
    assert sorted(f.meta["file"] for f in frames) == ["a_0001.edf", "a_0002.edf"]
    assert adapter.rejects == 0, adapter.errors


async def test_folder_incomplete_edf_is_not_published_padded(tmp_path: Path) -> None:
    image = np.arange(2000, dtype="<u4").reshape(40, 50)
    fabio.edfimage.EdfImage(data=image).write(str(tmp_path / "full.edf"))
    data = (tmp_path / "full.edf").read_bytes()
    (tmp_path / "full.edf").unlink()
    (tmp_path / "b.edf").write_bytes(data[:-100])   # fabio would pad the missing pixels
    adapter = folder_adapter(tmp_path, follow=False)
    frames = [f async for f in adapter.frames()]
    assert frames == [] and adapter.rejects == 1
    assert "b.edf frame 0: data stream incomplete (after 1 tries)" in adapter.errors[0]
