"""Mass-spectrometer sensitivity factors F (C/mol): ion current per molar flux, I = F * n_dot.

Two calibrations:

- **Calibration-gas steps** (``gas_step_calibration``): the inlet receives known fluxes (mol/s, or
  mole fraction x times the carrier's molar flow) in steps. Each step's steady plateau is found
  (the trailing stretch where the smoothed signal stays within a tolerance of its final level,
  with no significant slope), the background is taken from zero-flux steps (interpolated in time
  when there are several) and F is the least-squares slope of (I - background) against flux.
- **Electrochemical** (``ec_calibration``): gas evolved at a known faradaic efficiency (~100 %),
  F = Q_MS / (Q_EC / (n F)), n = 2 for H2 (HER, cathodic), 4 for O2 (OER, anodic). On cyclic
  voltammograms the gas evolves around the potential vertices: each vertex's stretch is where the
  current has the evolving sign and exceeds ``threshold_fraction`` of its peak; Q_EC is the
  current integrated over that stretch. The ion current needs a wider span, because it lags and
  tails: it is integrated from where it leaves its background before the stretch to where it is
  back after it, minus a linear background between the medians just outside that span.

``Calibration`` collects one ``GasSensitivity`` per gas, round-trips through dict/TOML, and
turns into the settings the gas processor (``processors.gas.GasConfig``) uses.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tomli_w
from scipy.constants import physical_constants
from scipy.ndimage import median_filter

from stream.frame import Frame, FrameError

from .gas import R_GAS, GasConfig
from .mass_spec import CRACKING

FARADAY = physical_constants["Faraday constant"][0]
# gas -> (electrons per molecule, sign of the evolving current, m/z used)
EC_REACTIONS: dict[str, tuple[int, int, float]] = {"H2": (2, -1, 2.0), "O2": (4, 1, 32.0)}
Method = Literal["gas_steps", "electrochemical"]


class CalibrationError(ValueError):
    pass


def iso_date(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns * 1e-9, UTC).isoformat(timespec="seconds")


def molar_flow(flow_mL_min: float, pressure_Pa: float = 1.0e5,
               temperature_C: float = 25.0) -> float:
    """mol/s of an ideal gas flowing at ``flow_mL_min`` (at the given p and T)."""
    return pressure_Pa * flow_mL_min * 1e-6 / 60.0 / (R_GAS * (temperature_C + 273.15))


# -- the result ----------------------------------------------------------------------------

@dataclass
class GasSensitivity:
    gas: str
    mz: float
    F_C_per_mol: float
    method: Method
    n_points: int
    spread_C_per_mol: float            # standard deviation of the per-point F (0 for 1 point)
    date: str                          # ISO 8601 time of the calibration data
    points_C_per_mol: list[float] = field(default_factory=list)

    @property
    def relative_spread(self) -> float:
        return self.spread_C_per_mol / abs(self.F_C_per_mol)

    def base_peak_sensitivity_A(self, carrier_mol_s: float) -> float:
        """Ion current (A) at the gas's base peak per unit mole fraction in a carrier flowing at
        ``carrier_mol_s``: I = F * x * Q, moved from the calibrated m/z to the base peak with the
        cracking pattern."""
        relative = CRACKING.get(self.gas, {}).get(int(round(self.mz)))
        if not relative:
            raise CalibrationError(f"{self.gas}: m/z {self.mz:g} is not in its cracking pattern")
        return self.F_C_per_mol * carrier_mol_s / relative


@dataclass
class Calibration:
    gases: dict[str, GasSensitivity] = field(default_factory=dict)

    def add(self, sensitivity: GasSensitivity) -> Calibration:
        self.gases[sensitivity.gas] = sensitivity
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"gas": {g: {k: v for k, v in asdict(s).items() if k != "gas"}
                        for g, s in self.gases.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        try:
            return cls({g: GasSensitivity(gas=g, **v) for g, v in data.get("gas", {}).items()})
        except TypeError as exc:
            raise CalibrationError(f"calibration table: {exc}") from None

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> Calibration:
        return cls.from_dict(tomllib.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_toml(Path(path).read_text())

    def gas_settings(self, config: GasConfig | None = None) -> dict[str, Any]:
        """GasConfig fields that apply this calibration (``sensitivities_A`` per calibrated gas),
        with the carrier flow (and p, T) of ``config``."""
        config = config or GasConfig()
        if not self.gases:
            raise CalibrationError("empty calibration")
        q = molar_flow(config.flow_mL_min, config.pressure_Pa, config.temperature_C)
        return {"sensitivities_A": {g: s.base_peak_sensitivity_A(q)
                                    for g, s in self.gases.items()}}


def summarise(gas: str, mz: float, points: list[float], method: Method, date: str
              ) -> GasSensitivity:
    values = np.asarray(points, dtype=np.float64)
    if values.size == 0:
        raise CalibrationError(f"{gas}: no calibration points")
    spread = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return GasSensitivity(gas, float(mz), float(values.mean()), method, int(values.size),
                          spread, date, [float(v) for v in values])


# -- calibration-gas steps -------------------------------------------------------------------

@dataclass(frozen=True)
class Plateau:
    t_start: float
    t_end: float
    level: float                # mean ion current over the plateau (A)
    stderr: float
    n: int


def noise_sigma(y: np.ndarray) -> float:
    """Sample noise from the median absolute first difference (robust to steps and drift)."""
    d = np.diff(y)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)) if d.size else 0.0


def steady_plateau(t: np.ndarray, y: np.ndarray, t_start: float, t_end: float,
                   rel_tol: float = 0.005, smooth: int = 5, min_points: int = 10) -> Plateau:
    """The steady-state stretch at the end of one step [t_start, t_end]: from the first sample
    after which the ``smooth``-point running mean stays within tolerance of the final level
    (max of 3 noise sigmas of that mean and ``rel_tol`` of the level). Raises CalibrationError
    if it holds fewer than ``min_points`` samples or still drifts."""
    m = (t >= t_start) & (t <= t_end)
    ts, ys = t[m], y[m]
    if ys.size < max(min_points, smooth):
        raise CalibrationError(f"step {t_start:g}-{t_end:g} s: {ys.size} samples, need "
                               f"{max(min_points, smooth)}")
    running = np.convolve(ys, np.ones(smooth) / smooth, mode="valid")
    final = float(np.median(ys[-max(min_points, ys.size // 4):]))
    sigma = noise_sigma(ys[ys.size // 2:])
    tol = max(3.0 * sigma / np.sqrt(smooth), rel_tol * abs(final))
    outside = np.flatnonzero(np.abs(running - final) > tol)
    first = 0 if outside.size == 0 else int(outside[-1]) + smooth  # first sample after it
    n = ys.size - first
    if n < min_points:
        raise CalibrationError(f"step {t_start:g}-{t_end:g} s: no steady plateau of "
                               f"{min_points} samples (signal still moving at the end)")
    tp, yp = ts[first:], ys[first:]
    slope = np.polyfit(tp - tp[0], yp, 1)[0]
    if abs(slope) * (tp[-1] - tp[0]) > 2.0 * tol:
        raise CalibrationError(f"step {t_start:g}-{t_end:g} s: plateau still drifts "
                               f"({slope:.3g} A/s)")
    return Plateau(float(tp[0]), float(tp[-1]), float(yp.mean()),
                   float(yp.std(ddof=1) / np.sqrt(n)), int(n))


@dataclass(frozen=True)
class GasStep:
    t_start: float
    t_end: float
    flux_mol_s: float           # 0 for a background (carrier only) step


def steps_from_fractions(windows: list[tuple[float, float]], fractions: list[float],
                         carrier_mol_s: float) -> list[GasStep]:
    """Steps given as mole fractions of the calibration gas in a carrier of known molar flow:
    flux = x * Q."""
    if len(windows) != len(fractions):
        raise CalibrationError(f"{len(windows)} windows but {len(fractions)} fractions")
    return [GasStep(a, b, x * carrier_mol_s) for (a, b), x in zip(windows, fractions,
                                                                   strict=True)]


@dataclass
class StepResult:
    sensitivity: GasSensitivity
    plateaus: list[Plateau]
    background_A: list[float]   # background under each step
    intercept_A: float | None   # fitted background when no zero-flux step was given


def gas_step_calibration(t: np.ndarray, ion_current: np.ndarray, steps: list[GasStep], gas: str,
                         mz: float, date: str = "", rel_tol: float = 0.005,
                         min_points: int = 10) -> StepResult:
    """F from steps of known flux: zero-flux steps give the background (interpolated in time
    between them); F is the least-squares slope of (I_steady - background) against flux,
    through the origin. Without zero-flux steps the background is the fitted intercept (needs
    two flux levels)."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(ion_current, dtype=np.float64)
    plateaus = [steady_plateau(t, y, s.t_start, s.t_end, rel_tol, min_points=min_points)
                for s in steps]
    flux = np.array([s.flux_mol_s for s in steps])
    level = np.array([p.level for p in plateaus])
    mid = np.array([0.5 * (p.t_start + p.t_end) for p in plateaus])
    zero = flux == 0.0
    intercept = None
    if zero.any():
        background = np.interp(mid, mid[zero], level[zero])
    else:
        if np.unique(flux).size < 2:
            raise CalibrationError(f"{gas}: need a zero-flux (background) step or two flux "
                                   "levels to separate the background")
        intercept = float(np.polyfit(flux, level, 1)[1])
        background = np.full(level.size, intercept)
    used = ~zero
    if not used.any():
        raise CalibrationError(f"{gas}: no step with a non-zero flux")
    signal = level[used] - background[used]
    F = float(np.sum(flux[used] * signal) / np.sum(flux[used] ** 2))
    result = summarise(gas, mz, list(signal / flux[used]), "gas_steps", date)
    result.F_C_per_mol = F
    return StepResult(result, plateaus, [float(b) for b in background], intercept)


# -- electrochemical calibration on cyclic voltammograms ------------------------------------

def cv_vertices(voltage: np.ndarray, hysteresis_V: float = 0.02) -> list[tuple[int, int]]:
    """Potential turning points (index, +1 for a maximum / -1 for a minimum), each confirmed by
    a reversal of more than ``hysteresis_V``; the ends of the record are not vertices."""
    e = np.asarray(voltage, dtype=np.float64)
    out: list[tuple[int, int]] = []
    i_min = i_max = 0
    direction = 0
    for i in range(1, e.size):
        if direction == 0:  # until the first reversal: is the start a descent or a rise?
            i_min = i if e[i] < e[i_min] else i_min
            i_max = i if e[i] > e[i_max] else i_max
            if e[i] > e[i_min] + hysteresis_V:
                if i_min > 0 and e[0] - e[i_min] > hysteresis_V:
                    out.append((i_min, -1))
                direction, i_max = 1, i
            elif e[i] < e[i_max] - hysteresis_V:
                if i_max > 0 and e[i_max] - e[0] > hysteresis_V:
                    out.append((i_max, 1))
                direction, i_min = -1, i
        elif direction == 1:
            if e[i] >= e[i_max]:
                i_max = i
            elif e[i_max] - e[i] > hysteresis_V:
                out.append((i_max, 1))
                direction, i_min = -1, i
        else:
            if e[i] <= e[i_min]:
                i_min = i
            elif e[i] - e[i_min] > hysteresis_V:
                out.append((i_min, -1))
                direction, i_max = 1, i
    return out


@dataclass(frozen=True)
class Stretch:
    sign: int                  # -1 cathodic, +1 anodic
    i_vertex: int
    i_start: int
    i_end: int                 # inclusive
    t_start: float
    t_end: float
    peak_A: float


def evolution_stretches(t: np.ndarray, current: np.ndarray, voltage: np.ndarray,
                        threshold_fraction: float = 0.05, hysteresis_V: float = 0.02,
                        peak_search_s: float = 5.0, min_peak_ratio: float = 5.0
                        ) -> list[Stretch]:
    """Around each CV vertex, the stretch where the current has the vertex's sign (cathodic at
    a minimum, anodic at a maximum) and exceeds ``threshold_fraction`` of its peak there. A
    vertex evolves gas only if that peak exceeds ``min_peak_ratio`` times the median |current|
    of the record (mostly double-layer current). Stretches that reach the ends of the record
    are incomplete and left out."""
    out = []
    typical = float(np.median(np.abs(current)))
    for index, sign in cv_vertices(voltage, hysteresis_V):
        s = sign * current
        near = np.flatnonzero(np.abs(t - t[index]) <= peak_search_s)
        peak = int(near[np.argmax(s[near])])
        if s[peak] <= min_peak_ratio * typical:
            continue
        threshold = threshold_fraction * s[peak]
        a = b = peak
        while a > 0 and s[a - 1] > threshold:
            a -= 1
        while b < s.size - 1 and s[b + 1] > threshold:
            b += 1
        if a == 0 or b == s.size - 1:
            continue
        out.append(Stretch(sign, index, a, b, float(t[a]), float(t[b]), float(current[peak])))
    return out


def charge(t: np.ndarray, current: np.ndarray, interval_mean: bool = False) -> float:
    """Charge (C) of a current record: trapezoid, or EC-Lab <I> interval means."""
    if interval_mean:
        return float(np.sum(current[1:] * np.diff(t)))
    return float(np.trapezoid(current, t))


def vertex_window(voltage: np.ndarray, i_vertex: int, sign: int, window_V: float) -> slice:
    """The samples around a vertex (both sweeps) within ``window_V`` of its potential."""
    e = sign * (voltage - voltage[i_vertex])  # <= 0 near a vertex of this sign
    a = b = i_vertex
    while a > 0 and e[a - 1] > -window_V:
        a -= 1
    while b < e.size - 1 and e[b + 1] > -window_V:
        b += 1
    return slice(a, b + 1)


@dataclass(frozen=True)
class EvolutionEvent:
    stretch: Stretch
    q_ec_C: float               # charge in the evolving direction (C)
    n_mol: float                # Q_EC / (n F)
    ms_start: float
    ms_end: float
    background: tuple[float, float]   # ion current background at ms_start and ms_end (A)
    q_ms_C: float               # background-subtracted ion current integrated over the MS span
    F_C_per_mol: float


def _median_in(t: np.ndarray, y: np.ndarray, a: float, b: float, min_points: int) -> float | None:
    m = (t >= a) & (t <= b)
    return float(np.median(y[m])) if m.sum() >= min_points else None


def ms_event(t: np.ndarray, y: np.ndarray, stretch: Stretch, lower: float, upper: float,
             bg_window_s: float = 20.0, tail_fraction: float = 0.01, max_delay_s: float = 30.0,
             min_bg_points: int = 3) -> tuple[float, float, float, float, float] | None:
    """The ion-current response to one stretch, searched within [lower, upper] (the neighbouring
    stretches): (start, end, background at start, at end, integral above the background).
    None when there is no clear response or no room for the background windows."""
    smooth = median_filter(y, size=3, mode="nearest")
    b0 = _median_in(t, y, max(lower, stretch.t_start - bg_window_s), stretch.t_start,
                    min_bg_points)
    search = np.flatnonzero((t >= stretch.t_start) & (t <= min(upper, stretch.t_end
                                                               + max_delay_s)))
    if b0 is None or search.size == 0:
        return None
    peak = int(search[np.argmax(smooth[search])])
    height = smooth[peak] - b0
    if height <= 0.0:
        return None
    a = b = peak
    while a > 0 and t[a - 1] > lower and smooth[a] - b0 > tail_fraction * height:
        a -= 1
    while b < t.size - 1 and t[b + 1] < upper and smooth[b] - b0 > tail_fraction * height:
        b += 1
    start, end = float(t[a]), float(t[b])
    b0 = _median_in(t, y, max(lower, start - bg_window_s), start, min_bg_points)
    b1 = _median_in(t, y, end, min(upper, end + bg_window_s), min_bg_points)
    if b0 is None or b1 is None:
        return None
    span = slice(a, b + 1)
    background = np.interp(t[span], [start, end], [b0, b1])
    return start, end, b0, b1, float(np.trapezoid(y[span] - background, t[span]))


@dataclass
class ECResult:
    sensitivity: GasSensitivity
    events: list[EvolutionEvent]
    skipped: list[Stretch]      # stretches of the gas's sign without a usable MS response


def ec_calibration(t_ec: np.ndarray, voltage: np.ndarray, current: np.ndarray,
                   t_ms: np.ndarray, ion_current: np.ndarray, gas: str,
                   n_electrons: int | None = None, mz: float | None = None, date: str = "",
                   interval_mean: bool = False, threshold_fraction: float = 0.05,
                   hysteresis_V: float = 0.02, bg_window_s: float = 20.0,
                   tail_fraction: float = 0.01, max_delay_s: float = 30.0,
                   reversible_window_V: float | None = None) -> ECResult:
    """F per evolution stretch of a CV record (current in A, cathodic negative; all times on
    one base), and their mean and spread. ``gas`` H2 (HER, n = 2, m/z 2) or O2 (OER, n = 4,
    m/z 32) have defaults; other gases need ``n_electrons`` (signed: negative for a cathodic
    reaction) and ``mz``.

    Q_EC is the charge over each stretch. With ``reversible_window_V`` it is instead the net
    charge over both sweeps within that potential of the vertex: charges that reverse with the
    sweep (double layer, H adsorption on Pt, and gas re-oxidised after the vertex) cancel, so Q_EC
    counts the gas that leaves. Suits HER on Pt; not OER, where oxide formation does not reverse
    within the window."""
    if gas in EC_REACTIONS:
        n_default, sign, mz_default = EC_REACTIONS[gas]
        n = n_electrons or n_default
        mz = mz_default if mz is None else mz
    elif n_electrons is None or mz is None:
        raise CalibrationError(f"{gas}: give n_electrons (signed) and mz")
    else:
        n, sign = abs(n_electrons), (1 if n_electrons > 0 else -1)
    t_ec, voltage, current = (np.asarray(a, dtype=np.float64) for a in (t_ec, voltage, current))
    t_ms, ion_current = np.asarray(t_ms, np.float64), np.asarray(ion_current, np.float64)
    stretches = evolution_stretches(t_ec, current, voltage, threshold_fraction, hysteresis_V)
    events, skipped = [], []
    for k, st in enumerate(stretches):
        if st.sign != sign:
            continue
        lower = stretches[k - 1].t_end if k > 0 else -np.inf
        upper = stretches[k + 1].t_start if k + 1 < len(stretches) else np.inf
        response = ms_event(t_ms, ion_current, st, lower, upper, bg_window_s, tail_fraction,
                            max_delay_s)
        if response is None:
            skipped.append(st)
            continue
        span = slice(st.i_start, st.i_end + 1) if reversible_window_V is None else \
            vertex_window(voltage, st.i_vertex, st.sign, reversible_window_V)
        q_ec = st.sign * charge(t_ec[span], current[span], interval_mean)
        if q_ec <= 0.0:
            skipped.append(st)
            continue
        n_mol = q_ec / (n * FARADAY)
        start, end, b0, b1, q_ms = response
        events.append(EvolutionEvent(st, q_ec, n_mol, start, end, (b0, b1), q_ms, q_ms / n_mol))
    if not events:
        raise CalibrationError(f"{gas}: no {'anodic' if sign > 0 else 'cathodic'} evolution "
                               f"stretch with an ion-current response at m/z {mz:g}")
    result = summarise(gas, mz, [e.F_C_per_mol for e in events], "electrochemical", date)
    return ECResult(result, events, skipped)


def frame_series(frame: Frame, name: str, origin_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(time in s after ``origin_ns``, values) of one array of a frame; an ``ms.ion_current``
    channel ``m<mz>`` uses its own ``t_m<mz>`` times when the frame has them."""
    if name not in frame.arrays:
        raise FrameError(frame.stream, f"arrays.{name}", "missing")
    t = frame.arrays.get(f"t_{name}", frame.arrays.get("t"))
    if t is None:
        raise FrameError(frame.stream, "arrays.t", "missing")
    values = np.asarray(frame.arrays[name], dtype=np.float64)
    if t.shape != values.shape:
        raise FrameError(frame.stream, f"arrays.{name}",
                         f"shape {list(values.shape)} does not match its times {list(t.shape)}")
    return (frame.t0_ns - origin_ns) * 1e-9 + np.asarray(t, dtype=np.float64), values


def ec_calibration_frames(echem: Frame, ms: Frame, gas: str, **kwargs: Any) -> ECResult:
    """``ec_calibration`` on an ``echem`` and an ``ms.ion_current`` frame on one time base."""
    origin = echem.t0_ns
    t_ec, voltage = frame_series(echem, "voltage", origin)
    _, current = frame_series(echem, "current", origin)
    mz = kwargs.pop("mz", None) or EC_REACTIONS.get(gas, (0, 0, None))[2]
    if mz is None:
        raise CalibrationError(f"{gas}: give mz")
    t_ms, ion = frame_series(ms, f"m{mz:g}", origin)
    kwargs.setdefault("interval_mean", echem.meta.get("current_kind") == "interval_mean")
    kwargs.setdefault("date", iso_date(echem.t0_ns))
    return ec_calibration(t_ec, voltage, current, t_ms, ion, gas, mz=mz, **kwargs)
