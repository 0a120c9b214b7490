"""Live peak fits on 1-D diffraction patterns and spectra: position, FWHM, area and height of
configured peaks, with d-spacings and lattice parameters from Bragg's law.

Consumes ``pattern`` (x array ``two_theta``, degrees) and ``spectrum`` (x array ``shift``,
cm-1) frames with an ``intensity`` array. Each configured peak has a fit range (``window``
around its position, or ``range``); peaks whose ranges overlap are fitted together, on a
polynomial baseline over the union of their ranges, by the numba Levenberg–Marquardt kernel
(``kernels/peakfit.py``). Optionally an asymmetric-least-squares baseline (pybaselines
``asls``) is subtracted from the whole frame first; the fit baseline is then a constant or
nothing.

Each fit starts from the previous frame's result on the same stream (warm start). A fit that
fails, pins a position or FWHM at its limits, or whose reduced chi2 jumps by more than
``blowup`` is redone from a cold start (peaks at the highest point within their search range).
A fit that fails both ways emits nothing for its peaks and is counted in ``failures``.

Outputs, per input frame and peak, one ``result.peak`` frame (tag ``peak``): ``position``,
``fwhm``, ``area``, ``height`` (and ``eta`` for pseudo-Voigts), each with an ``_err`` standard
error (curve_fit convention: covariance times the reduced chi2), ``chi2_red``, ``iterations``,
``cold_start``; for 2θ axes with a known wavelength ``d_spacing`` (Å), and with ``hkl`` a
lattice parameter ``lattice_a`` or ``lattice_c`` (Å).

Bragg's law: λ = 2d·sin θ. Cubic: a = d·√(h² + k² + l²). Hexagonal:
1/d² = 4/3·(h² + hk + k²)/a² + l²/c², solved for a when l = 0 or c is given, for c when
h = k = 0 or a is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .kernels.peakfit import (
    AREA,
    AT_BOUND,
    CHI2_RED,
    COLD_START,
    CONVERGED,
    ETA,
    FWHM,
    G_NORM,
    ITERATIONS,
    L_NORM,
    N_PEAK,
    POS,
    PSEUDO_VOIGT,
    SHAPES,
    fit_guarded,
    n_params,
    peak_height,
)

X_ARRAYS = {"pattern": "two_theta", "spectrum": "shift"}
ANGSTROM = "angstrom"


class PeakSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    position: float                                   # guess, x units
    fwhm: float = Field(gt=0)                         # guess, x units
    shape: Literal["gaussian", "lorentzian", "pseudo_voigt"] = "pseudo_voigt"
    eta: float = Field(0.5, ge=0.0, le=1.0)           # pseudo-Voigt Lorentz fraction, guess
    window: float | None = Field(None, gt=0)          # fit range = position ± window
    range: tuple[float, float] | None = None          # or the fit range itself
    position_limits: tuple[float, float] | None = None  # default: the fit range
    fwhm_limits: tuple[float, float] | None = None      # default: fwhm/20 .. range width
    hkl: tuple[int, int, int] | None = None
    lattice: Literal["cubic", "hexagonal"] = "cubic"
    a: float | None = Field(None, gt=0)               # hexagonal: known a (Å), solve for c
    c: float | None = Field(None, gt=0)               # hexagonal: known c (Å), solve for a

    @model_validator(mode="after")
    def _check(self) -> PeakSpec:
        if self.window is not None and self.range is not None:
            raise ValueError("give window or range, not both")
        lo, hi = self.fit_range
        if not lo < self.position < hi:
            raise ValueError(f"position {self.position} outside the fit range [{lo}, {hi}]")
        for key in ("position_limits", "fwhm_limits"):
            limits = getattr(self, key)
            if limits is not None and not limits[0] < limits[1]:
                raise ValueError(f"{key}: lower must be below upper, got {limits}")
        if self.fwhm_limits is not None and self.fwhm_limits[0] <= 0:
            raise ValueError("fwhm_limits: the lower limit must be > 0")
        if self.hkl is not None:
            if not any(self.hkl):
                raise ValueError("hkl (0, 0, 0) has no d-spacing")
            h, k, el = self.hkl
            mixed = (h or k) and el
            if self.lattice == "hexagonal" and mixed and self.a is None and self.c is None:
                raise ValueError(f"hexagonal {self.hkl}: give the known a or c")
        return self

    @property
    def fit_range(self) -> tuple[float, float]:
        if self.range is not None:
            return self.range
        half = self.window if self.window is not None else 5.0 * self.fwhm
        return self.position - half, self.position + half


class BaselineSpec(BaseModel):
    """``poly``: a polynomial of ``degree`` (0..3, default 1) fitted with the peaks. ``als``:
    pybaselines' asymmetric least squares (``lam`` smoothness per sample, ``p`` asymmetry)
    subtracted from the whole frame first, then a constant (degree 0, the default) or nothing
    (degree −1) fitted. ``none``: no baseline."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["poly", "als", "none"] = "poly"
    degree: int | None = Field(None, ge=-1, le=3)
    lam: float = Field(1e5, gt=0)
    p: float = Field(0.01, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> BaselineSpec:
        if self.kind == "als" and (self.degree or 0) > 0:
            raise ValueError("after an ALS baseline the fit baseline is degree 0 or -1 (none)")
        if self.kind == "none" and self.degree not in (None, -1):
            raise ValueError("kind 'none' has no degree")
        return self

    @property
    def fit_degree(self) -> int:
        if self.degree is not None:
            return self.degree
        return {"poly": 1, "als": 0, "none": -1}[self.kind]


class PeaksConfig(ProcessorConfig):
    peaks: list[PeakSpec] = Field(min_length=1)
    baseline: BaselineSpec = BaselineSpec()
    input_kind: Literal["pattern", "spectrum"] | None = None  # None: both kinds
    x: str | None = None               # x array; default two_theta (pattern) or shift (spectrum)
    y: str = "intensity"
    weighting: Literal["uniform", "poisson"] = "uniform"  # poisson: 1/sigma = 1/sqrt(counts)
    wavelength_m: float | None = Field(None, gt=0)  # used when frames carry no wavelength_m
    max_iter: int = Field(100, ge=2)
    blowup: float = Field(4.0, gt=1.0)  # reduced chi2 jump that triggers a cold refit

    @model_validator(mode="after")
    def _unique(self) -> PeaksConfig:
        names = [p.name for p in self.peaks]
        if len(set(names)) != len(names):
            raise ValueError(f"peak names must be unique, got {names}")
        return self


# -- Bragg's law ------------------------------------------------------------------------------

def d_spacing(two_theta_deg: float, wavelength_m: float, two_theta_err: float = 0.0
              ) -> tuple[float, float]:
    """d (Å) = λ/(2 sin θ) and its standard error from that of 2θ (degrees)."""
    theta = math.radians(two_theta_deg) / 2.0
    d = wavelength_m * 1e10 / (2.0 * math.sin(theta))
    # dd/d(2θ) = −d·cot(θ)/2 per radian of 2θ
    return d, abs(d / (2.0 * math.tan(theta))) * math.radians(two_theta_err)


def lattice_parameter(d: float, d_err: float, hkl: tuple[int, int, int],
                      lattice: Literal["cubic", "hexagonal"] = "cubic",
                      a: float | None = None, c: float | None = None
                      ) -> tuple[str, float, float]:
    """("lattice_a" or "lattice_c", value, standard error) in Å from d (Å) of reflection hkl.

    Hexagonal: solved for a when l = 0 or c is known, else for c (h = k = 0, or a known);
    NaN when the known parameter is inconsistent with d."""
    h, k, el = hkl
    if lattice == "cubic":
        root = math.sqrt(h * h + k * k + el * el)
        return "lattice_a", d * root, d_err * root
    s = h * h + h * k + k * k
    inv_d2 = 1.0 / (d * d)
    if s and (el == 0 or c is not None):
        name, coef, rest = "lattice_a", 4.0 * s / 3.0, (el * el / (c * c) if el else 0.0)
    elif s == 0:
        name, coef, rest = "lattice_c", float(el * el), 0.0
    else:
        name, coef, rest = "lattice_c", float(el * el), 4.0 * s / (3.0 * a * a)
    q = inv_d2 - rest
    if q <= 0.0:
        return name, math.nan, math.nan
    value = math.sqrt(coef / q)
    # value = sqrt(coef)·q^(-1/2), q = 1/d² − rest: d(value)/dd = value/(q·d³)
    return name, value, value / (q * d ** 3) * d_err


# -- the processor --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Peaks fitted together over one x range: the kernel's fixed inputs."""

    members: tuple[int, ...]            # indices into config.peaks
    lo: float
    hi: float
    shapes: np.ndarray
    guess: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    free: np.ndarray
    search_lo: np.ndarray
    search_hi: np.ndarray


@dataclass
class _FitState:
    p: np.ndarray                       # last good parameters (NaN: none yet)
    chi2_red: float = math.nan


@dataclass
class _StreamState:
    fits: list[_FitState] = field(default_factory=list)


def _build_groups(peaks: list[PeakSpec], degree: int) -> list[_Group]:
    order = sorted(range(len(peaks)), key=lambda i: peaks[i].fit_range)
    merged: list[list[int]] = []
    hi = -math.inf
    for i in order:
        lo_i, hi_i = peaks[i].fit_range
        if merged and lo_i <= hi:
            merged[-1].append(i)
            hi = max(hi, hi_i)
        else:
            merged.append([i])
            hi = hi_i
    return [_group(peaks, members, degree) for members in merged]


def _group(peaks: list[PeakSpec], members: list[int], degree: int) -> _Group:
    m = n_params(len(members), degree)
    guess, free = np.zeros(m), np.ones(m, dtype=np.bool_)
    lower, upper = np.full(m, -np.inf), np.full(m, np.inf)
    search_lo, search_hi = np.empty(len(members)), np.empty(len(members))
    for k, i in enumerate(members):
        spec = peaks[i]
        j = N_PEAK * k
        lo, hi = spec.fit_range
        guess[j + POS], guess[j + FWHM], guess[j + ETA] = spec.position, spec.fwhm, spec.eta
        lower[j + POS], upper[j + POS] = spec.position_limits or (lo, hi)
        lower[j + FWHM], upper[j + FWHM] = spec.fwhm_limits or (spec.fwhm / 20.0, hi - lo)
        lower[j + AREA] = 0.0
        lower[j + ETA], upper[j + ETA] = 0.0, 1.0
        # cold start: the highest point within the position limits; when several peaks share
        # a range and no limits are given, within one FWHM of the configured position
        search = (lower[j + POS], upper[j + POS])
        if spec.position_limits is None and len(members) > 1:
            search = (spec.position - spec.fwhm, spec.position + spec.fwhm)
        search_lo[k], search_hi[k] = search
    ranges = [peaks[i].fit_range for i in members]
    shapes = np.array([SHAPES[peaks[i].shape] for i in members], dtype=np.int64)
    return _Group(tuple(members), min(r[0] for r in ranges), max(r[1] for r in ranges), shapes,
                  guess, lower, upper, free, search_lo, search_hi)


def _spectrum_arrays(frame: Frame, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The x and y arrays as float64: 1-D, equally long, numeric and finite."""
    out = []
    for name in (x_name, y_name):
        arr = frame.arrays.get(name)
        if arr is None:
            raise FrameError(frame.stream, f"arrays.{name}", "missing")
        if arr.ndim != 1:
            raise FrameError(frame.stream, f"arrays.{name}", f"must be 1-D, got {list(arr.shape)}")
        if arr.dtype.kind not in "fiu":
            raise FrameError(frame.stream, f"arrays.{name}", f"dtype {arr.dtype.str} not numeric")
        values = np.ascontiguousarray(arr, dtype=np.float64)
        if not np.isfinite(values).all():
            raise FrameError(frame.stream, f"arrays.{name}", "non-finite sample")
        out.append(values)
    if out[0].size != out[1].size:
        raise FrameError(frame.stream, f"arrays.{y_name}",
                         f"{out[1].size} samples but {x_name} has {out[0].size}")
    return out[0], out[1]


class PeaksProcessor(Processor):
    type_name = "peaks"
    consumes = ("pattern", "spectrum")
    Config = PeaksConfig

    def __init__(self, config: PeaksConfig | None = None):
        super().__init__(config)
        c = self.config
        self.degree = c.baseline.fit_degree
        self.groups = _build_groups(c.peaks, self.degree)
        self._streams: dict[str, _StreamState] = {}
        self.failures: dict[str, int] = {}   # fits that failed warm and cold, per stream

    def wants(self, kind: str) -> bool:
        return super().wants(kind) and self.config.input_kind in (None, kind)

    def process(self, frame: Frame) -> list[Frame]:
        c = self.config
        x_name = c.x or X_ARRAYS.get(frame.kind, "x")
        x, y = _spectrum_arrays(frame, x_name, c.y)
        weights = 1.0 / np.sqrt(np.maximum(y, 1.0)) if c.weighting == "poisson" \
            else np.ones_like(y)
        if c.baseline.kind == "als":
            from pybaselines import Baseline
            y = y - Baseline(x).asls(y, lam=c.baseline.lam, p=c.baseline.p)[0]
        wavelength = frame.meta.get("wavelength_m", c.wavelength_m)
        if wavelength is not None and not (isinstance(wavelength, int | float)
                                           and 0.0 < wavelength < math.inf):
            raise FrameError(frame.stream, "meta.wavelength_m",
                             f"{wavelength!r} is not a positive wavelength in metres")
        bragg = x_name == "two_theta"
        if bragg and wavelength is None and any(p.hkl for p in c.peaks):
            raise FrameError(frame.stream, "meta.wavelength_m",
                             "missing: needed for lattice parameters (or set wavelength_m)")
        st = self._streams.get(frame.stream)
        if st is None:
            st = self._streams[frame.stream] = _StreamState(
                [_FitState(np.full(g.guess.size, np.nan)) for g in self.groups])
        results: dict[int, Frame] = {}
        for group, fit in zip(self.groups, st.fits, strict=True):
            sel = np.flatnonzero((x >= group.lo) & (x <= group.hi))
            if sel.size <= group.guess.size:
                raise FrameError(frame.stream, f"arrays.{x_name}",
                                 f"{sel.size} samples in the fit range [{group.lo}, {group.hi}];"
                                 f" {group.guess.size + 1} needed")
            p, cov, info = fit_guarded(x[sel], y[sel], weights[sel], group.shapes,
                                       self.degree + 1, fit.p, group.guess, group.search_lo,
                                       group.search_hi, group.lower, group.upper, group.free,
                                       fit.chi2_red, c.blowup, c.max_iter)
            if not (info[CONVERGED] == 1.0 and info[AT_BOUND] == 0.0
                    and np.isfinite(p).all() and np.isfinite(np.diagonal(cov)).all()):
                self.failures[frame.stream] = self.failures.get(frame.stream, 0) + 1
                continue
            fit.p, fit.chi2_red = p, float(info[CHI2_RED])
            for k, i in enumerate(group.members):
                results[i] = self._peak_frame(frame, i, k, p, cov, info, x_name,
                                              wavelength if bragg else None)
        return [results[i] for i in sorted(results)]

    def _peak_frame(self, frame: Frame, i: int, k: int, p: np.ndarray, cov: np.ndarray,
                    info: np.ndarray, x_name: str, wavelength: float | None) -> Frame:
        spec = self.config.peaks[i]
        j = N_PEAK * k
        err = np.sqrt(np.maximum(np.diagonal(cov), 0.0))
        pos, fwhm, area, eta = p[j + POS], p[j + FWHM], p[j + AREA], p[j + ETA]
        height = peak_height(fwhm, area, eta)
        # height error: its gradient over (FWHM, area, eta) through their covariance
        idx = (j + FWHM, j + AREA, j + ETA)
        grad = (-height / fwhm, height / area if area else 0.0, area / fwhm * (L_NORM - G_NORM))
        height_var = sum(grad[r] * grad[q] * cov[idx[r], idx[q]]
                         for r in range(3) for q in range(3))
        x_unit = frame.units.get(x_name, "")
        y_unit = frame.units.get(self.config.y, "")
        values = {"position": (pos, err[j + POS], x_unit), "fwhm": (fwhm, err[j + FWHM], x_unit),
                  "area": (area, err[j + AREA], f"{y_unit}*{x_unit}" if y_unit else x_unit),
                  "height": (height, math.sqrt(max(height_var, 0.0)), y_unit)}
        if SHAPES[spec.shape] == PSEUDO_VOIGT:
            values["eta"] = (eta, err[j + ETA], "")
        if wavelength is not None:
            d, d_err = d_spacing(pos, wavelength, err[j + POS])
            values["d_spacing"] = (d, d_err, ANGSTROM)
            if spec.hkl is not None:
                name, value, value_err = lattice_parameter(d, d_err, spec.hkl, spec.lattice,
                                                           spec.a, spec.c)
                values[name] = (value, value_err, ANGSTROM)
        arrays = {"t": np.zeros(1)}
        units = {"t": "s"}
        for name, (value, sigma, unit) in values.items():
            arrays[name] = np.array([value])
            arrays[f"{name}_err"] = np.array([sigma])
            if unit:
                units[name] = units[f"{name}_err"] = unit
        arrays["chi2_red"] = np.array([info[CHI2_RED]])
        arrays["iterations"] = np.array([int(info[ITERATIONS])], dtype=np.int64)
        arrays["cold_start"] = np.array([int(info[COLD_START])], dtype=np.int64)
        meta = {"tags": {"peak": spec.name}, "shape": spec.shape, "x": x_name,
                "source_seq": frame.seq}
        if spec.hkl is not None:
            meta["hkl"] = list(spec.hkl)
        return self.emit(frame, "result.peak", frame.t0_ns, arrays, units, meta)
