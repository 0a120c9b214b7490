"""Streaming processors. Each module holds one processor with its config schema."""

from __future__ import annotations

import importlib

from .base import Processor, ProcessorConfig

REGISTRY: dict[str, str] = {
    "electrochem": "processors.electrochem:ElectrochemProcessor",
    "alerts": "processors.alert_rules:AlertRuleProcessor",
    "gas": "processors.gas:GasProcessor",
    "events": "processors.events:EventProcessor",
    "pressure": "processors.pressure:PressureProcessor",
    "gas_events": "processors.gas_events:GasEventProcessor",
    "sensor_faults": "processors.sensor_faults:SensorFaultProcessor",
    "azimuthal": "processors.azimuthal:AzimuthalProcessor",
    "peaks": "processors.peaks:PeaksProcessor",
}


def processor_class(type_name: str) -> type[Processor]:
    try:
        module, cls = REGISTRY[type_name].split(":")
    except KeyError:
        raise KeyError(f"unknown processor type {type_name!r}; known: {sorted(REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


__all__ = ["REGISTRY", "Processor", "ProcessorConfig", "processor_class"]
