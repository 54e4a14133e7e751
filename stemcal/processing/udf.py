"""LiberTEM UDF that projects overfocused frames into the specimen plane."""
from __future__ import annotations

import numpy as np
from libertem.udf import UDF

from ..twin.model import scan_middle
from ..twin.params import OverfocusParams
from .geometry import ProjectionGeometry
from .kernels import sample_points, splat_frames


def normalised(shifted_sum: np.ndarray, coverage: np.ndarray, *, rel_floor: float = 0.05) -> np.ndarray:
    """Coverage-normalised shifted sum, NaN where coverage < ``rel_floor * max``."""
    cmax = float(coverage.max()) if coverage.size else 0.0
    out = np.full(shifted_sum.shape, np.nan)
    if cmax > 0:
        ok = coverage >= rel_floor * cmax
        out[ok] = shifted_sum[ok] / coverage[ok]
    return out


class OverfocusUDF(UDF):
    """Project every frame of an overfocused 4D-STEM scan into the specimen plane.

    Parameters
    ----------
    params : OverfocusParams
        Geometry (rotation, flip, overfocus, centre, descan, sizes).
    upsample : float
        Target pixels per scan pixel (default 1).
    disk_fraction : float
        Fraction of the bright-field disk radius used (default 0.95).

    Results (all float64; target images have the shape of
    :class:`~stemcal.processing.geometry.ProjectionGeometry`)
    -------
    point : nav
        Bilinear sample of each frame at its beam centre (a bright-field image).
    selected : single (H, W)
        The frame at the scan middle ``(ny // 2, nx // 2)`` projected to specimen coordinates.
    shifted_sum : single (H, W)
        All frames projected at their own scan positions and summed.
    sum : single (H, W)
        The sum of all frames projected as if taken at the scan middle (no descan).
    coverage : single (H, W)
        Summed disk weights behind ``shifted_sum``.
    shifted_sum_normalised : single (H, W)
        ``shifted_sum / coverage``, NaN where coverage is below 5 % of its maximum.

    Notes
    -----
    Dataset navigation must be 2D (ny, nx) and the signal 2D (detector y, x).
    Frames are read in their native dtype and splatted with bilinear weights.
    """

    def __init__(self, params: OverfocusParams, upsample: float = 1.0,
                 disk_fraction: float = 0.95, **kwargs):
        super().__init__(params=params, upsample=upsample, disk_fraction=disk_fraction, **kwargs)

    # -- set-up -------------------------------------------------------------
    def _geometry(self) -> ProjectionGeometry:
        nav = tuple(self.meta.dataset_shape.nav)
        sig = tuple(self.meta.dataset_shape.sig)
        if len(nav) != 2:
            raise ValueError(f"OverfocusUDF needs a 2D scan (ny, nx), dataset nav shape is {nav}")
        if len(sig) != 2:
            raise ValueError(f"OverfocusUDF needs 2D frames, dataset signal shape is {sig}")
        return ProjectionGeometry(self.params.params, nav, sig, upsample=self.params.upsample,
                                  disk_fraction=self.params.disk_fraction)

    def get_preferred_input_dtype(self):
        return self.USE_NATIVE_DTYPE

    def get_task_data(self):
        geo = self._geometry()
        return {"A": np.ascontiguousarray(geo.A), "geometry": geo}

    def get_result_buffers(self):
        shape = self._geometry().shape
        return {
            "point": self.buffer(kind="nav", dtype="float64"),
            "selected": self.buffer(kind="single", extra_shape=shape, dtype="float64"),
            "shifted_sum": self.buffer(kind="single", extra_shape=shape, dtype="float64"),
            "coverage": self.buffer(kind="single", extra_shape=shape, dtype="float64"),
            "frame_sum": self.buffer(kind="sig", dtype="float64", use="private"),
            "sum": self.buffer(kind="single", extra_shape=shape, dtype="float64",
                               use="result_only"),
            "shifted_sum_normalised": self.buffer(kind="single", extra_shape=shape,
                                                  dtype="float64", use="result_only"),
        }

    # -- processing ---------------------------------------------------------
    def process_tile(self, tile):
        geo: ProjectionGeometry = self.task_data.geometry
        scan_yx = np.asarray(self.meta.coordinates, dtype=float).reshape(-1, 2)
        centres = geo.centres(scan_yx)
        offsets = geo.offsets(scan_yx, centres)
        sig = self.meta.sig_slice
        oy, ox = int(sig.origin[0]), int(sig.origin[1])
        data = np.asarray(tile).reshape((tile.shape[0],) + tuple(sig.shape))
        A = self.task_data.A
        splat_frames(data, oy, ox, 1.0, 0.0, centres, offsets, A, geo.r_in, geo.r_out,
                     self.results.shifted_sum, self.results.coverage)
        pts = np.zeros(len(data))
        sample_points(data, oy, ox, centres, pts)
        self.results.point[:] += pts
        self.results.frame_sum[:] += data.sum(axis=0)
        mid = scan_middle(geo.nav_shape)
        hit = np.flatnonzero((scan_yx[:, 0] == mid[0]) & (scan_yx[:, 1] == mid[1]))
        if hit.size:
            i = int(hit[0])
            scratch = np.zeros_like(self.results.selected)
            splat_frames(data[i:i + 1], oy, ox, 1.0, 0.0, centres[i:i + 1], offsets[i:i + 1], A,
                         geo.r_in, geo.r_out, self.results.selected, scratch)

    def merge(self, dest, src):
        dest.point[:] += src.point
        dest.selected[:] += src.selected
        dest.shifted_sum[:] += src.shifted_sum
        dest.coverage[:] += src.coverage
        dest.frame_sum[:] += src.frame_sum

    def get_results(self):
        geo = self._geometry()
        mid = scan_middle(geo.nav_shape)[None, :]
        c0 = np.array([[geo.params.cy, geo.params.cx]])
        total = np.zeros(geo.shape)
        cov = np.zeros(geo.shape)
        frame_sum = np.asarray(self.results.frame_sum, dtype=float)
        splat_frames(frame_sum[None], 0, 0, 1.0, 0.0, c0, geo.offsets(mid, c0),
                     np.ascontiguousarray(geo.A), geo.r_in, geo.r_out, total, cov)
        return {
            "point": self.results.point,
            "selected": self.results.selected,
            "shifted_sum": self.results.shifted_sum,
            "coverage": self.results.coverage,
            "sum": total,
            "shifted_sum_normalised": normalised(self.results.shifted_sum, self.results.coverage),
        }
