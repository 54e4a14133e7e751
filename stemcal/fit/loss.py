"""The blur loss: project cached frames with trial parameters, measure blur."""
from __future__ import annotations

import copy
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ..processing.geometry import ProjectionGeometry
from ..processing.kernels import splat_frame_rows, splat_frames_moments
from ..twin.params import OverfocusParams
from .metrics import METRICS
from .cache import ReducedCache

_POOL: ThreadPoolExecutor | None = None


def loss_pool() -> ThreadPoolExecutor:
    """The two threads the loss's kernels run on (they release the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stemcal-loss")
    return _POOL


#: Parameters the loss can vary, with the unit of one optimiser step.
FREE_PARAMETERS = ("scan_rotation", "overfocus", "cy", "cx")


@dataclasses.dataclass
class BlurLoss:
    """Loss ``x -> blur`` over a :class:`ReducedCache`.

    ``x`` holds the free parameters in optimiser units, all of order 1 for a
    typical search: ``scan_rotation`` in degrees, ``overfocus`` as percent
    change from the start (``100 (d / d0 - 1)``), ``cy``/``cx`` in detector
    pixels relative to the start.

    The target grid and disk radii are fixed from ``start`` so that the loss
    does not jump when the grid would grow by a pixel.

    ``disk_fraction`` is the outer radius of the part of the bright-field disk
    that is projected, as a fraction of the disk radius; with ``hole_fraction``
    > 0 the part inside that radius is left out (an annulus: shifted sums and
    coverages are linear in the disk weight, so the annulus is the difference
    of two disk projections on one grid).

    ``step`` > 1 uses every ``step``-th cached scan position along each axis (the
    frames of ``cache.subsample(step)``, read in place: the search's cheap loss).
    """

    cache: ReducedCache
    start: OverfocusParams
    free: Sequence[str] = ("scan_rotation", "overfocus")
    upsample: float = 1.0
    metric: str = "contrast"
    margin_factor: float = 1.6
    groups: int = 4
    disk_fraction: float = 0.95
    hole_fraction: float = 0.0
    step: int = 1
    nfev: int = 0

    def __post_init__(self) -> None:
        bad = [f for f in self.free if f not in FREE_PARAMETERS]
        if bad:
            raise ValueError(f"cannot fit {bad}; choose from {FREE_PARAMETERS}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {sorted(METRICS)}")
        if not 0 <= self.hole_fraction < self.disk_fraction:
            raise ValueError(f"hole_fraction must be in [0, disk_fraction), got {self.hole_fraction}")
        full = ProjectionGeometry(self.start, self.cache.nav_shape, self.cache.sig_shape,
                                  upsample=self.upsample)
        self.geometry = ProjectionGeometry(self.start, self.cache.nav_shape, self.cache.sig_shape,
                                           upsample=self.upsample, disk_fraction=self.disk_fraction)
        # Room for trial magnifications up to margin_factor x the start's (the grid of the
        # whole disk, so that losses on parts of it share one grid).
        self.geometry = dataclasses.replace(
            self.geometry, fixed_margin=full.margin * self.margin_factor + 1,
            fixed_r_out=self.geometry.r_out)
        self._hole = None
        if self.hole_fraction > 0:
            self._hole = dataclasses.replace(
                self.geometry, fixed_r_out=self.hole_fraction * self.start.disk_radius_px)
        # Interleaved groups of the scan (a 2x2 sub-lattice of cached positions,
        # or a checkerboard for two), projected separately so that metrics can
        # separate signal from noise.
        if self.metric == "unbiased":
            self.groups = 1
        if self.groups not in (1, 2, 4, 9):
            raise ValueError(f"groups must be 2, 4 or 9, got {self.groups}")
        # (rows, scan_yx) per group, of every step-th cached position along each axis
        self._groups = self.cache.group_rows(self.groups, self.step)

    def shuffled(self, rng: np.random.Generator) -> "BlurLoss":
        """This loss with the scan positions permuted at random within each group of
        frames (the frames themselves are shared, not copied): nothing adds up coherently."""
        other = copy.copy(self)
        other._groups = [(rows, scan_yx[rng.permutation(len(scan_yx))])
                         for rows, scan_yx in self._groups]
        other.nfev = 0
        return other

    def x0(self) -> np.ndarray:
        """Optimiser coordinates of the start parameters."""
        return self.to_x(self.start)

    def to_x(self, p: OverfocusParams) -> np.ndarray:
        conv = {"scan_rotation": p.scan_rotation, "overfocus": 100 * (p.overfocus / self.start.overfocus - 1),
                "cy": p.cy - self.start.cy, "cx": p.cx - self.start.cx}
        return np.array([conv[f] for f in self.free], dtype=float)

    def params_at(self, x: Sequence[float]) -> OverfocusParams:
        """The parameters at optimiser coordinates ``x``."""
        changes = {}
        for name, v in zip(self.free, x):
            v = float(v)
            if name == "scan_rotation":
                changes[name] = v
            elif name == "overfocus":
                changes[name] = self.start.overfocus * (1 + v / 100)
            else:
                changes[name] = getattr(self.start, name) + v
        return self.start.replace(**changes)

    def project(self, params: OverfocusParams, grid_shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Shifted sums and coverages of the groups of cached frames, (K, H, W) each.

        ``grid_shift`` moves the target grid by that fraction of a target px along both
        axes (its sub-pixel phase against the scan lattice).
        """
        geo = self._shifted(self.geometry, grid_shift).with_params(params)
        S, C = self._project(geo)
        if self._hole is not None:
            S_hole, C_hole = self._project(self._shifted(self._hole, grid_shift).with_params(params))
            S -= S_hole
            C -= C_hole
            empty = C <= 1e-9 * float(C.max())  # rounding left where only the hole projected
            S[empty] = 0.0
            C[empty] = 0.0
        return S, C

    def _shifted(self, geo: ProjectionGeometry, grid_shift: float) -> ProjectionGeometry:
        if not grid_shift:
            return geo
        return dataclasses.replace(geo, fixed_margin=geo.fixed_margin + grid_shift / self.upsample)


    def _project(self, geo: ProjectionGeometry) -> tuple[np.ndarray, np.ndarray]:
        c = self.cache
        A = np.ascontiguousarray(geo.A)
        if self.metric == "unbiased":
            if self._hole is not None:
                raise ValueError("the unbiased metric cannot use an annulus")
            return self._project_moments(geo, A)
        out = np.zeros((self.groups,) + geo.shape)
        cov = np.zeros((self.groups,) + geo.shape)

        def half(k: int) -> None:
            rows, scan_yx = self._groups[k]
            centres = geo.centres(scan_yx)
            offsets = geo.offsets(scan_yx, centres)
            splat_frame_rows(c.frames, rows, c.pix_scale, c.pix_offset, centres, offsets,
                             A, geo.r_in, geo.r_out, out[k], cov[k])

        # The kernel releases the GIL: the groups run on two threads.
        list(loss_pool().map(half, range(self.groups)))
        return out, cov

    def _project_moments(self, geo: ProjectionGeometry, A: np.ndarray):
        """Shifted sum, coverage and squared contributions, each (1, H, W).

        The frames are split in two halves that run on two threads into
        separate accumulators, then added.
        """
        c = self.cache
        rows, scan_yx = self._groups[0]   # one group: its frames in cache order
        frames = c.frames if len(rows) == len(c.frames) else c.frames[rows]
        acc = np.zeros((2, 3) + geo.shape)
        bounds = [0, len(frames) // 2, len(frames)]

        def part(k: int) -> None:
            sl = slice(bounds[k], bounds[k + 1])
            centres = geo.centres(scan_yx[sl])
            offsets = geo.offsets(scan_yx[sl], centres)
            splat_frames_moments(frames[sl], 0, 0, c.pix_scale, c.pix_offset, centres, offsets,
                                 A, geo.r_in, geo.r_out, acc[k, 0], acc[k, 1], acc[k, 2])

        list(loss_pool().map(part, (0, 1)))
        total = acc.sum(axis=0)
        self._squares = total[2][None]
        return total[0][None], total[1][None]

    def value(self, params: OverfocusParams, grid_shift: float = 0.0) -> float:
        """The metric of the cached frames projected with ``params`` (``grid_shift``: see
        :meth:`project`)."""
        S, C = self.project(params, grid_shift)
        if self.metric == "unbiased":
            return METRICS[self.metric](S, C, self._squares)
        return METRICS[self.metric](S, C)

    def __call__(self, x: Sequence[float]) -> float:
        self.nfev += 1
        return self.value(self.params_at(x))
