"""Forward simulator: specimen + geometry -> overfocused 4D-STEM dataset."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numba
import numpy as np

from ..checks import is_real
from .model import beam_centres, specimen_matrix
from .params import OverfocusParams
from .specimen import test_specimen


@numba.njit(nogil=True, cache=True, inline="always")
def specimen_cell(A, dy, dx, sy, sx, origin_y, origin_x, per_scan):
    """The specimen image's bilinear cell that a detector pixel samples under the model.

    ``(dy, dx)``: the pixel's offset from its frame's beam centre (detector px); ``(sy,
    sx)``: the frame's scan position (scan px); the image's pixel ``(j, i)`` lies at scan
    px ``origin + (j, i) / per_scan``. The pixel sees specimen position ``A @ (dy, dx) +
    (sy, sx)``; returns the cell's top-left pixel ``(iy, ix)`` and the fractions ``(wy,
    wx)`` (not bounds-checked).
    """
    qy = (A[0, 0] * dy + A[0, 1] * dx + sy - origin_y) * per_scan
    qx = (A[1, 0] * dy + A[1, 1] * dx + sx - origin_x) * per_scan
    fy = math.floor(qy)
    fx = math.floor(qx)
    return int(fy), int(fx), qy - fy, qx - fx


@numba.njit(nogil=True, cache=True)
def render_shadow_frames(specimen, spec_origin_y, spec_origin_x, spec_per_scan, A,
                         scan_yx, centres, radius, dose, background, out):
    """Render frames of a disk filled with the shadow image of ``specimen`` (into ``out``).

    Frame ``i`` (``out[i]``, ``(h, w)``) holds ``background`` outside a disk of
    ``radius`` detector px around ``centres[i]`` (y, x) and ``background + dose
    * edge * t`` inside, with ``edge`` a one-pixel linear rim and ``t`` the
    specimen bilinearly sampled at ``A @ (p - centre) + scan_yx[i]`` scan px,
    i.e. specimen pixel ``(that - spec_origin) * spec_per_scan``. Outside the
    specimen image ``t = 1``. The geometric model of :mod:`stemcal.twin.model`;
    the cold start also uses it to predict each frame's transmission.
    """
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
                iy, ix, wy, wx = specimen_cell(A, dy, dx, sy, sx, spec_origin_y,
                                               spec_origin_x, spec_per_scan)
                t = 1.0
                if iy >= 0 and ix >= 0 and iy + 1 < sh and ix + 1 < sw:
                    t = ((1 - wy) * ((1 - wx) * specimen[iy, ix] + wx * specimen[iy, ix + 1])
                         + wy * ((1 - wx) * specimen[iy + 1, ix] + wx * specimen[iy + 1, ix + 1]))
                out[i, y, x] = background + dose * edge * t


#: Largest simulation accepted: bytes of its float64 frames (the peak use is about
#: this plus the output array; see :func:`simulate`).
MAX_SIMULATION_BYTES = 8 * 2**30
#: Largest default specimen image, pixels (float64; its generation needs a few copies).
MAX_SPECIMEN_PIXELS = 2**26
#: Largest scan or detector side, pixels.
MAX_SIDE = 65536


def check_shapes(nav_shape: Any, sig_shape: Any, *, itemsize: int = 8,
                 limit: int = MAX_SIMULATION_BYTES) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validate a scan and detector shape before anything is allocated.

    Parameters
    ----------
    nav_shape, sig_shape : (int, int)
        Scan shape (each side 1..:data:`MAX_SIDE`) and detector shape (2..:data:`MAX_SIDE`).
    itemsize : int
        Bytes per pixel of the array the caller will allocate.
    limit : int
        Largest ``ny * nx * sy * sx * itemsize`` accepted, bytes.

    Returns
    -------
    ((ny, nx), (sy, sx)) as ints.

    Raises
    ------
    ValueError
        Naming the shape and the limit it breaks.
    """
    out = []
    for name, shape, lo in (("nav_shape", nav_shape, 1), ("sig_shape", sig_shape, 2)):
        try:
            vals = tuple(shape)
            ok = len(vals) == 2 and all(is_real(v) and float(v).is_integer() for v in vals)
        except (TypeError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be two integers (y, x), got {shape!r}")
        y, x = int(vals[0]), int(vals[1])
        if not (lo <= y <= MAX_SIDE and lo <= x <= MAX_SIDE):
            raise ValueError(f"{name} {(y, x)} out of range: each side must be {lo}..{MAX_SIDE}")
        out.append((y, x))
    n_bytes = out[0][0] * out[0][1] * out[1][0] * out[1][1] * int(itemsize)
    if n_bytes > limit:
        raise ValueError(f"a {out[0][0]}x{out[0][1]} scan of {out[1][0]}x{out[1][1]} frames needs "
                         f"{n_bytes / 2**30:.3g} GiB ({itemsize} bytes/px), over the limit of "
                         f"{limit / 2**30:.3g} GiB")
    return out[0], out[1]


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
    descan = float(np.abs(params.descan_matrix).sum()) * max(nav_shape)
    m = abs(params.magnification_ratio) * (radius_det + descan) + 4
    fy = (nav_shape[0] + 2 * m) * pixels_per_scan_px
    fx = (nav_shape[1] + 2 * m) * pixels_per_scan_px
    if not (math.isfinite(fy) and math.isfinite(fx)) or fy * fx > MAX_SPECIMEN_PIXELS:
        raise ValueError(
            f"the default specimen would need {fy:.3g} x {fx:.3g} pixels (limit "
            f"{MAX_SPECIMEN_PIXELS} pixels): the shadow image spans {m:.3g} scan px beyond the "
            f"scan; check overfocus, camera_length, the pixel sizes and descan")
    shape = (int(fy), int(fx))
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
    # The frames are computed in float64 before conversion to ``dtype``: refuse
    # absurd shapes before anything is allocated.
    nav_shape, sig_shape = check_shapes(nav_shape, sig_shape)
    for name, v in (("dose", dose), ("intensity", intensity), ("background", background)):
        if v is not None and not (is_real(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype: {exc}") from None
    if not (dt.kind in "ui" or dt.kind == "f"):
        raise ValueError(f"dtype must be an integer or float type, got {dt}")
    if specimen is None:
        specimen = default_specimen(params, nav_shape, sig_shape, seed=seed)
    iy, ix = np.mgrid[0:nav_shape[0], 0:nav_shape[1]]
    scan_yx = np.stack([iy.ravel(), ix.ravel()], axis=-1).astype(float)
    centres = beam_centres(params, scan_yx, nav_shape)
    level = float(dose if dose is not None else intensity)
    out = np.empty((len(scan_yx),) + sig_shape, dtype=np.float64)
    render_shadow_frames(np.ascontiguousarray(specimen.image, dtype=np.float64),
                     float(specimen.origin[0]), float(specimen.origin[1]),
                     float(specimen.pixels_per_scan_px), specimen_matrix(params), scan_yx,
                     centres, params.disk_radius_px, level, float(background), out)
    rng = np.random.default_rng(seed + 1) if dose is not None else None
    result = np.empty(out.shape, dtype=dt)
    step = max(1, 2**22 // max(1, out[0].size))  # about 32 MiB of float64 per block
    for start in range(0, len(out), step):  # blockwise: no full-size temporaries
        block = out[start:start + step]
        if rng is not None:
            block = rng.poisson(block).astype(np.float64)
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            block = np.clip(np.rint(block), info.min, info.max)
        result[start:start + step] = block
    return result.reshape(nav_shape + sig_shape)
