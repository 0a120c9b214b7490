"""FileFollower on real files in a temporary folder: partial lines held back, CRLF, reads capped
at ``max_read`` without losing or splitting a line, rotation by rename, replacement by a new
inode, truncation, a file that does not exist yet, the unfinished last line of a rotated or
finished file handed over once; the byte mode; and the file adapters handing over a last line
without a newline when the file is rotated or the adapter stops."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.follow import Chunk, FileFollower
from adapters.generic_csv import CsvAdapter
from adapters.pfeiffer import DatConfig, PvMassSpecDatAdapter
from stream.frame import Frame


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def drain(follower: FileFollower, final: bool = False) -> list[Chunk]:
    """Every chunk until the follower has nothing more to give."""
    chunks = []
    while True:
        chunk = follower.read_lines(final)
        if not (chunk.lines or chunk.restarted or chunk.more):
            return chunks
        chunks.append(chunk)


def lines_of(chunks: list[Chunk]) -> list[bytes]:
    return [line for c in chunks for line in c.lines]


# -- lines ------------------------------------------------------------------------------------

def test_a_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "run.mpt"
    path.write_bytes(b"a\nbb")
    f = FileFollower(path)
    chunk = f.read_lines()
    assert (chunk.lines, chunk.first_line, chunk.restarted) == ([b"a"], 1, False)
    assert f.pending_partial() == b"bb"
    assert f.read_lines().lines == []          # nothing new: still held back
    append(path, b"b")
    assert f.read_lines().lines == [] and f.pending_partial() == b"bbb"
    append(path, b"\ncc\ndd")
    chunk = f.read_lines()
    assert (chunk.lines, chunk.first_line) == ([b"bbb", b"cc"], 2)
    assert f.pending_partial() == b"dd"
    f.close()


def test_crlf_lines_even_when_the_cr_and_lf_arrive_apart(tmp_path: Path) -> None:
    path = tmp_path / "ec.mpt"
    path.write_bytes(b"one\r\ntwo\r")
    f = FileFollower(path)
    assert f.read_lines().lines == [b"one"]
    append(path, b"\nthree\r\nmid\rdle\n\r\n")
    chunk = f.read_lines()
    assert chunk.lines == [b"two", b"three", b"mid\rdle", b""] and chunk.first_line == 2
    f.close()


def test_final_hands_over_the_unfinished_last_line_once(tmp_path: Path) -> None:
    path = tmp_path / "done.mpt"
    path.write_bytes(b"h\n1\t2\n3\t4")  # EC-Lab: no newline after the last row
    f = FileFollower(path)
    assert f.read_lines().lines == [b"h", b"1\t2"]
    chunk = f.read_lines(final=True)
    assert (chunk.lines, chunk.first_line) == ([b"3\t4"], 3)
    assert f.pending_partial() == b""
    assert f.read_lines(final=True).lines == [] and f.read_lines().lines == []
    f.close()


def test_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "later.csv"
    f = FileFollower(path)
    for _ in range(3):
        chunk = f.read_lines()
        assert (chunk.lines, chunk.first_line, chunk.restarted) == ([], 1, False)
    path.write_bytes(b"x\ny\n")
    chunk = f.read_lines()
    assert (chunk.lines, chunk.first_line, chunk.restarted) == ([b"x", b"y"], 1, False)
    assert f.rotations == 0
    f.close()


def test_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"old\nrows\n")
    f = FileFollower(path, from_start=False)
    assert f.read_lines().lines == []
    append(path, b"new\n")
    assert f.read_lines().lines == [b"new"]
    f.close()


def test_rotation_by_rename_hands_over_the_old_files_last_line(tmp_path: Path) -> None:
    path = tmp_path / "run.mpt"
    path.write_bytes(b"h1\nr1\nr2")
    f = FileFollower(path)
    assert f.read_lines().lines == [b"h1", b"r1"]
    with path.open("ab") as writer:       # the instrument still holds the old file open
        path.rename(tmp_path / "run.mpt.1")
        # mid-rotation (no file under the path): the old handle is read on
        writer.write(b"-end\nr3")
        writer.flush()
        chunk = f.read_lines()
        assert (chunk.lines, chunk.first_line, chunk.restarted) == ([b"r2-end"], 3, False)
    path.write_bytes(b"h2\nq1\n")          # the new file
    chunk = f.read_lines()  # the old file is complete: its last line without newline too
    assert (chunk.lines, chunk.first_line, chunk.restarted) == ([b"r3"], 4, False)
    chunk = f.read_lines()
    assert (chunk.lines, chunk.first_line, chunk.restarted) == ([b"h2", b"q1"], 1, True)
    assert f.rotations == 1 and f.pending_partial() == b""
    f.close()


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name("incoming")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _recreate(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)  # a new inode: ours still holds the old one


def _truncate(path: Path, data: bytes) -> None:
    os.truncate(path, 0)
    append(path, data)


# how the file is switched, what it held before, what comes after: (lines, first, restarted)
SWITCHES = {
    "replaced by a new inode": (_replace, b"a\nb\nlast", b"A\n",
                                [([b"last"], 3, False), ([b"A"], 1, True)]),
    "unlinked and created again": (_recreate, b"a\nb\n", b"A\n", [([b"A"], 1, True)]),
    "truncated": (_truncate, b"a\nb\nlast", b"", [([b"last"], 3, False), ([], 1, True)]),
    "truncated and written again, shorter": (_truncate, b"a\nb\n", b"A\n",
                                             [([b"A"], 1, True)]),
}


@pytest.mark.parametrize("how", list(SWITCHES))
def test_a_replaced_or_truncated_file_restarts_after_the_old_last_line(tmp_path: Path,
                                                                       how: str) -> None:
    switch, before, after, want = SWITCHES[how]
    path = tmp_path / "cell.csv"
    path.write_bytes(before)
    f = FileFollower(path)
    assert f.read_lines().lines == [b"a", b"b"]
    switch(path, after)
    assert [(c.lines, c.first_line, c.restarted) for c in drain(f)] == want
    append(path, b"next\n")  # the new file goes on
    assert f.read_lines() == Chunk([b"next"], after.count(b"\n") + 1)
    assert f.rotations == 1
    f.close()


def test_reads_are_capped_and_the_backlog_comes_in_bounded_calls(tmp_path: Path) -> None:
    path = tmp_path / "big.mpt"
    rows = [f"{k}\t{k * 0.5:.6f}\t{'x' * (k % 37)}".encode() for k in range(20_000)]
    data = b"\n".join(rows)               # no newline at the end
    path.write_bytes(data)
    f = FileFollower(path, read_size=4096, max_read=64 << 10)
    chunks, sizes = [], []
    while True:
        before = f.bytes_read
        chunk = f.read_lines()
        sizes.append(f.bytes_read - before)
        if not (chunk.lines or chunk.more):
            break
        chunks.append(chunk)
    assert max(sizes) <= 64 << 10 and len(chunks) >= len(data) // (64 << 10)
    assert all(c.more for c in chunks[:-1]) and not chunks[-1].more
    assert [c.first_line for c in chunks] == list(np.cumsum([1] + [len(c.lines)
                                                                   for c in chunks[:-1]]))
    assert lines_of(chunks) == rows[:-1] and f.pending_partial() == rows[-1]
    assert f.read_lines(final=True).lines == [rows[-1]]
    f.close()


def test_final_waits_for_the_end_of_a_capped_backlog(tmp_path: Path) -> None:
    path = tmp_path / "big.mpt"
    path.write_bytes(b"0123456789\n" * 10 + b"tail")
    f = FileFollower(path, max_read=25)
    chunks = drain(f, final=True)
    assert lines_of(chunks) == [b"0123456789"] * 10 + [b"tail"]
    assert all(c.more for c in chunks[:-1]) and chunks[-1].lines[-1] == b"tail"
    f.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(
           b"\r", b"")), max_size=60),
       crlf=st.booleans(), final_newline=st.booleans(), max_read=st.integers(1, 300),
       read_size=st.integers(1, 64), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_any_cap_and_any_writes_give_every_line_once_in_order(
        tmp_path: Path, rows: list[bytes], crlf: bool, final_newline: bool, max_read: int,
        read_size: int, cuts: list[int]) -> None:
    end = b"\r\n" if crlf else b"\n"
    data = end.join(rows) + (end if final_newline and rows else b"")
    path = tmp_path / "fuzz.txt"
    path.unlink(missing_ok=True)
    path.touch()
    f = FileFollower(path, read_size=read_size, max_read=max_read)
    got: list[bytes] = []
    expected_first = 1
    for a, b in zip([0, *sorted(c % (len(data) + 1) for c in cuts)],
                    [*sorted(c % (len(data) + 1) for c in cuts), len(data)], strict=True):
        append(path, data[a:b])
        for chunk in drain(f):
            assert chunk.first_line == expected_first and not chunk.restarted
            expected_first += len(chunk.lines)
            got += chunk.lines
    for chunk in drain(f, final=True):
        assert chunk.first_line == expected_first
        expected_first += len(chunk.lines)
        got += chunk.lines
    want = rows if final_newline or not rows or rows[-1] else rows[:-1]
    assert got == want
    f.close()


# -- bytes ------------------------------------------------------------------------------------

def test_bytes_mode_caps_reads_and_restarts_on_rotation(tmp_path: Path) -> None:
    path = tmp_path / "scan.sac"
    path.write_bytes(bytes(range(256)) * 4)
    f = FileFollower(path, max_read=300)
    parts = []
    while (chunk := f.read_bytes()).content:
        assert len(chunk.data) <= 300 and chunk.offset == sum(len(p) for p in parts)
        parts.append(chunk.data)
    assert b"".join(parts) == bytes(range(256)) * 4
    append(path, b"more")
    assert f.read_bytes().data == b"more"
    path.rename(tmp_path / "scan.sac.1")
    assert f.read_bytes().data == b""           # nothing under the path: the old handle
    path.write_bytes(b"NEW")
    chunk = f.read_bytes()
    assert (chunk.data, chunk.offset, chunk.restarted) == (b"NEW", 0, True)
    with path.open("r+b") as fh:
        fh.truncate(1)
    chunk = f.read_bytes()
    assert (chunk.data, chunk.restarted) == (b"N", True) and f.rotations == 2
    f.close()


# -- the adapters ---------------------------------------------------------------------------

async def _frames(adapter, during) -> list[Frame]:
    frames: list[Frame] = []

    async def collect() -> None:
        async for frame in adapter.frames():
            frames.append(frame.validate())

    task = asyncio.create_task(collect())
    await during
    await asyncio.wait_for(task, 20)
    return frames


async def until(condition, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


CSV = {"time": {"column": "t"}, "columns": {"voltage": {"column": "U"},
                                           "current": {"column": "I"}}}


async def test_a_stopped_adapter_hands_over_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"t,U,I\n0,3.1,1\n1,3.2,1")  # the last row has no newline (yet)
    adapter = CsvAdapter("a/b/c", CsvAdapter.Config(path=str(path), poll_s=0.005, **CSV))

    async def stop() -> None:
        await until(lambda: adapter.rows_published == 1)
        await asyncio.sleep(0.05)                 # held back while following
        assert adapter.rows_published == 1
        adapter.stop()

    frames = await _frames(adapter, stop())
    assert np.concatenate([f.arrays["voltage"] for f in frames]).tolist() == [3.1, 3.2]
    assert adapter.rejects == 0


async def test_a_rotated_text_file_keeps_its_last_line(tmp_path: Path) -> None:
    """A PV MassSpec export ending without a newline is renamed away and a new one written:
    the old file's last scan is published (it used to be dropped)."""
    lines = ["PV MassSpec 1.0", "Time Relative (sec)\tTime Absolute (UTC)\t"
             "Time Absolute (Date_Time)\tStep\t1\t2"]
    rows = [f"{k}.0\t{1_600_000_000 + k}.5\t2020-09-13 12:26:40\t{k}\t1e-9\t2e-9"
            for k in range(3)]
    path = tmp_path / "scan.dat"
    path.write_text("\n".join(lines + rows), encoding="latin-1")
    adapter = PvMassSpecDatAdapter("a/b/ms", DatConfig(path=str(path), poll_s=0.005,
                                                       idle_timeout_s=0.2))

    async def rotate() -> None:
        await until(lambda: adapter.rows_read == 2)
        path.rename(tmp_path / "scan.dat.1")
        path.write_text("\n".join(lines + rows[:1]) + "\n", encoding="latin-1")

    frames = await _frames(adapter, rotate())
    assert [f.meta["step"] for f in frames] == [0, 1, 2, 0]
    assert adapter.counters()["file_restarts"] == 1 and adapter.rejects == 0


def test_a_mid_rotation_gap_is_not_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gap.csv"
    path.write_bytes(b"a\n")
    f = FileFollower(path)
    assert f.read_lines().lines == [b"a"]
    path.unlink()
    for _ in range(3):
        assert f.read_lines() == Chunk([], 2)
    path.write_bytes(b"b\n")
    assert f.read_lines() == Chunk([b"b"], 1, True)
    f.close()


@pytest.mark.parametrize("max_read", [1, 7, 1 << 20])
def test_a_line_longer_than_max_read(tmp_path: Path, max_read: int) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"x" * 50 + b"\nshort\n")
    f = FileFollower(path, max_read=max_read)
    assert lines_of(drain(f)) == [b"x" * 50, b"short"]
    f.close()
