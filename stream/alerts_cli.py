"""``opmon alerts``: acknowledge alerts, list the current ones, print the rules.

    opmon alerts ack hard_short --cell cell03 --url mqtt://127.0.0.1:1883 --experiment exp42
    opmon alerts ack '*' -c run.toml               # every firing alert of the experiment
    opmon alerts list --url mqtt://127.0.0.1:1883 [--experiment exp42] [--all] [--json]
    opmon alerts rules [-c run.toml]               # the rules in effect, as TOML
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import Any

import tomli_w

from .alerts.config import AlertRule
from .alerts.defaults import default_rules


def add_parser(subparsers: Any) -> None:
    s = subparsers.add_parser(
        "alerts", help="acknowledge alerts, list the current ones, print the rules",
        description="Acknowledge alerts through the MQTT command topic "
        "(<root>/<experiment>/alerts/ack), list the current state of every alert from the "
        "retained alert topics, or print the alert rules in effect.")
    actions = s.add_subparsers(dest="alerts_action", required=True, metavar="ACTION")

    a = actions.add_parser("ack", help="acknowledge firing alerts",
                           description="A latched alert resolves when acknowledged; one whose "
                           "condition still holds becomes 'acknowledged' (no more reminders).")
    a.add_argument("rule", help="rule name (a glob: '*' acknowledges every rule)")
    a.add_argument("--cell", help="cell id (a glob); default every cell")
    a.add_argument("--by", default=getpass.getuser(), help="who acknowledges (default: you)")
    a.add_argument("--comment", help="free text sent with the acknowledgement")
    _connection_args(a)

    lst = actions.add_parser("list", help="the current alerts, from the retained topics")
    lst.add_argument("--all", action="store_true", help="include resolved alerts")
    lst.add_argument("--json", action="store_true", help="one JSON document per line")
    lst.add_argument("--settle", type=float, default=0.5,
                     help="stop after nothing new arrived for this long, in s (default 0.5)")
    _connection_args(lst)

    r = actions.add_parser("rules", help="print the alert rules in effect as TOML",
                           description="The [[alerts]] of CONFIG, or the default rules.")
    r.add_argument("-c", "--config", help="CONFIG.toml (default: the default rules)")
    s.set_defaults(func=run)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="MQTT broker, e.g. mqtt://127.0.0.1:1883 (default: the "
                   "alert_mqtt sink of --config)")
    p.add_argument("-c", "--config", help="CONFIG.toml: experiment id, broker and credentials "
                   "of its alert_mqtt sink")
    p.add_argument("--experiment", help="experiment id (default: the config's)")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-env", help="environment variable holding the MQTT password")


def run(args: argparse.Namespace) -> int:
    if args.alerts_action == "rules":
        return _rules(args)
    mqtt_cfg, experiment = _connection(args)
    if args.alerts_action == "ack":
        return _ack(args, mqtt_cfg, experiment)
    return _list(args, mqtt_cfg, experiment or "+")


def _connection(args: argparse.Namespace) -> tuple[Any, str | None]:
    from .alerts.mqtt import MqttAlertConfig, MqttAlertSink

    settings: dict[str, Any] = {}
    experiment = args.experiment
    if args.config:
        from .config import load_config
        cfg = load_config(args.config)
        experiment = experiment or cfg.experiment.id
        sink = next((p for p in cfg.sinks if p.type == MqttAlertSink.type_name), None)
        if sink is not None:
            settings = dict(sink.model_extra or {})
    if args.url:
        settings["url"] = args.url
    if args.username:
        settings["username"] = args.username
    if args.password_env:
        settings["password_env"] = args.password_env
    if "url" not in settings:
        raise SystemExit("opmon alerts: give --url, or -c CONFIG with an alert_mqtt sink")
    return MqttAlertConfig.model_validate(settings), experiment


def _ack(args: argparse.Namespace, mqtt_cfg: Any, experiment: str | None) -> int:
    from .alerts.mqtt import AckCommand, publish_ack

    if not experiment:
        raise SystemExit("opmon alerts ack: give --experiment (or -c CONFIG)")
    ack = AckCommand(rule=args.rule, cell=args.cell, by=args.by, comment=args.comment)
    asyncio.run(publish_ack(mqtt_cfg, experiment, ack))
    print(f"acknowledged {args.rule}" + (f" on {args.cell}" if args.cell else "")
          + f" in {experiment} (by {args.by})")
    return 0


def _list(args: argparse.Namespace, mqtt_cfg: Any, experiment: str) -> int:
    from .alerts.mqtt import read_retained

    docs = asyncio.run(read_retained(mqtt_cfg, experiment, args.settle))
    if not args.all:
        docs = [d for d in docs if d.get("state") != "resolved"]
    if args.json:
        for doc in docs:
            print(json.dumps(doc))
        return 0
    if not docs:
        print("no alerts" if args.all else "no current alerts")
        return 0
    print(f"{'state':13s} {'severity':9s} {'experiment/alert':40s} {'since':24s} value")
    for d in docs:
        value = "" if d.get("value") is None else f"{d['value']:.4g}"
        who = f" acked by {d['acked_by']}" if d.get("acked_by") else ""
        print(f"{d.get('state', '?'):13s} {d.get('severity', '?'):9s} "
              f"{d.get('experiment')}/{d.get('alert_id')!s:34s} {d.get('time', ''):24s} "
              f"{value}{who}")
    return 0


def _rules(args: argparse.Namespace) -> int:
    if args.config:
        from .config import load_config
        rules = load_config(args.config).alerts
    else:
        rules = [AlertRule.model_validate(r) for r in default_rules()]
    data = {"alerts": [r.model_dump(exclude_defaults=True) for r in rules]}
    sys.stdout.write(tomli_w.dumps(data))
    return 0
