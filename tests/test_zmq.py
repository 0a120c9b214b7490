"""ZeroMQ transport on loopback: lossless PUSH/PULL, counted loss on PUB/SUB, CURVE."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np
import pytest
import zmq.auth

from stream.transports import TransportConfig, open_publisher, open_subscriber

from .helpers import assert_frames_equal, echem_frame


async def _collect(sub, n: int, timeout: float = 10.0, delay: float = 0.0) -> list:
    got = []

    async def run() -> None:
        async for frame in sub:
            got.append(frame)
            if delay:
                await asyncio.sleep(delay)
            if len(got) >= n:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run(), timeout)
    return got


async def test_pushpull_is_lossless_and_zero_copy(port: int) -> None:
    url = f"zmq+pushpull://127.0.0.1:{port}?hwm=10"
    sub = open_subscriber(url)
    pub = open_publisher(url)
    frames = [echem_frame(seq=s) for s in range(500)]
    task = asyncio.create_task(_collect(sub, 500))
    for f in frames:
        await pub.publish(f)
    got = await task
    assert len(got) == 500 and sub.tracker.lost == 0
    for a, b in zip(got, frames, strict=True):
        assert_frames_equal(a, b)
    assert not got[0].arrays["voltage"].flags.owndata  # a view of the received buffer
    await pub.close()
    await sub.close()


async def test_big_detector_frame(port: int) -> None:
    url = f"zmq+pushpull://127.0.0.1:{port}"
    sub, pub = open_subscriber(url), open_publisher(url)
    from stream.frame import Frame
    img = np.random.default_rng(0).integers(0, 2**20, (1024, 1024), dtype=np.int32)
    task = asyncio.create_task(_collect(sub, 1))
    await pub.publish(Frame("e/c/detector", "image", 0, 1, {"image": img}, {"image": "counts"}))
    (got,) = await task
    np.testing.assert_array_equal(got.arrays["image"], img)
    await pub.close()
    await sub.close()


async def test_slow_subscriber_loss_is_counted(port: int) -> None:
    url = f"zmq+pubsub://127.0.0.1:{port}?hwm=2"  # messages; up to 64 frames each
    pub = open_publisher(url)
    sub = open_subscriber(url, ["opmon/exp1/#"])
    ready = asyncio.create_task(_collect(sub, 1, timeout=5))
    for _ in range(50):  # PUB/SUB joins late: publish until the subscriber hears us
        await pub.publish(echem_frame(seq=0, stream="exp1/warmup/p"))
        await asyncio.sleep(0.02)
        if ready.done():
            break
    await ready
    n = 3000
    slow = asyncio.create_task(_collect(sub, n, timeout=8, delay=0.001))
    for s in range(n):  # bursts of 24 kB frames: far more than the socket buffers hold
        await pub.publish(echem_frame(seq=s, n=1000))
        if s % 300 == 299:
            await asyncio.sleep(0.05)
    got = await slow
    st = sub.tracker.streams[("exp1/cell01/potentiostat", "echem")]
    received = [f.seq for f in got if f.stream == "exp1/cell01/potentiostat"]
    assert len(received) < n, "subscriber was not slow enough to overflow the HWM"
    # every frame that did not arrive is counted as lost
    assert st.lost == received[-1] - received[0] + 1 - len(received)
    assert st.lost > 0
    await pub.close()
    await sub.close()


async def test_subscriber_filters_mqtt_style_patterns(port: int) -> None:
    url = f"zmq+pushpull://127.0.0.1:{port}"
    sub = open_subscriber(url, ["opmon/+/cell02/#"])
    pub = open_publisher(url)
    task = asyncio.create_task(_collect(sub, 1, timeout=5))
    await pub.publish(echem_frame(seq=0, stream="e/cell01/p"))
    await pub.publish(echem_frame(seq=0, stream="e/cell02/p"))
    got = await task
    assert [f.cell for f in got] == ["cell02"]
    await pub.close()
    await sub.close()


@pytest.fixture
def curve_keys(tmp_path: Path) -> dict[str, Path]:
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    _, rogue_secret = zmq.auth.create_certificates(keys, "rogue")
    Path(client_public).rename(allowed / "client.key")
    return {"server_public": Path(server_public), "server_secret": Path(server_secret),
            "client_secret": Path(client_secret), "rogue_secret": Path(rogue_secret),
            "allowed": allowed}


async def test_curve_encryption_and_authentication(port: int, curve_keys: dict) -> None:
    url = f"zmq+pushpull://127.0.0.1:{port}"
    server = TransportConfig(url=url, curve_secret_key_file=str(curve_keys["server_secret"]),
                             curve_authorized_keys_dir=str(curve_keys["allowed"]))
    client = TransportConfig(url=url, curve_secret_key_file=str(curve_keys["client_secret"]),
                             curve_server_key_file=str(curve_keys["server_public"]))
    rogue = TransportConfig(url=url, curve_secret_key_file=str(curve_keys["rogue_secret"]),
                            curve_server_key_file=str(curve_keys["server_public"]))
    sub = open_subscriber(server)
    good, bad = open_publisher(client), open_publisher(rogue)
    task = asyncio.create_task(_collect(sub, 10, timeout=3))
    for s in range(5):
        await bad.publish(echem_frame(seq=s, stream="e/rogue/p"))
        await good.publish(echem_frame(seq=s))
    got = await task
    assert {f.stream for f in got} == {"exp1/cell01/potentiostat"} and len(got) == 5
    for end in (good, bad, sub):
        await end.close()
