"""Azimuthal integration: 2-D area-detector frames (``image``) to 1-D patterns (``pattern``).

The geometry is a pyFAI PONI (file v1/v2/v2.1, inline mapping, or the frame's ``meta["poni"]``;
parsed by ``adapters.sim.detectors.PoniGeometry``). Per geometry, frame shape, mask and axis a
sparse pixel-to-bin table is built once (pyFAI's bounding-box pixel splitting, or none) with the
per-bin normalisation Σ w·(solid angle × polarisation); per frame one sparse matrix-vector pass
runs (``kernels.azimuthal.table_integrate``). The result is pyFAI's ``integrate1d``:
I = Σ w·counts / Σ w·solid_angle·polarisation over the valid pixels, 0 where a bin has none, on
the bin centres of ``npt`` bins from 0 (or the lowest pixel edge) to the highest pixel edge.

Emits one ``pattern`` frame per image: arrays ``two_theta`` (deg) or ``q`` (nm^-1), and
``intensity`` (counts), both float32; meta ``wavelength_m`` and ``derived_from`` = "image".
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numba as nb
import numpy as np
from pydantic import Field, model_validator

from adapters.sim.detectors import (
    PoniGeometry,
    pilatus_mask,
    polarization_map,
    solid_angle_map,
    two_theta_map,
)
from stream.frame import Frame, FrameError

from .base import Processor, ProcessorConfig
from .kernels.azimuthal import balanced_chunks, bbox_table, table_integrate

Unit = Literal["2th_deg", "q_nm^-1"]
_EPS32 = 1.0 + float(np.finfo(np.float32).eps)   # pyFAI's calc_upper_bound factor
# module layout (pixels) and gaps of the DECTRIS detectors named by ``detector_gaps``
_GAP_LAYOUTS = {"pilatus": ((195, 487), (17, 7)), "eiger": ((514, 1030), (37, 10))}


@dataclass(frozen=True)
class AxisSpec:
    """What fixes a table besides geometry and mask (pyFAI ``integrate1d`` arguments)."""

    npt: int
    unit: Unit = "2th_deg"
    radial_range: tuple[float, float] | None = None   # in ``unit``; None: the pixels' extent
    split: Literal["bbox", "no"] = "bbox"
    solid_angle: bool = True
    polarization_factor: float | None = None          # None: no polarisation correction


def radial_maps(geom: PoniGeometry, unit: Unit, split: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel radial position and bounding-box half-extent in pyFAI's internal unit (2θ in
    rad, q in nm^-1): max |corner − centre| over the 4 pixel corners, zeros without splitting."""
    def to_unit(tth_deg: np.ndarray) -> np.ndarray:
        tth = np.radians(tth_deg)
        return tth if unit == "2th_deg" else 4e-9 * math.pi * np.sin(0.5 * tth) / geom.wavelength

    centre = to_unit(two_theta_map(geom))
    if not split:
        return centre, np.zeros_like(centre)
    # corners are the centres of a grid one larger, shifted by half a pixel (any orientation)
    corner_geom = dataclasses.replace(geom, shape=(geom.shape[0] + 1, geom.shape[1] + 1),
                                      poni1=geom.poni1 + 0.5 * geom.pixel1,
                                      poni2=geom.poni2 + 0.5 * geom.pixel2)
    corner = to_unit(two_theta_map(corner_geom))
    delta = np.abs(corner[:-1, :-1] - centre)
    for c in (corner[1:, :-1], corner[:-1, 1:], corner[1:, 1:]):
        np.maximum(delta, np.abs(c - centre), out=delta)
    return centre, delta


class RadialTable:
    """The pixel-to-bin table of one geometry, mask and axis; ``integrate`` runs per frame."""

    def __init__(self, geom: PoniGeometry, spec: AxisSpec, mask: np.ndarray | None = None):
        if spec.npt < 1:
            raise ValueError(f"npt must be >= 1, got {spec.npt}")
        self.geom, self.spec, self.shape = geom, spec, geom.shape
        pos, delta = radial_maps(geom, spec.unit, spec.split == "bbox")
        valid = np.ones(geom.shape, dtype=bool) if mask is None else ~np.asarray(mask, bool)
        if valid.shape != geom.shape:
            raise ValueError(f"mask shape {valid.shape} does not match the detector {geom.shape}")
        scale = math.degrees(1.0) if spec.unit == "2th_deg" else 1.0
        if spec.radial_range is not None:
            lo, hi = sorted(x / scale for x in spec.radial_range)
        else:   # pyFAI calc_boundaries: the valid pixels' extent, never below 0
            lo = max(0.0, float((pos - delta)[valid].min())) if valid.any() else 0.0
            hi = max(0.0, float((pos + delta)[valid].max())) if valid.any() else 1.0
        hi = hi * _EPS32 if hi > 0 else hi / _EPS32
        width = (hi - lo) / spec.npt
        self.first, self.count, self.weights = bbox_table(
            pos.ravel(), delta.ravel(), valid.ravel(), lo, width, spec.npt)
        self.radial = (lo + (np.arange(spec.npt) + 0.5) * width) * scale
        norm = np.ones(geom.shape)
        if spec.solid_angle:
            norm *= solid_angle_map(geom)
        if spec.polarization_factor is not None:
            norm *= polarization_map(geom, spec.polarization_factor)
        self.pixel_norm = norm.astype(np.float32).ravel()
        self.chunks = balanced_chunks(self.count, 4 * nb.get_num_threads())
        # Σ w·norm and Σ w per bin are fixed by the geometry: frames need not read them again
        self.bin_norm = self._pass(self.pixel_norm, -np.inf)[0]
        self.bin_weight = self._pass(np.ones(self.pixel_norm.size, np.float32), -np.inf)[0]

    def _pass(self, flat: np.ndarray,
              min_valid: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return table_integrate(self.first, self.count, self.weights, flat, self.pixel_norm,
                               min_valid, self.spec.npt, *self.chunks)

    @property
    def nnz(self) -> int:
        return int(self.weights.size)

    def integrate(self, image: np.ndarray, min_valid: float = -np.inf) -> np.ndarray:
        """Mean corrected intensity per bin (float64); pixels below ``min_valid`` and NaN are
        left out, bins without a valid pixel are 0 (pyFAI's ``empty``)."""
        return self.integrate_count(image, min_valid)[0]

    def integrate_count(self, image: np.ndarray,
                        min_valid: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
        """``integrate``, and the summed weight of the valid pixels per bin (pyFAI's count)."""
        if image.shape != self.shape:
            raise ValueError(f"image shape {image.shape} does not match the table {self.shape}")
        if image.dtype == np.float16:            # numba reads neither half floats ...
            image = image.astype(np.float32)
        elif not image.dtype.isnative:           # ... nor foreign byte order
            image = image.astype(image.dtype.newbyteorder("="))
        signal, skipped_norm, skipped_weight = self._pass(
            np.ascontiguousarray(image).reshape(-1), min_valid)
        # all-skipped bins subtract the same sums in the same order: exactly 0 left
        kept = self.bin_weight - skipped_weight
        norm = self.bin_norm - skipped_norm
        out = np.zeros(signal.shape)
        np.divide(signal, norm, out=out, where=(kept > 0) & (norm > 0))
        return out, kept


def integrate1d(image: np.ndarray, geom: PoniGeometry, npt: int, *,
                mask: np.ndarray | None = None, min_valid: float = -np.inf,
                **spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """One-shot integration (builds the table each call): radial axis and intensity."""
    table = RadialTable(geom, AxisSpec(npt, **spec), mask)
    return table.radial, table.integrate(image, min_valid)


def detector_gap_mask(kind: str, shape: tuple[int, int]) -> np.ndarray:
    """Module gaps of a DECTRIS ``pilatus`` or ``eiger`` of this shape (True = gap)."""
    module, gap = _GAP_LAYOUTS[kind]
    return pilatus_mask(shape, module, gap)


def load_mask(path: str | Path) -> np.ndarray:
    """A mask image, nonzero = masked (pyFAI's convention): ``.npy``, or ``.tif`` via tifffile."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = np.load(path)
    elif path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        arr = tifffile.imread(path)
    else:
        raise ValueError(f"mask file {path}: use .npy or .tif")
    if arr.ndim != 2:
        raise ValueError(f"mask file {path}: not a 2-D array (shape {arr.shape})")
    return arr != 0


class ShapeMismatch(ValueError):
    """A frame whose shape is not the one its PONI declares."""


def geometry_for_shape(build: Callable[[tuple[int, int] | None], PoniGeometry],
                       shape: tuple[int, int]) -> PoniGeometry:
    """The geometry for frames of ``shape``. ``build(None)`` must use the shape the PONI
    declares (Detector_config max_shape, a named detector); a declared shape must match."""
    try:
        declared = build(None).shape
    except ValueError:
        declared = None     # no shape in the PONI (v1 pixel sizes only); or a real error, below
    geom = build(shape)
    if declared is not None and declared != tuple(shape):
        raise ShapeMismatch(f"frame shape {tuple(shape)} does not match the PONI detector "
                         f"shape {declared}")
    return geom


class AzimuthalConfig(ProcessorConfig):
    poni_file: str | None = None                  # pyFAI .poni; else ``poni``, else meta["poni"]
    poni: dict[str, Any] | None = None            # inline PONI mapping (pyFAI as_dict keys)
    array: str = "image"                          # the frame array holding the counts
    npt: int = Field(2048, ge=2)
    unit: Unit = "2th_deg"
    radial_range: tuple[float, float] | None = None   # in ``unit``; default: the whole detector
    split: Literal["bbox", "no"] = "bbox"         # pyFAI bounding-box pixel splitting, or none
    mask_file: str | None = None                  # .npy/.tif, nonzero = masked
    detector_gaps: Literal["none", "pilatus", "eiger"] = "none"
    mask_negative: bool = True                    # skip pixels < 0 (gaps, bad pixels) per frame
    solid_angle: bool = True
    polarization_factor: float | None = 0.99      # None: no correction; 0.99: horizontal beam
    max_tables: int = Field(4, ge=1)              # geometries kept (least recently used dropped)

    @model_validator(mode="after")
    def _one_geometry(self) -> AzimuthalConfig:
        if self.poni_file is not None and self.poni is not None:
            raise ValueError("give poni_file or poni, not both")
        if self.radial_range is not None and self.radial_range[0] == self.radial_range[1]:
            raise ValueError("radial_range must not be empty")
        return self


class AzimuthalProcessor(Processor):
    type_name = "azimuthal"
    consumes = ("image",)
    Config = AzimuthalConfig

    def __init__(self, config: AzimuthalConfig | None = None):
        super().__init__(config)
        cfg = self.config
        self.spec = AxisSpec(cfg.npt, cfg.unit, cfg.radial_range, cfg.split, cfg.solid_angle,
                             cfg.polarization_factor)
        self._mask = load_mask(cfg.mask_file) if cfg.mask_file else None
        if cfg.poni_file is not None:            # a bad file fails here, not at the first frame
            PoniGeometry.from_poni_file(cfg.poni_file, (1, 1))
        elif cfg.poni is not None:
            PoniGeometry.from_dict(cfg.poni, (1, 1))
        self._config_geoms: dict[tuple[int, int], PoniGeometry] = {}
        self._tables: OrderedDict[PoniGeometry, RadialTable] = OrderedDict()
        self._min_valid = 0.0 if cfg.mask_negative else -np.inf
        self._axis_name, self._axis_unit = (("two_theta", "deg") if cfg.unit == "2th_deg"
                                            else ("q", "nm^-1"))

    def process(self, frame: Frame) -> list[Frame]:
        field = f"arrays.{self.config.array}"
        image = frame.arrays.get(self.config.array)
        if image is None:
            raise FrameError(frame.stream, field, "missing")
        if image.ndim != 2 or image.size == 0:
            raise FrameError(frame.stream, field,
                             f"shape {list(image.shape)} is not a 2-D detector frame")
        if image.dtype.kind not in "fiu":
            raise FrameError(frame.stream, field, f"dtype {image.dtype.str} is not numeric")
        table = self._table(frame, image.shape, field)
        intensity, kept = table.integrate_count(image, self._min_valid)
        if not np.any(kept > 0):
            raise FrameError(frame.stream, field, "no valid pixel in the radial range")
        return [self.emit(frame, "pattern", frame.t0_ns, {
            self._axis_name: table.radial.astype(np.float32),
            "intensity": intensity.astype(np.float32),
        }, {self._axis_name: self._axis_unit, "intensity": "counts"},
            {"wavelength_m": table.geom.wavelength, "derived_from": "image"})]

    def _geometry(self, frame: Frame, shape: tuple[int, int]) -> PoniGeometry:
        cfg = self.config
        if cfg.poni_file is None and cfg.poni is None:
            poni = frame.meta.get("poni")
            if not isinstance(poni, Mapping):
                raise FrameError(frame.stream, "meta.poni",
                                 "no geometry: the frame has no PONI mapping and the config "
                                 "gives neither poni_file nor poni")
            return geometry_for_shape(lambda s: PoniGeometry.from_dict(poni, s), shape)
        geom = self._config_geoms.get(shape)
        if geom is None:
            if cfg.poni_file is not None:
                def build(s: tuple[int, int] | None) -> PoniGeometry:
                    return PoniGeometry.from_poni_file(cfg.poni_file, s)
            else:
                def build(s: tuple[int, int] | None) -> PoniGeometry:
                    return PoniGeometry.from_dict(cfg.poni, s)
            geom = self._config_geoms[shape] = geometry_for_shape(build, shape)
        return geom

    def _table(self, frame: Frame, shape: tuple[int, int], field: str) -> RadialTable:
        try:
            geom = self._geometry(frame, tuple(shape))
        except ShapeMismatch as exc:
            raise FrameError(frame.stream, field, str(exc)) from None
        except ValueError as exc:
            where = "meta.poni" if self.config.poni_file is None and self.config.poni is None \
                else field
            raise FrameError(frame.stream, where, str(exc)) from None
        table = self._tables.get(geom)
        if table is not None:
            self._tables.move_to_end(geom)
            return table
        mask = np.zeros(geom.shape, dtype=bool)
        if self._mask is not None:
            if self._mask.shape != geom.shape:
                raise FrameError(frame.stream, field, f"shape {list(shape)} does not match the "
                                 f"mask_file shape {list(self._mask.shape)}")
            mask |= self._mask
        if self.config.detector_gaps != "none":
            try:
                mask |= detector_gap_mask(self.config.detector_gaps, geom.shape)
            except ValueError as exc:
                raise FrameError(frame.stream, field, str(exc)) from None
        table = self._tables[geom] = RadialTable(geom, self.spec, mask)
        if len(self._tables) > self.config.max_tables:
            self._tables.popitem(last=False)
        return table
