"""Writes the Grafana dashboards in ``dashboards/json/`` from the definitions below.

    python dashboards/generate.py          # rewrite the JSON files
    python dashboards/generate.py --check  # exit 1 if a JSON file differs from its definition

Every query is raw InfluxQL for the provisioned datasource (uid ``opmon-influxdb``), so the
dashboards work with InfluxDB 1.8+, with 2.x through a DBRP mapping and with 3.x. Measurement,
tag and field names follow README.md, "Results written as line protocol".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "influxdb", "uid": "opmon-influxdb"}
JSON_DIR = Path(__file__).resolve().parent / "json"
COLUMNS = 24

CELLS = '"experiment" =~ /^$experiment$/ AND "cell" =~ /^$cell$/'
EXPERIMENT = '"experiment" =~ /^$experiment$/'


# -- building blocks -------------------------------------------------------------------------
def select(fields: str, measurement: str, where: str = CELLS, group: str = '"cell"',
           bucket: bool = True) -> str:
    """``SELECT fields FROM measurement WHERE where AND $timeFilter GROUP BY ...``; with
    ``bucket`` the rows are aggregated per ``$__interval``."""
    group_by = f"time($__interval), {group} fill(none)" if bucket else group
    return (f'SELECT {fields} FROM "{measurement}" WHERE {where} AND $timeFilter '
            f"GROUP BY {group_by}")


def target(query: str, ref: str = "A", alias: str = "$tag_cell",
           fmt: str = "time_series") -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "rawQuery": True, "resultFormat": fmt,
            "query": query, "alias": alias}


def timeseries(title: str, targets: list[dict], unit: str = "short", points: bool = False,
               description: str = "", decimals: int | None = None) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "points" if points else "line", "lineWidth": 1,
                              "pointSize": 6 if points else 4,
                              "showPoints": "always" if points else "never",
                              "spanNulls": False}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": DATASOURCE, "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom",
                                   "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}}}


def table(title: str, query: str, description: str = "") -> dict[str, Any]:
    return {"type": "table", "title": title, "description": description,
            "datasource": DATASOURCE, "targets": [target(query, alias="", fmt="table")],
            "fieldConfig": {"defaults": {"custom": {"filterable": True}}, "overrides": []},
            "options": {"showHeader": True, "sortBy": [{"displayName": "Time", "desc": True}]}}


def variable(name: str, label: str, query: str, multi: bool = True) -> dict[str, Any]:
    current = {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {}
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": query, "definition": query, "refresh": 1, "sort": 1, "hide": 0,
            "multi": multi, "includeAll": multi, "current": current, "options": [],
            "regex": "", "skipUrlSync": False}


def variables(measurement: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    """experiment (one) and cell (any) from the tags of ``measurement``, then ``extra``."""
    return [variable("experiment", "Experiment",
                     f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "experiment"',
                     multi=False),
            variable("cell", "Cell", f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "cell" '
                     f"WHERE {EXPERIMENT}"),
            *extra]


def annotation(name: str, query: str, color: str, text: str, tags: str,
               title: str = "event") -> dict[str, Any]:
    """InfluxQL annotation: one mark per row; ``text``/``tags``/``title`` name result columns."""
    return {"name": name, "datasource": DATASOURCE, "enable": True, "hide": False,
            "iconColor": color,
            "target": {"refId": "Anno", "query": query, "rawQuery": True, "fromAnnotations": True,
                       "textColumn": text, "tagsColumn": tags, "titleColumn": title,
                       "timeEndColumn": ""}}


def event_annotation(name: str, condition: str, color: str, text: str) -> dict[str, Any]:
    query = (f'SELECT "event", "severity", "cell", {text} FROM "event" WHERE {condition} '
             f"AND {CELLS} AND $timeFilter")
    return annotation(name, query, color, text=text.strip('"'), tags="cell,severity")


ALERT_ANNOTATION = annotation(
    "Alerts firing",
    f'SELECT "rule", "severity", "cell", "value" FROM "alert" WHERE "state" = \'firing\' '
    f"AND {CELLS} AND $timeFilter", "red", text="rule", tags="cell,severity", title="rule")

BUILTIN_ANNOTATION = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                      "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                      "name": "Annotations & Alerts", "type": "dashboard"}


def grid(panels: list[dict[str, Any]], per_row: int = 2, height: int = 8) -> list[dict]:
    """Lays panels out left to right, ``per_row`` to a row, and numbers them from 1."""
    width = COLUMNS // per_row
    for i, panel in enumerate(panels):
        span = panel.pop("span", 1)
        panel["id"] = i + 1
        panel["gridPos"] = {"h": panel.pop("height", height), "w": width * span,
                            "x": 0, "y": 0}
    x = y = row_height = 0
    for panel in panels:
        pos = panel["gridPos"]
        if x + pos["w"] > COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        pos["x"], pos["y"] = x, y
        x += pos["w"]
        row_height = max(row_height, pos["h"])
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[dict],
              templating: list[dict], annotations: list[dict] | None = None,
              refresh: str = "10s") -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["opmon"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "timezone": "browser", "refresh": refresh, "time": {"from": "now-6h", "to": "now"},
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False,
        "links": [{"title": "opmon", "type": "dashboards", "tags": ["opmon"], "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link",
                   "targetBlank": False, "tooltip": "", "url": ""}],
        "templating": {"list": templating},
        "annotations": {"list": [BUILTIN_ANNOTATION, *(annotations or [])]},
        "panels": grid(panels),
    }


# -- the dashboards --------------------------------------------------------------------------
def cell_overview() -> dict[str, Any]:
    echem = "result_echem"
    cycle = "result_cycle"
    panels = [
        timeseries("Voltage", [target(select('mean("voltage")', echem))], "volt"),
        timeseries("Current", [target(select('mean("current")', echem))], "amp"),
        timeseries("Capacity per cycle", [
            target(select('"charge_Ah", "discharge_Ah"', cycle, bucket=False),
                   alias="$tag_cell $col")], "amph", points=True,
            description="Charge and discharge capacity of each completed cycle "
            "(result_cycle), at the time the cycle ended."),
        timeseries("Coulombic efficiency", [
            target(select('"coulombic_efficiency"', cycle, bucket=False))], "percentunit",
            points=True, description="Discharge / charge capacity per cycle."),
        timeseries("State of charge", [target(select('mean("soc")', echem))], "percentunit",
                   description="Only when SOC anchors are configured for electrochem."),
        timeseries("Capacity per half-cycle", [
            target(select('"capacity_Ah"', "result_half_cycle", bucket=False),
                   alias="$tag_cell")], "amph", points=True),
        timeseries("DC resistance at current steps", [
            target(select('"r0_ohm", "r_10s_ohm"', "result_resistance", bucket=False),
                   alias="$tag_cell $col")], "ohm", points=True),
        timeseries("dQ/dV peak voltage", [
            target(select('"peak_voltage"', "result_dqdv", bucket=False))], "volt",
            points=True),
    ]
    return dashboard("opmon-cell-overview", "opmon / Cell overview",
                     "Voltage, current, capacity and coulombic efficiency per cell.", panels,
                     variables(echem), [ALERT_ANNOTATION])


def gas() -> dict[str, Any]:
    where = f'{CELLS} AND "gas" =~ /^$gas$/'
    group = '"cell", "gas"'
    alias = "$tag_cell $tag_gas"
    panels = [
        timeseries("Gas evolution rate", [target(select('mean("rate_umol_min")', "result_gas",
                                                        where, group), alias=alias)],
                   "suffix: µmol/min", description="Per gas from the OEMS (result_gas)."),
        timeseries("Cumulative gas amount", [target(select('last("amount_mol")', "result_gas",
                                                           where, group), alias=alias)],
                   "suffix: mol"),
        timeseries("Mole fraction", [target(select('mean("mole_fraction")', "result_gas",
                                                   where, group), alias=alias)],
                   "percentunit"),
        timeseries("Gas onset rate", [target(
            select('"rate_mol_s"', "event", f"\"event\" = 'gas_onset' AND {CELLS}",
                   bucket=False))], "suffix: mol/s", points=True,
            description="Rate at each gassing onset the gas_events detector reported."),
    ]
    gas_var = variable("gas", "Gas", 'SHOW TAG VALUES FROM "result_gas" WITH KEY = "gas" '
                       f"WHERE {EXPERIMENT}")
    return dashboard(
        "opmon-gas", "opmon / Gas", "Gas evolution per cell and gas, with gassing onsets.",
        panels, variables("result_gas", gas_var),
        [event_annotation("Gas onset", "\"event\" = 'gas_onset'", "orange", '"gas"'),
         event_annotation("Runaway precursor", "(\"event\" = 'runaway_precursor' OR "
                          "\"event\" = 'thermal_runaway')", "red", '"source"')])


def pressure() -> dict[str, Any]:
    result = "result_pressure"
    panels = [
        timeseries("Pressure", [target(select('mean("pressure")', "pressure"))], "pressurepa",
                   description="Raw pressure frames (measurement pressure): the InfluxDB "
                   "sink must take the kind \"pressure\"."),
        timeseries("Temperature", [target(select('mean("temperature")', "pressure"))],
                   "celsius"),
        timeseries("Gas in the headspace", [target(select('mean("moles")', result))], "suffix: mol",
                   description="n = pV/RT."),
        timeseries("Gas rate from pressure", [target(select('mean("rate_umol_min")', result))],
                   "suffix: µmol/min"),
        timeseries("Electrons per gas molecule", [target(
            select('mean("z_electrons_per_molecule")', result))], "short", decimals=2,
            description="Charge passed / gas evolved (e⁻ per molecule)."),
        timeseries("Reversible and irreversible gas", [target(
            select('last("n_reversible"), last("n_irreversible")', result),
            alias="$tag_cell $col")], "suffix: mol"),
    ]
    return dashboard("opmon-pressure", "opmon / Pressure",
                     "Pressure cell: pressure, moles of gas and electrons per molecule.",
                     panels, variables(result),
                     [event_annotation("Gas onset", "\"event\" = 'gas_onset'", "orange",
                                       '"gas"')])


def spectra() -> dict[str, Any]:
    where = f'{CELLS} AND "peak" =~ /^$peak$/'
    group = '"cell", "peak"'
    alias = "$tag_cell $tag_peak"

    def peak_panel(title: str, fields: str, unit: str, col: bool = False) -> dict[str, Any]:
        return timeseries(title, [target(select(fields, "result_peak", where, group),
                                         alias=alias + (" $col" if col else ""))], unit)

    panels = [
        peak_panel("Peak position", 'mean("position")', "short"),
        peak_panel("Peak FWHM", 'mean("fwhm")', "short"),
        peak_panel("Lattice parameter", 'mean("lattice_a") AS "a", mean("lattice_c") AS "c"',
                   "suffix: Å", col=True),
        peak_panel("d-spacing", 'mean("d_spacing")', "short"),
        peak_panel("Peak area", 'mean("area")', "short"),
        peak_panel("Fit quality (reduced chi²)", 'mean("chi2_red")', "short"),
    ]
    peak_var = variable("peak", "Peak", 'SHOW TAG VALUES FROM "result_peak" WITH KEY = "peak" '
                        f"WHERE {CELLS}")
    return dashboard("opmon-spectra", "opmon / Spectra",
                     "Peak fits on XRD patterns and Raman spectra: position, FWHM and lattice "
                     "parameter against time.", panels, variables("result_peak", peak_var))


def alerts() -> dict[str, Any]:
    panels = [
        table("Alerts", 'SELECT "rule", "state", "severity", "value", "threshold", "field", '
              f'"source" FROM "alert" WHERE {CELLS} AND $timeFilter GROUP BY "cell"',
              "Alert transitions written by the opmon alert engine (measurement alert)."),
        table("Events (warning and critical)",
              'SELECT "event", "severity", "source", "gas", "channel", "criterion" FROM "event" '
              f"WHERE \"severity\" != 'info' AND {CELLS} AND $timeFilter GROUP BY \"cell\""),
        timeseries("Alerts firing per interval", [target(
            select('count("value")', "alert", f"\"state\" = 'firing' AND {CELLS}"))],
            "short", points=True),
        timeseries("Events per interval", [target(
            select('count("onset_ns")', "event", f"\"severity\" != 'info' AND {CELLS}"))],
            "short", points=True),
    ]
    for panel in panels[:2]:
        panel["span"], panel["height"] = 2, 10
    return dashboard(
        "opmon-alerts", "opmon / Alerts", "Alerts and detector events, as tables and marks.",
        panels, variables("event"),
        [ALERT_ANNOTATION,
         event_annotation("Critical events", "\"severity\" = 'critical'", "purple",
                          '"source"')])


def system_health() -> dict[str, Any]:
    stage = f'{EXPERIMENT} AND "instrument" =~ /^$stage$/'
    group = '"instrument"'

    def health(title: str, fields: str, unit: str, col: bool = False,
               description: str = "") -> dict[str, Any]:
        return timeseries(title, [target(select(fields, "health", stage, group),
                                         alias="$tag_instrument" + (" $col" if col else ""))],
                          unit, description=description)

    panels = [
        health("Throughput (frames in)", 'non_negative_derivative(max("frames_in"), 1s)',
               "suffix: frames/s", description="Frames per second into each stage (from the "
               "cumulative frames_in counter)."),
        health("Results out", 'non_negative_derivative(max("frames_out"), 1s)', "suffix: frames/s"),
        health("Gaps: lost and duplicated frames",
               'max("lost") AS "lost", max("duplicates") AS "duplicates"', "short", col=True,
               description="Cumulative counts per stage from sequence tracking."),
        health("Rejected frames", 'max("rejects")', "short"),
        health("Queue depth", 'max("queue_depth")', "short"),
        health("Latency", 'max("latency_p50_ms") AS "p50", max("latency_p99_ms") AS "p99", '
               'max("latency_max_ms") AS "max"', "ms", col=True),
        health("InfluxDB sink: points", 'max("points_written") AS "written", '
               'max("points_spooled") AS "spooled", max("points_dead_lettered") AS '
               '"dead-lettered", max("points_dropped") AS "dropped"', "short", col=True,
               description="Cumulative counters of the InfluxDB sink stage; empty for stages "
               "that do not write to InfluxDB."),
        health("InfluxDB sink: spool depth",
               'max("spool_points") AS "points", max("spool_batches") AS "batches"', "short",
               col=True, description="Lines and batches waiting on disk while the database is "
               "unreachable; replayed oldest first."),
        health("InfluxDB sink: batch latency", 'max("batch_latency_p50_ms") AS "p50", '
               'max("batch_latency_p99_ms") AS "p99", max("batch_latency_max_ms") AS "max"',
               "ms", col=True),
        health("InfluxDB sink: database up and retries",
               'min("db_up") AS "up", max("retries") AS "retries"', "short", col=True),
    ]
    stage_var = variable("stage", "Stage", 'SHOW TAG VALUES FROM "health" WITH KEY = '
                         f'"instrument" WHERE {EXPERIMENT}')
    templating = [variable("experiment", "Experiment",
                           'SHOW TAG VALUES FROM "health" WITH KEY = "experiment"', multi=False),
                  stage_var]
    return dashboard("opmon-system-health", "opmon / System health",
                     "The node's own health frames: throughput, gaps, rejects, queues, "
                     "latency, and the InfluxDB sink's points, spool and batches.", panels,
                     templating)


DASHBOARDS = {"cell-overview": cell_overview, "gas": gas, "pressure": pressure,
              "spectra": spectra, "alerts": alerts, "system-health": system_health}


def render() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {f"{name}.json": json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [name for name, text in files.items()
                 if not (JSON_DIR / name).exists() or (JSON_DIR / name).read_text() != text]
        for name in stale:
            print(f"{JSON_DIR / name} differs from dashboards/generate.py", file=sys.stderr)
        return 1 if stale else 0
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in files.items():
        (JSON_DIR / name).write_text(text)
    print(f"wrote {len(files)} dashboards to {JSON_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
