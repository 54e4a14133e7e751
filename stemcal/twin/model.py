"""The linear projection model: detector pixel + scan position -> specimen pixel.

Closed form of the overfocused-STEM geometry (a point crossover ``overfocus``
above the specimen casts a shadow image onto a detector ``camera_length``
below it)::

    q = A @ (p - c(s)) + s,     c(s) = c + D @ (s - s_mid)
    A = k * rotate_deg(scan_rotation) @ flip_y,   k = d p_det / ((d + L) p_scan)

with ``p`` the detector pixel (y, x), ``s`` the scan position in scan pixels,
``q`` the specimen position in scan pixels (specimen pixel = scan pixel),
``c`` the beam centre at the scan middle ``s_mid = (ny // 2, nx // 2)`` and
``D`` the descan matrix. ``rotate_deg(scan_rotation) @ flip_y`` is LiberTEM's
detector-to-scan transform (``libertem.analysis.com.apply_correction``), so the
parameters are directly usable in LiberTEM's centre-of-mass analysis. ``k`` is
negative for underfocus (an inverted shadow image, indistinguishable from a
180 degree rotation).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .params import OverfocusParams


def rotation_matrix(scan_rotation_deg: float) -> np.ndarray:
    """Rotation in (y, x) order as used by LiberTEM: ``[[cos, sin], [-sin, cos]]``."""
    a = math.radians(scan_rotation_deg)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def flip_matrix(flip_y: bool) -> np.ndarray:
    """``diag(-1, 1)`` if ``flip_y`` else the identity, (y, x) order."""
    return np.diag([-1.0, 1.0]) if flip_y else np.eye(2)


def detector_to_scan(scan_rotation_deg: float, flip_y: bool) -> np.ndarray:
    """LiberTEM's detector-frame -> scan-frame transform ``R(scan_rotation) @ F``."""
    return rotation_matrix(scan_rotation_deg) @ flip_matrix(flip_y)


def scan_middle(nav_shape: tuple[int, int]) -> np.ndarray:
    """The scan position the beam centre refers to: ``(ny // 2, nx // 2)``, scan px."""
    return np.array([nav_shape[0] // 2, nav_shape[1] // 2], dtype=float)


def decompose_matrix(A: np.ndarray) -> tuple[float, bool, float]:
    """Split ``A = k R(theta) F`` into ``(theta_deg, flip_y, |k|)``.

    The sign of ``k`` cannot be recovered (it equals a 180 degree rotation);
    the returned ``theta`` assumes ``k > 0``. ``theta`` lies in [-180, 180).
    """
    A = np.asarray(A, dtype=float)
    det = float(np.linalg.det(A))
    flip = det < 0
    scale = math.sqrt(abs(det))
    R = A @ flip_matrix(flip) / scale
    theta = math.degrees(math.atan2(R[0, 1], R[0, 0]))
    theta = (theta + 180.0) % 360.0 - 180.0
    return theta, flip, scale


@dataclasses.dataclass(frozen=True)
class SpecimenMap:
    """Affine map ``q = A p + B s + t`` (all in pixels, (y, x) order).

    ``p`` detector pixel, ``s`` scan position (scan pixels), ``q`` specimen
    position (scan pixels). ``A`` (2, 2) is dimensionless (specimen px per
    detector px), ``B = I - A D`` and ``t = A (D s_mid - c)``.
    """

    A: np.ndarray
    B: np.ndarray
    t: np.ndarray

    def forward(self, det_yx: np.ndarray, scan_yx: np.ndarray) -> np.ndarray:
        """Specimen px of detector px ``det_yx`` (..., 2) seen at scan px ``scan_yx`` (..., 2)."""
        det_yx = np.asarray(det_yx, dtype=float)
        scan_yx = np.asarray(scan_yx, dtype=float)
        return det_yx @ self.A.T + scan_yx @ self.B.T + self.t

    def inverse(self, spec_yx: np.ndarray, scan_yx: np.ndarray) -> np.ndarray:
        """Detector px where specimen px ``spec_yx`` appears at scan px ``scan_yx``."""
        spec_yx = np.asarray(spec_yx, dtype=float)
        scan_yx = np.asarray(scan_yx, dtype=float)
        Ainv = np.linalg.inv(self.A)
        return (spec_yx - scan_yx @ self.B.T - self.t) @ Ainv.T

    @property
    def matrix(self) -> np.ndarray:
        """The map as one (2, 5) matrix acting on ``(p_y, p_x, s_y, s_x, 1)``."""
        return np.hstack([self.A, self.B, self.t[:, None]])


def specimen_matrix(params: OverfocusParams) -> np.ndarray:
    """``A = k R(scan_rotation) F``: specimen px per detector px, (2, 2)."""
    return params.magnification_ratio * detector_to_scan(params.scan_rotation, params.flip_y)


def specimen_map(params: OverfocusParams, nav_shape: tuple[int, int]) -> SpecimenMap:
    """The affine (detector px, scan px) -> specimen px map of the linear model.

    Parameters
    ----------
    params : OverfocusParams
        Geometry; ``cy, cx`` refer to the scan middle of ``nav_shape``.
    nav_shape : (ny, nx)
        Scan shape, used only for the scan middle ``(ny // 2, nx // 2)``.
    """
    A = specimen_matrix(params)
    D = params.descan_matrix
    c = np.array([params.cy, params.cx])
    s_mid = scan_middle(nav_shape)
    return SpecimenMap(A=A, B=np.eye(2) - A @ D, t=A @ (D @ s_mid - c))


def beam_centres(params: OverfocusParams, scan_yx: np.ndarray, nav_shape: tuple[int, int]) -> np.ndarray:
    """Beam centre on the detector ``c + D (s - s_mid)`` for scan positions (..., 2), det px."""
    scan_yx = np.asarray(scan_yx, dtype=float)
    c = np.array([params.cy, params.cx])
    return c + (scan_yx - scan_middle(nav_shape)) @ params.descan_matrix.T
