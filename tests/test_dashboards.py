"""Grafana provisioning in dashboards/: the files are well formed (and the checker finds what is
not), the committed JSON is what dashboards/generate.py writes, Grafana's InfluxQL macros expand
as Grafana expands them, docker-compose mounts what the provisioning expects, and the payloads
`opmon dashboards push` would send are complete. Queries against a real InfluxDB are in
test_dashboard_queries.py."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from stream import dashboards as d

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
ENV = {"INFLUX_URL": "http://influxdb:8086", "INFLUX_DB": "opmon", "INFLUX_TOKEN": "s3cret",
       "ALERT_WEBHOOK_URL": "http://hooks.example:8080/alerts"}
EXPECTED = {"opmon-cell-overview", "opmon-gas", "opmon-pressure", "opmon-spectra",
            "opmon-alerts", "opmon-system-health"}


def _generator():
    spec = importlib.util.spec_from_file_location("dashboards_generate",
                                                  DASHBOARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_provisioning_passes_the_checks() -> None:
    assert d.check(DASHBOARDS) == []
    prov = d.load(DASHBOARDS)
    assert {dash["uid"] for dash in prov.dashboards.values()} == EXPECTED
    assert prov.datasource_uids == {"opmon-influxdb"}
    assert {r["uid"] for g in prov.rule_groups for r in g["rules"]} == {
        "opmon-gas-onset", "opmon-gas-rate", "opmon-runaway", "opmon-short",
        "opmon-voltage-collapse"}
    # every dashboard has the experiment variable, and a cell variable unless it is per node
    for dash in prov.dashboards.values():
        names = [v["name"] for v in dash["templating"]["list"]]
        assert names[0] == "experiment"
        assert "cell" in names or dash["uid"] == "opmon-system-health"


def test_committed_json_is_what_the_generator_writes() -> None:
    rendered = _generator().render()
    assert sorted(rendered) == sorted(p.name for p in (DASHBOARDS / "json").glob("*.json"))
    for name, text in rendered.items():
        assert (DASHBOARDS / "json" / name).read_text() == text, \
            f"dashboards/json/{name} is stale: run python dashboards/generate.py"


def _broken_copy(tmp_path: Path) -> Path:
    root = tmp_path / "dashboards"
    shutil.copytree(DASHBOARDS, root, ignore=shutil.ignore_patterns("compose", "__pycache__"))
    return root


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_yaml(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


def test_check_reports_each_kind_of_mistake(tmp_path: Path) -> None:
    root = _broken_copy(tmp_path)
    js = root / "json"

    def gas(dash: dict) -> None:
        p = dash["panels"]
        p[1]["gridPos"] = dict(p[0]["gridPos"])               # on top of panel 1
        p[2]["gridPos"]["x"] = 20                              # 20 + 12 > 24 columns
        p[3]["datasource"] = None
        p[3]["targets"][0]["datasource"] = None
        p[0]["targets"][0]["query"] += ' AND "gas" =~ /^$gass$/'   # a typo
        p[2]["id"] = p[0]["id"]
        dash["templating"]["list"].reverse()                  # cell before experiment

    _edit_json(js / "gas.json", gas)
    _edit_json(js / "pressure.json", lambda dash: dash.update(uid="opmon-gas"))
    _edit_json(js / "spectra.json", lambda dash: dash["panels"][0].update(targets=[]))
    _edit_json(js / "alerts.json",
               lambda dash: dash["panels"][0]["targets"][0].update(query="  "))

    def rules(data: dict) -> None:
        rule = data["groups"][0]["rules"][0]
        rule["condition"] = "D"
        rule["labels"]["cell"] = "$cell"
        rule["data"][0]["datasourceUid"] = "other-influx"
        data["groups"][1]["rules"][0]["panelId"] = 99
        data["groups"][1]["interval"] = "15s"
        data["groups"][1]["rules"][1]["uid"] = data["groups"][1]["rules"][0]["uid"]

    _edit_yaml(root / "provisioning" / "alerting" / "rules.yaml", rules)
    _edit_yaml(root / "provisioning" / "alerting" / "policies.yaml",
               lambda data: data["policies"][0]["routes"][0].update(receiver="pagerduty"))
    problems = "\n".join(d.check(root))
    for expected in [
        r"gas.json: panel 2 .*overlaps gas.json: panel 1",
        r"gas.json: panel 1 .* outside the 24 columns",
        r"gas.json: panel 4 .*: no datasource",
        r"gas.json: panel 1 .*unknown variable \$gass",
        r"gas.json: panel 1 .*: duplicate panel id",
        r"gas.json: variable cell: unknown variable \$experiment",
        r"pressure.json: uid 'opmon-gas' is also gas.json's",
        r"spectra.json: panel 1 .*: no query",
        r"alerts.json: panel 1 .*A: no query",
        r"rule opmon-gas-onset: condition D is not a query",
        r"rule opmon-gas-onset: no \$ in them|labels are expanded",
        r"rule opmon-gas-onset: A datasource 'other-influx' is not provisioned",
        r"rule opmon-short: panel 99 is not on opmon-alerts",
        r"opmon-short-circuit: interval must be a multiple of 10 s",
        r"duplicate rule uid opmon-short",
        r"receiver 'pagerduty' is not a contact point",
    ]:
        assert re.search(expected, problems), f"{expected!r} not in:\n{problems}"
    assert d.check(tmp_path / "nowhere") != []


def test_influxql_macros_expand_as_grafana_does() -> None:
    from_ms, to_ms = 1_795_327_300_000, 1_795_327_300_000 + 2 * 3600_000
    # (to - from) / max data points, rounded to Grafana's steps (gtime.RoundInterval)
    assert d.grafana_interval_ms(from_ms, to_ms, 1000) == 5000          # 7.2 s -> 5 s
    assert d.grafana_interval_ms(0, 6 * 3600_000, 1000) == 20000        # 21.6 s -> 20 s
    assert d.grafana_interval_ms(0, 86400_000, 1000) == 60000           # 86.4 s -> 1 m
    assert d.grafana_interval_ms(0, 60_000, 1000, min_interval_ms=1000) == 1000
    assert [d.format_interval(ms) for ms in (500, 5000, 60000, 7200000, 86400000)] == \
        ["500ms", "5s", "1m", "2h", "1d"]
    query = ('SELECT mean("position") FROM "result_peak" WHERE "experiment" =~ /^$experiment$/ '
             'AND "cell" =~ /^${cell}$/ AND "peak" =~ /^[[peak]]$/ AND $timeFilter '
             'GROUP BY time($__interval), "cell" fill(none) -- $__interval_ms $unknown')
    rendered = d.render_influxql(query, from_ms, to_ms, 5000, {
        "experiment": ["demo"], "cell": ["cell01", "cell02"], "peak": ["NMC(003)"]})
    assert rendered == (
        'SELECT mean("position") FROM "result_peak" WHERE "experiment" =~ /^demo$/ '
        'AND "cell" =~ /^(cell01|cell02)$/ AND "peak" =~ /^NMC\\(003\\)$/ AND '
        f"time >= {from_ms}ms and time <= {to_ms}ms "
        'GROUP BY time(5s), "cell" fill(none) -- 5000 $unknown')


@pytest.mark.parametrize("values", [["NMC(003)"], ["a.b", "a+b"], ["x/y", "[z]", "^$|\\"],
                                    ["cell01"], []])
def test_regex_format_matches_exactly_the_selected_values(values: list[str]) -> None:
    # InfluxQL and Python agree on these escapes; /.../ delimits, so '/' must be escaped too
    pattern = re.compile("^" + d.regex_format(values) + "$")
    for v in values:
        assert pattern.fullmatch(v)
    for other in ["NMC(003)x", "aXb", "ab", "x\\/y", "z", "cell0", "cell011"]:
        assert not pattern.fullmatch(other) or other in values
    assert "/" not in re.sub(r"\\/", "", d.regex_format(values))


def test_compose_mounts_what_the_provisioning_expects() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        host, container = volume.split(":")[:2]
        mounts[container] = (ROOT / host).resolve()
    assert mounts["/etc/grafana/provisioning"] == DASHBOARDS / "provisioning"
    prov = d.load(DASHBOARDS)
    for provider in prov.providers:
        path = Path(provider["options"]["path"])
        host = mounts[str(path.parent)] / path.name
        assert host == d.provider_dir(DASHBOARDS, provider)
        assert {p.name for p in host.glob("*.json")} == set(prov.dashboards)
    # every variable the provisioning files use is in Grafana's environment
    used = set()
    for path in (DASHBOARDS / "provisioning").rglob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        for group in data.get("groups", []):   # queries and annotations are not expanded
            for rule in group["rules"]:
                rule.pop("data"), rule.pop("annotations")
        d.expand_env(data, {}, used)
    assert used == set(ENV)
    assert used <= set(grafana["environment"])


def test_push_payloads_are_complete_and_expanded() -> None:
    prov = d.load(DASHBOARDS)
    p = d.build_payloads(prov, ENV)
    json.dumps(p.__dict__)    # everything grafana-client sends is JSON
    (ds,) = p.datasources
    assert ds["url"] == "http://influxdb:8086" and ds["jsonData"]["dbName"] == "opmon"
    assert ds["secureJsonData"] == {"httpHeaderValue1": "Token s3cret"}
    assert ds["uid"] == "opmon-influxdb" and ds["type"] == "influxdb" and ds["access"] == "proxy"
    assert set(ds) <= set(d._DATASOURCE_API_KEYS)
    assert p.folders == [{"uid": "opmon", "title": "opmon"}]
    assert len(p.dashboards) == len(EXPECTED)
    for body in p.dashboards:
        assert body["overwrite"] is True and body["folderUid"] == "opmon"
        assert "id" not in body["dashboard"] and body["dashboard"]["uid"] in EXPECTED
    (cp,) = p.contact_points
    assert cp == {"uid": "opmon-webhook", "name": "opmon-webhook", "type": "webhook",
                  "settings": {"url": ENV["ALERT_WEBHOOK_URL"], "httpMethod": "POST",
                               "maxAlerts": 0}, "disableResolveMessage": False}
    assert p.policy["receiver"] == "opmon-webhook" and "orgId" not in p.policy
    rules = {r["uid"]: (folder, group, body, r) for folder, group, body in p.rule_groups
             for r in body["rules"]}
    assert len(rules) == 5
    for folder, group, body, rule in rules.values():
        assert folder == "opmon" and body["interval"] == 10 and body["title"] == group
        assert rule["folderUID"] == "opmon" and rule["ruleGroup"] == group
        assert rule["condition"] in {q["refId"] for q in rule["data"]}
        assert all(q["model"]["refId"] == q["refId"] for q in rule["data"])
        query = rule["data"][0]["model"]["query"]
        assert "$timeFilter" in query           # kept verbatim for Grafana's backend
        assert "{{ $labels.cell }}" in rule["annotations"]["summary"]
        assert rule["annotations"]["__dashboardUid__"] in EXPECTED
    assert rules["opmon-short"][3]["labels"] == {"severity": "critical", "fault": "short"}


def test_env_expansion_follows_grafana(tmp_path: Path) -> None:
    missing: set[str] = set()
    out = d.expand_env({"a": "$X/${Y}", "b": ["$$X", "pre$X"], "skip": "$X"},
                       {"X": "1", "Y": "2", "Xpost": "no"}, missing, frozenset({"skip"}))
    assert out == {"a": "1/2", "b": ["$X", "pre1"], "skip": "$X"} and not missing
    with pytest.raises(d.DashboardError, match="ALERT_WEBHOOK_URL, INFLUX_TOKEN"):
        d.build_payloads(d.load(DASHBOARDS), {"INFLUX_URL": "u", "INFLUX_DB": "db"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opmon")
    d.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_check_and_dry_run_push(tmp_path: Path, capsys, monkeypatch) -> None:
    args = _parser().parse_args(["dashboards", "check"])
    assert args.func(args) == 0
    assert "ok" in capsys.readouterr().out
    root = _broken_copy(tmp_path)
    _edit_json(root / "json" / "gas.json", lambda dash: dash.update(uid="opmon-pressure"))
    args = _parser().parse_args(["dashboards", "check", "--dir", str(root)])
    assert args.func(args) == 1
    assert "is also" in capsys.readouterr().err
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    args = _parser().parse_args(["dashboards", "push", "http://admin:admin@127.0.0.1:9",
                                 "--dry-run"])
    assert args.func(args) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["datasources"][0]["url"] == ENV["INFLUX_URL"]
    monkeypatch.delenv("ALERT_WEBHOOK_URL")
    assert args.func(args) == 2
    assert "ALERT_WEBHOOK_URL" in capsys.readouterr().err


def test_push_goes_to_the_url_it_is_given(tmp_path: Path) -> None:
    # nothing listens on the port: the push's first request (the datasource list) fails to
    # connect to that host and port; no Grafana is imitated here
    from niquests.exceptions import ConnectionError as RequestConnectionError

    from tests.helpers import free_port
    port = free_port()
    with pytest.raises(RequestConnectionError) as info:
        d.push(f"http://admin:admin@127.0.0.1:{port}", DASHBOARDS, env=ENV, timeout=2)
    assert f"port={port}" in str(info.value) and "/api/datasources" in str(info.value)
    with pytest.raises(d.DashboardError):   # incomplete payloads: nothing is sent at all
        d.push(f"http://127.0.0.1:{port}", DASHBOARDS, env={})
