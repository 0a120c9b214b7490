"""Every dashboard query and every Grafana alert rule against a real InfluxDB 1.x.

The demo (thermal-runaway precursor on cell01, hard short on cell03, cell02 healthy) runs as
fast as it can; its results, its health frames and its raw pressure frames go into one database
through /write. A clean 2-cell cycling run, simulated and processed offline, goes into another.
Then:

- every panel, annotation and variable query of every dashboard runs with Grafana's macros
  expanded ($timeFilter, $__interval, variables in the regex format) over the run's time range,
  as Grafana's datasource sends it (POST /query, epoch=ms, Authorization: Token), and must return
  series with the columns and tags its SELECT and GROUP BY promise;
- every alert rule is evaluated as Grafana's scheduler would: every group interval over the
  whole run, the query over the rule's relative time range, the reduce and threshold
  expressions per series, and the rule's for-duration. On the fault run each rule fires on the
  faulted cell and never on the healthy one; on the clean run no rule ever fires.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream import dashboards as d
from stream.lineprotocol import encode_frame, split_lines
from stream.recording import RecordingReader
from tests.servers import InfluxDBServer, ServerError

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
OPMON = [sys.executable, "-m", "stream.cli"]
RAW_KINDS = ("pressure",)   # raw kinds the pressure dashboard reads, as an InfluxDB sink
GASSING_RULES = {"opmon-gas-onset", "opmon-gas-rate", "opmon-runaway"}
SHORT_RULES = {"opmon-short", "opmon-voltage-collapse"}


@dataclass
class Run:
    db: str
    from_ms: int
    to_ms: int
    faults: dict[str, list[tuple[str, int]]]   # cell -> [(fault kind, onset ns)]


def _lines_of(run_dir: Path, recording: Path) -> list[bytes]:
    lines = []
    for name in ("results.lp", "health.lp"):
        if (run_dir / name).exists():
            lines += split_lines((run_dir / name).read_bytes())
    for recorded in RecordingReader(recording):
        if recorded.frame.kind in RAW_KINDS:
            lines += split_lines(encode_frame(recorded.frame).encode())
    return lines


def _load(influx: InfluxDBServer, db: str, lines: list[bytes], truth: Path) -> Run:
    influx.create_database(db)
    for i in range(0, len(lines), 5000):
        status, body = influx.write(b"\n".join(lines[i:i + 5000]), db)
        assert status == 204, body
    times = [int(line.rsplit(b" ", 1)[1]) for line in lines]
    faults: dict[str, list[tuple[str, int]]] = {}
    for fault in json.loads(truth.read_text()) if truth.exists() else []:
        if fault["kind"] != "clock_offset":
            faults.setdefault(fault["cell"], []).append((fault["kind"], fault["onset_ns"]))
    return Run(db, min(times) // 1_000_000, math.ceil(max(times) / 1e6), faults)


@pytest.fixture(scope="module")
def influx(tmp_path_factory):
    try:
        server = InfluxDBServer(tmp_path_factory.mktemp("influx"))
    except ServerError as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture(scope="module")
def runs(tmp_path_factory, influx: InfluxDBServer) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("runs")
    fault_dir, clean_dir = base / "fault", base / "clean"
    demo = subprocess.Popen([*OPMON, "demo", "--cells", "3", "--speed", "max", "--out",
                             str(fault_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for step in (["simulate", "cycling", "--cells", "2", "--duration", "2h", "--seed", "3",
                      "--out", str(base / "clean.mcap")],
                     ["process", str(base / "clean.mcap"), "--out", str(clean_dir)]):
            done = subprocess.run([*OPMON, *step], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
        out, _ = demo.communicate(timeout=600)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, out
    return {"fault": _load(influx, "fault", _lines_of(fault_dir, fault_dir / "recording.mcap"),
                           fault_dir / "ground_truth.json"),
            "clean": _load(influx, "clean", _lines_of(clean_dir, base / "clean.mcap"),
                           base / "clean.truth.json")}


def _datasource_runner(influx: InfluxDBServer, db: str) -> d.QueryRunner:
    """Queries as the provisioned datasource sends them: its Authorization header with the
    token Grafana's environment would give it (empty: this InfluxDB has no authentication)."""
    (ds,) = d.build_payloads(d.load(DASHBOARDS), {"INFLUX_URL": influx.url, "INFLUX_DB": db,
                                                   "INFLUX_TOKEN": "",
                                                   "ALERT_WEBHOOK_URL": "http://x"}).datasources
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token "
    assert ds["jsonData"]["httpMode"] == "POST"
    return d.influxql_runner(ds["url"], ds["jsonData"]["dbName"], token="")


# -- what a query promises -----------------------------------------------------------------
def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def expected_columns(query: str) -> list[str]:
    """The columns InfluxDB names for a SELECT: the alias, else the outer function, else the
    field or tag; repeated names get _1, _2 as InfluxDB numbers them."""
    select = re.search(r"SELECT (.*?) FROM ", query).group(1)
    names: list[str] = []
    for item in _split_top_level(select):
        alias = re.search(r'\bAS "([^"]+)"$', item)
        func = re.match(r"(\w+)\(", item)
        name = alias.group(1) if alias else func.group(1) if func else item.strip('"')
        n = sum(1 for x in names if re.fullmatch(re.escape(name) + r"(_\d+)?", x))
        names.append(f"{name}_{n}" if n else name)
    return ["time", *names]


def fields_in(query: str) -> set[str]:
    select = re.search(r"SELECT (.*?) FROM ", query).group(1)
    return set(re.findall(r'"([^"]+)"', re.sub(r'\bAS "[^"]+"', "", select)))


def group_tags(query: str) -> set[str]:
    m = re.search(r"GROUP BY (.*?)(?: fill\(\w+\))?$", query)
    return set(re.findall(r'"(\w+)"', m.group(1))) if m else set()


def test_every_dashboard_query_returns_the_series_it_promises(influx, runs) -> None:
    run = runs["fault"]
    query = _datasource_runner(influx, run.db)
    health_fields = {row[0] for s in query('SHOW FIELD KEYS FROM "health"') for row in
                     s["values"]}
    cells = sorted(run.faults) + ["cell02"]
    checked = 0
    for name, dash in d.load(DASHBOARDS).dashboards.items():
        values = d.variable_values(dash, query, run.from_ms, run.to_ms)
        assert values["experiment"] == ["demo"], name
        assert values.get("cell", sorted(cells)) == sorted(cells), name
        assert all(values.values()), (name, values)
        for r in d.run_dashboard(dash, query, run.from_ms, run.to_ms):
            where = f"{name} {r.panel!r}: {r.query}"
            if '"health"' in r.query and not fields_in(r.query) <= health_fields:
                # InfluxDB-sink counters: only in the health of a node with that sink
                assert r.series == [], where
                continue
            assert r.series, f"no series from {where}"
            for s in r.series:
                assert s["columns"] == expected_columns(r.query), where
                assert group_tags(r.query) - {"time"} <= set(s.get("tags", {})), where
                assert s.get("tags", {}).get("cell", cells[0]) in cells, where
            assert any(v is not None for s in r.series for row in s["values"]
                       for v in row[1:]), where
            checked += 1
    assert checked >= 40
    # `opmon dashboards check --influx-url` lists exactly the panels without data
    problems = d.check_queries(DASHBOARDS, query, run.from_ms, run.to_ms)
    assert all("InfluxDB sink" in p for p in problems), problems


# -- Grafana's alert evaluation ------------------------------------------------------------
REDUCERS = {"last": lambda v: v[-1], "max": max, "min": min, "sum": sum, "count": len,
            "mean": lambda v: sum(v) / len(v)}
EVALUATORS = {"gt": lambda x, p: x > p[0], "lt": lambda x, p: x < p[0],
              "within_range": lambda x, p: p[0] < x < p[1],
              "outside_range": lambda x, p: x < p[0] or x > p[1]}


def _conditions(rule: dict, results: dict[str, list[dict]]) -> dict[frozenset, bool]:
    """The rule's condition per series for one evaluation: the InfluxQL result of the data
    query, then reduce and threshold expressions, as Grafana's server-side expressions."""
    values: dict[str, dict[frozenset, float | None]] = {}
    for q in rule["data"]:
        model, ref = q["model"], q["refId"]
        if q["datasourceUid"] != d.EXPRESSION_UID:
            values[ref] = {}
            for s in results[ref]:
                points = [row[1] for row in s["values"] if row[1] is not None]
                values[ref][frozenset(s.get("tags", {}).items())] = points
        elif model["type"] == "reduce":
            assert model.get("settings", {}).get("mode") == "dropNN"
            reduce = REDUCERS[model["reducer"]]
            values[ref] = {k: reduce(v) if v else None
                           for k, v in values[model["expression"]].items()}
        elif model["type"] == "threshold":
            (cond,) = model["conditions"]
            test = EVALUATORS[cond["evaluator"]["type"]]
            values[ref] = {k: v is not None and test(v, cond["evaluator"]["params"])
                           for k, v in values[model["expression"]].items()}
        else:
            raise NotImplementedError(f"expression type {model['type']}")
    return values[rule["condition"]]


def evaluate(rule: dict, interval_s: float, influx: InfluxDBServer, run: Run,
             batch: int = 250) -> dict[frozenset, int]:
    """Labels -> the first evaluation time (ms) at which the rule is Alerting, evaluating
    every ``interval_s`` from the start of the run until its data has left every window."""
    span = max(q["relativeTimeRange"]["from"] for q in rule["data"]) * 1000
    times = list(range(run.from_ms, run.to_ms + span + 1, int(interval_s * 1000)))
    queries = [q for q in rule["data"] if q["datasourceUid"] != d.EXPRESSION_UID]
    statements = []
    for t in times:
        for q in queries:
            lo = t - q["relativeTimeRange"]["from"] * 1000
            hi = t - q["relativeTimeRange"]["to"] * 1000
            interval = d.grafana_interval_ms(lo, hi, q["model"]["maxDataPoints"],
                                             q["model"]["intervalMs"])
            statements.append(d.render_influxql(q["model"]["query"], lo, hi, interval))
    results = []
    for i in range(0, len(statements), batch):
        results += influx.query(";".join(statements[i:i + batch]), db=run.db, epoch="ms")
    assert len(results) == len(statements)
    for_ms = d._duration_s(rule.get("for", "0s")) * 1000
    pending: dict[frozenset, int] = {}
    alerting: dict[frozenset, int] = {}
    for k, t in enumerate(times):
        per_ref = {q["refId"]: results[k * len(queries) + j].get("series", [])
                   for j, q in enumerate(queries)}
        firing = {labels for labels, on in _conditions(rule, per_ref).items() if on}
        for labels in list(pending):
            if labels not in firing:      # normal again (or the series is gone)
                del pending[labels]
        for labels in firing:
            since = pending.setdefault(labels, t)
            if t - since >= for_ms:
                alerting.setdefault(labels, t)
    return alerting


def _rules() -> list[tuple[dict, float]]:
    return [(rule, d._duration_s(group["interval"]))
            for group in d.load(DASHBOARDS).rule_groups for rule in group["rules"]]


@pytest.mark.parametrize("rule,interval_s", _rules(), ids=lambda x: x.get("uid")
                         if isinstance(x, dict) else "")
def test_alert_rule_fires_on_the_faulted_cell_and_stays_quiet_on_a_clean_run(
        influx, runs, rule: dict, interval_s: float) -> None:
    fault = runs["fault"]
    fired = evaluate(rule, interval_s, influx, fault)
    cells = {dict(labels)["cell"]: t for labels, t in fired.items()}
    assert all(dict(labels)["experiment"] == "demo" for labels in fired)
    wanted = "runaway_precursor" if rule["uid"] in GASSING_RULES else "hard_short"
    assert rule["uid"] in GASSING_RULES | SHORT_RULES
    targets = {cell for cell, faults in fault.faults.items()
               if any(kind == wanted for kind, _ in faults)}
    assert targets, fault.faults
    assert targets <= set(cells), f"{rule['uid']} fired on {cells}, not on {targets}"
    # never on the healthy cell, and within 15 min of the cell's fault; events are stamped
    # with their estimated onset (gas onsets at the start of the 60 s block where the evidence
    # began), and a replay sees them at that time, so up to 2 min early
    assert set(cells) <= set(fault.faults), f"{rule['uid']} fired on a healthy cell: {cells}"
    for cell, t in cells.items():
        onset_ms = min(onset for _, onset in fault.faults[cell]) // 1_000_000
        assert -120_000 <= t - onset_ms <= 15 * 60_000, (rule["uid"], cell, t - onset_ms)
    assert evaluate(rule, interval_s, influx, runs["clean"]) == {}, rule["uid"]
