"""The processor interface: frames in, frames out, state per stream key, no I/O."""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from stream.frame import Frame


class ProcessorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None


class Processor(ABC):
    """Subclasses set ``type_name``, ``consumes`` (kind patterns) and ``Config``.

    ``process`` must be deterministic: the same frames in the same order give the same output,
    live or replayed.
    """

    type_name: ClassVar[str] = "processor"
    consumes: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[ProcessorConfig]] = ProcessorConfig

    def __init__(self, config: ProcessorConfig | None = None):
        self.config = config or self.Config()
        self.name = self.config.name or self.type_name
        self._out_seq: dict[tuple[str, str], int] = {}
        self._wants: dict[str, bool] = {}
        self._origins: dict[str, int] = {}

    def wants(self, kind: str) -> bool:
        known = self._wants.get(kind)
        if known is None:
            known = self._wants[kind] = any(fnmatch.fnmatchcase(kind, p) for p in self.consumes)
        return known

    @abstractmethod
    def process(self, frame: Frame) -> list[Frame]: ...

    def stream_seconds(self, frame: Frame, t: np.ndarray) -> np.ndarray:
        """Sample times in seconds since the first frame this processor saw on the stream: a
        float time base that keeps its precision over months (epoch ns would not)."""
        origin = self._origins.setdefault(frame.stream, frame.t0_ns)
        return (frame.t0_ns - origin) * 1e-9 + np.asarray(t, dtype=np.float64)

    def stream_ns(self, frame: Frame, seconds: float) -> int:
        """The epoch-ns time of ``seconds`` on the stream's time base."""
        return self._origins[frame.stream] + int(round(seconds * 1e9))

    def flush(self) -> list[Frame]:
        """Called once at the end of a run; emit whatever is still pending."""
        return []

    def emit(self, source: Frame, kind: str, t0_ns: int, arrays: dict[str, np.ndarray],
             units: dict[str, str], meta: dict[str, Any] | None = None) -> Frame:
        """A result frame on stream ``<experiment>/<cell>/<processor name>``, seq per kind."""
        experiment, cell, _ = source.stream.split("/")
        stream = f"{experiment}/{cell}/{self.name}"
        key = (stream, kind)
        seq = self._out_seq.get(key, 0)
        self._out_seq[key] = seq + 1
        return Frame(stream, kind, seq, t0_ns, arrays, units, meta or {})

    def emit_event(self, source: Frame, t_s: float, event: str, severity: str,
                   evidence: dict[str, Any]) -> Frame:
        """An ``event`` frame at ``t_s`` (stream seconds): float evidence becomes arrays, the rest
        goes to ``meta`` beside ``event``, ``severity``, ``source`` and ``onset_ns``."""
        t_ns = self.stream_ns(source, t_s)
        values = {k: v for k, v in evidence.items() if isinstance(v, float)}
        return self.emit(source, "event", t_ns, {k: np.array([v]) for k, v in values.items()}, {},
                         {"event": event, "severity": severity, "source": source.stream,
                          "onset_ns": t_ns, **{k: v for k, v in evidence.items()
                                               if not isinstance(v, float)}})
