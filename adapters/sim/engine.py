"""The virtual cells of one experiment, stepped together by one numba kernel.

Each cell is an equivalent-circuit Li-ion full cell (NMC811 | graphite by default):
V = (OCV(SOC) + I*R0 + V_RC + V_plating - V_micro) / (1 + R0/R_isc), dV_RC/dt = I/C1 - V_RC/(R1*C1).
Current is positive on charge. Capacity fades per cycle. A lumped thermal model takes Joule heat,
short-circuit heat and a runaway heat source.

Gas generation is tied to the electrochemistry (rates in mol/s):
- SEI in the first charge while the graphite is above ~0.1 V vs Li, i.e. early in the first
  charge (SOC < ``sei_soc_end``): C2H4 with H2 and CO (Metzger et al., J. Electrochem. Soc. 2016;
  Strehle et al. 2017); much smaller in later cycles;
- H2 and CO2 every charge between 3.0 and 4.4 V (crosstalk from electrolyte oxidation products);
- lattice O2 above ~80 % SOC of NMC811 with CO2 and CO from solvent oxidation (Jung et al. 2017);
- optional SO2 (sulfide solid electrolytes) and O2 consumption (Li-O2-like cases);
- fault sources: a gassing burst, and the thermal-runaway precursor (H2 first, then CO2).
Gas goes into a headspace (closed cell) that also feeds the mass spectrometer through a
capillary leak, or through a stirred tank (flow cell, tau = V/Q) plus a capillary delay.
"""

from __future__ import annotations

import numba as nb
import numpy as np

GASES = ("H2", "CO", "CO2", "C2H4", "O2", "SO2", "Ar")
H2, CO, CO2, C2H4, O2, SO2, AR = range(7)
N_GAS = len(GASES)
R_GAS = 8.314462618  # J/(mol K)
FARADAY = 96485.33212

# protocol step kinds; a protocol row is [kind, setpoint, end kind, end value]
REST, CC, CV, CCCV = 0, 1, 2, 3
END_TIME, END_V_ABOVE, END_V_BELOW, END_I_BELOW = 0, 1, 2, 3
STEP_NAMES = {REST: "rest", CC: "CC", CV: "CV hold", CCCV: "CC-CV"}

# fault kinds; a fault row is [kind, t_on, t_off, magnitude]
(F_NONE, F_HARD_SHORT, F_SOFT_SHORT, F_MICRO_SHORT, F_SELF_DISCHARGE, F_GAS_BURST,
 F_RUNAWAY, F_PLATING) = range(8)
FAULT_KINDS = {"hard_short": F_HARD_SHORT, "soft_short": F_SOFT_SHORT,
               "micro_short": F_MICRO_SHORT, "self_discharge": F_SELF_DISCHARGE,
               "gas_burst": F_GAS_BURST, "runaway_precursor": F_RUNAWAY,
               "plating": F_PLATING}

# state vector
(S_SOC, S_VRC, S_TEMP, S_ROW, S_STEP_T, S_CYCLE, S_STEP_N, S_CAP, S_TIME, S_VMICRO, S_VPLATE,
 S_CHARGE_C, S_PHASE_CV) = range(13)
N_STATE = 13
S_GAS_HEAD = N_STATE            # moles per gas in the headspace (N_GAS)
S_GAS_X = N_STATE + N_GAS       # outlet mole fraction per gas (flow cell, N_GAS)
N_STATE_ALL = N_STATE + 2 * N_GAS

# parameter vector
(P_CAP, P_R0, P_R1, P_C1, P_FADE, P_AMB, P_HEAT_CAP, P_COOL, P_SEI_SOC, P_SEI_RATE, P_XTALK_RATE,
 P_O2_SOC, P_O2_RATE, P_SO2_RATE, P_O2_CONSUME, P_FLOW, P_FLOW_V, P_LEAK, P_AR_FRAC) = range(19)
N_PARAM = 19

OCV_SOC = np.linspace(0.0, 1.0, 21)
OCV_V = np.array([2.80, 3.33, 3.45, 3.52, 3.57, 3.60, 3.63, 3.66, 3.69, 3.73, 3.77, 3.81,
                  3.85, 3.89, 3.93, 3.97, 4.01, 4.05, 4.09, 4.14, 4.20])


@nb.njit(cache=True)
def _ocv(soc: float) -> float:
    # beyond the 4.2 V SOC window the cathode delithiates further: 4.6 V near 112 %
    return np.interp(min(max(soc, 0.0), 1.0), OCV_SOC, OCV_V) + 3.5 * max(soc - 1.0, 0.0)


@nb.njit(cache=True)
def _step_done(kind: int, end_kind: int, end_value: float, t_step: float, v: float,
               i: float) -> bool:
    if end_kind == END_TIME:
        return t_step >= end_value
    if end_kind == END_V_ABOVE:
        return v >= end_value
    if end_kind == END_V_BELOW:
        return v <= end_value
    return abs(i) <= end_value and t_step > 1.0


@nb.njit(cache=True)
def step_cells(state: np.ndarray, params: np.ndarray, protocol: np.ndarray, n_rows: np.ndarray,
               faults: np.ndarray, dt: float, n_steps: int, noise: np.ndarray,
               out_v: np.ndarray, out_i: np.ndarray, out_temp: np.ndarray,
               out_soc: np.ndarray, out_step: np.ndarray, out_rates: np.ndarray) -> None:
    """Advance every cell by ``n_steps`` samples of ``dt`` s. ``protocol`` is (cells, rows, 4);
    ``n_rows`` (cells, 2) holds the row count and the row the protocol loops back to. Outputs
    are (cells, steps) and (cells, steps, gases). ``noise`` (cells, steps) is standard normal,
    for the soft short's voltage noise."""
    for c in range(state.shape[0]):
        s = state[c]
        p = params[c]
        for k in range(n_steps):
            t = s[S_TIME]
            cap = s[S_CAP]
            row = int(s[S_ROW])
            kind, setpoint = int(protocol[c, row, 0]), protocol[c, row, 1]
            end_kind, end_value = int(protocol[c, row, 2]), protocol[c, row, 3]
            # active faults
            r_isc = np.inf
            soft_noise = 0.0
            burst = 0.0
            runaway = -1.0
            plating = 0.0
            for f in range(faults.shape[1]):
                fk = int(faults[c, f, 0])
                if fk == F_NONE or t < faults[c, f, 1] or t >= faults[c, f, 2]:
                    continue
                mag = faults[c, f, 3]
                if fk in (F_HARD_SHORT, F_SELF_DISCHARGE, F_SOFT_SHORT):
                    r_isc = min(r_isc, mag)
                    if fk == F_SOFT_SHORT:
                        soft_noise = 0.004
                elif fk == F_MICRO_SHORT and t - faults[c, f, 1] < dt * 0.999:
                    s[S_VMICRO] += mag  # a transient drop that recovers
                elif fk == F_GAS_BURST:
                    burst += mag
                elif fk == F_RUNAWAY:
                    runaway = t - faults[c, f, 1]
                elif fk == F_PLATING:
                    plating = mag
            soc, vrc = s[S_SOC], s[S_VRC]
            ocv = _ocv(soc)
            r0 = p[P_R0] * (1.0 + 0.02 * (25.0 - s[S_TEMP]))  # colder: more resistive
            r0 = max(r0, 0.2 * p[P_R0])
            shunt = 1.0 + r0 / r_isc
            extra = s[S_VPLATE] - s[S_VMICRO] + soft_noise * noise[c, k]
            if kind == CC or (kind == CCCV and s[S_PHASE_CV] == 0.0):
                i = setpoint * cap
                if kind == CCCV and i > 0 and (ocv + i * r0 + vrc + extra) / shunt >= end_value:
                    s[S_PHASE_CV] = 1.0
            if kind == CV or (kind == CCCV and s[S_PHASE_CV] == 1.0):
                target = setpoint if kind == CV else end_value
                i = (target * shunt - ocv - vrc - extra) / r0
                if kind == CCCV:
                    i = min(i, setpoint * cap)
            elif kind == REST:
                i = 0.0
            v = (ocv + i * r0 + vrc + extra) / shunt
            i_short = v / r_isc
            # step transitions
            s[S_STEP_T] += dt
            if kind == CCCV:
                done = s[S_PHASE_CV] == 1.0 and i <= 0.05 * cap and s[S_STEP_T] > 1.0
            else:
                done = _step_done(kind, end_kind, end_value, s[S_STEP_T], v, i)
            if done:
                s[S_CHARGE_C] = abs(setpoint) if i > 0 else 0.0  # C-rate of the last charge
                if kind == CC and setpoint < 0:  # a discharge closes the cycle
                    s[S_CYCLE] += 1
                    s[S_CAP] = p[P_CAP] * max(0.2, 1.0 - p[P_FADE] * s[S_CYCLE])
                nxt = row + 1
                if nxt >= n_rows[c, 0]:
                    nxt = int(n_rows[c, 1])  # loop back to the repeating part
                s[S_ROW] = nxt
                s[S_STEP_T] = 0.0
                s[S_STEP_N] += 1
                s[S_PHASE_CV] = 0.0
            # electrochemistry and heat
            s[S_SOC] = min(max(soc + (i - i_short) * dt / (3600.0 * cap), -0.05), 1.2)
            s[S_VRC] = vrc + dt * (i / p[P_C1] - vrc / (p[P_R1] * p[P_C1]))
            s[S_VMICRO] *= np.exp(-dt / 1.5)
            # plating: after a fast charge, stripping holds the voltage up, then lets go
            if plating > 0 and kind == REST and s[S_CHARGE_C] >= 1.5 and s[S_STEP_T] < 1.0:
                s[S_VPLATE] = plating
            if s[S_VPLATE] > 0 and (kind != REST or s[S_STEP_T] > 600.0):
                s[S_VPLATE] = max(0.0, s[S_VPLATE] - dt * 2e-4)
            heat = i * i * (r0 + p[P_R1])
            if np.isfinite(r_isc):
                heat += i_short * i_short * r_isc
            if runaway >= 0:  # self-heating: reaches ~1.2 degC/s after ~8.5 min
                heat += 0.01 * np.exp(min(runaway / 60.0, 8.5))
            s[S_TEMP] += dt * (heat - p[P_COOL] * (s[S_TEMP] - p[P_AMB])) / p[P_HEAT_CAP]
            s[S_TIME] = t + dt
            # gas generation (mol/s), scaled by capacity (Ah)
            rates = out_rates[c, k]
            rates[:] = 0.0
            scale = cap / 0.05
            if i > 0:
                sei = p[P_SEI_RATE] * scale
                if s[S_CYCLE] > 0:
                    sei *= 0.03
                if soc < p[P_SEI_SOC]:
                    rates[C2H4] += sei
                    rates[H2] += 0.4 * sei
                    rates[CO] += 0.2 * sei
                if 3.0 <= v <= 4.4:
                    rates[H2] += p[P_XTALK_RATE] * scale
                    rates[CO2] += 0.7 * p[P_XTALK_RATE] * scale
            if soc > p[P_O2_SOC] and v > 4.0:
                o2 = p[P_O2_RATE] * scale * (soc - p[P_O2_SOC]) / (1.0 - p[P_O2_SOC])
                rates[O2] += o2
                rates[CO2] += 1.5 * o2
                rates[CO] += 0.5 * o2
            rates[SO2] += p[P_SO2_RATE] * scale * (1.0 if v > 3.8 else 0.0)
            rates[CO2] += burst
            if runaway >= 0:  # H2 first, CO2 a minute later
                rates[H2] += 5e-11 * np.exp(min(runaway / 60.0, 8.5)) * scale
                if runaway > 60.0:
                    rates[CO2] += 8e-11 * np.exp(min((runaway - 60.0) / 60.0, 8.5)) * scale
            # transport: closed headspace with a capillary leak, and a flow cell (tau = V/Q)
            head = s[S_GAS_HEAD:S_GAS_HEAD + N_GAS]
            for g in range(N_GAS):
                head[g] += dt * (rates[g] - p[P_LEAK] * head[g])
            if p[P_O2_CONSUME] > 0 and i < 0:  # Li-O2-like discharge consumes O2
                head[O2] = max(0.0, head[O2] - dt * p[P_O2_CONSUME] * scale)
            x = s[S_GAS_X:S_GAS_X + N_GAS]
            if p[P_FLOW] > 0:
                tau = p[P_FLOW_V] / p[P_FLOW]  # s: moles held in the cell / molar flow
                for g in range(N_GAS):
                    if g == AR:
                        x[g] = p[P_AR_FRAC]
                    else:
                        x[g] += dt * (rates[g] / p[P_FLOW] - x[g]) / tau
            out_v[c, k], out_i[c, k], out_temp[c, k] = v, i, s[S_TEMP]
            out_soc[c, k], out_step[c, k] = s[S_SOC], s[S_STEP_N]
