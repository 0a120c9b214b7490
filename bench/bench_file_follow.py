"""Following a growing EC-Lab file: opmon's ``biologic.mpt`` adapter against ``numpy.loadtxt``
and the ``csv`` module parsing the same text in the same run. Target: >= 100,000 rows/s on one
core.

    python bench/bench_file_follow.py [--rows 250000] [--reps 3] [--quick] [--profile LINES]

The file: the real GCPL export's 3-line header, then its 2,533 rows repeated with ``time/s``
advanced by the run's length each time (written in EC-Lab's number format), ``--rows`` rows in
all (465 bytes each). A writer thread appends it in chunks of 64 KiB to 1 MiB, cut anywhere
(mid-line), while the adapter follows it (poll 10 ms). The timed part runs from the adapter's
start to its last row: reading the file as it grows, splitting complete lines, checking field
counts, parsing the 10 mapped columns, cutting blocks at the step changes (the real file has 9
per repetition) and building the frames through ``make_frame`` and the clock model. The main
thread's CPU time over the same span is reported too (the writer thread is not in it).

Peers, in the same run, on the whole text at once (no following, no frames): ``numpy.loadtxt``
of the same 10 columns, and ``csv.reader`` with ``float()`` on them. The repetitions alternate
the order; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import csv
import io
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import check_idle, versions

from adapters.biologic import STANDARD_COLUMNS, BiologicMptAdapter

TARGET_ROWS_S = 100_000
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
GCPL = REAL / "potentiostat" / "gcpl.pr_182.1.mpt"


def ec_lab_number(x: float) -> str:
    """EC-Lab's format: 15 decimals and a three-digit exponent (3.025189476075938E+005)."""
    mantissa, exponent = f"{x:.15E}".split("E")
    return f"{mantissa}E{int(exponent):+04d}"


def make_file_text(n_rows: int) -> tuple[bytes, list[int]]:
    """Header and ``n_rows`` rows; also the indices of the columns the adapter maps."""
    lines = GCPL.read_bytes().rstrip(b"\n").split(b"\n")
    header, rows = lines[:3], [r.rstrip(b"\r") for r in lines[3:] if r.strip()]
    names = header[2].decode("cp1252").rstrip("\t").split("\t")
    i_time = names.index("time/s")
    cells = [r.split(b"\t") for r in rows]
    times = np.array([float(c[i_time]) for c in cells])
    period = times[-1] + float(np.median(np.diff(times)))
    out = list(header)
    for k in range(n_rows):
        rep, j = divmod(k, len(rows))
        row = list(cells[j])
        row[i_time] = ec_lab_number(times[j] + rep * period).encode()
        out.append(b"\t".join(row))
    mapped = sorted({names.index(c) for c in STANDARD_COLUMNS if c in names})
    return b"\n".join(out) + b"\n", mapped


def write_growing(path: Path, data: bytes, seed: int) -> threading.Thread:
    """A thread that appends ``data`` in random chunks of 64 KiB to 1 MiB."""
    def run() -> None:
        rng = np.random.default_rng(seed)
        with path.open("ab") as fh:
            start = 0
            while start < len(data):
                stop = start + int(rng.integers(64 << 10, 1 << 20))
                fh.write(data[start:stop])
                fh.flush()
                start = stop
                time.sleep(0.0005)

    thread = threading.Thread(target=run, name="writer")
    thread.start()
    return thread


def follow_once(data: bytes, n_rows: int, seed: int) -> dict[str, float]:
    """Rows per second (wall and main-thread CPU) of the adapter following the growing file."""
    with tempfile.TemporaryDirectory(prefix="opmon-bench-follow-") as tmp:
        path = Path(tmp) / "growing.mpt"
        path.touch()
        adapter = BiologicMptAdapter("bench/cell1/potentiostat", BiologicMptAdapter.Config(
            path=str(path), poll_s=0.01))

        async def consume() -> tuple[int, int]:
            rows = frames = 0
            async for frame in adapter.frames():
                rows += frame.n_samples
                frames += 1
                if rows >= n_rows:
                    adapter.stop()
            return rows, frames

        wall, cpu = time.perf_counter(), time.thread_time()
        writer = write_growing(path, data, seed)
        rows, frames = asyncio.run(consume())
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        writer.join()
    assert rows == n_rows and adapter.rejects == 0, (rows, adapter.errors[:3])
    return {"rate": rows / wall, "cpu_rate": rows / cpu, "frames": frames}


def loadtxt_once(text: str, columns: list[int]) -> float:
    start = time.perf_counter()
    table = np.loadtxt(io.StringIO(text), delimiter="\t", skiprows=3, usecols=columns)
    return table.shape[0] / (time.perf_counter() - start)


def csv_once(text: str, columns: list[int]) -> float:
    start = time.perf_counter()
    reader = csv.reader(io.StringIO(text), delimiter="\t")
    for _ in range(3):
        next(reader)
    rows = [[float(row[i]) for i in columns] for row in reader]
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=250_000, help="rows in the file")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians)")
    p.add_argument("--quick", action="store_true", help="50,000 rows, one repetition")
    p.add_argument("--profile", type=int, default=0, metavar="LINES",
                   help="profile one adapter run and print the top LINES functions")
    args = p.parse_args()
    if not GCPL.exists():
        print(f"real data not found at {GCPL}; nothing to measure")
        return
    n_rows, reps = (50_000, 1) if args.quick else (args.rows, args.reps)
    data, columns = make_file_text(n_rows)
    text = data.decode("cp1252")
    print(f"following a growing EC-Lab file; {versions()}")
    print(f"{n_rows:,} rows, {len(data) / 1e6:.1f} MB, {len(columns)} mapped columns; "
          f"reps {reps}")
    check_idle()
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(follow_once, data, n_rows, 0)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())
        return
    runs: dict[str, list[float]] = {"opmon": [], "opmon_cpu": [], "loadtxt": [], "csv": []}
    frames = 0
    for rep in range(reps):
        order = ["opmon", "loadtxt", "csv"]
        for name in order if rep % 2 == 0 else order[::-1]:
            if name == "opmon":
                result = follow_once(data, n_rows, rep)
                runs["opmon"].append(result["rate"])
                runs["opmon_cpu"].append(result["cpu_rate"])
                frames = int(result["frames"])
            elif name == "loadtxt":
                runs["loadtxt"].append(loadtxt_once(text, columns))
            else:
                runs["csv"].append(csv_once(text, columns))
    med = {k: statistics.median(v) for k, v in runs.items()}
    verdict = "PASS" if med["opmon"] >= TARGET_ROWS_S else "FAIL"
    print(f"\n{'variant':<46} {'rows/s':>12}")
    print("-" * 59)
    print(f"{'opmon biologic.mpt, following (wall)':<46} {med['opmon']:>12,.0f}  "
          f"({frames:,} frames)")
    print(f"{'opmon biologic.mpt, following (main-thread CPU)':<46} {med['opmon_cpu']:>12,.0f}")
    print(f"{'numpy.loadtxt, whole text, same columns':<46} {med['loadtxt']:>12,.0f}")
    print(f"{'csv.reader + float(), whole text, same columns':<46} {med['csv']:>12,.0f}")
    print(f"\nratio opmon / loadtxt {med['opmon'] / med['loadtxt']:.2f}, opmon / csv "
          f"{med['opmon'] / med['csv']:.2f}; target >= {TARGET_ROWS_S:,} rows/s: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
