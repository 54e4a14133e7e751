"""Forward simulator: specimen + geometry -> overfocused 4D-STEM dataset."""
from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np

from .model import beam_centres, specimen_matrix
from .params import OverfocusParams
from .specimen import test_specimen


@numba.njit(nogil=True, cache=True)
def _simulate_kernel(specimen, spec_origin_y, spec_origin_x, spec_per_scan, A,
                     scan_yx, centres, radius, dose, background, out):
    n = scan_yx.shape[0]
    h, w = out.shape[1], out.shape[2]
    sh, sw = specimen.shape
    for i in range(n):
        cy = centres[i, 0]
        cx = centres[i, 1]
        sy = scan_yx[i, 0]
        sx = scan_yx[i, 1]
        for y in range(h):
            dy = y - cy
            for x in range(w):
                dx = x - cx
                r = math.sqrt(dy * dy + dx * dx)
                edge = radius + 0.5 - r
                if edge <= 0.0:
                    out[i, y, x] = background
                    continue
                if edge > 1.0:
                    edge = 1.0
                qy = (A[0, 0] * dy + A[0, 1] * dx + sy - spec_origin_y) * spec_per_scan
                qx = (A[1, 0] * dy + A[1, 1] * dx + sx - spec_origin_x) * spec_per_scan
                fy = math.floor(qy)
                fx = math.floor(qx)
                iy = int(fy)
                ix = int(fx)
                wy = qy - fy
                wx = qx - fx
                t = 1.0
                if iy >= 0 and ix >= 0 and iy + 1 < sh and ix + 1 < sw:
                    t = ((1 - wy) * ((1 - wx) * specimen[iy, ix] + wx * specimen[iy, ix + 1])
                         + wy * ((1 - wx) * specimen[iy + 1, ix] + wx * specimen[iy + 1, ix + 1]))
                out[i, y, x] = background + dose * edge * t


@dataclasses.dataclass(frozen=True)
class SimulatedSpecimen:
    """A transmission image placed in the specimen plane.

    ``image[j, i]`` is the transmission at specimen position
    ``origin + (j, i) / pixels_per_scan_px`` (scan px, (y, x)).
    """

    image: np.ndarray
    origin: tuple[float, float]
    pixels_per_scan_px: float = 1.0


def default_specimen(params: OverfocusParams, nav_shape: tuple[int, int], sig_shape: tuple[int, int],
                     *, seed: int = 0, pixels_per_scan_px: float = 2.0,
                     feature_size: float = 0.8) -> SimulatedSpecimen:
    """The built-in test specimen, large enough for every ray of the scan."""
    radius_det = min(params.disk_radius_px, math.hypot(*sig_shape))
    descan = np.abs(params.descan_matrix).sum() * max(nav_shape)
    m = abs(params.magnification_ratio) * (radius_det + descan) + 4
    shape = (int((nav_shape[0] + 2 * m) * pixels_per_scan_px),
             int((nav_shape[1] + 2 * m) * pixels_per_scan_px))
    img = test_specimen(shape, seed=seed, feature_size=feature_size * pixels_per_scan_px)
    return SimulatedSpecimen(img, (-m, -m), pixels_per_scan_px)


def simulate(params: OverfocusParams, nav_shape: tuple[int, int], sig_shape: tuple[int, int], *,
             specimen: SimulatedSpecimen | None = None, dose: float | None = None,
             intensity: float = 100.0, background: float = 0.0, seed: int = 0,
             dtype: str | np.dtype = "uint16") -> np.ndarray:
    """Simulate an overfocused 4D-STEM dataset.

    Each frame at scan position ``s`` is the bright-field disk (radius from
    ``semiconv``, centre ``c + descan @ (s - s_mid)``) filled with the
    specimen's transmission sampled bilinearly at ``A (p - c(s)) + s``
    (the linear model, :mod:`stemcal.twin.model`), on top of ``background``.
    Rays that land outside the specimen image see a transmission of 1.

    Parameters
    ----------
    params : OverfocusParams
        True geometry.
    nav_shape, sig_shape : (int, int)
        Scan and detector shape.
    specimen : SimulatedSpecimen, optional
        Defaults to :func:`default_specimen` with ``seed``.
    dose : float, optional
        Mean counts per pixel for full transmission inside the disk; with a
        dose the frames get Poisson noise. Without, noise-free frames at
        ``intensity``.
    background : float
        Counts added to every pixel (before noise).
    seed : int
        Seeds the default specimen and the noise.
    dtype : dtype
        Output dtype; integer dtypes are rounded and clipped.

    Returns
    -------
    (ny, nx, sy, sx) array of ``dtype``.
    """
    nav_shape = (int(nav_shape[0]), int(nav_shape[1]))
    sig_shape = (int(sig_shape[0]), int(sig_shape[1]))
    if min(nav_shape) < 1 or min(sig_shape) < 2:
        raise ValueError(f"bad shapes: nav {nav_shape}, sig {sig_shape}")
    # The frames are computed in float64 before conversion to ``dtype``.
    n_bytes = int(np.prod(nav_shape)) * int(np.prod(sig_shape)) * 8
    if n_bytes > 8 * 2**30:
        raise ValueError(f"simulation would need {n_bytes / 2**30:.1f} GiB of float64 (limit 8 GiB)")
    if specimen is None:
        specimen = default_specimen(params, nav_shape, sig_shape, seed=seed)
    iy, ix = np.mgrid[0:nav_shape[0], 0:nav_shape[1]]
    scan_yx = np.stack([iy.ravel(), ix.ravel()], axis=-1).astype(float)
    centres = beam_centres(params, scan_yx, nav_shape)
    level = float(dose if dose is not None else intensity)
    out = np.empty((len(scan_yx),) + sig_shape, dtype=np.float64)
    _simulate_kernel(np.ascontiguousarray(specimen.image, dtype=np.float64),
                     float(specimen.origin[0]), float(specimen.origin[1]),
                     float(specimen.pixels_per_scan_px), specimen_matrix(params), scan_yx,
                     centres, params.disk_radius_px, level, float(background), out)
    if dose is not None:
        rng = np.random.default_rng(seed + 1)
        out = rng.poisson(out).astype(np.float64)
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dt).reshape(nav_shape + sig_shape)
