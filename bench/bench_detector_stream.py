"""DECTRIS SIMPLON stream v1 consumer vs a raw pyzmq PULL loop, 4-megapixel frames.

A detector process (spawn) binds a PUSH socket and sends a series as SIMPLON does: a dheader-1.0
(detail basic, with the detector config), then one 4-part dimage-1.0 message per image
(dimage-1.0, dimage_d-1.0, the raw "<" blob zero-copy from one buffer, dconfig-1.0), then
dseries_end-1.0. The receiving process runs either opmon's DectrisStreamAdapter (zmq.asyncio,
JSON parts parsed and checked, the image viewed zero-copy, a validated-shape image Frame made on
the corrected time base) or a plain blocking pyzmq PULL loop that receives the same multipart
messages (copy=False) and only counts them. Both connect with the same receive high-water mark;
they alternate repetition by repetition and the median receiver-side rate is reported.

Frames: EIGER 4M, 2070 x 2167 pixels, uint32 (17.9 MB) and uint16 (9.0 MB). A last line gives
the in-process decode time of one bitshuffle-LZ4 4M frame (no peer, no target).

    python bench/bench_detector_stream.py [--quick] [--reps N] [--only TEXT] [--profile LINES]
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import statistics
import time
from typing import Any

import numpy as np
import zmq
from common import (
    IDLE_TIMEOUT_S,
    START_TIMEOUT_S,
    Bench,
    Case,
    Meter,
    Row,
    Variant,
    check_idle,
    clocks,
    finish_send,
    free_port,
    guard,
    parse_args,
    print_table,
    ready,
    versions,
)

from adapters.dectris import DectrisStreamAdapter, DectrisStreamConfig, bslz4_decompress

X, Y = 2070, 2167                 # EIGER 4M: shape [x, y] in dimage_d, (y, x) in numpy
HWM = 16                          # receive high-water mark of both receivers (messages)
LINGER_MS = 5000
DEADLINE_S = 120.0
SERIES = 1
CONFIG = {"wavelength": 0.4066, "detector_distance": 0.2, "beam_center_x": 1035.0,
          "beam_center_y": 1083.5, "x_pixel_size": 75e-6, "y_pixel_size": 75e-6,
          "count_time": 0.001, "description": "Dectris EIGER 4M (bench)"}
EIGER_U4 = Case("EIGER 4M u4 raw '<'", "exp1/cell01/detector", "image",
                {"image": ("<u4", (Y, X))})
EIGER_U2 = Case("EIGER 4M u2 raw '<'", "exp1/cell01/detector", "image",
                {"image": ("<u2", (Y, X))})
_TYPES = {"<u4": "uint32", "<u2": "uint16"}


def series_messages(case: Case, n: int) -> tuple[list[bytes], list[list[Any]], list[bytes]]:
    """Header, the image messages and the end of one SIMPLON v1 series of ``n`` images."""
    image = case.make_arrays()["image"]
    header = [json.dumps({"htype": "dheader-1.0", "series": SERIES,
                          "header_detail": "basic"}).encode(), json.dumps(CONFIG).encode()]
    desc = json.dumps({"htype": "dimage_d-1.0", "shape": [X, Y], "type": _TYPES[image.dtype.str],
                       "encoding": "<", "size": image.nbytes}).encode()
    images = []
    for frame in range(n):
        start = frame * 1_000_000
        images.append([
            json.dumps({"htype": "dimage-1.0", "series": SERIES, "frame": frame,
                        "hash": ""}).encode(),
            desc, image,
            json.dumps({"htype": "dconfig-1.0", "start_time": start,
                        "stop_time": start + 1_000_000, "real_time": 1_000_000}).encode()])
    end = [json.dumps({"htype": "dseries_end-1.0", "series": SERIES}).encode()]
    return header, images, end


def wire_bytes(case: Case) -> int:
    _, images, _ = series_messages(case, 1)
    return sum(memoryview(p).nbytes for p in images[0])


# -- the detector -------------------------------------------------------------------------------


def tx_detector(port: int, n: int, case: Case) -> dict[str, Any]:
    header, images, end = series_messages(case, n)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.sndhwm = HWM
    sock.linger = LINGER_MS
    sock.bind(f"tcp://127.0.0.1:{port}")
    sock.send_multipart(header)
    start = clocks()
    for parts in images:
        sock.send_multipart(parts, copy=False)
    result = finish_send(start, n)
    with contextlib.suppress(zmq.Again):   # the receiver may have gone once it had its images
        sock.send_multipart(end, zmq.NOBLOCK)
    sock.close(linger=0)
    ctx.term()
    return result


# -- receivers ----------------------------------------------------------------------------------


def rx_opmon(port: int, n: int, case: Case) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        adapter = DectrisStreamAdapter(case.stream, DectrisStreamConfig(
            endpoint=f"tcp://127.0.0.1:{port}", rcvhwm=HWM))
        meter = Meter(n)
        frames = adapter.frames()

        async def consume() -> None:
            async for _frame in frames:
                meter.hit()
                if meter.n >= n:
                    return

        task = asyncio.create_task(consume())
        ready()
        await guard(task, meter, DEADLINE_S)
        await frames.aclose()
        return meter.result(rejects=adapter.rejects)
    return asyncio.run(run())


def rx_raw(port: int, n: int, case: Case) -> dict[str, Any]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.rcvhwm = HWM
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.rcvtimeo = int(START_TIMEOUT_S * 1000)
    meter = Meter(n)
    ready()
    try:
        sock.recv_multipart(copy=False)   # the header
        sock.rcvtimeo = int(IDLE_TIMEOUT_S * 1000)
        while meter.n < n:
            sock.recv_multipart(copy=False)
            meter.hit()
    except zmq.Again:
        pass
    sock.close()
    ctx.term()
    return meter.result()


# -- bitshuffle-LZ4 decode (informational) --------------------------------------------------------


def bslz4_decode_ms(reps: int) -> tuple[float, float]:
    """Median ms to decode one bitshuffle-LZ4 EIGER 4M uint32 frame, and its compression ratio."""
    import h5py
    import hdf5plugin

    image = np.random.default_rng(1).poisson(2.0, (Y, X)).astype("<u4")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        ds = f.create_dataset("x", data=image, chunks=image.shape,
                              **hdf5plugin.Bitshuffle(cname="lz4"))
        blob = ds.id.read_direct_chunk((0, 0))[1]
    bslz4_decompress(blob, 4)   # compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = bslz4_decompress(blob, 4)
        times.append(time.perf_counter() - t)
    assert np.array_equal(out.view("<u4").reshape(Y, X), image)
    return statistics.median(times) * 1e3, image.nbytes / len(blob)


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    reps = args.reps or (3 if args.quick else 5)
    n = 100 if args.quick else 400
    print(f"DECTRIS stream v1 consumer vs raw pyzmq PULL; {versions()}; reps {reps}")
    check_idle()
    rows = []
    with Bench() as bench:
        for case in (EIGER_U4, EIGER_U2):
            if args.only not in case.name:
                continue
            opmon = Variant("opmon DectrisStreamAdapter", rx_opmon, tx_detector, (case,))
            raw = Variant("raw pyzmq PULL", rx_raw, tx_detector, (case,))
            if args.profile:
                for v in (opmon, raw):
                    bench.profile(v, free_port(), n, args.profile)
                continue
            print(f"  {case.name}: {n:,} frames x {reps} reps ...", flush=True)
            runs = bench.compare([opmon, raw], n, reps, free_port)
            rejects = sum(r.get("rejects", 0) for r in runs[opmon.label].rx)
            wire = wire_bytes(case)
            rows.append(Row(case.name, runs[opmon.label], runs[raw.label], wire,
                            note=f"hwm {HWM}, {wire:,} B/frame, rejects {rejects}"))
    if rows:
        print_table("DECTRIS SIMPLON v1: opmon consumer (framed) vs raw pyzmq PULL (raw), "
                    "same messages", rows)
    if not args.profile and (not args.only or "bslz4" in args.only):
        ms, ratio = bslz4_decode_ms(reps)
        print(f"\nbitshuffle-LZ4 decode, EIGER 4M uint32 Poisson(2) frame (compression "
              f"{ratio:.1f}x): {ms:.1f} ms/frame, {1e3 / ms:.0f} frames/s on one core "
              "(informational, no peer)")


if __name__ == "__main__":
    main()
