"""ZeroMQ framed transport vs raw pyzmq sending the same multipart parts.

Framed: stream.transports ZmqPublisher -> ZmqSubscriber, i.e. Frame -> encode_multipart -> zmq.asyncio
send -> recv -> FrameDecoder (validation) -> SequenceTracker. Raw: blocking pyzmq sockets of the
same type and high-water mark sending the very same parts (topic, header bytes, array buffers),
copy=False for big arrays and copy=True for small ones, the receiver only counting messages.

Sender and receiver run in separate spawn processes; the receiver binds (for PUB/SUB too, so the
publisher connects to it and waits a moment for the subscription to arrive). For PUB/SUB the
publisher's high-water mark covers a whole run, so that nothing is dropped and both variants
move every frame, as with PUSH/PULL.

    python bench/bench_zmq_transport.py [--quick] [--reps N] [--only TEXT] [--profile LINES]
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq
from common import (
    ECHEM_100,
    IDLE_TIMEOUT_S,
    IMAGE_1MIB,
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
    parse_args,
    print_table,
    ready,
    receive_frames,
    send_frames,
    versions,
)

from stream.codec import encode_multipart
from stream.topics import topic_for
from stream.transports import TransportConfig
from stream.transports.zmq import ZmqPublisher, ZmqSubscriber

ZERO_COPY_MIN = 64 * 1024   # raw: arrays at least this big go copy=False (pyzmq's own threshold)
SLOW_JOINER_S = 0.3         # PUB/SUB: time for the subscription to reach the publisher
LINGER_MS = 5000
DEADLINE_S = 100.0


def _cfg(scheme: str, port: int, hwm: int) -> TransportConfig:
    return TransportConfig(url=f"{scheme}://127.0.0.1:{port}", hwm=hwm, bind="subscriber")


def _send_hwm(scheme: str, hwm: int, n: int) -> int:
    """PUB drops at its high-water mark. A sender that outruns the receiver would then measure
    how fast frames are thrown away, so the publisher may queue a whole run (the big arrays are
    sent zero-copy from one buffer, so this costs little memory) and nothing is lost."""
    return max(hwm, n) if scheme == "zmq+pubsub" else hwm


# -- framed: stream.transports ----------------------------------------------------------------


def tx_framed(port: int, n: int, case: Case, scheme: str, hwm: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        pub = ZmqPublisher(_cfg(scheme, port, _send_hwm(scheme, hwm, n)))
        if scheme == "zmq+pubsub":
            await asyncio.sleep(SLOW_JOINER_S)
        start = clocks()
        await send_frames(pub.publish, case, n)
        await pub.flush()  # the last batch; the loop below blocks, so it would wait for close
        result = finish_send(start, n)
        await pub.close()
        return result
    return asyncio.run(run())


def rx_framed(port: int, n: int, case: Case, scheme: str, hwm: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        sub = ZmqSubscriber(_cfg(scheme, port, hwm), ["opmon/#"])
        try:
            return await receive_frames(sub, n, DEADLINE_S)
        finally:
            await sub.close()
    return asyncio.run(run())


# -- raw: plain blocking pyzmq ----------------------------------------------------------------


def wire_parts(case: Case) -> list[Any]:
    """The multipart message the framed publisher sends for frame 0 of ``case``."""
    frame = case.frame(0, case.make_arrays())
    return encode_multipart(frame, topic_for(frame).encode())


def tx_raw(port: int, n: int, case: Case, scheme: str, hwm: int) -> dict[str, Any]:
    parts = wire_parts(case)
    copy = case.array_bytes < ZERO_COPY_MIN
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB if scheme == "zmq+pubsub" else zmq.PUSH)
    sock.sndhwm = _send_hwm(scheme, hwm, n)
    sock.linger = LINGER_MS
    sock.connect(f"tcp://127.0.0.1:{port}")
    if scheme == "zmq+pubsub":
        time.sleep(SLOW_JOINER_S)
    start = clocks()
    for _ in range(n):
        sock.send_multipart(parts, copy=copy)
    result = finish_send(start, n)
    sock.close()
    ctx.term()
    return result


def rx_raw(port: int, n: int, case: Case, scheme: str, hwm: int) -> dict[str, Any]:
    copy = case.array_bytes < ZERO_COPY_MIN
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB if scheme == "zmq+pubsub" else zmq.PULL)
    sock.rcvhwm = hwm
    sock.linger = 0
    if scheme == "zmq+pubsub":
        sock.setsockopt(zmq.SUBSCRIBE, b"opmon/")
    sock.bind(f"tcp://127.0.0.1:{port}")
    sock.rcvtimeo = int(START_TIMEOUT_S * 1000)
    meter = Meter(n)
    ready()
    try:
        sock.recv_multipart(copy=copy)
        meter.hit()
        sock.rcvtimeo = int(IDLE_TIMEOUT_S * 1000)
        while meter.n < n:
            sock.recv_multipart(copy=copy)
            meter.hit()
    except zmq.Again:
        pass
    sock.close()
    ctx.term()
    return meter.result()


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    reps = args.reps or (3 if args.quick else 5)
    # (case, frames per run, quick frames per run, high-water mark for both ends)
    plan = [(IMAGE_1MIB, 4000, 300, 100), (ECHEM_100, 50_000, 5_000, 10_000)]
    schemes = ["zmq+pushpull", "zmq+pubsub"]
    print(f"ZeroMQ framed vs raw pyzmq; {versions()}; reps {reps}")
    check_idle()
    rows = []
    with Bench() as bench:
        for case, n_full, n_quick, hwm in plan:
            if args.only not in case.name:
                continue
            n = n_quick if args.quick else n_full
            for scheme in schemes:
                framed = Variant(f"framed {scheme}", rx_framed, tx_framed, (case, scheme, hwm))
                raw = Variant(f"raw {scheme}", rx_raw, tx_raw, (case, scheme, hwm))
                if args.profile:
                    for v in (framed, raw):
                        bench.profile(v, free_port(), n, args.profile)
                    continue
                print(f"  {case.name}, {scheme}: {n:,} frames x {reps} reps ...", flush=True)
                runs = bench.compare([framed, raw], n, reps, free_port)
                wire = sum(memoryview(p).nbytes for p in wire_parts(case))
                hwms = f"hwm {_send_hwm(scheme, hwm, n)}/{hwm}"
                rows.append(Row(f"{case.name} {scheme.removeprefix('zmq+')}", runs[framed.label],
                                runs[raw.label], wire, note=f"{hwms}, {wire:,} B/frame"))
    if rows:
        print_table("ZeroMQ: framed (ZmqPublisher -> ZmqSubscriber) vs raw pyzmq, same parts",
                    rows)


if __name__ == "__main__":
    main()
