"""Config errors name the file and key; secrets stay out of TOML; every command has --help;
the demo runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import build_parser, main
from stream.config import ConfigError, load_config
from stream.secrets import SecretError, read_secret

GOOD = """
[experiment]
id = "exp42"
[[cells]]
id = "cell07"
[[cells.instruments]]
id = "potentiostat"
adapter = "sim.potentiostat"
params = { duration_s = 60.0, sample_hz = 10.0 }
[[processors]]
type = "electrochem"
[[sinks]]
type = "lineprotocol"
path = "out/results.lp"
[[alerts]]
name = "low"
kind = "result.echem"
field = "voltage"
op = "<"
threshold = 2.5
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path, load_config(path)


def test_good_config_loads(tmp_path: Path) -> None:
    _, cfg = _load(tmp_path, GOOD)
    assert cfg.cells[0].instruments[0].params["sample_hz"] == 10.0


@pytest.mark.parametrize("edit, key, expect", [
    (("sample_hz = 10.0", 'sample_hz = "fast"'), "cells[0].instruments[0].params.sample_hz",
     "valid number"),
    (('adapter = "sim.potentiostat"', 'adapter = "sim.nothing"'),
     "cells[0].instruments[0].adapter", "unknown adapter"),
    (('type = "electrochem"', 'type = "electrochem"\nwindow = 3'), "processors[0].window",
     "unknown key"),
    (('type = "lineprotocol"\npath = "out/results.lp"', 'type = "lineprotocol"'),
     "sinks[0].path", "required key is missing"),
    (('op = "<"', 'op = "<<"'), "alerts[0].op", "'<'"),
    (('id = "exp42"', 'id = "exp 42"'), "experiment.id", "pattern"),
])
def test_config_error_names_file_and_key(tmp_path: Path, edit, key: str, expect: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, GOOD.replace(*edit))
    msg = str(info.value)
    assert str(tmp_path / "c.toml") in msg and key in msg and expect in msg, msg


def test_bad_toml_names_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="c.toml: not valid TOML"):
        _load(tmp_path, "[experiment\n")


def test_password_in_toml_is_refused(tmp_path: Path) -> None:
    text = GOOD + '\n[[inputs]]\nurl = "mqtt://127.0.0.1:1883"\nusername = "lab"\npassword = "x"\n'
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert "inputs[0].password" in str(info.value) and "password_env" in str(info.value)


def test_secrets_from_env_and_from_file_outside_repo(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPMON_TEST_PW", "s3cret")
    assert read_secret("mqtt", env="OPMON_TEST_PW") == "s3cret"
    with pytest.raises(SecretError, match="OPMON_MISSING"):
        read_secret("mqtt", env="OPMON_MISSING")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert read_secret("mqtt", file=str(secret)) == "from-file"
    inside = Path(__file__).parent / "not-a-secret.txt"
    with pytest.raises(SecretError, match="git work tree"):
        read_secret("mqtt", file=str(inside))


def test_cli_reports_config_errors(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.toml"
    path.write_text(GOOD.replace("threshold = 2.5", 'threshold = "low"'))
    assert main(["run", str(path)]) == 2
    assert "alerts[0].threshold" in capsys.readouterr().err


def test_every_command_has_help() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert {"demo", "run", "record", "replay", "process", "simulate", "inspect", "alerts",
            "dashboards"} <= set(commands)
    for name in commands:
        out = subprocess.run([sys.executable, "-m", "stream.cli", name, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert out.startswith(f"usage: opmon {name}")


def test_demo_runs_and_leaves_a_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "stream.cli", "demo", "--duration", "2h",
                           "--speed", "max", "--cells", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ALERT FIRING" in proc.stdout and "voltage_collapse" in proc.stdout
    assert "over_temperature" in proc.stdout
    assert "(reminder 1, not acknowledged)" in proc.stdout  # a latched critical alert repeats
    for name in ("recording.mcap", "results.lp", "health.lp", "summary.json",
                 "ground_truth.json", "config.toml"):
        assert (out / name).stat().st_size > 0, name
    truth = json.loads((out / "ground_truth.json").read_text())
    assert {"runaway_precursor", "hard_short", "clock_offset"} <= {g["kind"] for g in truth}
    assert main(["inspect", str(out / "recording.mcap")]) == 0
    # the config the demo wrote is a valid config
    assert load_config(out / "config.toml").experiment.id == "demo"


def test_readme_config_examples_are_valid(tmp_path: Path) -> None:
    import re
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert blocks
    full = tmp_path / "readme.toml"
    full.write_text(blocks[0])
    assert load_config(full).experiment.id == "exp42"
