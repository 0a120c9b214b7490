"""``opmon run CONFIG.toml``: experiment, cells and instruments, inputs, processors, sinks and
alert rules. Every section is checked against its schema; an error names the file and the key
and says what was expected. Secrets are never read from the TOML (use ``*_env`` or ``*_file``).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .alerts.config import AlertRule
from .transports import TransportConfig

SECRET_KEYS = {"password", "token", "secret", "api_key", "apikey"}


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExperimentSection(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""


class InstrumentSection(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    adapter: str
    params: dict[str, Any] = {}


class CellSection(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    instruments: list[InstrumentSection] = []


class NodeSection(_Strict):
    queue_size: int = Field(1024, ge=1)
    health_interval_s: float = Field(5.0, gt=0)


class SimSection(_Strict):
    speed: float | str = 1.0          # a factor, or "max"
    start_ns: int | None = None       # sim start on the shared time base; default now

    @property
    def speed_factor(self) -> float:
        if isinstance(self.speed, str):
            if self.speed != "max":
                raise ValueError("speed must be a number or 'max'")
            return math.inf
        return self.speed


class SimulationSection(_Strict):
    """A simulated experiment from a named scenario (``opmon simulate --list``)."""
    scenario: str
    cells: int = Field(1, ge=1)
    seed: int = 0
    duration_s: float | None = None


class InputSection(TransportConfig):
    topics: list[str] = ["opmon/#"]


class PluginSection(BaseModel):
    """``type`` picks the plugin; the other keys are checked against the plugin's schema."""

    model_config = ConfigDict(extra="allow")
    type: str


class OpmonConfig(_Strict):
    experiment: ExperimentSection
    node: NodeSection = NodeSection()
    sim: SimSection = SimSection()
    cells: list[CellSection] = []
    simulations: list[SimulationSection] = []
    inputs: list[InputSection] = []
    processors: list[PluginSection] = []
    sinks: list[PluginSection] = []
    alerts: list[AlertRule] = []      # the alert engine's rules (stream/alerts/config.py)
    source_path: str = "<memory>"


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(where: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        key = _loc(tuple(x for x in err["loc"] if x not in ("function-after",)))
        key = f"{prefix}.{key}" if prefix and key else (prefix or key)
        last = str(err["loc"][-1]) if err["loc"] else ""
        if err["type"] == "extra_forbidden" and last.lower() in SECRET_KEYS:
            msg = (f"secrets are not read from the config file; use {last}_env (an environment "
                   f"variable) or {last}_file (a file outside the repository)")
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{err['msg']} (got {err.get('input')!r})"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def validate_section(model: type[BaseModel], data: dict, where: str, prefix: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(where, exc, prefix)) from None


def parse_config(data: dict[str, Any], where: str = "<memory>") -> OpmonConfig:
    cfg = validate_section(OpmonConfig, {**data, "source_path": where}, where, "")
    check_plugins(cfg)
    return cfg  # type: ignore[return-value]


def load_config(path: str | Path) -> OpmonConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))


def check_plugins(cfg: OpmonConfig) -> None:
    """Validate every plugin section against its own schema now, not when the node starts."""
    from adapters import adapter_class
    from processors import processor_class

    from .sinks import sink_class

    where = cfg.source_path
    for i, cell in enumerate(cfg.cells):
        for j, inst in enumerate(cell.instruments):
            key = f"cells[{i}].instruments[{j}]"
            try:
                cls = adapter_class(inst.adapter)
            except KeyError as exc:
                raise ConfigError(f"{where}: {key}.adapter: {exc.args[0]}") from None
            validate_section(cls.Config, inst.params, where, f"{key}.params")
    from adapters.sim.experiment import scenario_names
    for i, sim in enumerate(cfg.simulations):
        if sim.scenario not in scenario_names() and not sim.scenario.endswith(".toml"):
            raise ConfigError(f"{where}: simulations[{i}].scenario: unknown scenario "
                              f"{sim.scenario!r}; known: {scenario_names()}")
    for section, lookup in (("processors", processor_class), ("sinks", sink_class)):
        for i, plugin in enumerate(getattr(cfg, section)):
            try:
                cls = lookup(plugin.type)
            except KeyError as exc:
                raise ConfigError(f"{where}: {section}[{i}].type: {exc.args[0]}") from None
            validate_section(cls.Config, plugin.model_extra or {}, where, f"{section}[{i}]")
    first: dict[str, int] = {}
    for i, rule in enumerate(cfg.alerts):  # a rule name identifies its alerts: topics, keys
        if first.setdefault(rule.name, i) != i:
            raise ConfigError(f"{where}: alerts[{i}].name: {rule.name!r} is used twice "
                              f"(also alerts[{first[rule.name]}])")
