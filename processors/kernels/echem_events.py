"""Event detectors on a cell's potentiostat stream, as one numba kernel over a block of samples.

Each detector is a few lines of O(1) recursion on its own slice of the cell's state vector, in
the manner of River's ``update(x)``; ``detect_block`` runs them all per sample so that a block of
any size costs one call. Every detector re-arms (hysteresis) and fires once per episode; those
that watch a cycler step restart when the step changes.

Detectors and their codes:

- ``HARD_SHORT``: V falls more than ``short_drop_V`` below its maximum over ``short_window_s``
  on two consecutive samples (onset at the first). The maximum is taken over values that held
  for three samples, so a spike up is no reference; re-armed once the drop has stayed below a
  tenth of ``short_drop_V`` for ``short_rearm_s``.
- ``MICRO_SHORT``: a transient drop of V between two samples (from ``micro_min_V``, or
  ``micro_sigmas`` × the learnt sample-to-sample noise if larger, up to the hard-short drop) with
  the current unchanged; under constant voltage the cycler holds V, so the signature is a current
  jump whose ohmic equivalent (ΔI·R, R from the last step change) exceeds ``micro_min_V``; and
  when the cycler can only partly answer (a CV hold at its current limit), V falls while I rises,
  which no ohmic response does: the depth is -ΔV + ΔI·R.
- ``SOFT_SHORT``: during a constant-current charge, the EWMA sigma of ΔV above ``soft_sigma_V`` for
  ``soft_for_s``, each ΔV clipped at ``SOFT_CLIP`` sigmas (at least half ``soft_sigma_V``) so that
  one jump (a micro-short, a frozen reading let go) cannot raise it while lasting noise does
  within seconds; or charge passed (``stall_fraction`` of the last charge) without V rising
  ``stall_dV``.
- ``SELF_DISCHARGE``: at rest after ``sd_settle_s``, the voltage slope (exponentially weighted
  regression) converted to a leak current through dV/dQ of the last half-cycle at that voltage,
  above ``sd_leak_c_rate`` × capacity for ``sd_for_s``. Evidence: I_leak and R_isc = V/I_leak.
- ``PLATING``: in the rest after a charge, dV/dt that stays flat (within ``plating_flatness``) for
  ``plating_flat_s`` at a magnitude of at least ``plating_min_rate_V_s``: a stripping plateau. A
  normal relaxation is a sum of decaying exponentials, whose dV/dt only decays.
- ``THERMAL_RUNAWAY``: GB 38031-2020, dT/dt of at least 1 °C/s held for more than 3 s.

Readings that cannot be a cell voltage (outside ``voltage_limits_V``: a spike of tens of volts, a
sensor pinned at its rail) are skipped by every detector: ``sensor_faults`` reports them.
A frozen reading (V and a non-zero I bit-identical to the sample before) carries no news: it is
not judged by the micro- and soft-short detectors, and after ``FROZEN_RUN`` such samples the
first moving one is not taken for a drop (the hard-short maximum restarts from it); nor is the
first sample more than ``MAX_GAP_S`` after the last valid one (readings skipped or lost).
"""

from __future__ import annotations

import numba as nb
import numpy as np

HARD_SHORT, MICRO_SHORT, SOFT_SHORT, SOFT_SHORT_STALL, SELF_DISCHARGE, PLATING, \
    THERMAL_RUNAWAY = range(7)
NAMES = ("hard_short", "micro_short", "soft_short", "soft_short", "self_discharge", "plating",
         "thermal_runaway")

# parameters
(P_SHORT_DROP, P_SHORT_WIN, P_MICRO_MIN, P_MICRO_DI, P_REST_I, P_SETTLE, P_SOFT_SIGMA, P_SOFT_TAU,
 P_SOFT_FOR, P_STALL_FRAC, P_STALL_DV, P_SD_SETTLE, P_SD_TAU, P_SD_C_RATE, P_SD_FOR,
 P_PLATE_MIN, P_PLATE_FLAT, P_PLATE_FLAT_S, P_PLATE_WINDOW, P_PLATE_TAU, P_RUN_DTDT, P_RUN_HOLD,
 P_RUN_TAU, P_V_LO, P_V_HI, P_MICRO_SIGMAS, P_V_VALID_LO, P_V_VALID_HI, P_SHORT_REARM) = range(29)
N_PARAMS = 29
SOFT_CLIP = 4.0      # soft-short sigma: each dV clipped at this many sigmas
FROZEN_RUN = 10      # frozen samples after which the next moving one is a sensor's release
MAX_GAP_S = 5.0      # samples further apart than this are not compared sample to sample

# state: scalars, then the regression sums, the dV/dQ table and the sliding-max ring
(S_T, S_V, S_I, S_STEP, S_STEP_T, S_Q, S_R_EST, S_ARMED_HARD, S_MICRO_REF, S_ARMED_MICRO,
 S_SOFT_VAR, S_SOFT_SINCE, S_ARMED_SOFT, S_STALL_Q, S_STALL_V, S_LAST_CHARGE_AH, S_HALF_Q0,
 S_HALF_SIGN, S_SD_SINCE, S_ARMED_SD, S_PREV_SIGN, S_PLATE_REF_T, S_PLATE_REF_RATE, S_ARMED_PLATE,
 S_RUN_SINCE, S_ARMED_RUN, S_DQ_HEAD, S_DQ_LEN, S_CAPACITY_AH, S_SOFT_N, S_NOISE_VAR, S_V_SMOOTH,
 S_V_PREV2, S_HARD_T0, S_HARD_DROP, S_HARD_V, S_HARD_I, S_HARD_CLEAR, S_FROZEN_N) = range(39)
N_SCALARS = 39
EW = 5                                   # sums of an exponentially weighted regression
REG_SD, REG_PLATE, REG_TEMP = N_SCALARS, N_SCALARS + EW, N_SCALARS + 2 * EW
N_BINS = 64                              # dV/dQ table: charge at each voltage bin edge
TABLE = N_SCALARS + 3 * EW               # charge at each edge of the last half-cycle
TABLE_NEXT = TABLE + N_BINS + 1          # ... and of the running one
RING = 256                               # sliding-max deque: (t, v) pairs
DQ = TABLE_NEXT + N_BINS + 1
N_STATE = DQ + 2 * RING


def new_state() -> np.ndarray:
    st = np.zeros(N_STATE)
    st[S_T] = np.nan
    st[S_STEP] = np.nan
    for armed in (S_ARMED_HARD, S_ARMED_MICRO, S_ARMED_SOFT, S_ARMED_SD, S_ARMED_PLATE,
                  S_ARMED_RUN):
        st[armed] = 1.0
    for since in (S_SOFT_SINCE, S_SD_SINCE, S_RUN_SINCE, S_PLATE_REF_T, S_STALL_Q, S_V_PREV2,
                  S_HARD_T0, S_HARD_CLEAR):
        st[since] = np.nan
    st[S_R_EST] = np.nan
    st[TABLE:DQ] = np.nan
    return st


@nb.njit(cache=True)
def ew_update(sums: np.ndarray, dt: float, y: float, tau: float) -> float:
    """One step of an exponentially weighted regression of y on time, weights exp(-age/tau);
    ``sums`` = [S0, Sx, Sxx, Sy, Sxy] with x = t - t_now, so the time origin moves with each
    sample and the sums stay small however long the run. Returns the slope (NaN until two samples
    carry weight)."""
    decay = np.exp(-dt / tau) if dt > 0 else 1.0
    s0, sx, sxx, sy, sxy = sums[0], sums[1], sums[2], sums[3], sums[4]
    sxx = decay * (sxx - 2.0 * dt * sx + dt * dt * s0)
    sx = decay * (sx - dt * s0)
    sxy = decay * (sxy - dt * sy)
    s0 = decay * s0 + 1.0
    sy = decay * sy + y
    sums[0], sums[1], sums[2], sums[3], sums[4] = s0, sx, sxx, sy, sxy
    det = s0 * sxx - sx * sx
    if s0 < 1.5 or det <= 1e-12 * s0 * sxx:
        return np.nan
    return (s0 * sxy - sx * sy) / det


@nb.njit(cache=True)
def _sliding_max(st: np.ndarray, t: float, v: float, window: float) -> float:
    """Monotone deque in a ring: the maximum of v over the last ``window`` seconds."""
    head, n = int(st[S_DQ_HEAD]), int(st[S_DQ_LEN])
    while n > 0:  # drop smaller values from the back
        back = DQ + 2 * ((head + n - 1) % RING)
        if st[back + 1] <= v:
            n -= 1
        else:
            break
    while n > 0 and st[DQ + 2 * head] < t - window:  # drop expired from the front
        head = (head + 1) % RING
        n -= 1
    if n == RING:  # full: the oldest goes, the window shortens
        head = (head + 1) % RING
        n -= 1
    slot = DQ + 2 * ((head + n) % RING)
    st[slot], st[slot + 1] = t, v
    n += 1
    st[S_DQ_HEAD], st[S_DQ_LEN] = head, n
    return st[DQ + 2 * head + 1]


@nb.njit(cache=True)
def _dvdq_from(st: np.ndarray, table: int, v: float, v_lo: float, v_hi: float) -> float:
    """dV/dQ (V/Ah) between the two recorded bin edges nearest to v, NaN if fewer than two."""
    width = (v_hi - v_lo) / N_BINS
    b = min(max(int(round((v - v_lo) / width)), 0), N_BINS)
    first, second = -1, -1
    for span in range(N_BINS + 1):
        for e in (b - span, b + span):
            if 0 <= e <= N_BINS and not np.isnan(st[table + e]) and e != first:
                if first < 0:
                    first = e
                elif second < 0:
                    second = e
        if second >= 0:
            break
    if second < 0 or st[table + first] == st[table + second]:
        return np.nan
    return abs((first - second) * width / (st[table + first] - st[table + second]))


@nb.njit(cache=True)
def _dvdq_at(st: np.ndarray, v: float, v_lo: float, v_hi: float) -> float:
    """dV/dQ around v, the mean over the last charge and discharge. A leak makes the cycler's
    charge overstate dQ on charge and understate it on discharge by the same amount at equal
    currents, so the mean cancels it to first order."""
    last = _dvdq_from(st, TABLE_NEXT, v, v_lo, v_hi)
    before = _dvdq_from(st, TABLE, v, v_lo, v_hi)
    if np.isnan(last):
        return before
    return last if np.isnan(before) else 0.5 * (last + before)


@nb.njit(cache=True)
def _record_edges(st: np.ndarray, v_prev: float, v: float, q: float, v_lo: float,
                  v_hi: float) -> None:
    """Charge at each voltage bin edge crossed between two samples (running half-cycle)."""
    width = (v_hi - v_lo) / N_BINS
    a, b = (v_prev, v) if v_prev < v else (v, v_prev)
    e0 = max(0, int(np.ceil((a - v_lo) / width)))
    e1 = min(N_BINS, int(np.floor((b - v_lo) / width)))
    for e in range(e0, e1 + 1):
        if np.isnan(st[TABLE_NEXT + e]):
            st[TABLE_NEXT + e] = q


@nb.njit(cache=True)
def detect_block(t: np.ndarray, v: np.ndarray, i: np.ndarray, temp: np.ndarray,
                 step: np.ndarray, p: np.ndarray, st: np.ndarray) -> np.ndarray:
    """Run every detector over a block. ``temp`` may hold NaN (no sensor), ``step`` the cycler's
    step counter (NaN where the cycler gives none). Returns rows [code, sample, onset_s, e0, e1, e2]."""
    n = t.shape[0]
    out = np.empty((n + 8, 6))
    m = 0
    for k in range(n):
        tk, vk, ik = t[k], v[k], i[k]
        if not (np.isfinite(tk) and np.isfinite(vk) and np.isfinite(ik)):
            continue
        if vk < p[P_V_VALID_LO] or vk > p[P_V_VALID_HI]:
            continue  # not a cell voltage: a sensor fault, reported by sensor_faults
        tp, vp, ip = st[S_T], st[S_V], st[S_I]
        first = np.isnan(tp)
        dt = 0.0 if first else tk - tp
        if not first and dt <= 0.0:
            continue  # out of order or repeated: ignored
        # a frozen reading carries no news; the first moving sample after a run of them is the
        # sensor let go, not a change of the cell
        frozen = not first and vk == vp and ik == ip and ik != 0.0
        # ... as is the first after a gap (readings skipped or lost): not compared with the last
        resync = not frozen and (st[S_FROZEN_N] >= FROZEN_RUN or (not first and dt > MAX_GAP_S))
        st[S_FROZEN_N] = st[S_FROZEN_N] + 1.0 if frozen else 0.0
        sign = 0
        if ik > p[P_REST_I]:
            sign = 1
        elif ik < -p[P_REST_I]:
            sign = -1
        # step change: a new cycler step; without step numbers (NaN), the current switching
        # between rest, charge and discharge
        if np.isnan(step[k]):
            changed = first or sign != int(st[S_PREV_SIGN])
        else:
            changed = first or step[k] != st[S_STEP]
        if sign != int(st[S_PREV_SIGN]) and sign != 0:  # a new half-cycle
            if int(st[S_HALF_SIGN]) != 0 and sign != int(st[S_HALF_SIGN]):
                half_q = st[S_Q] - st[S_HALF_Q0]
                if abs(half_q) > 0:
                    st[S_CAPACITY_AH] = abs(half_q)
                if int(st[S_HALF_SIGN]) > 0:
                    st[S_LAST_CHARGE_AH] = half_q
                st[TABLE:TABLE + N_BINS + 1] = st[TABLE_NEXT:TABLE_NEXT + N_BINS + 1]
                st[TABLE_NEXT:TABLE_NEXT + N_BINS + 1] = np.nan
                st[S_HALF_Q0] = st[S_Q]
            elif int(st[S_HALF_SIGN]) == 0:
                st[S_HALF_Q0] = st[S_Q]
            st[S_HALF_SIGN] = sign
        if sign != 0:
            st[S_ARMED_PLATE] = 0.0
        elif int(st[S_PREV_SIGN]) > 0:  # the relaxation after a charge starts
            st[S_ARMED_PLATE] = 1.0
            st[REG_PLATE:REG_PLATE + EW] = 0.0
            st[S_PLATE_REF_T] = np.nan
        # ohmic resistance from a current step (at least half the current) at, or one sample
        # after, a step change
        di_step = abs(ik - ip)
        if not first and di_step > 10 * p[P_REST_I] and di_step >= 0.5 * max(abs(ik), abs(ip)) \
                and (changed or tk - st[S_STEP_T] <= 1.5 * dt):
            st[S_R_EST] = abs((vk - vp) / (ik - ip))
        if changed:
            st[S_STEP_T] = tk
            st[S_SOFT_VAR] = 0.0
            st[S_SOFT_N] = 0.0
            st[S_SOFT_SINCE] = np.nan
            st[S_STALL_Q] = np.nan
            st[S_SD_SINCE] = np.nan
            st[REG_SD:REG_SD + EW] = 0.0
            st[REG_PLATE:REG_PLATE + EW] = 0.0
            st[S_PLATE_REF_T] = np.nan
            st[S_ARMED_SD] = 1.0
            st[S_STEP] = step[k]
        in_step = tk - st[S_STEP_T]
        if not first:
            st[S_Q] += 0.5 * (ik + ip) * dt / 3600.0
            # the dV/dQ table follows a 10 s EWMA of V, so noise does not cross edges early
            vs_prev = st[S_V_SMOOTH]
            st[S_V_SMOOTH] += (1.0 - np.exp(-dt / 10.0)) * (vk - vs_prev)
            if sign != 0:
                _record_edges(st, vs_prev, st[S_V_SMOOTH], st[S_Q] - st[S_HALF_Q0], p[P_V_LO],
                              p[P_V_HI])
        else:
            st[S_V_SMOOTH] = vk
        # hard short: against the maximum of values held for three samples (a spike up is no
        # reference), confirmed by the next sample
        if resync:
            st[S_DQ_LEN] = 0.0
        held = vk
        if not first and not resync:
            held = min(held, vp)
            if not np.isnan(st[S_V_PREV2]):
                held = min(held, st[S_V_PREV2])
        vmax = _sliding_max(st, tk, held, p[P_SHORT_WIN])
        drop = vmax - vk
        if drop > p[P_SHORT_DROP]:
            st[S_HARD_CLEAR] = np.nan
            if st[S_ARMED_HARD] == 1.0:
                if np.isnan(st[S_HARD_T0]):
                    st[S_HARD_T0], st[S_HARD_DROP], st[S_HARD_V], st[S_HARD_I] = tk, drop, vk, ik
                else:
                    st[S_ARMED_HARD] = 0.0
                    out[m, 0], out[m, 1], out[m, 2], out[m, 3], out[m, 4], out[m, 5] = \
                        HARD_SHORT, k, st[S_HARD_T0], st[S_HARD_DROP], st[S_HARD_V], st[S_HARD_I]
                    m += 1
                    st[S_HARD_T0] = np.nan
        else:
            st[S_HARD_T0] = np.nan
            if drop >= 0.1 * p[P_SHORT_DROP]:
                st[S_HARD_CLEAR] = np.nan
            elif st[S_ARMED_HARD] == 0.0:
                if np.isnan(st[S_HARD_CLEAR]):
                    st[S_HARD_CLEAR] = tk
                if tk - st[S_HARD_CLEAR] >= p[P_SHORT_REARM]:
                    st[S_ARMED_HARD] = 1.0
                    st[S_HARD_CLEAR] = np.nan
        # micro short
        if not first and not changed and not frozen and not resync:
            dv, di = vk - vp, ik - ip
            depth = 0.0
            if abs(di) <= p[P_MICRO_DI] * max(abs(ip), 10 * p[P_REST_I]):
                depth = -dv
            elif abs(dv) < 0.1 * p[P_MICRO_MIN] and di > 0:
                # held voltage: the cycler answers with current; without a resistance yet, a
                # jump of half the current counts, at the detection floor
                if not np.isnan(st[S_R_EST]):
                    depth = di * st[S_R_EST]
                elif di > 0.5 * abs(ip):
                    depth = max(p[P_MICRO_MIN], p[P_MICRO_SIGMAS] * np.sqrt(st[S_NOISE_VAR]))
            elif dv < 0 and di > 0:
                # V fell while I rose: an EMF drop the cycler answered only in part (a CV hold
                # at its current limit); an ohmic response moves both the same way
                depth = -dv
                if not np.isnan(st[S_R_EST]):
                    depth += di * st[S_R_EST]
            floor = max(p[P_MICRO_MIN], p[P_MICRO_SIGMAS] * np.sqrt(st[S_NOISE_VAR]))
            if depth < floor:  # the voltage noise, learnt where nothing happens
                st[S_NOISE_VAR] += (1.0 - np.exp(-dt / 60.0)) * (dv * dv - st[S_NOISE_VAR])
            elif st[S_ARMED_MICRO] == 1.0 and depth < p[P_SHORT_DROP]:
                st[S_ARMED_MICRO] = 0.0
                st[S_MICRO_REF] = tk
                out[m, 0], out[m, 1], out[m, 2], out[m, 3], out[m, 4], out[m, 5] = \
                    MICRO_SHORT, k, tk, depth, vk, ik
                m += 1
        if st[S_ARMED_MICRO] == 0.0 and tk - st[S_MICRO_REF] > 5.0:
            st[S_ARMED_MICRO] = 1.0
        # soft short: noisy voltage, or a stalled voltage, during a constant-current charge
        cc_charge = sign > 0 and not first and abs(ik - ip) <= p[P_MICRO_DI] * abs(ip)
        if frozen:
            st[S_STALL_Q] = np.nan  # no news: the stall window restarts after the freeze
        elif cc_charge and in_step > p[P_SETTLE] and not changed and not resync:
            # EWMA of dV^2 with dV clipped at SOFT_CLIP sigmas: one jump cannot raise it
            clip = max(SOFT_CLIP * np.sqrt(st[S_SOFT_VAR]), 0.5 * p[P_SOFT_SIGMA])
            dv = min(abs(vk - vp), clip)
            a = 1.0 - np.exp(-dt / p[P_SOFT_TAU])
            st[S_SOFT_VAR] += a * (dv * dv - st[S_SOFT_VAR])
            st[S_SOFT_N] += 1.0
            sigma = np.sqrt(st[S_SOFT_VAR])
            if sigma > p[P_SOFT_SIGMA] and st[S_SOFT_N] * dt > p[P_SOFT_TAU]:
                if np.isnan(st[S_SOFT_SINCE]):
                    st[S_SOFT_SINCE] = tk
                if st[S_ARMED_SOFT] == 1.0 and tk - st[S_SOFT_SINCE] >= p[P_SOFT_FOR]:
                    st[S_ARMED_SOFT] = 0.0
                    out[m, 0], out[m, 1], out[m, 2], out[m, 3], out[m, 4], out[m, 5] = \
                        SOFT_SHORT, k, st[S_SOFT_SINCE], sigma, vk, ik
                    m += 1
            elif sigma < 0.5 * p[P_SOFT_SIGMA]:
                st[S_SOFT_SINCE] = np.nan
            stall_q = p[P_STALL_FRAC] * st[S_LAST_CHARGE_AH]
            if stall_q > 0:
                if np.isnan(st[S_STALL_Q]):
                    st[S_STALL_Q], st[S_STALL_V] = st[S_Q], vk
                elif st[S_Q] - st[S_STALL_Q] >= stall_q:
                    rise = vk - st[S_STALL_V]
                    if rise < p[P_STALL_DV] and st[S_ARMED_SOFT] == 1.0:
                        st[S_ARMED_SOFT] = 0.0
                        out[m, 0], out[m, 1], out[m, 2], out[m, 3], out[m, 4], out[m, 5] = \
                            SOFT_SHORT_STALL, k, tk, rise, st[S_Q] - st[S_STALL_Q], vk
                        m += 1
                    st[S_STALL_Q], st[S_STALL_V] = st[S_Q], vk
        # self-discharge at rest
        if sign == 0 and in_step > p[P_SD_SETTLE]:
            slope = ew_update(st[REG_SD:REG_SD + EW], dt, vk, p[P_SD_TAU])
            dvdq = _dvdq_at(st, vk, p[P_V_LO], p[P_V_HI])
            cap = st[S_CAPACITY_AH]
            if in_step > p[P_SD_SETTLE] + p[P_SD_TAU] and slope < 0 and dvdq > 0 and cap > 0:
                leak = -slope * 3600.0 / dvdq  # A
                if leak > p[P_SD_C_RATE] * cap:
                    if np.isnan(st[S_SD_SINCE]):
                        st[S_SD_SINCE] = tk
                    if st[S_ARMED_SD] == 1.0 and tk - st[S_SD_SINCE] >= p[P_SD_FOR]:
                        st[S_ARMED_SD] = 0.0
                        out[m, 0], out[m, 1], out[m, 2], out[m, 3], out[m, 4], out[m, 5] = \
                            SELF_DISCHARGE, k, st[S_SD_SINCE], leak, vk / leak, slope
                        m += 1
                elif leak < 0.5 * p[P_SD_C_RATE] * cap:
                    st[S_SD_SINCE] = np.nan
        # plating: a flat dV/dt in the relaxation after a charge
        if sign == 0 and st[S_ARMED_PLATE] == 1.0 and in_step < p[P_PLATE_WINDOW]:
            rate = ew_update(st[REG_PLATE:REG_PLATE + EW], dt, vk, p[P_PLATE_TAU])
            if in_step > 3 * p[P_PLATE_TAU] and abs(rate) >= p[P_PLATE_MIN]:
                ref = st[S_PLATE_REF_RATE]
                if np.isnan(st[S_PLATE_REF_T]) or abs(rate - ref) > p[P_PLATE_FLAT] * abs(ref):
                    st[S_PLATE_REF_T], st[S_PLATE_REF_RATE] = tk, rate
                elif tk - st[S_PLATE_REF_T] >= p[P_PLATE_FLAT_S]:
                    st[S_ARMED_PLATE] = 0.0
                    st[S_ARMED_SD] = 0.0  # the stripping plateau is not a leak
                    out[m, 0], out[m, 1], out[m, 2], out[m, 3], out[m, 4], out[m, 5] = \
                        PLATING, k, st[S_PLATE_REF_T], rate, tk - st[S_PLATE_REF_T], vk
                    m += 1
            else:
                st[S_PLATE_REF_T] = np.nan
        # thermal runaway, GB 38031
        tc = temp[k]
        if np.isfinite(tc):
            dtdt = ew_update(st[REG_TEMP:REG_TEMP + EW], dt, tc, p[P_RUN_TAU])
            if dtdt >= p[P_RUN_DTDT]:
                if np.isnan(st[S_RUN_SINCE]):
                    st[S_RUN_SINCE] = tk
                if st[S_ARMED_RUN] == 1.0 and tk - st[S_RUN_SINCE] > p[P_RUN_HOLD]:
                    st[S_ARMED_RUN] = 0.0
                    out[m, 0], out[m, 1], out[m, 2], out[m, 3], out[m, 4], out[m, 5] = \
                        THERMAL_RUNAWAY, k, st[S_RUN_SINCE], dtdt, tc, tk - st[S_RUN_SINCE]
                    m += 1
            else:
                st[S_RUN_SINCE] = np.nan
                if dtdt < 0:
                    st[S_ARMED_RUN] = 1.0
        st[S_V_PREV2] = vk if first else vp
        st[S_T], st[S_V], st[S_I] = tk, vk, ik
        st[S_PREV_SIGN] = sign
        if m >= out.shape[0] - 8:
            grown = np.empty((2 * out.shape[0], 6))
            grown[:m] = out[:m]
            out = grown
    return out[:m]
