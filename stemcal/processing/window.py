"""Which detector pixels a pass reads (the disk window) and how it bins them (the bin side)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["disk_extent", "disk_window", "choose_bin"]


def disk_extent(centres, c0) -> tuple[float, float, float, float] | None:
    """``(ymin, ymax, xmin, xmax)`` of the beam centres and ``c0``, for :func:`disk_window`;
    None when one is not finite."""
    c = np.asarray(centres, dtype=float).reshape(-1, 2)
    ys = [float(c0[0])]
    xs = [float(c0[1])]
    if c.size:
        ys += [float(c[:, 0].min()), float(c[:, 0].max())]
        xs += [float(c[:, 1].min()), float(c[:, 1].max())]
    ext = (min(ys), max(ys), min(xs), max(xs))
    return ext if all(math.isfinite(v) for v in ext) else None


def disk_window(extent, r_out: float, b: int, org: tuple[int, int],
                shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part ``[y0:y1, x0:x1]`` of a tile (top-left detector pixel ``org``, ``shape``) that
    holds every pixel :func:`project_tile` and
    :func:`~stemcal.processing.kernels.sample_points` read for its frames.

    ``extent`` is :func:`disk_extent` of the frames' beam centres and the reference centre.
    The window is the whole bins (bin grid from detector pixel 0) within ``r_out``, plus one
    bin, of any of them, cut to the tile. The kernels give bit for bit the same on this
    window (with its own origin) as on the whole tile. ``y0 >= y1`` or ``x0 >= x1`` when no
    pixel of the tile is needed; the whole tile when ``extent`` is None or ``r_out`` is not
    finite.
    """
    h, w = int(shape[0]), int(shape[1])
    if extent is None or not math.isfinite(r_out):
        return 0, h, 0, w
    off = (b - 1) / 2.0

    def span(lo: float, hi: float, o: int, n: int) -> tuple[int, int]:
        first = (math.floor((lo - r_out - off) / b) - 1) * b
        last = (math.ceil((hi + r_out - off) / b) + 2) * b
        return max(first - o, 0), min(last - o, n)

    y0, y1 = span(extent[0], extent[1], int(org[0]), h)
    x0, x1 = span(extent[2], extent[3], int(org[1]), w)
    return y0, y1, x0, x1


def choose_bin(A: np.ndarray, sig_shape: tuple[int, int], max_pitch: float) -> int:
    """Largest bin side ``b`` whose binned pixel projects to at most ``max_pitch`` target px.

    The pitch is the longer of the projected detector-pixel steps along y and x
    (the columns of ``A``). Among sides up to that bound, one dividing both
    detector dimensions is preferred (no partial bins at the detector edge).
    ``max_pitch <= 0`` disables binning (returns 1).

    Parameters
    ----------
    A : (2, 2) array
        Target px per detector px.
    sig_shape : (int, int)
        Detector shape.
    max_pitch : float
        Largest accepted projected pitch of a bin, target px.
    """
    if not max_pitch > 0:
        return 1
    step = float(max(np.hypot(*np.asarray(A)[:, 0]), np.hypot(*np.asarray(A)[:, 1])))
    if step <= 0 or not math.isfinite(step):
        return 1
    bmax = max(1, min(int(max_pitch / step), min(sig_shape) // 4 or 1))
    for b in range(bmax, 0, -1):
        if sig_shape[0] % b == 0 and sig_shape[1] % b == 0:
            return b if b * 2 > bmax else bmax  # a divisor close to the bound, else the bound
    return bmax
