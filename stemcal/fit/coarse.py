"""Cold-start calibration: rotation, handedness, scale, centre and descan from the data.

Steps (each a pure function of the cached frames):

1. the frame sum locates the bright-field disk (centre, radius; semiconv if unknown);
2. the aperture edge of block-averaged frames, regressed on scan position,
   gives the beam centre at the scan middle and the descan matrix ``D``
   (elements not significant against their noise are zero; :mod:`.edge`);
3. phase correlation of frame pairs measures the shadow-image motion
   ``M = D - A^-1``, so ``A = (D - M)^-1``: its determinant's sign is the
   handedness, its angle the rotation, its scale the overfocus (the sign of
   the overfocus guess resolves the 180 degree ambiguity of underfocus);
4. the blur loss refines rotation and overfocus (:func:`stemcal.fit.refine`):
   a search on the whole disk, the final polish on the inner disk with the
   uncertainty in parts (:mod:`.parts`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import numpy as np

from ..twin.model import decompose_matrix, scan_middle
from ..twin.params import OverfocusParams, overfocus_from_ratio
from .cache import DEFAULT_BUDGET, ReducedCache, build_cache, loss_bin
from .disk import NoFeaturesError, check_disk_contrast, find_disk
from .edge import DescanEstimate, descan_from_edges
from .fine import refine
from .passes import as_dataset, require_2d_scan
from .result import FitResult
from .shift import MotionFit, measure_motion

log = logging.getLogger(__name__)


#: Least travel of the shadow image across the whole scan (detector px, along its slowest
#: direction) to calibrate on. A real overfocused scan moves it by tens of px or more
#: (64 scan px at 0.5-2 px each; the multislice validation set 35-60 px); frames that do
#: not change with the scan give 1e-14 to 0.01. Below a few px the geometry is that of a
#: shadow image sampled far more coarsely than the scan: a 16x16 scan whose texture
#: moved 0.84 px in all (a pattern fixed to the beam, descan only) was "fitted" to an
#: overfocus 35 times the guess, on a target grid of 1729x1729 px that took 8 GB and 93 s.
MIN_TRAVEL = 2.0


@dataclasses.dataclass(frozen=True)
class CoarseEstimate:
    """What the cold start measured before refinement."""

    params: OverfocusParams
    descan: DescanEstimate
    motion: MotionFit
    disk_radius: float


def estimate(cache: ReducedCache, *, scan_pixel_size: float, camera_length: float,
             detector_pixel_size: float, overfocus: float, semiconv: float | None = None) -> CoarseEstimate:
    """Coarse geometry from a cache; ``overfocus`` only gives the sign (and a semiconv).

    Raises
    ------
    NoFeaturesError
        No beam on the detector, or no specimen features to track.
    """
    if not math.isfinite(overfocus) or overfocus == 0:
        raise ValueError(f"overfocus guess must be finite and non-zero, got {overfocus}")
    b = cache.bin
    n = len(cache.frames)
    mean_binned = cache.mean_frame()
    disk_b = find_disk(mean_binned)
    check_disk_contrast(cache.frames, disk_b)
    # The descan from the aperture edge of block averages (model-free, see .edge). The
    # error matters: the blur loss fixes the shadow motion D - A^-1, so an error in D
    # goes one to one into A^-1 (0.002 is about 0.1 degree).
    s_mid = scan_middle(cache.nav_shape)
    descan = descan_from_edges(cache.frames, cache.scan_yx, s_mid, (disk_b.cy, disk_b.cx),
                               disk_b.radius, pix_scale=cache.pix_scale,
                               pix_offset=cache.pix_offset)
    radius = descan.radius
    # Window: well inside the disk, on the mean centre (binned px).
    spread = float(np.abs(descan.matrix).sum(axis=1).max()) * max(cache.nav_shape) / 2
    win_r = (0.85 * radius - spread) / b
    if win_r < 4:
        raise NoFeaturesError("the bright-field disk is too small (or moves too much) to track "
                              "the shadow image")
    c_mean = (descan.offset + descan.matrix @ (cache.scan_yx.mean(axis=0) - s_mid)
              - cache.pix_offset) / cache.pix_scale
    motion = measure_motion(cache.frames, cache.scan_yx, cache.stride, tuple(c_mean), win_r,
                            pix_scale=cache.pix_scale, remove_static=bool(cache.defects))
    M = descan.matrix - motion.motion
    # the shadow's travel across the scan along its slowest direction (detector px): where
    # it is below MIN_TRAVEL nothing moves with the scan (the same frame everywhere, a
    # pattern fixed on the detector or moving with the beam only, a blank specimen)
    slowest = float(np.linalg.svd(M, compute_uv=False).min()) if np.isfinite(M).all() else 0.0
    if not slowest * max(cache.nav_shape) >= MIN_TRAVEL:
        raise NoFeaturesError(
            f"the shadow image does not move with the scan ({slowest * max(cache.nav_shape):.2g} "
            f"detector px across it, {MIN_TRAVEL:g} needed): no specimen detail to calibrate on")
    A = np.linalg.inv(M)
    theta, flip, k = decompose_matrix(A)
    d_over_l = overfocus / camera_length
    k_sign = 1.0 if (d_over_l > 0 or d_over_l < -1) else -1.0
    if k_sign < 0:
        theta = (theta + 360.0) % 360.0 - 180.0
    d = overfocus_from_ratio(k_sign * k, scan_pixel_size=scan_pixel_size,
                             camera_length=camera_length, detector_pixel_size=detector_pixel_size)
    if semiconv is None:
        semiconv = radius * detector_pixel_size / abs(d + camera_length)
    params = OverfocusParams(
        overfocus=d, scan_pixel_size=scan_pixel_size, camera_length=camera_length,
        detector_pixel_size=detector_pixel_size, semiconv=semiconv,
        cy=float(descan.offset[0]), cx=float(descan.offset[1]), scan_rotation=theta, flip_y=flip,
        descan=descan.matrix)
    log.info("coarse: rot %.2f deg, flip %s, overfocus %.4g m, centre (%.2f, %.2f), %d frames",
             theta, flip, d, descan.offset[0], descan.offset[1], n)
    return CoarseEstimate(params=params, descan=descan, motion=motion, disk_radius=radius)


def cold_start(dataset, *, scan_pixel_size: float, camera_length: float, detector_pixel_size: float,
               overfocus: float, semiconv: float | None = None, ctx=None,
               budget: int = DEFAULT_BUDGET, rotation_bound: float = 5.0,
               overfocus_bound: float = 0.12, confirm: bool = True, progress: bool | object = False,
               on_stage: Callable[[str], None] | None = None, **refine_kwargs) -> FitResult:
    """Calibrate from a cold start: only sizes and a signed overfocus guess needed.

    Parameters
    ----------
    dataset : libertem DataSet or 4D array
    scan_pixel_size, camera_length, detector_pixel_size : float
        Metres.
    overfocus : float
        Guess, metres; its sign must be right (underfocus negative), its
        magnitude is not used beyond choosing the semiconv when that is unknown.
    semiconv : float, optional
        Radians; measured from the disk radius when not given.
    rotation_bound, overfocus_bound : float
        Refinement box around the coarse estimate (degrees, relative).
    progress : bool or libertem.common.progress.ProgressReporter
        LiberTEM's progress of the passes over the raw data (True: tqdm).
    on_stage : callable ``(stage: str) -> None``, optional
        Called as the fit reaches each stage: ``"cache pass"``, ``"coarse
        estimate"``, ``"refinement"``, ``"final stage"`` (which ends with
        the confirming pass) and ``"done"``
        (:class:`stemcal.fit.progress.FitProgress` takes both).

    Returns
    -------
    FitResult
        ``extra`` holds ``descan`` (matrix, offset), ``uncertainty`` and
        ``quality`` (``"ok"`` or a reason).

    Raises
    ------
    NoFeaturesError
        Nothing to calibrate on: no beam, blank or uniform specimen.
    """
    t0 = time.perf_counter()
    stage = on_stage or (lambda name: None)
    ctx, dataset = as_dataset(ctx, dataset)
    require_2d_scan(dataset)
    stage("cache pass")
    # Bounded by memory only: the refinement sub-samples for its search itself, and
    # its final polish needs every frame (the rotation error at 3 counts/px doubles
    # with a quarter of them).
    cache = build_cache(ctx, dataset, budget=budget, work=2**62, progress=progress)
    log.info("cache built in %.2f s", time.perf_counter() - t0)
    stage("coarse estimate")
    coarse = estimate(cache, scan_pixel_size=scan_pixel_size, camera_length=camera_length,
                      detector_pixel_size=detector_pixel_size, overfocus=overfocus,
                      semiconv=semiconv)
    log.info("coarse estimate after %.2f s", time.perf_counter() - t0)
    # The loss runs on frames binned as far as the shadow image's sampling allows; the
    # disk and descan estimates keep the cache's full resolution.
    fcache = cache.rebinned(loss_bin(coarse.params.magnification_ratio * cache.bin,
                                     cache.frames.shape[1:]))
    fit = refine(dataset, coarse.params, ctx=ctx, cache=fcache, rotation_bound=rotation_bound,
                 overfocus_bound=overfocus_bound, confirm=confirm, progress=progress,
                 descan_sigma=coarse.descan.sigma(), on_stage=stage, **refine_kwargs)
    fit.passes += 1
    fit.seconds = time.perf_counter() - t0
    fit.extra["coarse"] = {"scan_rotation": coarse.params.scan_rotation,
                           "flip_y": coarse.params.flip_y, "overfocus": coarse.params.overfocus,
                           "motion_step": coarse.motion.step,
                           "motion_strength": coarse.motion.strength}
    fit.extra["frame_sum"] = cache.frame_sum
    if cache.defects:
        fit.extra["defects"] = dict(cache.defects)
    fit.extra["descan"] = coarse.descan.to_dict()
    stage("done")
    return fit
