"""The sink interface."""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..frame import Frame


class SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    kinds: list[str] = ["*"]      # kind patterns this sink takes
    queue_size: int = 4096


class Sink(ABC):
    type_name: ClassVar[str] = "sink"
    Config: ClassVar[type[SinkConfig]] = SinkConfig

    def __init__(self, config: SinkConfig | None = None):
        self.config = config or self.Config()
        self.name = self.config.name or self.type_name
        self._wants: dict[str, bool] = {}

    def wants(self, kind: str) -> bool:
        known = self._wants.get(kind)
        if known is None:
            known = self._wants[kind] = any(fnmatch.fnmatchcase(kind, p)
                                            for p in self.config.kinds)
        return known

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    async def write(self, frame: Frame) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook; must flush
        pass
