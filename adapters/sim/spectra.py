"""Detector instruments of the simulated experiment: a 1-D XRD pattern (``pattern``), a Raman
spectrum (``spectrum``) and optionally a 2-D area-detector frame (``image``) per cell, every
``Scenario.spectrum_every_s``. The physics is in ``detectors``; this module schedules it and
publishes frames through the experiment, so instrument faults and seq numbers apply as for the
other instruments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stream.frame import Frame

from . import detectors as D

if TYPE_CHECKING:
    from .experiment import SimExperiment

# A PILATUS 1M at a synchrotron (the geometry of the CeO2 calibration in shared/data).
DEFAULT_GEOMETRY = {"dist": 0.208651380603, "poni1": 0.0872948482846, "poni2": 0.0799601126306,
                    "rot1": -0.0184422457059, "rot2": 0.00413760084465, "rot3": 0.0,
                    "wavelength": 4.066e-11, "pixel1": 172e-6, "pixel2": 172e-6}
XRD_AXIS = np.linspace(2.0, 31.0, 2048)      # degrees 2theta at 0.4066 A: the whole detector
RAMAN_AXIS = np.linspace(100.0, 3200.0, 1024)  # cm-1


def _shot_noise(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson shot noise in its normal approximation (exact enough above ~20 counts, and ten
    times cheaper than drawing Poisson variates), as float32."""
    noisy = counts + np.sqrt(counts) * rng.standard_normal(counts.size)
    return np.maximum(noisy, 0.0).astype(np.float32)


class DetectorInstruments:
    def __init__(self, kinds: list[str], geometry: dict | None = None):
        self.kinds = set(kinds)
        self.geom = D.PoniGeometry.from_dict(geometry or DEFAULT_GEOMETRY, shape=(1043, 981))
        self.two_theta = XRD_AXIS.astype(np.float32)
        self.shift = RAMAN_AXIS.astype(np.float32)
        if "xrd2d" in self.kinds:
            self.tth_map = D.two_theta_map(self.geom)
            self.mask = D.pilatus_mask(self.geom.shape)
            # per-pixel solid angle and horizontal polarisation, applied together
            self.pixel_factors = (D.solid_angle_map(self.geom)
                                  * D.polarization_map(self.geom, 0.99))
            self.poni = self.geom.to_dict()

    def frames(self, ex: SimExperiment, t0: float) -> list[Frame]:
        out: list[Frame | None] = []
        wavelength = self.geom.wavelength
        for c in range(ex.n):
            soc = float(ex.last_soc[c])
            pattern = None
            if self.kinds & {"xrd", "xrd2d"}:
                pattern = D.xrd_pattern(XRD_AXIS, soc, wavelength, scale=1000.0)
            if "xrd" in self.kinds:
                noisy = _shot_noise(pattern, ex.rng)
                out.append(ex._frame(c, "xrd", "pattern", t0, {
                    "two_theta": self.two_theta, "intensity": noisy},
                    {"two_theta": "deg", "intensity": "counts"}, {"wavelength_m": wavelength}))
            if "raman" in self.kinds:
                spectrum = _shot_noise(D.raman_spectrum(RAMAN_AXIS, soc), ex.rng)
                out.append(ex._frame(c, "raman", "spectrum", t0, {
                    "shift": self.shift, "intensity": spectrum},
                    {"shift": "cm-1", "intensity": "counts"}, {"laser_nm": 532.0}))
            if "xrd2d" in self.kinds:
                image = D.project_pattern(XRD_AXIS, pattern, self.tth_map, self.mask, ex.rng,
                                          polarization=self.pixel_factors)
                out.append(ex._frame(c, "detector", "image", t0, {"image": image},
                                     {"image": "counts"}, {"poni": self.poni}))
        return [f for f in out if f is not None]


def attach_detectors(ex: SimExperiment, kinds: list[str] | None = None,
                     frames_2d: bool = False) -> DetectorInstruments:
    """Give an experiment its detectors (``xrd``, ``raman``, ``xrd2d``)."""
    kinds = list(kinds or ["xrd", "raman"]) + (["xrd2d"] if frames_2d else [])
    inst = DetectorInstruments(kinds)
    ex.spectrum_hook = inst.frames
    return inst
