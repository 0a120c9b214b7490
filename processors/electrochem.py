"""Electrochemistry: coulomb counting, half-cycles and cycles, capacity, efficiency and energy.

Consumes ``echem`` frames with arrays ``t`` (s), ``voltage`` (V) and ``current`` (A, positive =
charge). Emits per input block ``result.echem`` (cumulative charge at the block's last sample),
per closed half-cycle ``result.half_cycle``, and per closed cycle (charge then discharge)
``result.cycle`` with capacities, coulombic and energy efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from stream._fast import all_finite
from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .kernels.coulomb import E_HALF, Q_HALF, SIGN, coulomb_count, new_state


class ElectrochemConfig(ProcessorConfig):
    current_threshold_A: float = 1e-5  # |I| below this is rest
    # how the current samples were taken: "auto" reads the frame's meta["current_kind"]
    # ("instantaneous", the default, or "interval_mean" as EC-Lab's <I>)
    current_kind: Literal["auto", "instantaneous", "interval_mean"] = "auto"


@dataclass
class _CellState:
    kernel: np.ndarray = field(default_factory=new_state)
    cycle: int = 0
    half_cycle: int = 0
    pending_charge: tuple[float, float] | None = None  # (Ah, Wh) of the last charge half-cycle
    last_frame: Frame | None = None
    last_t_ns: int = 0


def require_arrays(frame: Frame, names: tuple[str, ...]) -> list[np.ndarray]:
    """The named 1-D float arrays, all as long as ``t``; FrameError names what is wrong."""
    out = []
    n = frame.n_samples
    for name in names:
        arr = frame.arrays.get(name)
        if arr is None:
            raise FrameError(frame.stream, f"arrays.{name}", "missing")
        if arr.ndim != 1 or arr.shape[0] != n:
            raise FrameError(frame.stream, f"arrays.{name}",
                             f"shape {list(arr.shape)} does not match t ({n} samples)")
        if arr.dtype.kind not in "fiu":
            raise FrameError(frame.stream, f"arrays.{name}", f"dtype {arr.dtype.str} not numeric")
        out.append(np.ascontiguousarray(arr, dtype=np.float64))
    return out


class ElectrochemProcessor(Processor):
    type_name = "electrochem"
    consumes = ("echem",)
    Config = ElectrochemConfig

    def __init__(self, config: ElectrochemConfig | None = None):
        super().__init__(config)
        self._cells: dict[str, _CellState] = {}

    def process(self, frame: Frame) -> list[Frame]:
        t, voltage, current = require_arrays(frame, ("t", "voltage", "current"))
        for name, arr in (("voltage", voltage), ("current", current)):
            if not all_finite(arr):
                raise FrameError(frame.stream, f"arrays.{name}", "non-finite sample")
        st = self._cells.get(frame.stream)
        if st is None:
            st = self._cells[frame.stream] = _CellState()
        t_abs = self.stream_seconds(frame, t)
        kind = self.config.current_kind
        if kind == "auto":
            kind = frame.meta.get("current_kind", "instantaneous")
        q_total, ends = coulomb_count(t_abs, current, voltage, self.config.current_threshold_A,
                                      st.kernel, kind == "interval_mean")
        st.last_frame = frame
        st.last_t_ns = frame.t0_ns + round(float(t[-1]) * 1e9)
        out: list[Frame] = []
        for index, sign, charge, energy in ends:
            t_ns = frame.t0_ns + round(float(t[int(index)]) * 1e9)
            out.extend(self._close_half_cycle(frame, st, t_ns, int(sign), charge, energy))
        last = len(t) - 1
        out.append(self.emit(frame, "result.echem", frame.t0_ns + round(float(t[last]) * 1e9), {
            "t": np.zeros(1),
            "voltage": voltage[last:],
            "current": current[last:],
            "charge_Ah": q_total[last:],
            "cycle": np.array([st.cycle], dtype=np.int64),
            "half_cycle": np.array([st.half_cycle], dtype=np.int64),
        }, {"t": "s", "voltage": "V", "current": "A", "charge_Ah": "Ah"}))
        return out

    def flush(self) -> list[Frame]:
        """At the end of a run, the half-cycle still open is reported too (``complete`` = 0)."""
        out: list[Frame] = []
        for st in self._cells.values():
            sign = int(st.kernel[SIGN])
            if st.last_frame is not None and sign != 0 and st.kernel[Q_HALF] != 0.0:
                out.extend(self._close_half_cycle(st.last_frame, st, st.last_t_ns, sign,
                                                  st.kernel[Q_HALF], st.kernel[E_HALF],
                                                  complete=False))
        return out

    def _close_half_cycle(self, frame: Frame, st: _CellState, t_ns: int, sign: int,
                          charge: float, energy: float, complete: bool = True) -> list[Frame]:
        out = [self.emit(frame, "result.half_cycle", t_ns, {
            "capacity_Ah": np.array([abs(charge)]),
            "energy_Wh": np.array([abs(energy)]),
            "direction": np.array([sign], dtype=np.int64),
            "cycle": np.array([st.cycle], dtype=np.int64),
            "half_cycle": np.array([st.half_cycle], dtype=np.int64),
            "complete": np.array([int(complete)], dtype=np.int64),
        }, {"capacity_Ah": "Ah", "energy_Wh": "Wh"})]
        if not complete:
            return out
        st.half_cycle += 1
        if sign > 0:
            st.pending_charge = (abs(charge), abs(energy))
        elif st.pending_charge is not None:
            q_ch, e_ch = st.pending_charge
            q_dis, e_dis = abs(charge), abs(energy)
            out.append(self.emit(frame, "result.cycle", t_ns, {
                "charge_Ah": np.array([q_ch]),
                "discharge_Ah": np.array([q_dis]),
                "coulombic_efficiency": np.array([q_dis / q_ch if q_ch > 0 else np.nan]),
                "charge_energy_Wh": np.array([e_ch]),
                "discharge_energy_Wh": np.array([e_dis]),
                "energy_efficiency": np.array([e_dis / e_ch if e_ch > 0 else np.nan]),
                "cycle": np.array([st.cycle], dtype=np.int64),
            }, {"charge_Ah": "Ah", "discharge_Ah": "Ah", "charge_energy_Wh": "Wh",
                "discharge_energy_Wh": "Wh"}))
            st.cycle += 1
            st.pending_charge = None
        return out
