"""End to end into a real InfluxDB 1.x: opmon's InfluxDB sink (frames -> encode -> batch -> gzip
-> POST /write) against the server's own raw ingest rate for pre-built 5,000-line gzip'd
batches of the same lines. Target: opmon >= 70 % of raw.

    python bench/bench_influx_ingest.py [--block-lines 500000] [--result-lines 100000] [--reps 3]

The script starts ``influxd`` on a free loopback port in a temporary directory. Cases:
- potentiostat blocks: 100-sample frames (t, voltage, current, temperature, step, a bool);
- pipeline results: the demo processors' single-sample result frames from a simulated
  experiment, repeated over more cells.

The raw peer: the exact lines opmon writes, cut into the same 5,000-line batches, gzip'd at the
sink's level beforehand, posted one after another on one kept-alive connection (``http.client``).
opmon: ``InfluxDBSink`` (batch_size 5,000, gzip level 1, one writer thread and connection)
given the frames; the clock stops when ``close()`` returns, every batch acknowledged. Each run
writes into a fresh database and its point count is checked. Raw and opmon alternate; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_lineprotocol import (  # noqa: E402
    pipeline_results,
    potentiostat_blocks,
)
from stream.frame import Frame  # noqa: E402
from stream.influx.config import InfluxSinkConfig  # noqa: E402
from stream.lineprotocol import LineEncoder, split_lines  # noqa: E402
from stream.sinks.influxdb import InfluxDBSink  # noqa: E402
from tests.servers import InfluxDBServer  # noqa: E402

TARGET = 0.70
BATCH = 5000
GZIP_LEVEL = 1


def more_cells(frames: list[Frame], copies: int) -> list[Frame]:
    """The same frames again for other cells (``cellNN`` renamed), so series stay distinct."""
    out = []
    for c in range(copies):
        for f in frames:
            experiment, cell, instrument = f.stream.split("/")
            out.append(replace(f, stream=f"{experiment}/{cell}x{c:02d}/{instrument}"))
    return out


def raw_batches(frames: list[Frame]) -> tuple[list[bytes], int]:
    """opmon's lines for these frames in 5,000-line batches, gzip'd: the peer's payloads."""
    data, n_lines, _ = LineEncoder().encode_many(frames)
    lines = split_lines(data)
    bodies = [gzip.compress(b"\n".join(lines[i:i + BATCH]) + b"\n", GZIP_LEVEL, mtime=0)
              for i in range(0, len(lines), BATCH)]
    return bodies, n_lines


def post_raw(server: InfluxDBServer, db: str, bodies: list[bytes]) -> float:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
    t = time.perf_counter()
    for body in bodies:
        conn.request("POST", f"/write?db={db}&precision=ns", body, headers)
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 204:
            raise RuntimeError(f"raw write {resp.status}: {text[:300]!r}")
    elapsed = time.perf_counter() - t
    conn.close()
    return elapsed


def run_sink(server: InfluxDBServer, db: str, frames: list[Frame], spool: Path) -> float:
    cfg = InfluxSinkConfig(url=server.url, database=db, batch_size=BATCH,
                           gzip_level=GZIP_LEVEL, spool_dir=str(spool))
    sink = InfluxDBSink(cfg)

    async def go() -> float:
        await sink.start()
        t = time.perf_counter()
        for frame in frames:
            await sink.write(frame)
        await sink.close()
        return time.perf_counter() - t

    elapsed = asyncio.run(go())
    counters = sink.counters()
    if counters["points_spooled"] or counters["points_dead_lettered"] or counters["retries"]:
        raise RuntimeError(f"the sink did not write everything directly: {counters}")
    return elapsed


def stored(server: InfluxDBServer, db: str) -> int:
    total = 0
    for m in server.rows("SHOW MEASUREMENTS", db):
        fields = server.rows(f'SHOW FIELD KEYS FROM "{m["name"]}"', db)
        numeric = [f["fieldKey"] for f in fields if f["fieldType"] in ("float", "integer")]
        rows = server.rows(f'SELECT COUNT("{numeric[0]}") FROM "{m["name"]}"', db)
        total += rows[0]["count"] if rows else 0
    return total


def run_case(server: InfluxDBServer, name: str, frames: list[Frame], reps: int,
             tmp: Path) -> bool:
    bodies, n_lines = raw_batches(frames)
    raw_rates, opmon_rates = [], []
    for rep in range(reps):
        for who in ("raw", "opmon"):
            db = f"{who}_{name.split()[0]}_{rep}"
            server.create_database(db)
            if who == "raw":
                raw_rates.append(n_lines / post_raw(server, db, bodies))
            else:
                opmon_rates.append(n_lines / run_sink(server, db, frames, tmp / f"spool-{db}"))
            count = stored(server, db)
            if count < n_lines * 0.999:  # fields left empty by NaN make a few counts smaller
                raise RuntimeError(f"{db}: {count} points stored of {n_lines}")
            server.query(f'DROP DATABASE "{db}"')
    raw, opmon = statistics.median(raw_rates), statistics.median(opmon_rates)
    ratio = opmon / raw
    print(f"{name:34s} {n_lines:>9d} {len(bodies):>8d} {raw / 1e3:>10.0f} {opmon / 1e3:>12.0f} "
          f"{ratio * 100:>6.0f} %  {'PASS' if ratio >= TARGET else 'FAIL'}")
    print(f"{'':34s} raw runs k lines/s: {', '.join(f'{r / 1e3:.0f}' for r in raw_rates)}; "
          f"opmon: {', '.join(f'{r / 1e3:.0f}' for r in opmon_rates)}")
    return ratio >= TARGET


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block-lines", type=int, default=500_000)
    ap.add_argument("--result-lines", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    blocks = potentiostat_blocks(args.block_lines // 100, cells=20)
    results = pipeline_results(2, 1800)
    results = more_cells(results, max(1, round(args.result_lines / len(results))))
    with tempfile.TemporaryDirectory(prefix="opmon-bench-influx-") as tmp, \
            InfluxDBServer(Path(tmp) / "influxd") as server:
        warm = "warmup"
        server.create_database(warm)
        run_sink(server, warm, blocks[:200], Path(tmp) / "spool-warm")  # numba, connections
        print(f"influxd {server.url}; target: opmon >= {TARGET:.0%} of raw, {BATCH}-line "
              f"batches, gzip level {GZIP_LEVEL}\n")
        print(f"{'case':34s} {'lines':>9s} {'batches':>8s} {'raw kl/s':>10s} "
              f"{'opmon kl/s':>12s} {'ratio':>8s}")
        run_case(server, "potentiostat blocks (100 samples)", blocks, args.reps, Path(tmp))
        run_case(server, "pipeline results (1 sample/frame)", results, args.reps, Path(tmp))


if __name__ == "__main__":
    main()
