"""Calibration parameters of an overfocused 4D-STEM experiment.

All lengths are in metres (SI), angles of the scan in degrees (as LiberTEM's
``scan_rotation``), the convergence semi-angle in radians and the beam centre
in detector pixels, (y, x) order.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..checks import finite

Matrix2 = tuple[tuple[float, float], tuple[float, float]]

ZERO_DESCAN: Matrix2 = ((0.0, 0.0), (0.0, 0.0))


def _as_matrix2(value: Any, name: str) -> Matrix2:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 2x2 matrix of numbers, got {value!r}") from exc
    if arr.shape != (2, 2):
        raise ValueError(f"{name} must be a 2x2 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return ((float(arr[0, 0]), float(arr[0, 1])), (float(arr[1, 0]), float(arr[1, 1])))


@dataclasses.dataclass(frozen=True)
class OverfocusParams:
    """Geometry of an overfocused (shadow-image) 4D-STEM acquisition.

    Parameters
    ----------
    overfocus : float
        Distance of the beam crossover above the specimen, metres. Positive is
        overfocus (crossover before the specimen), negative is underfocus.
        Must not be 0 or ``-camera_length``.
    scan_pixel_size : float
        Scan step, metres per scan pixel (> 0).
    camera_length : float
        Distance specimen -> detector, metres (> 0).
    detector_pixel_size : float
        Physical detector pixel pitch, metres (> 0).
    semiconv : float
        Convergence semi-angle, radians (> 0). Sets the bright-field disk
        radius ``semiconv * (overfocus + camera_length) / detector_pixel_size``.
    cy, cx : float
        Beam centre on the detector at the middle of the scan, scan index
        ``(ny // 2, nx // 2)``, detector pixels.
    scan_rotation : float
        Scan rotation in degrees, LiberTEM's convention: a vector in detector
        coordinates becomes ``rotate_deg(scan_rotation) @ flip_y() @ v`` in
        scan coordinates (``libertem.analysis.com.apply_correction``).
    flip_y : bool
        Handedness: detector y axis flipped relative to the scan.
    descan : 2x2 tuple
        Linear descan error: the beam centre moves by ``descan @ (s - s_mid)``
        detector pixels for a scan offset ``s - s_mid`` in scan pixels. Rows
        are detector axes (y, x), columns scan axes (y, x). Default zero.
    """

    overfocus: float
    scan_pixel_size: float
    camera_length: float
    detector_pixel_size: float
    semiconv: float
    cy: float
    cx: float
    scan_rotation: float = 0.0
    flip_y: bool = False
    descan: Matrix2 = ZERO_DESCAN

    def __post_init__(self) -> None:
        for name in ("overfocus", "scan_pixel_size", "camera_length", "detector_pixel_size",
                     "semiconv", "cy", "cx", "scan_rotation"):
            object.__setattr__(self, name, finite(name, getattr(self, name)))
        for name in ("scan_pixel_size", "camera_length", "detector_pixel_size", "semiconv"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.overfocus == 0:
            raise ValueError("overfocus must not be 0 (the shadow image is infinitely magnified)")
        if math.isclose(self.overfocus, -self.camera_length, rel_tol=1e-12, abs_tol=0.0):
            raise ValueError("overfocus must not equal -camera_length (crossover on the detector)")
        if not isinstance(self.flip_y, (bool, np.bool_)):
            raise ValueError(f"flip_y must be a bool, got {self.flip_y!r}")
        object.__setattr__(self, "flip_y", bool(self.flip_y))
        object.__setattr__(self, "descan", _as_matrix2(self.descan, "descan"))
        # Extreme but finite inputs can still overflow or underflow the derived scales.
        denom = (self.overfocus + self.camera_length) * self.scan_pixel_size
        ratio = self.overfocus * self.detector_pixel_size / denom if denom else math.inf
        if not (math.isfinite(ratio) and ratio != 0):
            raise ValueError("overfocus, camera_length, detector_pixel_size and scan_pixel_size "
                             f"give a magnification ratio of {ratio!r}; it must be finite and "
                             "non-zero (check their units: metres)")
        if not math.isfinite(self.disk_radius_px):
            raise ValueError("semiconv * (overfocus + camera_length) / detector_pixel_size "
                             "overflows: check semiconv (radians) and the lengths (metres)")

    # -- derived quantities -------------------------------------------------
    @property
    def magnification_ratio(self) -> float:
        """Specimen (scan) pixels per detector pixel along the shadow image, signed.

        ``overfocus * detector_pixel_size / ((overfocus + camera_length) * scan_pixel_size)``;
        negative for underfocus (the shadow image is inverted).
        """
        return (self.overfocus * self.detector_pixel_size
                / ((self.overfocus + self.camera_length) * self.scan_pixel_size))

    @property
    def disk_radius_px(self) -> float:
        """Radius of the bright-field disk on the detector, detector pixels."""
        return abs(self.semiconv * (self.overfocus + self.camera_length)) / self.detector_pixel_size

    @property
    def descan_matrix(self) -> np.ndarray:
        """The descan matrix as a (2, 2) float64 array (detector px per scan px)."""
        return np.array(self.descan, dtype=float)

    def replace(self, **changes: Any) -> "OverfocusParams":
        """Return a validated copy with ``changes`` applied; unknown names raise ``ValueError``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown parameter(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of all fields (descan as nested lists)."""
        d = dataclasses.asdict(self)
        d["descan"] = [list(row) for row in self.descan]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OverfocusParams":
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"parameters must be a dict, got {type(d).__name__}")
        fields = dataclasses.fields(cls)
        unknown = set(d) - {f.name for f in fields}
        if unknown:
            raise ValueError(f"unknown parameter(s): {sorted(map(str, unknown))}")
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"missing parameter(s): {missing}")
        return cls(**d)


def overfocus_from_ratio(ratio: float, *, scan_pixel_size: float, camera_length: float,
                         detector_pixel_size: float) -> float:
    """Invert :attr:`OverfocusParams.magnification_ratio` for the overfocus, metres.

    ``ratio = d * p_det / ((d + L) * p_scan)`` gives ``d = ratio * L / (p_det / p_scan - ratio)``.
    """
    for name, v in (("ratio", ratio), ("scan_pixel_size", scan_pixel_size),
                    ("camera_length", camera_length), ("detector_pixel_size", detector_pixel_size)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if not scan_pixel_size > 0:
        raise ValueError(f"scan_pixel_size must be > 0, got {scan_pixel_size!r}")
    r = detector_pixel_size / scan_pixel_size
    if ratio == r:
        raise ValueError("magnification ratio equals detector/scan pixel ratio: overfocus infinite")
    return ratio * camera_length / (r - ratio)


def semiconv_for_disk(radius_px: float, *, detector_pixel_size: float, overfocus: float,
                      camera_length: float) -> float:
    """The convergence semi-angle (rad) whose bright-field disk has ``radius_px`` detector
    pixels: the inverse of :attr:`OverfocusParams.disk_radius_px`."""
    return radius_px * detector_pixel_size / abs(overfocus + camera_length)
