"""Grafana provisioning in ``dashboards/``: load, check, render queries, push.

``opmon dashboards check`` validates the provisioning files (unique uids, panel grid, every
panel's datasource and InfluxQL query, variables that exist, alert rules whose expressions and
condition refer to queries that exist, notification policies that name contact points), and
with ``--influx-url`` runs every panel and variable query against a database, with Grafana's
macros expanded, and reports the empty ones.

``opmon dashboards push URL`` uploads the datasource, the dashboards, the alert rules, the
contact points and the notification policy through Grafana's HTTP API (grafana-client), for a
Grafana that does not read ``dashboards/provisioning``. Environment variables in the
provisioning files (``$INFLUX_URL``, ``${ALERT_WEBHOOK_URL}``; ``$$`` is a literal ``$``) are
expanded from this process's environment where Grafana would expand them: everywhere except
alert-rule queries and annotations.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "dashboards"
EXPRESSION_UID = "__expr__"
GRID_COLUMNS = 24
# Grafana's built-in variables and the InfluxDB alias patterns ($tag_cell, $col, $m)
BUILTIN_VARIABLES = {"timeFilter", "__interval", "__interval_ms", "interval", "__from", "__to",
                     "__range", "__range_s", "__range_ms", "__rate_interval", "__dashboard",
                     "__org", "__user", "__name", "__all", "col", "m", "measurement"}
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::\w+)?\]\]|\$\{(\w+)(?::[^}]+)?\}")
_ENV = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z0-9_]+)")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


class DashboardError(ValueError):
    pass


# -- loading -------------------------------------------------------------------------------
@dataclass
class Provisioning:
    """Everything under ``dashboards/``: YAML documents by kind, dashboards by file name."""
    root: Path
    datasources: list[dict[str, Any]] = field(default_factory=list)
    providers: list[dict[str, Any]] = field(default_factory=list)
    rule_groups: list[dict[str, Any]] = field(default_factory=list)
    contact_points: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def datasource_uids(self) -> set[str]:
        return {ds.get("uid") for ds in self.datasources}

    def folder_uid(self, title: str) -> str:
        """The uid of the dashboard folder called ``title`` (alert rules name folders by title)."""
        for provider in self.providers:
            if provider.get("folder") == title and provider.get("folderUid"):
                return provider["folderUid"]
        return re.sub(r"[^a-z0-9-]+", "-", title.lower()).strip("-")


def _yaml_documents(directory: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise DashboardError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise DashboardError(f"{path}: expected a mapping at the top level")
        yield path, data


def load(root: str | Path = DEFAULT_DIR) -> Provisioning:
    """Reads ``root/provisioning/{datasources,dashboards,alerting}`` and the dashboard JSON
    files of every file provider (found under ``root`` by the last part of their path)."""
    root = Path(root)
    prov = Provisioning(root)
    base = root / "provisioning"
    if not base.is_dir():
        raise DashboardError(f"{base}: no provisioning folder")
    for _, data in _yaml_documents(base / "datasources"):
        prov.datasources += data.get("datasources") or []
    for _, data in _yaml_documents(base / "dashboards"):
        prov.providers += data.get("providers") or []
    for _, data in _yaml_documents(base / "alerting"):
        prov.rule_groups += data.get("groups") or []
        prov.contact_points += data.get("contactPoints") or []
        prov.policies += data.get("policies") or []
    for provider in prov.providers:
        for path in sorted(provider_dir(root, provider).glob("*.json")):
            try:
                prov.dashboards[path.name] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise DashboardError(f"{path}: not valid JSON: {exc}") from exc
    return prov


def provider_dir(root: Path, provider: dict[str, Any]) -> Path:
    """The local folder of a file provider: its path's last component, under ``root``
    (docker-compose mounts ``root`` at the provider path's parent)."""
    path = str((provider.get("options") or {}).get("path", ""))
    return root / Path(path).name


# -- checks --------------------------------------------------------------------------------
def variables_in(text: str) -> set[str]:
    """Names of the Grafana variables ``text`` refers to ($name, ${name:fmt}, [[name]])."""
    return {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(text or "")}


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def _check_query(where: str, query: Any, known: set[str]) -> list[str]:
    if not isinstance(query, str) or not query.strip():
        return [f"{where}: no query"]
    unknown = variables_in(query) - known
    return [f"{where}: unknown variable ${name}" for name in sorted(unknown)]


def check_dashboard(name: str, dash: dict[str, Any], datasource_uids: set[str]) -> list[str]:
    problems = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            problems.append(f"{name}: no {key}")
    variables = (dash.get("templating") or {}).get("list", [])
    known = BUILTIN_VARIABLES | {v.get("name") for v in variables}
    earlier = set(BUILTIN_VARIABLES)
    for v in variables:
        where = f"{name}: variable {v.get('name')}"
        if v.get("name") in earlier:
            problems.append(f"{where}: defined twice")
        if v.get("type") == "query":   # a variable's query may use the variables above it
            problems += _check_datasource(where, v.get("datasource"), datasource_uids)
            problems += _check_query(where, v.get("query"), earlier)
        earlier.add(v.get("name"))
    for a in (dash.get("annotations") or {}).get("list", []):
        if a.get("builtIn"):
            continue
        where = f"{name}: annotation {a.get('name')}"
        problems += _check_datasource(where, a.get("datasource"), datasource_uids)
        problems += _check_query(where, (a.get("target") or {}).get("query"), known)
    ids: set[int] = set()
    placed: list[tuple[str, dict[str, int]]] = []
    for panel in panels_of(dash):
        where = f"{name}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            problems.append(f"{where}: duplicate panel id")
        ids.add(panel.get("id"))
        pos = panel.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{where}: gridPos needs integer x, y, w, h")
            continue
        if pos["x"] < 0 or pos["y"] < 0 or pos["w"] < 1 or pos["h"] < 1 \
                or pos["x"] + pos["w"] > GRID_COLUMNS:
            problems.append(f"{where}: gridPos {pos} is outside the {GRID_COLUMNS} columns")
        for other, other_pos in placed:
            if _overlap(pos, other_pos):
                problems.append(f"{where}: overlaps {other}")
        placed.append((where, pos))
        if panel.get("type") == "row":
            continue
        problems += _check_datasource(where, panel.get("datasource"), datasource_uids)
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{where}: duplicate refId")
        for t in targets:
            problems += _check_datasource(f"{where} {t.get('refId')}", t.get("datasource")
                                          or panel.get("datasource"), datasource_uids)
            problems += _check_query(f"{where} {t.get('refId')}", t.get("query"), known)
            problems += [f"{where}: unknown variable ${n} in the alias"
                         for n in sorted(variables_in(t.get("alias", "")) - known)
                         if not n.startswith("tag_")]
    return problems


def _check_datasource(where: str, ref: Any, uids: set[str]) -> list[str]:
    if not isinstance(ref, dict) or not ref.get("uid"):
        return [f"{where}: no datasource"]
    if ref["uid"] not in uids:
        return [f"{where}: datasource {ref['uid']!r} is not provisioned"]
    return []


def _duration_s(text: Any) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", str(text))
    if not m:
        raise DashboardError(f"{text!r} is not a duration like 10s, 1m")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def check_alerting(prov: Provisioning) -> list[str]:
    problems = []
    uids: set[str] = set()
    dashboards = {d.get("uid"): d for d in prov.dashboards.values()}
    for group in prov.rule_groups:
        where = f"rule group {group.get('name')}"
        try:
            interval = _duration_s(group.get("interval"))
            if interval < 10 or interval % 10:
                problems.append(f"{where}: interval must be a multiple of 10 s")
        except DashboardError as exc:
            problems.append(f"{where}: {exc}")
        if not group.get("folder"):
            problems.append(f"{where}: no folder")
        for rule in group.get("rules") or []:
            problems += _check_rule(f"{where}, rule {rule.get('uid')}", rule, prov, dashboards)
            if rule.get("uid") in uids:
                problems.append(f"{where}: duplicate rule uid {rule.get('uid')}")
            uids.add(rule.get("uid"))
    receivers = {cp.get("name") for cp in prov.contact_points}
    for cp in prov.contact_points:
        for receiver in cp.get("receivers") or []:
            if receiver.get("type") == "webhook" and not (receiver.get("settings") or {}).get(
                    "url"):
                problems.append(f"contact point {cp.get('name')}: webhook without url")

    def routes(policy: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield policy
        for route in policy.get("routes") or []:
            yield from routes(route)

    for policy in prov.policies:
        for route in routes(policy):
            if route.get("receiver") and route["receiver"] not in receivers:
                problems.append(f"notification policy: receiver {route['receiver']!r} is not a "
                                "contact point")
    if prov.rule_groups and not prov.policies:
        problems.append("alerting: rules but no notification policy")
    return problems


def _check_rule(where: str, rule: dict[str, Any], prov: Provisioning,
                dashboards: dict[str, dict]) -> list[str]:
    problems = [f"{where}: no {k}" for k in ("uid", "title", "condition", "data") if
                not rule.get(k)]
    data = rule.get("data") or []
    refs = {q.get("refId") for q in data}
    if rule.get("condition") and rule["condition"] not in refs:
        problems.append(f"{where}: condition {rule['condition']} is not a query")
    for q in data:
        model = q.get("model") or {}
        if q.get("datasourceUid") == EXPRESSION_UID:
            if model.get("expression") not in refs:
                problems.append(f"{where}: {q.get('refId')} reduces an unknown query")
        elif q.get("datasourceUid") not in prov.datasource_uids:
            problems.append(f"{where}: {q.get('refId')} datasource {q.get('datasourceUid')!r} "
                            "is not provisioned")
        else:
            problems += _check_query(f"{where} {q.get('refId')}", model.get("query"),
                                     BUILTIN_VARIABLES)
            span = q.get("relativeTimeRange") or {}
            if not span.get("from", 0) > span.get("to", 0):
                problems.append(f"{where}: {q.get('refId')} has an empty time range")
    for key in ("noDataState", "execErrState"):
        if rule.get(key) not in (None, "OK", "NoData", "Alerting", "Error", "KeepLast"):
            problems.append(f"{where}: {key} {rule.get(key)!r}")
    try:
        _duration_s(rule.get("for", "0s"))
    except DashboardError as exc:
        problems.append(f"{where}: for: {exc}")
    if any("$" in str(v) for v in (rule.get("labels") or {}).values()):
        problems.append(f"{where}: labels are expanded as environment variables; no $ in them")
    if rule.get("dashboardUid"):
        dash = dashboards.get(rule["dashboardUid"])
        if dash is None:
            problems.append(f"{where}: dashboard {rule['dashboardUid']} does not exist")
        elif rule.get("panelId") not in {p.get("id") for p in panels_of(dash)}:
            problems.append(f"{where}: panel {rule.get('panelId')} is not on "
                            f"{rule['dashboardUid']}")
    return problems


def check(root: str | Path = DEFAULT_DIR) -> list[str]:
    """Every problem found in the provisioning under ``root`` (empty when all is well)."""
    try:
        prov = load(root)
    except DashboardError as exc:
        return [str(exc)]
    problems = []
    for ds in prov.datasources:
        where = f"datasource {ds.get('name')}"
        for key in ("name", "uid", "type", "url"):
            if not ds.get(key):
                problems.append(f"{where}: no {key}")
        if ds.get("type") == "influxdb":
            json_data = ds.get("jsonData") or {}
            if json_data.get("version", "InfluxQL") != "InfluxQL":
                problems.append(f"{where}: the dashboards need InfluxQL")
            if not json_data.get("dbName"):
                problems.append(f"{where}: no jsonData.dbName")
    if not prov.providers:
        problems.append("no dashboard provider")
    if not prov.dashboards:
        problems.append("no dashboards")
    seen: dict[str, str] = {}
    for name, dash in prov.dashboards.items():
        uid = dash.get("uid")
        if uid in seen:
            problems.append(f"{name}: uid {uid!r} is also {seen[uid]}'s")
        seen[uid] = name
        problems += check_dashboard(name, dash, prov.datasource_uids)
    return problems + check_alerting(prov)


# -- Grafana's InfluxQL macros -------------------------------------------------------------
_ROUND_STEPS_MS = [(10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500),
                   (1500, 1000), (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000),
                   (25000, 20000), (45000, 30000), (90000, 60000), (210000, 120000),
                   (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
                   (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
                   (16200000, 10800000), (32400000, 21600000), (86400000, 43200000),
                   (604800000, 86400000), (1814400000, 604800000), (3628800000, 2592000000)]


def grafana_interval_ms(from_ms: int, to_ms: int, max_data_points: int = 1000,
                        min_interval_ms: int = 1000) -> int:
    """``$__interval_ms`` as Grafana computes it: (to - from) / max data points, at least the
    datasource's minimum interval, rounded to one of Grafana's steps."""
    raw = max((to_ms - from_ms) / max(max_data_points, 1), min_interval_ms)
    return next((step for limit, step in _ROUND_STEPS_MS if raw <= limit), 31536000000)


def format_interval(ms: int) -> str:
    """Grafana's interval text (``$__interval``): 5s, 1m, 2h, 500ms."""
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000),
                       ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{max(ms, 1)}ms"


def regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def regex_format(values: list[str]) -> str:
    """Grafana's ``regex`` variable format, the InfluxQL default: one value escaped, several
    as ``(a|b)``."""
    escaped = [regex_escape(v) for v in values]
    if len(escaped) <= 1:
        return "".join(escaped)
    return "(" + "|".join(escaped) + ")"


def render_influxql(query: str, from_ms: int, to_ms: int, interval_ms: int,
                    variables: Mapping[str, list[str]] | None = None) -> str:
    """The InfluxQL Grafana sends for ``query`` over [from_ms, to_ms]: ``$timeFilter``, the
    interval and range macros, and dashboard variables in the ``regex`` format. Unknown
    variables stay as they are, as in Grafana."""
    macros = {"timeFilter": f"time >= {from_ms}ms and time <= {to_ms}ms",
              "__interval": format_interval(interval_ms), "interval": format_interval(interval_ms),
              "__interval_ms": str(interval_ms), "__from": str(from_ms), "__to": str(to_ms),
              "__range_ms": str(to_ms - from_ms), "__range_s": str((to_ms - from_ms) // 1000),
              "__range": format_interval(to_ms - from_ms)}
    variables = variables or {}

    def replace(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        if name in macros:
            return macros[name]
        if name in variables:
            return regex_format(list(variables[name]))
        return m.group(0)

    return _VARIABLE.sub(replace, query)


# -- running queries -----------------------------------------------------------------------
QueryRunner = Callable[[str], list[dict[str, Any]]]


def influxql_runner(url: str, db: str, token: str | None = None,
                    timeout: float = 30.0) -> QueryRunner:
    """A function that POSTs one InfluxQL statement to ``url/query`` the way Grafana's
    datasource does (form body, ``epoch=ms``, ``Authorization: Token ...``) and returns its
    series. An error in the response raises DashboardError."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    endpoint = f"{url.rstrip('/')}/query?" + urllib.parse.urlencode({"db": db, "epoch": "ms"})

    def run(statement: str) -> list[dict[str, Any]]:
        body = urllib.parse.urlencode({"q": statement}).encode()
        request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise DashboardError(f"{statement}: HTTP {exc.code} {exc.read()[:300]!r}") from exc
        result = (data.get("results") or [{}])[0]
        if "error" in result or "error" in data:
            raise DashboardError(f"{statement}: {result.get('error') or data.get('error')}")
        return result.get("series") or []

    return run


def variable_values(dash: dict[str, Any], run: QueryRunner, from_ms: int,
                    to_ms: int) -> dict[str, list[str]]:
    """Each query variable's values, in order, as a dashboard load would set them: the first
    value of a single-value variable, every value of a multi-value one whose current
    selection is All."""
    values: dict[str, list[str]] = {}
    for v in (dash.get("templating") or {}).get("list", []):
        if v.get("type") != "query":
            continue
        query = render_influxql(v["query"], from_ms, to_ms, 1000, values)
        found = sorted({row[-1] for s in run(query) for row in s.get("values", [])})
        values[v["name"]] = found if v.get("multi") or v.get("includeAll") else found[:1]
    return values


@dataclass
class TargetResult:
    dashboard: str
    panel: str
    ref: str
    query: str
    series: list[dict[str, Any]]


def run_dashboard(dash: dict[str, Any], run: QueryRunner, from_ms: int, to_ms: int,
                  max_data_points: int = 1000, min_interval_ms: int = 1000
                  ) -> list[TargetResult]:
    """Runs every panel target and InfluxQL annotation of ``dash`` over [from_ms, to_ms]."""
    values = variable_values(dash, run, from_ms, to_ms)
    interval = grafana_interval_ms(from_ms, to_ms, max_data_points, min_interval_ms)
    results = []
    queries = [(p.get("title", ""), t.get("refId", ""), t.get("query", ""))
               for p in panels_of(dash) for t in p.get("targets") or []]
    queries += [(f"annotation {a.get('name')}", "Anno", a["target"]["query"])
                for a in (dash.get("annotations") or {}).get("list", [])
                if (a.get("target") or {}).get("query")]
    for title, ref, query in queries:
        rendered = render_influxql(query, from_ms, to_ms, interval, values)
        results.append(TargetResult(dash.get("uid", ""), title, ref, rendered, run(rendered)))
    return results


def check_queries(root: str | Path, run: QueryRunner, from_ms: int, to_ms: int) -> list[str]:
    """Every panel, annotation and variable query that fails or returns no series."""
    problems = []
    for name, dash in load(root).dashboards.items():
        try:
            for r in run_dashboard(dash, run, from_ms, to_ms):
                if not r.series:
                    problems.append(f"{name}: {r.panel} {r.ref}: no data for {r.query}")
        except DashboardError as exc:
            problems.append(f"{name}: {exc}")
    return problems


# -- push ----------------------------------------------------------------------------------
def expand_env(value: Any, env: Mapping[str, str], missing: set[str],
               skip: frozenset[str] = frozenset()) -> Any:
    """``value`` with ``$NAME`` and ``${NAME}`` replaced from ``env`` in every string (``$$`` is
    a literal ``$``), except under the keys in ``skip``. Names not in ``env`` go to
    ``missing``."""
    if isinstance(value, str):
        def replace(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) if m.group(1) is not None else m.group(2)
            if name not in env:
                missing.add(name)
                return ""
            return env[name]
        return _ENV.sub(replace, value)
    if isinstance(value, dict):
        return {k: v if k in skip else expand_env(v, env, missing, skip)
                for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, missing, skip) for v in value]
    return value


_DATASOURCE_API_KEYS = ("name", "type", "uid", "access", "url", "user", "database", "basicAuth",
                        "basicAuthUser", "withCredentials", "isDefault", "jsonData",
                        "secureJsonData")


@dataclass
class Payloads:
    """The JSON bodies ``push`` sends, in order."""
    datasources: list[dict[str, Any]]
    folders: list[dict[str, str]]
    dashboards: list[dict[str, Any]]
    contact_points: list[dict[str, Any]]
    rule_groups: list[tuple[str, str, dict[str, Any]]]   # folder uid, group name, body
    policy: dict[str, Any] | None


def build_payloads(prov: Provisioning, env: Mapping[str, str]) -> Payloads:
    """The API payloads for ``prov``, with environment variables expanded from ``env``. A
    variable that ``env`` lacks raises DashboardError naming it (Grafana would silently use
    an empty string)."""
    missing: set[str] = set()
    datasources = [{k: v for k, v in expand_env(ds, env, missing).items()
                    if k in _DATASOURCE_API_KEYS} for ds in prov.datasources]
    folders = {p["folderUid"]: p.get("folder") or p["folderUid"] for p in prov.providers
               if p.get("folderUid")}
    for group in prov.rule_groups:
        folders.setdefault(prov.folder_uid(group["folder"]), group["folder"])
    provider_folder = next((p.get("folderUid") for p in prov.providers if p.get("folderUid")),
                           None)
    dashboards = []
    for dash in prov.dashboards.values():
        body = copy.deepcopy(dash)
        body.pop("id", None)
        dashboards.append({"dashboard": body, "folderUid": provider_folder, "overwrite": True,
                           "message": "opmon dashboards push"})
    contact_points = []
    for cp in expand_env(prov.contact_points, env, missing):
        for receiver in cp.get("receivers") or []:
            contact_points.append({"uid": receiver.get("uid"), "name": cp["name"],
                                   "type": receiver["type"],
                                   "settings": receiver.get("settings") or {},
                                   "disableResolveMessage":
                                       bool(receiver.get("disableResolveMessage", False))})
    rule_groups = []
    for group in prov.rule_groups:
        folder_uid = prov.folder_uid(group["folder"])
        rules = [_rule_payload(rule, folder_uid, group, env, missing)
                 for rule in group.get("rules") or []]
        rule_groups.append((folder_uid, group["name"], {
            "title": group["name"], "folderUid": folder_uid,
            "interval": int(_duration_s(group["interval"])), "rules": rules}))
    policy = None
    if prov.policies:
        policy = {k: v for k, v in expand_env(prov.policies[0], env, missing).items()
                  if k != "orgId"}
    if missing:
        raise DashboardError("environment variables used by the provisioning files are not "
                             "set: " + ", ".join(sorted(missing)))
    return Payloads(datasources, [{"uid": u, "title": t} for u, t in folders.items()],
                    dashboards, contact_points, rule_groups, policy)


def _rule_payload(rule: dict[str, Any], folder_uid: str, group: dict[str, Any],
                  env: Mapping[str, str], missing: set[str]) -> dict[str, Any]:
    body = expand_env(rule, env, missing, skip=frozenset({"data", "annotations"}))
    annotations = dict(body.get("annotations") or {})
    if body.get("dashboardUid"):   # the API links a rule to a panel through annotations
        annotations["__dashboardUid__"] = body["dashboardUid"]
        annotations["__panelId__"] = str(body.get("panelId", ""))
    return {"uid": body["uid"], "title": body["title"], "condition": body["condition"],
            "data": body["data"], "for": body.get("for", "0s"),
            "noDataState": body.get("noDataState", "NoData"),
            "execErrState": body.get("execErrState", "Error"),
            "labels": body.get("labels") or {}, "annotations": annotations,
            "isPaused": bool(body.get("isPaused", False)), "folderUID": folder_uid,
            "ruleGroup": group["name"], "orgID": int(group.get("orgId", 1))}


def push(url: str, root: str | Path = DEFAULT_DIR, credential: str | None = None,
         env: Mapping[str, str] | None = None, timeout: float = 10.0) -> dict[str, int]:
    """Uploads everything under ``root`` to the Grafana at ``url`` (credentials in the URL,
    ``http://user:password@host:3000``, or an API token in ``credential``). Objects keep their
    uids, so pushing again updates them in place. Returns how many of each were sent."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    payloads = build_payloads(load(root), os.environ if env is None else env)
    api = GrafanaApi.from_url(url, credential=credential, timeout=timeout)
    existing = {ds.get("uid") for ds in api.datasource.list_datasources()}
    for ds in payloads.datasources:
        if ds["uid"] in existing:
            api.datasource.update_datasource_by_uid(ds["uid"], ds)
        else:
            api.datasource.create_datasource(ds)
    for folder in payloads.folders:
        try:
            api.folder.get_folder(folder["uid"])
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.folder.create_folder(folder["title"], uid=folder["uid"])
    for dash in payloads.dashboards:
        api.dashboard.update_dashboard(dash)
    known = {cp.get("uid") for cp in api.alertingprovisioning.get_contactpoints()}
    for cp in payloads.contact_points:
        if cp["uid"] in known:
            api.alertingprovisioning.update_contactpoint(cp["uid"], cp, disable_provenance=True)
        else:
            api.alertingprovisioning.create_contactpoint(cp, disable_provenance=True)
    for folder_uid, name, body in payloads.rule_groups:
        api.alertingprovisioning.update_rule_group(folder_uid, name, body,
                                                   disable_provenance=True)
    if payloads.policy:
        api.alertingprovisioning.set_notification_policy_tree(payloads.policy,
                                                              disable_provenance=True)
    return {"datasources": len(payloads.datasources), "folders": len(payloads.folders),
            "dashboards": len(payloads.dashboards),
            "contact_points": len(payloads.contact_points),
            "rules": sum(len(body["rules"]) for _, _, body in payloads.rule_groups),
            "policies": int(payloads.policy is not None)}


# -- CLI -----------------------------------------------------------------------------------
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboards", help="check or push the Grafana provisioning",
                              description="Grafana datasource, dashboards and alerting in "
                              "dashboards/.")
    sub = p.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    s = sub.add_parser("check", help="validate the provisioning files; with --influx-url, run "
                       "every panel query against a database")
    s.add_argument("--dir", default=str(DEFAULT_DIR), help="provisioning root (default: the "
                   "repository's dashboards/)")
    s.add_argument("--influx-url", help="InfluxDB to run the panel queries against")
    s.add_argument("--db", default="opmon", help="InfluxQL database (default opmon)")
    s.add_argument("--token-env", help="environment variable holding the InfluxDB token")
    s.add_argument("--last", default="6h", help="time range to query, ending now (default 6h)")
    s.set_defaults(func=run)
    s = sub.add_parser("push", help="upload datasource, dashboards and alerting to Grafana")
    s.add_argument("url", help="Grafana URL, e.g. http://admin:admin@localhost:3000")
    s.add_argument("--dir", default=str(DEFAULT_DIR), help="provisioning root (default: the "
                   "repository's dashboards/)")
    s.add_argument("--token-env", help="environment variable holding a Grafana API token "
                   "(default GRAFANA_TOKEN when set)")
    s.add_argument("--dry-run", action="store_true", help="print the payloads, send nothing")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .secrets import SecretError

    try:
        if args.dashboards_command == "check":
            return _run_check(args)
        return _run_push(args)
    except (DashboardError, SecretError) as exc:
        print(f"opmon dashboards {args.dashboards_command}: {exc}", file=sys.stderr)
        return 2


def _run_check(args: argparse.Namespace) -> int:
    import time

    from .cli import parse_duration
    from .secrets import read_secret

    problems = check(args.dir)
    if not problems and args.influx_url:
        token = read_secret("InfluxDB token", env=args.token_env)
        to_ms = int(time.time() * 1000)
        from_ms = to_ms - int(parse_duration(args.last) * 1000)
        problems = check_queries(args.dir, influxql_runner(args.influx_url, args.db, token),
                                 from_ms, to_ms)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(problems)} problem(s) in {args.dir}" if problems else f"{args.dir}: ok")
    return 1 if problems else 0


def _run_push(args: argparse.Namespace) -> int:
    from .secrets import read_secret

    if args.dry_run:
        payloads = build_payloads(load(args.dir), os.environ)
        print(json.dumps(payloads.__dict__, indent=2, ensure_ascii=False))
        return 0
    token = (read_secret("Grafana token", env=args.token_env) if args.token_env
             else os.environ.get("GRAFANA_TOKEN"))
    sent = push(args.url, args.dir, credential=token)
    print("pushed " + ", ".join(f"{n} {what}" for what, n in sent.items()))
    return 0
