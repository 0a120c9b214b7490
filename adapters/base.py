"""The adapter interface: an instrument becomes a Source of standard frames."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from stream.sources import Source


class AdapterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Adapter(Source):
    """Subclasses set ``type_name`` and ``Config``; ``stream`` is
    ``<experiment>/<cell>/<instrument>``."""

    type_name: ClassVar[str] = "adapter"
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig

    def __init__(self, stream: str, config: AdapterConfig | None = None):
        self.stream = stream
        self.config = config or self.Config()
        self.name = stream.replace("/", ".")
        self.seq = 0

    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq
