"""The images of a pass, from its accumulators: point, selected, shifted sum, coverage, sum."""
from __future__ import annotations

import numpy as np

from ..twin.model import scan_middle
from .geometry import ProjectionGeometry
from .kernels import splat_frames

__all__ = ["normalised", "pass_images"]


def normalised(shifted_sum: np.ndarray, coverage: np.ndarray, *, rel_floor: float = 0.05) -> np.ndarray:
    """Coverage-normalised shifted sum, NaN where coverage < ``rel_floor * max``."""
    cmax = float(coverage.max()) if coverage.size else 0.0
    out = np.full(shifted_sum.shape, np.nan)
    if cmax > 0:
        ok = coverage >= rel_floor * cmax
        out[ok] = shifted_sum[ok] / coverage[ok]
    return out


def pass_images(geo: ProjectionGeometry, b: int, acc: np.ndarray, fsum: np.ndarray,
                point: np.ndarray, selected_acc: np.ndarray) -> dict[str, np.ndarray]:
    """The images of a pass from its accumulators (see :class:`OverfocusUDF`'s results).

    ``acc`` (T, H, W, 2) and ``fsum`` (T, nby, nbx) are the per-thread
    accumulators of :func:`~stemcal.processing.tile.project_tile`, ``b`` its
    bin side, ``point`` the nav image and ``selected_acc`` (H, W, 2) the
    middle frame's accumulator. The ``sum`` image is the binned frame sum
    splatted once, as if taken at the scan middle.
    """
    mid = scan_middle(geo.nav_shape)[None, :]
    c0 = np.array([[geo.params.cy, geo.params.cx]])
    total = np.zeros(geo.shape)
    cov = np.zeros(geo.shape)
    splat_frames(fsum.sum(axis=0)[None], 0, 0, float(b), (b - 1) / 2.0, c0, geo.offsets(mid, c0),
                 np.ascontiguousarray(geo.A), geo.r_in, geo.r_out, total, cov)
    summed = acc.sum(axis=0)
    shifted_sum, coverage = summed[..., 0], summed[..., 1]
    return {
        "point": point,
        "selected": selected_acc[..., 0],
        "shifted_sum": shifted_sum,
        "coverage": coverage,
        "sum": total,
        "shifted_sum_normalised": normalised(shifted_sum, coverage),
    }
