"""Equivalent-circuit Li-ion full cell (NMC811 | graphite by default) cycled by a CC-CV protocol.

V = OCV(SOC) + I*R0 + V_RC, with dV_RC/dt = I/C1 - V_RC/(R1*C1); current positive on charge.
Capacity fades linearly per cycle. Temperature follows a lumped thermal model with Joule heat.
An internal short R_isc (``short_ohm``) drains the cell and pulls the terminal voltage down:
V = (OCV + I*R0 + V_RC) / (1 + R0/R_isc).

The stepping kernel is numba: one call advances a block of samples.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from pydantic import BaseModel, ConfigDict

# Protocol modes.
REST, CC_CHARGE, CV_CHARGE, CC_DISCHARGE = 0, 1, 2, 3
MODE_NAMES = {REST: "rest", CC_CHARGE: "CC charge", CV_CHARGE: "CV charge",
              CC_DISCHARGE: "CC discharge"}

# State vector layout.
(S_SOC, S_VRC, S_TEMP, S_MODE, S_MODE_T, S_CYCLE, S_STEP, S_NEXT, S_CAP, S_SHORT,
 S_TIME) = range(11)
N_STATE = 11

# NMC811 | graphite full-cell OCV, fitted shape (V) on SOC 0..1.
_OCV_SOC = np.linspace(0.0, 1.0, 21)
_OCV_V = np.array([2.80, 3.33, 3.45, 3.52, 3.57, 3.60, 3.63, 3.66, 3.69, 3.73, 3.77, 3.81,
                   3.85, 3.89, 3.93, 3.97, 4.01, 4.05, 4.09, 4.14, 4.20])


class CellParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity_Ah: float = 0.05            # 50 mAh pouch
    r0_ohm: float = 0.08
    r1_ohm: float = 0.04
    c1_F: float = 1500.0
    fade_per_cycle: float = 0.0008
    v_max: float = 4.2
    v_min: float = 2.8
    charge_c_rate: float = 1.0
    discharge_c_rate: float = 1.0
    cv_cutoff_c_rate: float = 0.05
    rest_s: float = 600.0
    initial_soc: float = 0.02
    ambient_C: float = 25.0
    heat_capacity_J_per_K: float = 40.0
    cooling_W_per_K: float = 0.02
    noise_voltage_V: float = 2e-4
    noise_current_rel: float = 1e-4


def ocv_table() -> tuple[np.ndarray, np.ndarray]:
    return _OCV_SOC.copy(), _OCV_V.copy()


def initial_state(p: CellParams) -> np.ndarray:
    s = np.zeros(N_STATE)
    s[S_SOC] = p.initial_soc
    s[S_TEMP] = p.ambient_C
    s[S_MODE] = REST
    s[S_NEXT] = CC_CHARGE
    s[S_CAP] = p.capacity_Ah
    s[S_SHORT] = np.inf
    return s


def params_vector(p: CellParams) -> np.ndarray:
    return np.array([p.r0_ohm, p.r1_ohm, p.c1_F, p.fade_per_cycle, p.v_max, p.v_min,
                     p.charge_c_rate, p.discharge_c_rate, p.cv_cutoff_c_rate, p.rest_s,
                     p.ambient_C, p.heat_capacity_J_per_K, p.cooling_W_per_K, p.capacity_Ah])


@nb.njit(cache=True)
def _ocv(soc: float, xs: np.ndarray, ys: np.ndarray) -> float:
    return np.interp(min(max(soc, 0.0), 1.0), xs, ys)


@nb.njit(cache=True)
def step_cell(state: np.ndarray, params: np.ndarray, dt: float, n: int, ocv_soc: np.ndarray,
              ocv_v: np.ndarray, voltage: np.ndarray, current: np.ndarray, temp: np.ndarray,
              mode: np.ndarray, step: np.ndarray) -> None:
    """Advance ``n`` samples of ``dt`` seconds; writes true (noise-free) values into the outputs."""
    r0, r1, c1, fade, v_max, v_min = params[0], params[1], params[2], params[3], params[4], params[5]
    c_ch, c_dis, c_cut, rest_s = params[6], params[7], params[8], params[9]
    t_amb, heat_cap, cooling, cap0 = params[10], params[11], params[12], params[13]
    for k in range(n):
        cap = state[S_CAP]
        m = int(state[S_MODE])
        soc, vrc = state[S_SOC], state[S_VRC]
        ocv = _ocv(soc, ocv_soc, ocv_v)
        r_sh = state[S_SHORT]
        short_factor = 1.0 + r0 / r_sh
        if m == CC_CHARGE:
            i = c_ch * cap
        elif m == CC_DISCHARGE:
            i = -c_dis * cap
        elif m == CV_CHARGE:
            i = (v_max * short_factor - ocv - vrc) / r0
        else:
            i = 0.0
        v = (ocv + i * r0 + vrc) / short_factor
        i_short = v / r_sh
        # transitions
        state[S_MODE_T] += dt
        if m == CC_CHARGE and v >= v_max:
            m = CV_CHARGE
        elif m == CV_CHARGE and i <= c_cut * cap:
            m, state[S_NEXT] = REST, CC_DISCHARGE
        elif m == CC_DISCHARGE and v <= v_min:
            m, state[S_NEXT] = REST, CC_CHARGE
            state[S_CYCLE] += 1
            state[S_CAP] = cap0 * max(0.2, 1.0 - fade * state[S_CYCLE])
        elif m == REST and state[S_MODE_T] >= rest_s:
            m = int(state[S_NEXT])
        if m != int(state[S_MODE]):
            state[S_MODE] = m
            state[S_MODE_T] = 0.0
            state[S_STEP] += 1
        # integrate
        soc += (i - i_short) * dt / (3600.0 * cap)
        vrc += dt * (i / c1 - vrc / (r1 * c1))
        heat = i * i * (r0 + r1) + i_short * i_short * r_sh if np.isfinite(r_sh) else i * i * (r0 + r1)
        state[S_TEMP] += dt * (heat - cooling * (state[S_TEMP] - t_amb)) / heat_cap
        state[S_SOC] = min(max(soc, -0.05), 1.05)
        state[S_VRC] = vrc
        state[S_TIME] += dt
        voltage[k], current[k], temp[k] = v, i, state[S_TEMP]
        mode[k], step[k] = m, state[S_STEP]
