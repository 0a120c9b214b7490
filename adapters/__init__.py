"""Instrument adapters: one module per instrument family, plus ``sim/``, the virtual cell."""

from __future__ import annotations

import importlib

from .base import Adapter, AdapterConfig

REGISTRY: dict[str, str] = {
    "sim.potentiostat": "adapters.sim.potentiostat:SimPotentiostat",
    "biologic.mpt": "adapters.biologic:BiologicMptAdapter",
    "biologic.mpr": "adapters.biologic:BiologicMprAdapter",
    "neware.csv": "adapters.neware:NewareCsvAdapter",
    "csv": "adapters.generic_csv:CsvAdapter",
    "modbus.pressure": "adapters.modbus:ModbusPressureAdapter",
    "scpi": "adapters.scpi:ScpiAdapter",
    "zilien.tsv": "adapters.zilien:ZilienAdapter",
    "pfeiffer.sac": "adapters.pfeiffer:QuadstarSacAdapter",
    "pfeiffer.dat": "adapters.pfeiffer:PvMassSpecDatAdapter",
    "dectris.stream": "adapters.dectris:DectrisStreamAdapter",
    "detector.folder": "adapters.image_folder:ImageFolderAdapter",
}


def adapter_class(type_name: str) -> type[Adapter]:
    try:
        module, cls = REGISTRY[type_name].split(":")
    except KeyError:
        raise KeyError(f"unknown adapter {type_name!r}; known: {sorted(REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


__all__ = ["REGISTRY", "Adapter", "AdapterConfig", "adapter_class"]
