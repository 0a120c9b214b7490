"""Turn a checked config into a running node."""

from __future__ import annotations

import inspect
from typing import Any

from .config import OpmonConfig
from .node import Node
from .sinks import Sink, sink_class
from .sources import Source, SubscriberSource
from .transports import TransportConfig, open_subscriber


def build_sources(cfg: OpmonConfig, clock: Any = None) -> list[Source]:
    from adapters import adapter_class
    from adapters.sim.clock import SimClock

    if clock is None:
        clock = SimClock(cfg.sim.start_ns, cfg.sim.speed_factor)
    sources: list[Source] = []
    for cell in cfg.cells:
        for inst in cell.instruments:
            cls = adapter_class(inst.adapter)
            stream = f"{cfg.experiment.id}/{cell.id}/{inst.id}"
            kwargs = {"clock": clock} if "clock" in inspect.signature(cls).parameters else {}
            sources.append(cls(stream, cls.Config.model_validate(inst.params), **kwargs))
    from adapters.sim.experiment import ScenarioSource
    for sim in cfg.simulations:
        sources.append(ScenarioSource(cfg.experiment.id, sim.scenario, sim.cells, sim.seed, clock,
                                      sim.duration_s))
    for i, inp in enumerate(cfg.inputs):
        data = inp.model_dump(exclude={"topics"})
        sub = open_subscriber(TransportConfig(**data), inp.topics)
        sources.append(SubscriberSource(sub, name=f"input{i}"))
    if any(plugin.type == "alert_mqtt" for plugin in cfg.sinks):
        from .alerts.mqtt import ack_sources
        sources.extend(ack_sources(cfg))  # acknowledgements from <root>/<experiment>/alerts/ack
    return sources


def build_processors(cfg: OpmonConfig) -> list:
    from processors import processor_class

    procs = []
    for plugin in cfg.processors:
        cls = processor_class(plugin.type)
        procs.append(cls(cls.Config.model_validate(plugin.model_extra or {})))
    if cfg.alerts and not any(p.type_name == "alerts" for p in procs):
        cls = processor_class("alerts")
        procs.append(cls(cls.Config.model_validate({"rules": cfg.alerts})))
    return procs


def build_sinks(cfg: OpmonConfig) -> list[Sink]:
    sinks = []
    for plugin in cfg.sinks:
        cls = sink_class(plugin.type)
        sinks.append(cls(cls.Config.model_validate(plugin.model_extra or {})))
    return sinks


def build_node(cfg: OpmonConfig, sources: list[Source] | None = None,
               sinks: list[Sink] | None = None, handle_signals: bool = True) -> Node:
    return Node(cfg.experiment.id,
                build_sources(cfg) if sources is None else sources,
                build_processors(cfg),
                build_sinks(cfg) if sinks is None else sinks,
                queue_size=cfg.node.queue_size,
                health_interval_s=cfg.node.health_interval_s,
                handle_signals=handle_signals)
