"""The app's images: a dataset's reduced cache re-projected for any geometry.

:class:`CacheProjector` reads a dataset once into the fit's
:class:`~stemcal.fit.cache.ReducedCache` and re-projects the cached frames for
whatever geometry the operator sets, with the fit's own loss
(:class:`~stemcal.fit.loss.BlurLoss`): the images are those the fit judges.
A *preview* uses every second cached scan position along each axis (a
quarter of the frames), for redraws while a slider is dragged.

The four images have the names and meaning of the
:class:`~stemcal.processing.OverfocusUDF`'s, made from the cache:

* ``point`` -- each cached frame sampled at its beam centre (a bright-field
  image on the cached scan grid);
* ``selected`` -- the cached frame nearest the scan middle, projected;
* ``shifted_sum`` -- every cached frame projected at its scan position and
  normalised by its coverage (NaN where the coverage is below 5 % of its maximum);
* ``sum`` -- the full-resolution frame sum projected as if taken at the scan middle.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from ..fit.cache import DEFAULT_BUDGET, ReducedCache, build_cache
from ..fit.loss import BlurLoss
from ..fit.metrics import contrast_loss, crete_blur, filled_image
from ..processing.images import normalised
from ..processing.kernels import sample_points, splat_frames
from ..twin.model import scan_middle
from ..twin.params import OverfocusParams

__all__ = ["Projection", "CacheProjector", "IMAGE_ORDER"]

#: The images of a :class:`Projection`, in the order the app shows them.
IMAGE_ORDER = ("point", "selected", "shifted_sum", "sum")

#: The target grid is made anew when the magnification leaves this factor of the grid's own.
_GRID_FACTOR = 1.4


@dataclasses.dataclass(frozen=True)
class Projection:
    """The images of one geometry.

    Attributes
    ----------
    params : OverfocusParams
        The geometry the images were projected with.
    images : dict of str to (h, w) float32
        :data:`IMAGE_ORDER`; NaN where nothing was projected.
    blur : float
        Crete blur (0 sharp .. 1 blurred) of the coverage-filled shifted sum, as the fit
        reports it (:func:`stemcal.fit.metrics.crete_blur` of
        :func:`~stemcal.fit.metrics.filled_image`); NaN when nothing was projected. It
        judges images near the right geometry; far from it the shifted sum is flat
        and its noise can look sharp.
    contrast : float
        The contrast the fit maximises (minus :func:`stemcal.fit.metrics.contrast_loss`
        of the groups of frames; higher is sharper, about 0 far from the geometry).
    preview : bool
        Made from a quarter of the cached frames.
    seconds : float
        Wall time of the projection.
    """

    params: OverfocusParams
    images: dict[str, np.ndarray]
    blur: float
    contrast: float
    preview: bool
    seconds: float


class CacheProjector:
    """Re-project a dataset's reduced cache for any geometry (thread-safe).

    Parameters
    ----------
    cache : ReducedCache
        From :func:`stemcal.fit.cache.build_cache` (or :meth:`from_dataset`).
    start : OverfocusParams
        A geometry near those that will be asked for: it fixes the target grid
        (made anew when the magnification moves more than a factor 1.4 away, or
        the disk radius by more than half a pixel).
    preview_step : int
        The preview uses every ``preview_step``-th cached scan position along each axis.
    groups : int
        Interleaved groups of frames, projected on the loss's two threads (2: both cores).
    """

    def __init__(self, cache: ReducedCache, start: OverfocusParams, *, preview_step: int = 2,
                 groups: int = 2) -> None:
        self.cache = cache
        self.preview_step = int(preview_step)
        self.groups = int(groups)
        self._lock = threading.Lock()
        self._losses = self._make_losses(start)
        mid = scan_middle(cache.nav_shape)
        self._middle = int(np.argmin(((cache.scan_yx - mid) ** 2).sum(axis=1)))

    @classmethod
    def from_dataset(cls, ctx, dataset, start: OverfocusParams, *,
                     budget: int = DEFAULT_BUDGET, progress=False, **kwargs) -> "CacheProjector":
        """Read ``dataset`` once (one pass over the raw data) into a cache, as the fit does:
        bounded by the memory ``budget`` (bytes) only, binned as the magnification allows,
        except that every pixel counts 4 bytes against the budget whatever the data (a
        redraw projects every cached frame: the fit's cache of a 128x128 scan of uint16
        frames holds four times the frames, which would make the all-frames redraw four
        times slower). ``progress``: LiberTEM's (a bool, or a ``ProgressReporter``)."""
        cache = build_cache(ctx, dataset, params=start, budget=budget, work=2**62,
                            budget_dtype=np.float32, progress=progress)
        return cls(cache, start, **kwargs)

    def _make_losses(self, start: OverfocusParams) -> dict[bool, BlurLoss]:
        preview = self.cache.subsample(self.preview_step)
        return {False: BlurLoss(self.cache, start, groups=self.groups),
                True: BlurLoss(preview, start, groups=self.groups)}

    def _loss(self, params: OverfocusParams, preview: bool) -> BlurLoss:
        with self._lock:
            grid = self._losses[False].start
            ratio = abs(params.magnification_ratio / grid.magnification_ratio)
            # the grid's disk radius is fixed too: a new semi-angle (from Auto) needs a new grid
            if (not 1 / _GRID_FACTOR <= ratio <= _GRID_FACTOR
                    or abs(params.disk_radius_px - grid.disk_radius_px) > 0.5):
                self._losses = self._make_losses(params)
            return self._losses[preview]

    def project(self, params: OverfocusParams, *, preview: bool = False) -> Projection:
        """The images and blur of ``params`` from the cache (or its preview)."""
        t0 = time.perf_counter()
        loss = self._loss(params, preview)
        groups_S, groups_C = loss.project(params)
        S, C = groups_S.sum(axis=0), groups_C.sum(axis=0)
        geo = loss.geometry.with_params(params)
        images = {"point": self._point(geo), "selected": self._selected(geo),
                  "shifted_sum": normalised(S, C), "sum": self._sum(geo)}
        try:
            blur = crete_blur(filled_image(S, C))
            contrast = -contrast_loss(groups_S, groups_C)
        except ValueError:  # nothing projected (the disks miss the detector)
            blur = contrast = float("nan")
        images = {k: np.asarray(v, dtype=np.float32) for k, v in images.items()}
        return Projection(params=params, images=images, blur=blur, contrast=contrast,
                          preview=preview, seconds=time.perf_counter() - t0)

    # -- the images besides the shifted sum ---------------------------------------------------
    def _point(self, geo) -> np.ndarray:
        c = self.cache
        centres = (geo.centres(c.scan_yx) - c.pix_offset) / c.pix_scale  # binned index coords
        values = np.zeros(len(c.frames))
        sample_points(c.frames, 0, 0, np.ascontiguousarray(centres), values)
        grid = np.rint(c.scan_yx / c.stride).astype(int)
        out = np.full((grid[:, 0].max() + 1, grid[:, 1].max() + 1), np.nan)
        out[grid[:, 0], grid[:, 1]] = values / c.bin ** 2
        return out

    def _selected(self, geo) -> np.ndarray:
        c, i = self.cache, self._middle
        scan = c.scan_yx[i:i + 1]
        centres = geo.centres(scan)
        return self._splat(geo, c.frames[i:i + 1], c.pix_scale, c.pix_offset, centres,
                           geo.offsets(scan, centres))[0]

    def _sum(self, geo) -> np.ndarray:
        c = self.cache
        mid = scan_middle(c.nav_shape)[None, :]
        c0 = np.array([[geo.params.cy, geo.params.cx]])
        return self._splat(geo, c.frame_sum[None], 1.0, 0.0, c0, geo.offsets(mid, c0))[0]

    @staticmethod
    def _splat(geo, frames, pix_scale, pix_offset, centres, offsets):
        out, cov = np.zeros(geo.shape), np.zeros(geo.shape)
        splat_frames(np.ascontiguousarray(frames), 0, 0, float(pix_scale), float(pix_offset),
                     np.ascontiguousarray(centres), np.ascontiguousarray(offsets),
                     np.ascontiguousarray(geo.A), geo.r_in, geo.r_out, out, cov)
        return out, cov
