"""The ``opmon`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import sys
import time
from datetime import UTC
from pathlib import Path

import tomli_w

from .config import ConfigError, OpmonConfig, load_config, parse_config

log = logging.getLogger("opmon")


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '4h', '2d' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 4h or 2d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_speed(text: str) -> float:
    if text == "max":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'max'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be positive")
    return value


def _progress(total: int | None, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="frame", unit_scale=True, file=sys.stderr,
                disable=not sys.stderr.isatty(), mininterval=0.5)


# -- commands ------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .build import build_node

    cfg = load_config(args.config)
    node = build_node(cfg)
    snapshot = asyncio.run(node.run())
    _print_snapshot(snapshot)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .build import build_node, build_sources
    from .demo import DEFAULT_SCENARIO, demo_config, new_run_dir

    run_dir = Path(args.out) if args.out else new_run_dir(args.runs)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = demo_config(run_dir, cells=args.cells, duration_s=args.duration,
                       speed="max" if math.isinf(args.speed) else args.speed,
                       influx=_demo_influx(args), mqtt_url=args.mqtt_url)
    if args.print_config:
        print(tomli_w.dumps(data))
        return 0
    (run_dir / "config.toml").write_text(tomli_w.dumps(data))
    cfg = parse_config(data, "<embedded demo>")
    sources = build_sources(cfg)
    node = build_node(cfg, sources=sources)
    wall = args.duration / args.speed
    print(f"opmon demo: scenario {DEFAULT_SCENARIO!r}, {args.cells} simulated cells with "
          f"potentiostat, pressure cell and OEMS, {args.duration / 3600:.2f} h of cycling at "
          f"{args.speed:g}x ({'as fast as possible' if math.isinf(wall) else f'~{wall:.0f} s'})"
          f".\nInjected: a thermal-runaway precursor on cell01 at 1 h, a hard short on cell03 at "
          f"1.5 h, an OEMS clock offset.\nrun folder: {run_dir}", flush=True)
    t0 = time.monotonic()
    snapshot = asyncio.run(node.run())
    elapsed = time.monotonic() - t0
    truth = [g for s in sources for g in getattr(s, "ground_truth", [])]
    (run_dir / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    console = next((s for s in node.sinks if s.type_name == "console"), None)
    summary = {"elapsed_s": elapsed, "stages": snapshot, "ground_truth": truth,
               "alerts": console.alerts if console else []}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    proc = snapshot["process"]
    print(f"\ndone in {elapsed:.1f} s: {int(proc['frames_in'])} frames in, "
          f"{int(proc['frames_out'])} results, {int(proc['rejects'])} rejects, "
          f"{int(proc['lost'])} lost, p99 latency {proc['latency_p99_ms']:.1f} ms")
    for fault in truth:
        print(f"injected: {fault['kind']} on {fault['stream']} at t={fault['onset_s']:.0f} s")
    print(f"alerts: {len(summary['alerts'])}\nrun folder: {run_dir}\n"
          f"  recording.mcap  (opmon inspect {run_dir}/recording.mcap)\n"
          f"  results.lp      (InfluxDB line protocol)\n  health.lp, summary.json, "
          f"ground_truth.json, config.toml")
    return 0


def _demo_influx(args: argparse.Namespace) -> dict | None:
    """The InfluxDB sink of ``opmon demo --influx-url``: v2 with org and bucket, else v1."""
    if not args.influx_url:
        return None
    sink: dict = {"url": args.influx_url}
    if args.influx_org or args.influx_bucket:
        sink.update(api="v2", org=args.influx_org, bucket=args.influx_bucket)
    else:
        sink.update(api="v1", database=args.influx_db)
    if args.influx_token_env:
        sink["token_env"] = args.influx_token_env
    return sink


def cmd_simulate(args: argparse.Namespace) -> int:
    from adapters.sim.clock import SimClock
    from adapters.sim.experiment import ScenarioSource, load_scenario, scenario_names

    if args.list:
        for name in scenario_names():
            print(f"{name:28s} {load_scenario(name).description}")
        return 0
    if not args.scenario:
        raise SystemExit("opmon simulate: give a SCENARIO (or --list)")
    if not (args.to or args.out):
        raise SystemExit("opmon simulate: give --to URL (publish live) or --out FILE.mcap")
    speed = math.inf if args.out and not args.to else args.speed
    source = ScenarioSource(args.experiment, args.scenario, args.cells, args.seed,
                            SimClock(None, speed), args.duration)

    async def run() -> int:
        from .recording import RecordingWriter
        from .transports import open_publisher
        bar = _progress(None, "simulate")
        writer = RecordingWriter(args.out) if args.out else None
        pub = open_publisher(args.to) if args.to else None
        n = 0
        try:
            if pub:
                await pub.start()
            async for frame in source.frames():
                if writer:
                    writer.write(frame, log_time_ns=int(frame.times_ns()[-1]))
                if pub:
                    await pub.publish(frame)
                n += 1
                bar.update()
        finally:
            if pub:
                await pub.close()
            if writer:
                writer.add_metadata("ground_truth", {"json": json.dumps(source.ground_truth)})
                writer.close()
            bar.close()
        return n

    n = asyncio.run(run())
    truth_path = Path(args.out).with_suffix(".truth.json") if args.out else None
    if truth_path:
        truth_path.write_text(json.dumps(source.ground_truth, indent=2))
    print(f"simulated {source.sim.t:.0f} s of {args.scenario} on {args.cells} cells: {n} frames"
          + (f" -> {args.out} (ground truth in {truth_path})" if args.out else "")
          + (f" -> {args.to}" if args.to else ""))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from datetime import datetime

    from .recording import describe

    summary = describe(args.file)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['path']}: {len(summary['streams'])} streams"
          + (f", TRUNCATED ({summary['truncation_reason']})" if summary["truncated"] else "")
          + (f", {summary['rejects']} rejected frames" if summary["rejects"] else ""))
    print(f"{'stream':40s} {'kind':18s} {'frames':>8s} {'samples':>9s} {'span':>10s} "
          f"{'lost':>6s} {'dup':>5s}  first sample (UTC)")
    for s in summary["streams"]:
        span = (s["last_ns"] - s["first_ns"]) / 1e9
        first = datetime.fromtimestamp(s["first_ns"] / 1e9, tz=UTC).isoformat(
            timespec="seconds")
        print(f"{s['stream']:40s} {s['kind']:18s} {s['frames']:8d} {s['samples']:9d} "
              f"{span:9.0f}s {s['lost']:6d} {s['duplicates']:5d}  {first}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .sources import RecordingSource
    from .transports import open_publisher

    async def replay() -> int:
        bar = _progress(None, "replay")
        source = RecordingSource(args.file, args.speed, on_frame=bar.update,
                                 raw_only=not args.all)
        n = 0
        async with open_publisher(args.to) as pub:
            async for frame in source.frames():
                await pub.publish(frame)
                n += 1
        bar.close()
        return n

    n = asyncio.run(replay())
    print(f"replayed {n} frames to {args.to}")
    return 0


def _offline_config(args: argparse.Namespace) -> OpmonConfig:
    if args.config:
        return load_config(args.config)
    from .demo import demo_config
    data = demo_config(Path(args.out), cells=0)
    data["sinks"] = []
    return parse_config(data, "<default processors>")


def cmd_process(args: argparse.Namespace) -> int:
    from .build import build_node
    from .sinks.lineprotocol_file import LineProtocolFileConfig, LineProtocolFileSink
    from .sources import RecordingSource

    cfg = _offline_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = _progress(None, "process")
    source = RecordingSource(args.file, math.inf, on_frame=bar.update)
    sinks = [LineProtocolFileSink(LineProtocolFileConfig(path=str(out / "results.lp")))]
    node = build_node(cfg, sources=[source], sinks=sinks)
    t0 = time.monotonic()
    snapshot = asyncio.run(node.run())
    bar.close()
    proc = snapshot["process"]
    print(f"processed {int(proc['frames_in'])} frames in {time.monotonic() - t0:.1f} s: "
          f"{int(proc['frames_out'])} results, {int(proc['rejects'])} rejects "
          f"-> {out / 'results.lp'}")
    if source.reader.truncated:
        print(f"note: the recording is truncated ({source.reader.truncation_reason})")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from .recording import RecordingWriter
    from .transports import open_subscriber

    async def record() -> int:
        import signal
        writer = RecordingWriter(args.out, flush_interval_s=args.flush_interval)
        sub = open_subscriber(args.source, args.topics or None)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        deadline = time.monotonic() + args.duration if args.duration else math.inf

        async def consume() -> None:
            async with sub:
                async for frame in sub:
                    writer.write(frame)
                    if time.monotonic() >= deadline:
                        return

        task = asyncio.create_task(consume())
        stopper = asyncio.create_task(stop.wait())
        timeout = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
        await asyncio.wait({task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        stopper.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
        writer.close()
        print(f"recorded {writer.frames} frames to {args.out}; lost {sub.tracker.lost}, "
              f"rejected {sub.rejects}", file=sys.stderr)
        return writer.frames

    asyncio.run(record())
    return 0


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .demo import DEFAULT_DURATION_S, DEFAULT_SPEED

    p = argparse.ArgumentParser(prog="opmon", description="Streaming operando monitoring for "
                                "battery experiments.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="run a simulated multi-cell experiment with a fault",
                       description="Simulated experiment on the embedded in-process default; "
                       "no broker or database needed. Leaves a run folder.")
    s.add_argument("--duration", type=parse_duration, default=DEFAULT_DURATION_S,
                   help="simulated experiment length, e.g. 90m, 4h (default 2h)")
    s.add_argument("--speed", type=parse_speed, default=DEFAULT_SPEED,
                   help=f"simulation speed factor, or 'max' (default {DEFAULT_SPEED:g})")
    s.add_argument("--cells", type=int, default=4, help="number of cells (default 4)")
    s.add_argument("--runs", default="runs", help="folder for run folders (default ./runs)")
    s.add_argument("--out", help="exact run folder to use")
    s.add_argument("--print-config", action="store_true", help="print the demo config as TOML")
    g = s.add_argument_group("services (optional; the demo needs none)")
    g.add_argument("--influx-url", help="also write to this InfluxDB, e.g. http://localhost:8086")
    g.add_argument("--influx-db", default="opmon", help="InfluxDB 1.x database (default opmon)")
    g.add_argument("--influx-org", help="InfluxDB 2.x/3.x organisation (selects the v2 API)")
    g.add_argument("--influx-bucket", help="InfluxDB 2.x/3.x bucket")
    g.add_argument("--influx-token-env", help="environment variable holding the InfluxDB token")
    g.add_argument("--mqtt-url", help="publish alerts (retained, with acknowledgements) and "
                   "events on this broker, e.g. mqtt://localhost:1883")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("run", help="run a node from a TOML config",
                       description="Run adapters, processors and sinks described in CONFIG.")
    s.add_argument("config", help="path to CONFIG.toml")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("record", help="record frames from a transport to an MCAP file")
    s.add_argument("source", help="transport URL, e.g. zmq+pubsub://127.0.0.1:5555")
    s.add_argument("--out", required=True, help="MCAP file to write")
    s.add_argument("--topics", nargs="*", help="topic patterns (default opmon/#)")
    s.add_argument("--duration", type=parse_duration, help="stop after this long")
    s.add_argument("--flush-interval", type=float, default=1.0,
                   help="close a chunk at least this often, in s (default 1)")
    s.set_defaults(func=cmd_record)

    s = sub.add_parser("replay", help="republish a recording onto a transport")
    s.add_argument("file", help="MCAP recording")
    s.add_argument("--to", required=True, help="transport URL to publish on")
    s.add_argument("--speed", type=parse_speed, default=1.0,
                   help="time scale factor, or 'max' (default 1)")
    s.add_argument("--all", action="store_true",
                   help="also republish recorded results, events, alerts and health frames")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("process", help="run processors offline over a recording",
                       description="Runs the processors of CONFIG (default: the demo's) over a "
                       "recording with no transport and writes the same results as a live run.")
    s.add_argument("file", help="MCAP recording")
    s.add_argument("-c", "--config", help="config whose processors and alert rules to use "
                   "(its sources and sinks are ignored)")
    s.add_argument("--out", default="processed",
                   help="output folder for results.lp (default ./processed)")
    s.set_defaults(func=cmd_process)

    s = sub.add_parser("simulate", help="run a simulated experiment from a named scenario",
                       description="Publishes live (--to URL, paced by --speed) or writes a "
                       "recording directly (--out FILE.mcap, as fast as possible), with the "
                       "scenario's ground truth.")
    s.add_argument("scenario", nargs="?", help="scenario name or TOML file (see --list)")
    s.add_argument("--list", action="store_true", help="list the named scenarios")
    s.add_argument("--cells", type=int, default=4, help="number of cells (default 4)")
    s.add_argument("--speed", type=parse_speed, default=1.0,
                   help="speed factor for live publishing, or 'max' (default 1)")
    s.add_argument("--duration", type=parse_duration, help="override the scenario's duration")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--experiment", default="sim", help="experiment id (default sim)")
    s.add_argument("--to", help="transport URL to publish on")
    s.add_argument("--out", help="MCAP recording to write")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("inspect", help="summarise a recording")
    s.add_argument("file", help="MCAP recording")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_inspect)

    from . import alerts_cli, dashboards
    alerts_cli.add_parser(sub)
    dashboards.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _print_snapshot(snapshot: dict) -> None:
    for stage, values in snapshot.items():
        print(f"{stage:40s} in {int(values['frames_in']):9d} out {int(values['frames_out']):9d} "
              f"rejects {int(values['rejects']):6d} lost {int(values['lost']):6d} "
              f"p99 {values['latency_p99_ms']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
