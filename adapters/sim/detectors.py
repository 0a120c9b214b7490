"""Detectors of the simulated battery cell: 2-D area detector geometry, 1-D XRD and Raman spectra.

Pure functions, arrays in and arrays out; the only I/O is parsing a pyFAI PONI file.

Geometry (pyFAI convention, Ashiotis et al., J. Appl. Cryst. 48 (2015) 510). Pixel (i, j) has its
centre at p1 = (i + 0.5)·pixel1 − poni1 (rows, slow axis) and p2 = (j + 0.5)·pixel2 − poni2
(columns, fast axis), in the detector plane at p3 = distance from the sample. The lab position is
(t1, t2, t3) = R3·R2·R1·(p1, p2, distance), with

    R1 = [[1, 0, 0], [0, c1, s1], [0, −s1, c1]]      (about axis 1, left-handed)
    R2 = [[c2, 0, −s2], [0, 1, 0], [s2, 0, c2]]      (about axis 2, left-handed)
    R3 = [[c3, −s3, 0], [s3, c3, 0], [0, 0, 1]]      (about the beam, right-handed)

and 2θ = arctan2(√(t1² + t2²), t3), χ = arctan2(t1, t2). In closed form
t3 = p1·sin(rot2) − p2·cos(rot2)·sin(rot1) + distance·cos(rot1)·cos(rot2); rot3 does not change 2θ.
PONI v2.1 ``orientation`` 1/2/4 flips the pixel index along both/rows/columns (3 = none, pyFAI's
default). Dioptas shows images flipped vertically, so a frame read with tifffile matches
``np.flipud`` of these maps (equivalently orientation 2).

Electrode physics, as a function of the full-cell state of charge ``soc`` (0..1; charging lithiates
graphite and delithiates NMC). Graphite lithiation x in LixC6 is taken equal to soc (N/P balancing
ignored). Staging (Dahn, Phys. Rev. B 44 (1991) 9170; Ohzuku et al., J. Electrochem. Soc. 140 (1993)
2490; Schweidler et al., J. Phys. Chem. C 122 (2018) 8829):

- x 0 -> 0.33: dilute stage 1, then stages 4 (LiC36, ~3.44 Å), 3 (LiC27, ~3.47 Å) and 2L (LiC18,
  3.50 Å). The (00l) peak shifts nearly continuously (random staging), so it is one phase here.
- x 0.33 -> 0.5: stage 2L + stage 2 (LiC12, 3.51 Å), lever rule.
- x 0.5 -> 1: stage 2 + stage 1 (LiC6, 3.70 Å), lever rule.

NMC811 c lattice (Märker et al., Chem. Mater. 31 (2019) 2545): 14.20 Å at soc 0, rising as
c0 + Δ·sin(π/2·soc/0.7) to 14.47 Å at soc 0.7 (Li ≈ 0.35-0.4), then collapsing as
cmax − Δ'·((soc − 0.7)/0.3)² to 14.00 Å at soc 1 (H2 -> H3). These are two monotonic pieces, and
the slope is continuous at 0.7. The a lattice shrinks from 2.872 to 2.817 Å as
a0 − Δa·(1 − (1 − soc)²).
Current collectors: Al a = 4.0495 Å, Cu a = 3.6149 Å (fcc). Relative peak areas are illustrative
(no structure factors, Lorentz-polarization, texture or absorption); d-spacings carry the physics.

Raman (Inaba et al., J. Electrochem. Soc. 142 (1995) 20; Sole et al., Faraday Discuss. 172 (2014)
223): the graphite G band (E2g2) is at 1580 cm-1. From stage 4 to stage 2 it splits into E2g2(i)
(interior layers, 1580 -> 1575) and E2g2(b) (bounding layers, 1600). The weight of (b) is the
bounding-layer fraction 2/n of stage n. G(b) scales with the stage-2 fraction and vanishes for LiC6.
The D band (1350) follows G. The 2D band (2700) disappears as layers become bounding. The
electrolyte is 1 M LiPF6 in EC/DMC:
- EC: 716 and 893 cm-1 free, 728 and 904 cm-1 Li+-solvated (Hyodo & Okabayashi, Electrochim. Acta
  34 (1989) 1551), C=O at 1774 cm-1.
- PF6-: 741 cm-1.
- DMC: 917 cm-1 free, 933 cm-1 solvated.
All bands sit on a broad positive fluorescence baseline.

Profiles are area-normalised pseudo-Voigts, η·L + (1 − η)·G, with one FWHM.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np

_LN2 = math.log(2.0)
_G_NORM = 2.0 * math.sqrt(_LN2 / math.pi)  # Gaussian of unit area and FWHM 1 at its centre
_L_NORM = 2.0 / math.pi                     # Lorentzian of unit area and FWHM 1 at its centre
_G_CUT = 6.0                                # Gaussian part skipped beyond 6 FWHM (< 1e-43)

# pyFAI detector names (normalised) -> (pixel1, pixel2, max_shape); used when a PONI file names
# the detector instead of giving pixel sizes.
_PILATUS, _EIGER = 172e-6, 75e-6
_DETECTORS: dict[str, tuple[float, float, tuple[int, int]]] = {
    "pilatus100k": (_PILATUS, _PILATUS, (195, 487)),
    "pilatus200k": (_PILATUS, _PILATUS, (407, 487)),
    "pilatus300k": (_PILATUS, _PILATUS, (619, 487)),
    "pilatus300kw": (_PILATUS, _PILATUS, (195, 1475)),
    "pilatus1m": (_PILATUS, _PILATUS, (1043, 981)),
    "pilatus2m": (_PILATUS, _PILATUS, (1679, 1475)),
    "pilatus6m": (_PILATUS, _PILATUS, (2527, 2463)),
    "eiger500k": (_EIGER, _EIGER, (514, 1030)),
    "eiger1m": (_EIGER, _EIGER, (1065, 1030)),
    "eiger4m": (_EIGER, _EIGER, (2167, 2070)),
    "eiger9m": (_EIGER, _EIGER, (3269, 3110)),
    "eiger16m": (_EIGER, _EIGER, (4371, 4150)),
}


def _detector_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class PoniGeometry:
    """pyFAI geometry of a flat detector; lengths and wavelength in metres, angles in radians."""

    distance: float
    poni1: float
    poni2: float
    rot1: float
    rot2: float
    rot3: float
    wavelength: float
    pixel1: float             # slow axis (rows, Y)
    pixel2: float             # fast axis (columns, X)
    shape: tuple[int, int]    # (rows, cols)
    orientation: int = 3      # PONI v2.1: 3 = pyFAI default; 1, 2, 4 flip both, rows, columns

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        for name in ("distance", "wavelength", "pixel1", "pixel2"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PoniGeometry.{name} must be > 0, got {getattr(self, name)!r}")
        if min(self.shape) <= 0:
            raise ValueError(f"PoniGeometry.shape must be positive, got {self.shape}")
        if self.orientation not in (0, 1, 2, 3, 4):
            raise ValueError(f"PoniGeometry.orientation must be 0..4, got {self.orientation}")

    @classmethod
    def from_poni_file(cls, path: str | Path,
                       shape: tuple[int, int] | None = None) -> PoniGeometry:
        """Parse a pyFAI PONI file (v1: PixelSize1/2; v2/2.1: Detector + Detector_config JSON).

        ``shape`` defaults to Detector_config ``max_shape`` or the named detector's shape.
        """
        entries: dict[str, str] = {}
        for line in Path(path).read_text().splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            entries[key.strip().lower()] = value.strip()
        return cls.from_dict(entries, shape)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any],
                  shape: tuple[int, int] | None = None) -> PoniGeometry:
        """Build from a PONI-like mapping: pyFAI's ``as_dict`` form, PONI file keys, or our fields.

        Keys are case-insensitive; ``dist``/``distance``, ``pixelsize1``/``pixel1`` and a
        ``detector_config`` (dict or JSON string) with ``pixel1``, ``pixel2``, ``max_shape`` and
        ``orientation`` are accepted.
        """
        d = {str(k).lower(): v for k, v in d.items()}
        cfg = d.get("detector_config") or {}
        if isinstance(cfg, str):
            cfg = json.loads(cfg)
        name = str(d.get("detector", "Detector"))
        known = _DETECTORS.get(_detector_key(name), (None, None, None))
        spline = d.get("splinefile", cfg.get("splinefile"))
        if spline not in (None, "", "None", "none"):
            raise ValueError(f"spline-distorted detectors are not supported (SplineFile {spline})")
        values = {
            "distance": _first(d.get("dist"), d.get("distance")),
            "poni1": d.get("poni1"), "poni2": d.get("poni2"),
            "rot1": d.get("rot1", 0.0), "rot2": d.get("rot2", 0.0), "rot3": d.get("rot3", 0.0),
            "wavelength": d.get("wavelength"),
            "pixel1": _first(cfg.get("pixel1"), d.get("pixel1"), d.get("pixelsize1"), known[0]),
            "pixel2": _first(cfg.get("pixel2"), d.get("pixel2"), d.get("pixelsize2"), known[1]),
        }
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise ValueError(f"PONI geometry lacks {', '.join(missing)} (detector {name!r})")
        shape = _first(shape, d.get("shape"), cfg.get("max_shape"), known[2])
        if shape is None:
            raise ValueError(f"PONI geometry needs a shape: detector {name!r} has no known shape")
        orientation = int(_first(cfg.get("orientation"), d.get("orientation"), 3))
        return cls(**{k: float(v) for k, v in values.items()}, shape=tuple(shape),
                   orientation=orientation)

    def to_dict(self) -> dict[str, Any]:
        """pyFAI ``PoniFile.as_dict`` form (poni_version 2.1); ``from_dict`` reads it back."""
        return {"poni_version": 2.1, "detector": "Detector",
                "detector_config": {"pixel1": self.pixel1, "pixel2": self.pixel2,
                                    "max_shape": list(self.shape),
                                    "orientation": self.orientation},
                "dist": self.distance, "poni1": self.poni1, "poni2": self.poni2,
                "rot1": self.rot1, "rot2": self.rot2, "rot3": self.rot3,
                "wavelength": self.wavelength}


# ---------------------------------------------------------------------------------------------
# Detector geometry
# ---------------------------------------------------------------------------------------------

def _plane_positions(geom: PoniGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre positions relative to the PONI: p1 as a column, p2 as a row (broadcastable)."""
    r1 = np.arange(geom.shape[0], dtype=np.float64)
    r2 = np.arange(geom.shape[1], dtype=np.float64)
    if geom.orientation in (1, 2):
        r1 = r1[::-1]
    if geom.orientation in (1, 4):
        r2 = r2[::-1]
    p1 = (r1 + 0.5) * geom.pixel1 - geom.poni1
    p2 = (r2 + 0.5) * geom.pixel2 - geom.poni2
    return p1[:, None], p2[None, :]


def rotation_matrix(geom: PoniGeometry) -> np.ndarray:
    """pyFAI's R3·R2·R1 (detector frame -> lab frame), see the module docstring."""
    c1, s1 = math.cos(geom.rot1), math.sin(geom.rot1)
    c2, s2 = math.cos(geom.rot2), math.sin(geom.rot2)
    c3, s3 = math.cos(geom.rot3), math.sin(geom.rot3)
    r1 = np.array([[1.0, 0.0, 0.0], [0.0, c1, s1], [0.0, -s1, c1]])
    r2 = np.array([[c2, 0.0, -s2], [0.0, 1.0, 0.0], [s2, 0.0, c2]])
    r3 = np.array([[c3, -s3, 0.0], [s3, c3, 0.0], [0.0, 0.0, 1.0]])
    return r3 @ r2 @ r1


def _lab_positions(geom: PoniGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t1, t2, t3) of every pixel centre in metres; t3 along the beam."""
    p1, p2 = _plane_positions(geom)
    m = rotation_matrix(geom)
    return tuple(m[k, 0] * p1 + m[k, 1] * p2 + m[k, 2] * geom.distance for k in range(3))


def two_theta_map(geom: PoniGeometry) -> np.ndarray:
    """Per-pixel 2θ in degrees at pixel centres: arctan2(√(t1² + t2²), t3), see module docstring."""
    t1, t2, t3 = _lab_positions(geom)
    return np.degrees(np.arctan2(np.hypot(t1, t2), t3))


def chi_map(geom: PoniGeometry) -> np.ndarray:
    """Per-pixel azimuth χ = arctan2(t1, t2) in degrees (pyFAI's chi, discontinuity at ±180°)."""
    t1, t2, _ = _lab_positions(geom)
    return np.degrees(np.arctan2(t1, t2))


def solid_angle_map(geom: PoniGeometry) -> np.ndarray:
    """Relative solid angle per pixel, cos³ of the incidence angle (1 at the PONI), as pyFAI."""
    p1, p2 = _plane_positions(geom)
    return (geom.distance / np.sqrt(geom.distance ** 2 + p1 ** 2 + p2 ** 2)) ** 3


def polarization_map(geom: PoniGeometry, factor: float = 0.99) -> np.ndarray:
    """pyFAI's polarization factor ½(1 + cos²2θ − f·cos2χ·sin²2θ); f = 1 is a horizontal beam.

    With cos²2θ = t3²/|t|² and cos2χ·sin²2θ = (t2² − t1²)/|t|² it needs no trigonometry.
    """
    t1, t2, t3 = (t * t for t in _lab_positions(geom))
    return 0.5 * (1.0 + (t3 - factor * (t2 - t1)) / (t1 + t2 + t3))


def pilatus_mask(shape: tuple[int, int], module: tuple[int, int] = (195, 487),
                 gap: tuple[int, int] = (17, 7)) -> np.ndarray:
    """True at the inter-module gaps of a DECTRIS Pilatus (or Eiger, with its module/gap).

    The Pilatus 1M is (1043, 981) = 5 × 2 modules of 195 × 487 with 17-row and 7-column gaps.
    If ``shape`` only tiles with module and gap transposed (a detector mounted turned by 90°),
    the transposed layout is used.
    """
    def tiles(n: int, m: int, g: int) -> bool:
        return (n + g) % (m + g) == 0

    rows, cols = shape
    if not (tiles(rows, module[0], gap[0]) and tiles(cols, module[1], gap[1])):
        if tiles(rows, module[1], gap[1]) and tiles(cols, module[0], gap[0]):
            module, gap = module[::-1], gap[::-1]
        else:
            raise ValueError(f"shape {shape} is not a whole number of {module} modules "
                             f"with {gap} gaps")
    row_gap = np.arange(rows) % (module[0] + gap[0]) >= module[0]
    col_gap = np.arange(cols) % (module[1] + gap[1]) >= module[1]
    return row_gap[:, None] | col_gap[None, :]


# ---------------------------------------------------------------------------------------------
# Profiles and Bragg's law
# ---------------------------------------------------------------------------------------------

def bragg_two_theta(d_angstrom: np.ndarray | float, wavelength_m: float) -> np.ndarray | float:
    """2θ in degrees from d (Å): λ = 2d·sinθ; NaN where λ > 2d (reflection unreachable)."""
    s = wavelength_m * 1e10 / (2.0 * np.asarray(d_angstrom, dtype=np.float64))
    return np.degrees(2.0 * np.arcsin(np.where(s <= 1.0, s, np.nan)))


def d_from_two_theta(two_theta_deg: np.ndarray | float, wavelength_m: float) -> np.ndarray | float:
    """d in Å from 2θ in degrees (inverse of ``bragg_two_theta``)."""
    return wavelength_m * 1e10 / (2.0 * np.sin(np.radians(np.asarray(two_theta_deg)) / 2.0))


def pseudo_voigt(x: np.ndarray, center: float, fwhm: float, eta: float, area: float) -> np.ndarray:
    """Area-normalised pseudo-Voigt: area·(η·L + (1 − η)·G), L and G of unit area and same FWHM."""
    u2 = 4.0 * ((np.asarray(x, dtype=np.float64) - center) / fwhm) ** 2
    return area / fwhm * (eta * _L_NORM / (1.0 + u2) + (1.0 - eta) * _G_NORM * np.exp(-_LN2 * u2))


@nb.njit(cache=True, error_model="numpy")
def _pv_sum(x: np.ndarray, peaks: np.ndarray, scale: float, out: np.ndarray) -> None:
    """Add ``scale``·pseudo-Voigts at x into out; ``peaks`` rows are (centre, FWHM, eta, area),
    NaN centres are skipped.

    The Lorentzian loop vectorises. The Gaussian is evaluated within 6 FWHM only, found by
    bisection when x is ascending.
    """
    n = x.size
    ascending = True
    for i in range(1, n):
        if x[i] < x[i - 1]:
            ascending = False
            break
    for k in range(peaks.shape[0]):
        c, w, eta, a = peaks[k, 0], peaks[k, 1], peaks[k, 2], scale * peaks[k, 3]
        if not np.isfinite(c) or a == 0.0:
            continue
        lor = a * eta * _L_NORM / w
        gau = a * (1.0 - eta) * _G_NORM / w
        s = 4.0 / (w * w)
        for i in range(n):
            d = x[i] - c
            out[i] += lor / (1.0 + s * d * d)
        if gau == 0.0:
            continue
        cut = _G_CUT * w
        lo, hi = 0, n
        if ascending:
            lo, hi = np.searchsorted(x, c - cut), np.searchsorted(x, c + cut)
        for i in range(lo, hi):
            d = x[i] - c
            if abs(d) < cut:
                out[i] += gau * math.exp(-_LN2 * s * d * d)


def _unit_height_area(fwhm: np.ndarray | float, eta: np.ndarray | float) -> np.ndarray | float:
    """Area of a pseudo-Voigt whose maximum is 1."""
    return fwhm / (eta * _L_NORM + (1.0 - eta) * _G_NORM)


def _peak_table(centers: Any, fwhms: Any, etas: Any, areas: Any) -> np.ndarray:
    """(n, 4) rows of (centre, FWHM, eta, area) for ``_pv_sum``; scalars broadcast."""
    table = np.empty((np.size(centers), 4))
    table[:, 0], table[:, 1], table[:, 2], table[:, 3] = centers, fwhms, etas, areas
    return table


def _profile(x: np.ndarray, base: float, *tables: tuple[np.ndarray, float]) -> np.ndarray:
    """base + Σ scale·(pseudo-Voigts of a peak table) over (table, scale) pairs, at x."""
    out = np.full(np.shape(x), base, dtype=np.float64)
    xs = np.ascontiguousarray(x, dtype=np.float64)
    for table, scale in tables:
        _pv_sum(xs, table, scale, out)
    return out


def _frozen(table: np.ndarray) -> np.ndarray:
    table.flags.writeable = False
    return table


# ---------------------------------------------------------------------------------------------
# Electrode structure versus state of charge
# ---------------------------------------------------------------------------------------------

# Graphite single-phase region (dilute stage 1 -> stage 4 -> 3 -> 2L): x, d002 (Å), bounding-layer
# fraction (2/n for stage n; Raman E2g2(b) weight).
_STAGING_X = np.array([0.0, 0.04, 0.17, 0.22, 0.33])
_STAGING_D = np.array([3.355, 3.365, 3.44, 3.47, 3.50])
_STAGING_FB = np.array([0.0, 0.0, 0.5, 2.0 / 3.0, 1.0])
_X_2L, _X_2 = 0.33, 0.5                      # LiC18 (2L) and LiC12 (stage 2) compositions
_D_2L, _D_2, _D_1 = 3.50, 3.51, 3.70         # d of stage 2L, 2 (LiC12), 1 (LiC6), Å


def _clip_soc(soc: float) -> float:
    return min(max(float(soc), 0.0), 1.0)


def graphite_d002(soc: float) -> list[tuple[float, float]]:
    """Graphite (002)-type phases at ``soc``: [(d in Å, weight), ...], weights summing to 1.

    One phase up to x = 0.33 (continuous shift through dilute stage 1, stages 4, 3, 2L), then
    lever-rule coexistence 2L + 2 (x 0.33-0.5) and 2 + 1 (x 0.5-1). d of the dominant phase
    never decreases with soc.
    """
    x = _clip_soc(soc)
    if x <= _X_2L:
        return [(float(np.interp(x, _STAGING_X, _STAGING_D)), 1.0)]
    if x <= _X_2:
        f = (x - _X_2L) / (_X_2 - _X_2L)
        return [(_D_2L, 1.0 - f), (_D_2, f)]
    f = (x - _X_2) / (1.0 - _X_2)
    return [(_D_2, 1.0 - f), (_D_1, f)]


def graphite_dominant_d002(soc: float) -> float:
    """d (Å) of the graphite phase with the largest weight (the later stage on a tie)."""
    return max(graphite_d002(soc), key=lambda p: (p[1], p[0]))[0]


_NMC_C0, _NMC_CMAX, _NMC_C1, _NMC_SOC_CMAX = 14.20, 14.47, 14.00, 0.7
_NMC_A0, _NMC_A1 = 2.872, 2.817


def nmc_lattice(soc: float) -> tuple[float, float]:
    """NMC811 hexagonal (a, c) in Å at ``soc`` (module docstring for the pieces)."""
    s = _clip_soc(soc)
    if s <= _NMC_SOC_CMAX:
        c = _NMC_C0 + (_NMC_CMAX - _NMC_C0) * math.sin(0.5 * math.pi * s / _NMC_SOC_CMAX)
    else:
        c = _NMC_CMAX - (_NMC_CMAX - _NMC_C1) * ((s - _NMC_SOC_CMAX) / (1.0 - _NMC_SOC_CMAX)) ** 2
    a = _NMC_A0 - (_NMC_A0 - _NMC_A1) * (1.0 - (1.0 - s) ** 2)
    return a, c


def nmc_d003(soc: float) -> float:
    """d(003) = c/3 of NMC811 in Å: 4.733 at soc 0, 4.823 at soc 0.7, 4.667 at soc 1."""
    return nmc_lattice(soc)[1] / 3.0


def _hex_d(a: float, c: float, hkl: tuple[int, int, int]) -> float:
    h, k, el = hkl
    return 1.0 / math.sqrt(4.0 / 3.0 * (h * h + h * k + k * k) / (a * a) + el * el / (c * c))


# Fixed reflections: (label, d in Å, relative area). fcc d = a/√(h²+k²+l²).
_AL_A, _CU_A = 4.0495, 3.6149
_FIXED_PEAKS = (("Al(111)", _AL_A / math.sqrt(3.0), 0.4), ("Al(200)", _AL_A / 2.0, 0.2),
                ("Cu(111)", _CU_A / math.sqrt(3.0), 0.5), ("Cu(200)", _CU_A / 2.0, 0.25))
_NMC_PEAKS = (((0, 0, 3), 1.0), ((1, 0, 1), 0.35), ((1, 0, 4), 0.7))
_GRAPHITE_AREA = 1.5


def xrd_peaks(soc: float) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Reflections of the cell at ``soc``: (d in Å, relative area, labels); the ground truth."""
    a, c = nmc_lattice(soc)
    peaks = [(f"graphite d002 {d:.3f}", d, _GRAPHITE_AREA * w) for d, w in graphite_d002(soc)]
    peaks += [("NMC({}{}{})".format(*hkl), _hex_d(a, c, hkl), area) for hkl, area in _NMC_PEAKS]
    peaks += _FIXED_PEAKS
    labels, d, area = zip(*peaks, strict=True)
    return np.array(d), np.array(area), labels


# Background in Q = 4π·sinθ/λ (Å⁻¹), as Lorentzians of height 1 and 0.5: the amorphous
# electrolyte/separator hump at Q = 1.5 (FWHM from Q 1.1 to 1.9) and a low-angle tail at 0
# (air scatter, half width Q = 0.4), on a floor of 0.25. Q maps to 2θ by Bragg's law, d = 2π/Q.
_XRD_BKG_D = 2.0 * np.pi / np.array([1.5, 1.1, 1.9, 0.4])
_XRD_FLOOR = 0.25


@functools.lru_cache(maxsize=64)
def _xrd_background_table(wavelength_m: float) -> np.ndarray:
    hump, lo, hi, tail = bragg_two_theta(_XRD_BKG_D, wavelength_m)
    fwhm = np.array([hi - lo, 2.0 * tail])
    return _frozen(_peak_table([hump, 0.0], fwhm, 1.0,
                               np.array([1.0, 0.5]) * _unit_height_area(fwhm, 1.0)))


def xrd_background(two_theta_deg: np.ndarray, wavelength_m: float) -> np.ndarray:
    """Smooth background shape (floor 0.25, hump of height ~1 at Q = 1.5 Å⁻¹, low-angle tail)."""
    return _profile(two_theta_deg, _XRD_FLOOR, (_xrd_background_table(float(wavelength_m)), 1.0))


def xrd_pattern(two_theta_deg: np.ndarray, soc: float, wavelength_m: float, *, scale: float = 1.0,
                background: float = 0.5, fwhm_deg: float = 0.08, eta: float = 0.5) -> np.ndarray:
    """1-D diffraction pattern of the cell at ``soc``: graphite staging (00l) peaks, NMC (003),
    (101), (104), Al and Cu foil reflections on ``background``·``xrd_background``, times ``scale``.

    Peaks have area ``scale``·(relative area) in intensity·degree, FWHM ``fwhm_deg`` and
    Lorentz fraction ``eta``; reflections beyond 2θ = 180° are left out.
    """
    d, area, _ = xrd_peaks(soc)
    peaks = _peak_table(bragg_two_theta(d, wavelength_m), fwhm_deg, eta, area)
    bkg = scale * background
    return _profile(two_theta_deg, bkg * _XRD_FLOOR, (peaks, scale),
                    (_xrd_background_table(float(wavelength_m)), bkg))


# ---------------------------------------------------------------------------------------------
# Raman
# ---------------------------------------------------------------------------------------------

# Electrolyte bands (1 M LiPF6 in EC/DMC): centre cm-1, FWHM cm-1, relative height.
_ELECTROLYTE = np.array([
    [716.0, 9.0, 0.50],    # EC ring bending, free
    [728.0, 10.0, 0.15],   # EC ring bending, Li+-solvated
    [741.0, 8.0, 0.60],    # PF6- symmetric P-F stretch
    [893.0, 9.0, 1.00],    # EC ring breathing, free
    [904.0, 10.0, 0.30],   # EC ring breathing, Li+-solvated
    [917.0, 10.0, 0.80],   # DMC O-CH3 stretch, free
    [933.0, 11.0, 0.25],   # DMC O-CH3 stretch, Li+-solvated
    [1774.0, 15.0, 0.30],  # EC C=O stretch
])
_RAMAN_LABELS = ("G E2g2(i)", "G E2g2(b)", "D", "2D", "EC 716", "EC-Li 728", "PF6 741", "EC 893",
                 "EC-Li 904", "DMC 917", "DMC-Li 933", "EC C=O 1774")
_RAMAN_ETA = 0.7
_G_POS, _G_I_SHIFT, _G_B_POS = 1580.0, -5.0, 1600.0
_G_FWHM, _G_B_FWHM, _D_POS, _D_FWHM, _2D_POS, _2D_FWHM = 20.0, 25.0, 1350.0, 45.0, 2700.0, 60.0
_G_HEIGHT, _D_REL, _2D_REL = 1.5, 0.25, 0.4
# Fluorescence: a floor plus a broad Lorentzian hump (height 1.5 at 2800 cm-1, FWHM 3000).
_FLUO_FLOOR, _FLUO_POS, _FLUO_FWHM, _FLUO_HEIGHT = 0.3, 2800.0, 3000.0, 1.5


def raman_bands(soc: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Raman bands at ``soc``: (centre cm-1, FWHM cm-1, relative peak height, labels).

    The G band weights follow the staging of ``graphite_d002``.
    """
    x = _clip_soc(soc)
    f_bound = float(np.interp(x, _STAGING_X, _STAGING_FB))     # bounding-layer fraction
    active = 1.0 if x <= _X_2 else (1.0 - x) / (1.0 - _X_2)    # stage-2 fraction; LiC6 silent
    g = _G_HEIGHT * active
    graphite = np.array([
        [_G_POS + _G_I_SHIFT * f_bound, _G_FWHM, g * (1.0 - f_bound)],   # E2g2(i) / pristine G
        [_G_B_POS, _G_B_FWHM, g * f_bound],                               # E2g2(b)
        [_D_POS, _D_FWHM, g * _D_REL],                                    # D
        [_2D_POS, _2D_FWHM, g * _2D_REL * (1.0 - f_bound)],               # 2D
    ])
    table = np.vstack([graphite, _ELECTROLYTE])
    return table[:, 0], table[:, 1], table[:, 2], _RAMAN_LABELS


_FLUO_TABLE = _frozen(_peak_table(_FLUO_POS, _FLUO_FWHM, 1.0,
                                   _FLUO_HEIGHT * _unit_height_area(_FLUO_FWHM, 1.0)))


def raman_baseline(shift_cm: np.ndarray) -> np.ndarray:
    """Broad fluorescence baseline relative to the pristine G height: 0.3 + a Lorentzian hump of
    height 1.5 at 2800 cm-1, FWHM 3000 cm-1; positive, rising across 200-3000 cm-1."""
    return _profile(shift_cm, _FLUO_FLOOR, (_FLUO_TABLE, 1.0))


def raman_spectrum(shift_cm: np.ndarray, soc: float, rng: np.random.Generator | None = None, *,
                   counts: float = 1000.0, fluorescence: float = 1.0) -> np.ndarray:
    """Raman spectrum (counts) at ``soc``: graphite D/G/2D and electrolyte bands on
    ``fluorescence``·``raman_baseline``; ``counts`` is the height of the pristine G band.
    With ``rng``, Poisson shot noise is applied."""
    centers, fwhms, heights, _ = raman_bands(soc)
    bands = _peak_table(centers, fwhms, _RAMAN_ETA, heights * _unit_height_area(fwhms, _RAMAN_ETA))
    fluo = counts * fluorescence
    spec = _profile(shift_cm, fluo * _FLUO_FLOOR, (bands, counts), (_FLUO_TABLE, fluo))
    return spec if rng is None else rng.poisson(spec).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Forward projection of a 1-D pattern onto a 2-D detector
# ---------------------------------------------------------------------------------------------

@nb.njit(cache=True)
def _interp_uniform(xq: np.ndarray, x0: float, dx: float, y: np.ndarray,
                    out: np.ndarray) -> None:
    """np.interp(xq, x0 + dx·arange(n), y) for a uniform axis, edge values held (1-D arrays)."""
    last = y.size - 1
    for i in range(xq.size):
        u = (xq[i] - x0) / dx
        if u <= 0.0:
            out[i] = y[0]
        elif u >= last:
            out[i] = y[last]
        else:
            j = int(u)
            out[i] = y[j] + (u - j) * (y[j + 1] - y[j])


def _uniform_step(axis: np.ndarray) -> float | None:
    """The step of an increasing axis if it is uniform to 1e-6 of a step, else None."""
    n = axis.size
    if n < 2:
        return None
    dx = (axis[-1] - axis[0]) / (n - 1)
    ok = dx > 0 and np.max(np.abs(axis - (axis[0] + dx * np.arange(n)))) <= 1e-6 * dx
    return float(dx) if ok else None


def project_pattern(tth_axis_deg: np.ndarray, intensity: np.ndarray, tth_map_deg: np.ndarray,
                    mask: np.ndarray | None, rng: np.random.Generator | None, *,
                    polarization: np.ndarray | None = None,
                    solid_angle: np.ndarray | None = None) -> np.ndarray:
    """Forward-project a 1-D pattern onto a detector; returns int32 counts, masked pixels −1.

    Each pixel gets the pattern linearly interpolated at its 2θ (values beyond the axis ends are
    held), times the optional per-pixel ``polarization`` and ``solid_angle`` factors (see
    ``polarization_map``, ``solid_angle_map``). Then it is rounded, or drawn from a Poisson law
    when ``rng`` is given. ``tth_axis_deg`` must increase; uniform axes take the numba path.
    """
    axis = np.ascontiguousarray(tth_axis_deg, dtype=np.float64)
    y = np.ascontiguousarray(intensity, dtype=np.float64)
    tth = np.ascontiguousarray(tth_map_deg, dtype=np.float64)
    dx = _uniform_step(axis)
    if dx is None:
        lam = np.interp(tth, axis, y)
    else:
        lam = np.empty(tth.shape)
        _interp_uniform(tth.reshape(-1), axis[0], dx, y, lam.reshape(-1))
    for factor in (polarization, solid_angle):
        if factor is not None:
            lam *= factor
    np.clip(lam, 0.0, np.iinfo(np.int32).max, out=lam)
    out = (rng.poisson(lam) if rng is not None else np.rint(lam)).astype(np.int32)
    if mask is not None:
        out[np.asarray(mask, dtype=bool)] = -1
    return out
