"""Shared parts of the transport benchmarks: payloads, worker processes, timing, the result table
and a throw-away Mosquitto broker.

Every benchmark compares the opmon framed transport against a raw peer doing the same wire work,
measured in the same run: sender and receiver live in two persistent ``spawn`` worker processes
(so both cores are used), the variants are interleaved repetition by repetition, and the median
receiver-side rate is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import logging
import multiprocessing as mp
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream.frame import Frame

TARGET = 0.80            # framed throughput must be >= 80 % of raw
MB = 1e6                 # MB/s means 10^6 bytes per second
WARMUP_FRACTION = 0.05   # frames received before the clock starts
START_TIMEOUT_S = 15.0   # receiver: longest wait for the first frame
IDLE_TIMEOUT_S = 2.0     # receiver: stop when nothing arrived for this long (frames lost)

# -- payloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One payload shape. ``arrays`` maps name -> (dtype, shape)."""

    name: str
    stream: str
    kind: str
    arrays: dict[str, tuple[str, tuple[int, ...]]]
    units: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def make_arrays(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1)
        out = {}
        for name, (dtype, shape) in self.arrays.items():
            if name == "t":
                out[name] = np.arange(shape[0], dtype=dtype) * 0.01
            elif np.dtype(dtype).kind == "f":
                out[name] = rng.standard_normal(shape).astype(dtype)
            else:
                out[name] = rng.integers(0, 4096, size=shape).astype(dtype)
        return out

    def frame(self, seq: int, arrays: dict[str, np.ndarray], t0_ns: int = 0) -> Frame:
        return Frame(self.stream, self.kind, seq, t0_ns, arrays, self.units, self.meta)

    @property
    def array_bytes(self) -> int:
        return sum(np.dtype(d).itemsize * int(np.prod(s)) for d, s in self.arrays.values())


ECHEM_100 = Case(
    "echem 100 x3 f8", "exp1/cell01/potentiostat", "echem",
    {"t": ("<f8", (100,)), "voltage": ("<f8", (100,)), "current": ("<f8", (100,))},
    units={"t": "s", "voltage": "V", "current": "A"},
)
IMAGE_1MIB = Case(
    "image 1 MiB u2", "exp1/cell01/detector", "image",
    {"counts": ("<u2", (512, 1024))}, units={"counts": "counts"}, meta={"exposure_s": 0.1},
)
IMAGE_64KIB = Case(
    "image 64 KiB u2", "exp1/cell01/detector", "image",
    {"counts": ("<u2", (128, 256))}, units={"counts": "counts"}, meta={"exposure_s": 0.1},
)


async def send_frames(publish: Callable[[Frame], Awaitable[None]], case: Case, n: int) -> None:
    """The producer loop of a framed sender: one new Frame per block, arrays reused."""
    arrays = case.make_arrays()
    t0 = time.time_ns()
    for seq in range(n):
        await publish(case.frame(seq, arrays, t0 + seq * 1_000_000))


# -- receiver-side timing -------------------------------------------------------------------


class Meter:
    """Counts messages; the clock runs from message ``warmup`` to the last one. Also takes the
    process CPU time (all threads: Python and the library's I/O threads) over the same span."""

    __slots__ = ("n", "warmup", "t_start", "t_last", "cpu_start")

    def __init__(self, n_expected: int):
        self.n = 0
        self.warmup = max(1, int(n_expected * WARMUP_FRACTION))
        self.t_start = 0.0
        self.t_last = 0.0
        self.cpu_start = 0.0

    def hit(self) -> None:
        self.n += 1
        self.t_last = now = time.perf_counter()
        if self.n == self.warmup:
            self.t_start = now
            self.cpu_start = time.process_time()

    def result(self, **extra: Any) -> dict[str, Any]:
        cpu = time.process_time() - self.cpu_start
        timed = self.n - self.warmup
        seconds = self.t_last - self.t_start
        rate = timed / seconds if timed > 0 and seconds > 0 else 0.0
        cpu_us = cpu / timed * 1e6 if timed > 0 else 0.0
        return {"received": self.n, "rate": rate, "seconds": seconds, "cpu_us": cpu_us, **extra}


def clocks() -> tuple[float, float]:
    """Start of a sender's timed part: (wall clock, process CPU time)."""
    return time.perf_counter(), time.process_time()


def finish_send(start: tuple[float, float], n: int) -> dict[str, Any]:
    """End of a sender's timed part. Calls ``sent()``, so the CPU time also covers the library's
    I/O threads finishing their work while the receiver drains."""
    seconds = time.perf_counter() - start[0]
    sent()
    cpu = time.process_time() - start[1]
    return {"sent": n, "seconds": seconds, "cpu_us": cpu / n * 1e6}


async def guard(task: asyncio.Task, meter: Meter, deadline_s: float) -> None:
    """Cancel a receive loop that has gone quiet (lossy transports) or overran its deadline."""
    start = time.perf_counter()
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        now = time.perf_counter()
        quiet = now - (meter.t_last if meter.n else start)
        if quiet > (IDLE_TIMEOUT_S if meter.n else START_TIMEOUT_S) or now - start > deadline_s:
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def receive_frames(sub: Any, n: int, deadline_s: float,
                         wait_ready: Callable[[], Awaitable[Any]] | None = None) -> dict[str, Any]:
    """The consumer loop of a framed receiver (any stream.transports Subscriber)."""
    meter = Meter(n)

    async def consume() -> None:
        async for _frame in sub:
            meter.hit()
            if meter.n >= n:
                return

    task = asyncio.create_task(consume())
    if wait_ready is not None:
        await wait_ready()
    ready()
    await guard(task, meter, deadline_s)
    return meter.result(lost=sub.tracker.lost, rejects=sub.rejects)


# -- worker processes -------------------------------------------------------------------------

_CONN: Any = None


class _LogCounter(logging.Handler):
    """Counts warnings per message template instead of printing them (they would be timed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name}: {record.msg}"
        self.counts[key] = self.counts.get(key, 0) + 1


def ready(info: Any = None) -> None:
    """Called by a receiver once it can take frames: lets the orchestrator start the sender."""
    if _CONN is not None:
        _CONN.send(("ready", info))


def sent() -> None:
    """Called by a sender once its timed part is over. It then keeps its connection open until
    the receiver is done: closing earlier could drop frames still queued (ZeroMQ linger)."""
    if _CONN is not None:
        _CONN.send(("sent", None))
        _CONN.recv()  # released by Bench.run_once


def _worker_main(conn: Any) -> None:
    global _CONN
    _CONN = conn
    counter = _LogCounter()
    logging.basicConfig(level=logging.WARNING, handlers=[counter])
    while True:
        msg = conn.recv()
        if msg is None:
            return
        fn, args, profile = msg
        counter.counts = {}
        try:
            if profile:
                prof = cProfile.Profile()
                result = prof.runcall(fn, *args)
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(profile)
                result = dict(result, profile=out.getvalue())
            else:
                result = fn(*args)
            conn.send(("result", dict(result, warnings=counter.counts)))
        except BaseException:  # noqa: BLE001 - reported to the parent
            conn.send(("error", traceback.format_exc()))


class Worker:
    """A persistent spawn-started process that runs module-level functions on request."""

    def __init__(self, name: str):
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()

    def submit(self, fn: Callable[..., Any], *args: Any, profile: int = 0) -> None:
        self.conn.send((fn, args, profile))

    def expect(self, what: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no {what!r} within {timeout:.0f} s")
        tag, value = self.conn.recv()
        if tag == "error":
            raise RuntimeError(f"{self.name} failed:\n{value}")
        if tag != what:
            raise RuntimeError(f"{self.name}: expected {what!r}, got {tag!r}")
        return value

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


@dataclass
class Variant:
    """One way of moving ``case`` frames: a receiver and a sender function with their args.

    ``receiver(port, n, *args)`` must call ``ready()`` once it can take frames and return a
    ``Meter.result``; ``sender(port, n, *args)`` must call ``sent()`` after its timed part and
    before closing, and return a dict with ``sent`` and ``seconds``.
    """

    label: str
    receiver: Callable[..., dict[str, Any]]
    sender: Callable[..., dict[str, Any]]
    args: tuple = ()


@dataclass
class Runs:
    rx: list[dict[str, Any]] = field(default_factory=list)
    tx: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r["rate"] for r in self.rx)

    @property
    def tx_rate(self) -> float:
        return statistics.median(t["sent"] / t["seconds"] for t in self.tx if t["seconds"] > 0)

    @property
    def tx_cpu(self) -> float:
        return statistics.median(t["cpu_us"] for t in self.tx)

    @property
    def rx_cpu(self) -> float:
        return statistics.median(r["cpu_us"] for r in self.rx)

    @property
    def warnings(self) -> dict[str, int]:
        """Warnings logged in either process, summed over the repetitions."""
        out: dict[str, int] = {}
        for res in self.rx + self.tx:
            for key, count in res.get("warnings", {}).items():
                out[key] = out.get(key, 0) + count
        return out

    @property
    def lost(self) -> int:
        return max(t["sent"] - r["received"] for r, t in zip(self.rx, self.tx, strict=True))


class Bench:
    """Owns the two worker processes and runs variants against each other."""

    def __init__(self, timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self.rx = Worker("receiver")
        self.tx = Worker("sender")

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.rx.stop()
        self.tx.stop()

    def run_once(self, v: Variant, port: int, n: int,
                 profile: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        self.rx.submit(v.receiver, port, n, *v.args, profile=profile)
        self.rx.expect("ready", START_TIMEOUT_S)
        self.tx.submit(v.sender, port, n, *v.args, profile=profile)
        rx = None
        deadline = time.monotonic() + self.timeout_s
        while not self.tx.conn.poll(0.05):  # a receiver that fails must not leave us waiting
            if rx is None and self.rx.conn.poll():
                rx = self.rx.expect("result", 0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"sender: not done within {self.timeout_s:.0f} s; receiver: {rx}")
        self.tx.expect("sent", 0)
        try:
            if rx is None:
                rx = self.rx.expect("result", self.timeout_s)
        finally:
            self.tx.conn.send("release")
        tx = self.tx.expect("result", self.timeout_s)
        return rx, tx

    def compare(self, variants: list[Variant], n: int, reps: int,
                port: Callable[[], int]) -> dict[str, Runs]:
        """Interleave the variants, alternating their order every repetition."""
        runs = {v.label: Runs() for v in variants}
        for rep in range(reps):
            order = variants if rep % 2 == 0 else variants[::-1]
            for v in order:
                rx, tx = self.run_once(v, port(), n)
                runs[v.label].rx.append(rx)
                runs[v.label].tx.append(tx)
        return runs

    def profile(self, v: Variant, port: int, n: int, lines: int) -> None:
        rx, tx = self.run_once(v, port, n, profile=lines)
        for side, res in (("sender", tx), ("receiver", rx)):
            rate = res["rate"] if side == "receiver" else res["sent"] / res["seconds"]
            print(f"\n=== cProfile {v.label}, {v.args[0].name}: {side}, {n:,} frames, "
                  f"{rate:,.0f} f/s under the profiler ===")
            print(_trim_profile(res["profile"]))


def _trim_profile(text: str) -> str:
    keep = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(ln.replace(sys.prefix, "<venv>").replace(os.getcwd() + "/", "")
                     for ln in keep)


# -- results table ----------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    framed: Runs
    raw: Runs
    wire_bytes: int      # bytes on the wire per frame (same for framed and raw)
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.framed.rate / self.raw.rate if self.raw.rate else 0.0


def _fmt_rate(rate: float, wire_bytes: int) -> str:
    return f"{rate:>9,.0f} f/s {rate * wire_bytes / MB:>7,.1f} MB/s"


def print_table(title: str, rows: list[Row]) -> None:
    head = (f"{'case':<36} {'framed':>22} {'raw':>22} {'ratio':>6} {'target':>7}  result  "
            "notes")
    print(f"\n{title}")
    print(head)
    print("-" * len(head))
    for r in rows:
        verdict = "PASS" if r.ratio >= TARGET else "FAIL"
        notes = [f"tx {r.framed.tx_rate:,.0f}/{r.raw.tx_rate:,.0f} f/s"]
        if r.framed.lost or r.raw.lost:
            notes.append(f"lost max {r.framed.lost}/{r.raw.lost}")
        n_framed, n_raw = sum(r.framed.warnings.values()), sum(r.raw.warnings.values())
        if n_framed or n_raw:
            notes.append(f"logged warnings {n_framed:,}/{n_raw:,}")
        if r.note:
            notes.append(r.note)
        print(f"{r.case:<36} {_fmt_rate(r.framed.rate, r.wire_bytes)} "
              f"{_fmt_rate(r.raw.rate, r.wire_bytes)} {r.ratio:>6.2f} {f'>={TARGET:.2f}':>7}  "
              f"{verdict:<6}  {'; '.join(notes)}")
    print("rates: receiver side, median over repetitions; notes: median sender rate framed/raw, "
          "frames not received in the worst repetition and warnings logged (framed/raw)")
    logged: dict[str, list[int]] = {}
    for r in rows:
        for i, runs in enumerate((r.framed, r.raw)):
            for key, count in runs.warnings.items():
                logged.setdefault(key, [0, 0])[i] += count
    for key, (n_framed, n_raw) in sorted(logged.items()):
        print(f"logged {n_framed:,}/{n_raw:,} times (framed/raw): {key!r}")
    print_cpu_table(rows)


def print_cpu_table(rows: list[Row]) -> None:
    head = (f"{'CPU us per frame (process, all threads)':<40} {'sender framed':>14} {'raw':>8} "
            f"{'receiver framed':>16} {'raw':>8} {'both framed':>12} {'raw':>8}")
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        f_tx, r_tx, f_rx, r_rx = r.framed.tx_cpu, r.raw.tx_cpu, r.framed.rx_cpu, r.raw.rx_cpu
        print(f"{r.case:<40} {f_tx:>14,.1f} {r_tx:>8,.1f} {f_rx:>16,.1f} {r_rx:>8,.1f} "
              f"{f_tx + f_rx:>12,.1f} {r_tx + r_rx:>8,.1f}")
    print("medians over repetitions; the sender's CPU runs until the receiver is done, the "
          "receiver's over its timed span")


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer frames and repetitions (smoke run)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per variant (median taken)")
    p.add_argument("--only", default="", metavar="TEXT",
                   help="run only the cases whose name contains TEXT (e.g. 'echem', 'image')")
    p.add_argument("--profile", type=int, default=0, metavar="LINES",
                   help="instead of the table, profile one run of each variant with cProfile "
                        "in both processes and print the top LINES functions by own time")
    return p.parse_args()


def versions() -> str:
    import zmq
    return (f"python {sys.version.split()[0]}, numpy {np.__version__}, pyzmq {zmq.__version__}, "
            f"libzmq {zmq.zmq_version()}, {os.cpu_count()} cpus, opmon {_source_state()}")


def _source_state() -> str:
    """The commit the stream/ code comes from, and whether it has uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "stream"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(no git)"
    return head + (" + uncommitted changes in stream/" if dirty else "")


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def check_idle(window_s: float = 0.5) -> None:
    """Warn when other work is using the cores before we start: the ratios are measured in the
    same run, but rates and ratios get noisier."""
    try:
        busy0, total0 = _cpu_times()
        time.sleep(window_s)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return
    used = (busy1 - busy0) / max(1, total1 - total0)
    if used > 0.15:
        print(f"  warning: the cpus were {used:.0%} busy before the benchmark started; other "
              "processes compete for the cores, so the rates will be noisy", flush=True)


# -- network helpers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
# lossless at any subscriber speed (the default 1000 drops even QoS 1 under load)
max_queued_messages 0
log_dest file {log}
log_type error
log_type warning
"""


@contextlib.contextmanager
def mosquitto(binary: str | None = None) -> Iterator[int]:
    """Start Mosquitto on a free 127.0.0.1 port in a temporary directory; yields the port."""
    binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="opmon-bench-mosquitto-") as tmp:
        port = free_port()
        conf = os.path.join(tmp, "mosquitto.conf")
        log = os.path.join(tmp, "mosquitto.log")
        with open(conf, "w") as f:
            f.write(MOSQUITTO_CONF.format(port=port, log=log))
        proc = subprocess.Popen([binary, "-c", conf], cwd=tmp, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            _wait_listening(proc, port, log)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _wait_listening(proc: subprocess.Popen, port: int, log: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(OSError), open(log) as f:
                err += f.read()
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {err.strip()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout} s")
