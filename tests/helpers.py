"""Shared test helpers."""

from __future__ import annotations

import socket

import numpy as np

from stream.frame import Frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echem_frame(seq: int = 0, n: int = 10, stream: str = "exp1/cell01/potentiostat",
                t0_ns: int = 1_700_000_000_000_000_000) -> Frame:
    t = np.arange(n) * 0.1
    return Frame(stream, "echem", seq, t0_ns + seq * n * 100_000_000,
                 {"t": t, "voltage": 3.7 + 0.01 * np.sin(t + seq), "current": np.full(n, 0.05)},
                 {"t": "s", "voltage": "V", "current": "A"}, {"step": 1, "mode": "CC"})


def assert_frames_equal(a: Frame, b: Frame) -> None:
    assert (a.stream, a.kind, a.seq, a.t0_ns, a.units, a.meta, a.v) == \
        (b.stream, b.kind, b.seq, b.t0_ns, b.units, b.meta, b.v)
    assert list(a.arrays) == list(b.arrays)
    for name in a.arrays:
        x, y = a.arrays[name], b.arrays[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y)
