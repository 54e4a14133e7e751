"""Cold-start calibration: rotation, handedness, scale, centre and descan from the data.

Steps (each a pure function of the cached frames):

1. the frame sum locates the bright-field disk (centre, radius; semiconv if unknown);
2. every frame's disk centre, regressed on scan position, gives the beam
   centre at the scan middle and the descan matrix ``D``;
3. phase correlation of frame pairs measures the shadow-image motion
   ``M = D - A^-1``, so ``A = (D - M)^-1``: its determinant's sign is the
   handedness, its angle the rotation, its scale the overfocus (the sign of
   the overfocus guess resolves the 180 degree ambiguity of underfocus);
4. the blur loss refines rotation and overfocus (:func:`stemcal.fit.refine`).
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
from ..processing.threads import available_cores, run_threads
from .cache import DEFAULT_BUDGET, ReducedCache, build_cache, loss_bin
from .disk import DescanFit, NoFeaturesError, disk_centres, find_disk, fit_descan
from .metrics import filled_image
from .fine import refine
from .passes import as_dataset
from .loss import BlurLoss
from .result import FitResult
from .shift import MotionFit, measure_motion

log = logging.getLogger(__name__)

#: Threads for the transmission prediction (a GIL-free Numba kernel).
_THREADS = available_cores()


@dataclasses.dataclass(frozen=True)
class CoarseEstimate:
    """What the cold start measured before refinement."""

    params: OverfocusParams
    descan: DescanFit
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
    mean_binned = cache.frames.mean(axis=0)
    disk_b = find_disk(mean_binned)
    radius = disk_b.radius * b
    # A low threshold (15 % of the way from background to the disk level)
    # after 1 px smoothing: dark specimen features inside the disk then rarely
    # fall below it. Measured on 3 counts/px simulations: descan matrix
    # errors 0.3-0.5e-3 px/scan px, against 1-1.9e-3 at 50 %. The error
    # matters: the blur loss fixes the shadow motion D - A^-1, so an error
    # in D goes one to one into A^-1 (0.002 is about 0.1 degree).
    thr = disk_b.background + 0.15 * (disk_b.level - disk_b.background)
    centres = disk_centres(cache.frames, thr, pix_scale=cache.pix_scale, pix_offset=cache.pix_offset,
                           smooth=1.0)
    s_mid = scan_middle(cache.nav_shape)
    descan = fit_descan(centres, cache.scan_yx, s_mid)
    # Window: well inside the disk, on the mean centre (binned px).
    spread = float(np.abs(descan.matrix).sum(axis=1).max()) * max(cache.nav_shape) / 2
    win_r = (0.85 * radius - spread) / b
    if win_r < 4:
        raise NoFeaturesError("the bright-field disk is too small (or moves too much) to track "
                              "the shadow image")
    c_mean = (np.nanmean(centres, axis=0) - cache.pix_offset) / cache.pix_scale
    motion = measure_motion(cache.frames, cache.scan_yx, cache.stride, tuple(c_mean), win_r,
                            pix_scale=cache.pix_scale)
    M = descan.matrix - motion.motion
    det = float(np.linalg.det(M)) if np.isfinite(M).all() else 0.0
    if not abs(det) > 1e-12 * max(float(np.abs(M).max()) ** 2, 1e-300):
        # no shadow motion was found (e.g. a blank, noise-free specimen)
        raise NoFeaturesError("the shadow image does not move with the scan: no specimen "
                              "detail to calibrate on")
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


def transmission_normalised_centres(cache: ReducedCache, params: OverfocusParams,
                                    image: np.ndarray, origin: np.ndarray, upsample: float,
                                    *, radius: float | None = None,
                                    chunk: int = 256) -> np.ndarray:
    """Disk centres of frames divided by the specimen contrast the model predicts.

    The specimen's features near the disk edge pull every edge-based centre;
    they move with the scan and so bias the descan regression (measured:
    about 1e-3 px/scan px on 35x35 scans at 3 counts/px, which is 0.05-0.1
    degree of rotation). With a first geometry and the shifted-sum image
    ``image`` (target grid ``origin``, ``upsample``), each frame's expected
    transmission is predicted and divided out, leaving a flat disk.

    Only a box around the disks of each chunk of frames is predicted and measured:
    ``radius`` (detector px; default the geometry's disk radius) plus 15 % and 8 binned px,
    around the beam centres ``params`` predicts. Outside it there is only background,
    which the centroid's mask leaves out anyway.
    """
    from ..twin.model import beam_centres, specimen_matrix
    from ..twin.simulate import render_shadow_frames
    b = cache.bin
    A_b = specimen_matrix(params) * b
    img = np.ascontiguousarray(image, dtype=np.float64)
    floor = 0.05 * float(np.median(img))
    img = np.maximum(img, floor)
    out = np.full((len(cache.frames), 2), np.nan)
    n, h, w = cache.frames.shape
    r_b = (params.disk_radius_px if radius is None else float(radius)) / b
    pad = 1.15 * r_b + 8.0
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        scan = cache.scan_yx[sl]
        centres_b = (beam_centres(params, scan, cache.nav_shape) - cache.pix_offset) / b
        y0, x0 = (max(0, int(math.floor(v - pad))) for v in centres_b.min(axis=0))
        y1, x1 = (min(s, int(math.ceil(v + pad)) + 1)
                  for v, s in zip(centres_b.max(axis=0), (h, w)))
        if y1 - y0 < 3 or x1 - x0 < 3:
            continue  # the disks lie off the detector: no centres
        T = np.empty((len(scan), y1 - y0, x1 - x0))
        box_centres = centres_b - (y0, x0)

        def predict(t: int, i0: int, i1: int) -> None:
            render_shadow_frames(img, float(origin[0]), float(origin[1]), float(upsample), A_b,
                             scan[i0:i1], box_centres[i0:i1], 1e12, 1.0, 0.0, T[i0:i1])

        run_threads(predict, len(scan), _THREADS)
        T /= np.median(T[:, ::3, ::3])  # a scale only: a sub-sample's median will do
        normed = cache.frames[sl, y0:y1, x0:x1] / T
        disk = find_disk(normed.mean(axis=0))
        lv, bg = disk.level, disk.background
        out[sl] = disk_centres(normed, bg + 0.02 * (lv - bg), upper=bg + 0.2 * (lv - bg),
                               pix_scale=cache.pix_scale,
                               pix_offset=cache.pix_offset) + np.array([y0, x0]) * cache.pix_scale
    return out


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
        estimate"``, ``"refinement"``, ``"descan"``, ``"polish"`` (which
        ends with the confirming pass) and ``"done"``
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
    stage("cache pass")
    # Bounded by memory only: the refinement sub-samples for its coarse search
    # itself, and its final polish needs every frame (the rotation error at
    # 3 counts/px doubles with a quarter of them).
    cache = build_cache(ctx, dataset, budget=budget, work=2**62, progress=progress)
    log.info("cache built in %.2f s", time.perf_counter() - t0)
    stage("coarse estimate")
    coarse = estimate(cache, scan_pixel_size=scan_pixel_size, camera_length=camera_length,
                      detector_pixel_size=detector_pixel_size, overfocus=overfocus,
                      semiconv=semiconv)
    log.info("coarse estimate after %.2f s", time.perf_counter() - t0)
    # The loss runs on frames binned as far as the shadow image's sampling allows (as in
    # refine); the disk and descan estimates keep the cache's full resolution.
    fcache = cache.rebinned(loss_bin(coarse.params.magnification_ratio * cache.bin,
                                     cache.frames.shape[1:]))
    stage("refinement")
    first = refine(dataset, coarse.params, ctx=ctx, cache=fcache, rotation_bound=rotation_bound,
                   overfocus_bound=overfocus_bound, confirm=False, polish=False,
                   coarse_tolerance=0.03,  # the polish below finishes the job
                   progress=progress, **refine_kwargs)
    # Second round: descan from frames with the specimen's contrast divided out
    # (the blur loss fixes only D - A^-1, so D's error goes into the rotation).
    stage("descan")
    loss = BlurLoss(fcache, first.params)
    S, C = loss.project(first.params)
    image = filled_image(S.sum(axis=0), C.sum(axis=0))
    centres = transmission_normalised_centres(cache, first.params, image, loss.geometry.origin,
                                              loss.geometry.upsample, radius=coarse.disk_radius)
    descan = fit_descan(centres, cache.scan_yx, scan_middle(cache.nav_shape))
    second_start = first.params.replace(descan=descan.matrix, cy=float(descan.offset[0]),
                                        cx=float(descan.offset[1]))
    log.info("descan re-estimated after %.2f s", time.perf_counter() - t0)
    stage("polish")
    fit = refine(dataset, second_start, ctx=ctx, cache=fcache, rotation_bound=1.0,
                 overfocus_bound=0.03, method="none", confirm=confirm, progress=progress,
                 **refine_kwargs)
    fit.nfev += first.nfev
    fit.passes += 1
    coarse = dataclasses.replace(coarse, descan=descan)
    fit.seconds = time.perf_counter() - t0
    fit.extra["coarse"] = {"scan_rotation": coarse.params.scan_rotation,
                           "flip_y": coarse.params.flip_y, "overfocus": coarse.params.overfocus,
                           "motion_step": coarse.motion.step,
                           "motion_strength": coarse.motion.strength}
    fit.extra["frame_sum"] = cache.frame_sum
    fit.extra["descan"] = {"matrix": coarse.descan.matrix.tolist(),
                           "offset": coarse.descan.offset.tolist(),
                           "residual_px": coarse.descan.residual}
    stage("done")
    return fit
