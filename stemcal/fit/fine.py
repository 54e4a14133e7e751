"""Fine refinement of rotation and overfocus (optionally centre) by the blur loss."""
from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import numpy as np
from scipy import optimize

from ..twin.params import OverfocusParams
from .cache import DEFAULT_BUDGET, DEFAULT_WORK, ReducedCache, build_cache
from .loss import BlurLoss
from .optimise import minimise, quadratic_polish, uncertainty_from
from .passes import as_dataset, full_pass, image_quality
from .result import FitResult

log = logging.getLogger(__name__)


#: Uncertainties above which a fit is flagged (degrees, relative overfocus).
MAX_ROTATION_UNCERTAINTY = 0.5
MAX_OVERFOCUS_UNCERTAINTY = 0.02


def assess(success: bool, message: str, params: OverfocusParams, unc: dict) -> str:
    """``"ok"`` or the reason a fit should not be trusted."""
    if not success:
        return f"fit did not converge: {message}"
    rot = unc.get("scan_rotation")
    if rot is not None and not (rot <= MAX_ROTATION_UNCERTAINTY):
        return f"rotation uncertain ({rot:.2f} deg): too little specimen detail or too much blur"
    of = unc.get("overfocus")
    if of is not None and not (of <= MAX_OVERFOCUS_UNCERTAINTY * abs(params.overfocus)):
        return (f"overfocus uncertain ({100 * of / abs(params.overfocus):.1f} %): too little "
                "specimen detail or too much blur")
    return "ok"


def refine(dataset, start: OverfocusParams, *, ctx=None, free: Sequence[str] = ("scan_rotation", "overfocus"),
           rotation_bound: float = 6.0, overfocus_bound: float = 0.12, centre_bound: float = 3.0,
           metric: str = "contrast", method: str = "sobol-nm", cache: ReducedCache | None = None,
           budget: int = DEFAULT_BUDGET, work: int = DEFAULT_WORK, coarse_work: int = 3_000_000,
           confirm: bool = True, polish: bool = True, upsample: float = 1.0,
           coarse_tolerance: float | None = None, progress: bool = False) -> FitResult:
    """Refine scan rotation and overfocus (and optionally cy, cx) by the blur loss.

    The dataset is read once into a :class:`~stemcal.fit.cache.ReducedCache`
    and the loss evaluated there; a last full-resolution OverfocusUDF pass at
    the optimum gives the images and the reported blur (``confirm``).

    Parameters
    ----------
    dataset : libertem DataSet or (ny, nx, sy, sx) array
    start : OverfocusParams
        Starting geometry (flip, sign of overfocus and centre must be right
        unless ``cy``/``cx`` are free).
    ctx : libertem.api.Context, optional
        Runs the passes; default an inline context.
    free : sequence of str
        Parameters to fit, from ``scan_rotation``, ``overfocus``, ``cy``, ``cx``.
    rotation_bound : float
        Search ``start.scan_rotation +- rotation_bound``, degrees.
    overfocus_bound : float
        Search ``start.overfocus * (1 +- overfocus_bound)`` (relative).
    centre_bound : float
        Search ``cy, cx +- centre_bound`` detector px.
    metric : {'contrast', 'unbiased', 'gradient', 'crete'}
        Loss metric (:data:`stemcal.fit.METRICS`). ``contrast`` (default):
        contrast shared between four interleaved groups of frames.
        ``unbiased`` uses all pairs of detector pixels and was more precise on
        20 cold-start cases (worst 0.043 deg / 0.15 % against 0.074 deg /
        0.37 %), but removing the self-products leaves a term that depends on
        the sub-pixel phase of the projection: on a small disk (radius 11 px)
        without noise its optimum sat 0.4 deg off, so it is not the default.
        ``crete`` is the published blur metric.
    method : {'sobol-nm', 'shgo', 'nelder-mead', 'none'}
        Optimiser of the coarse search (:func:`minimise`); ``'none'`` goes
        straight to the polish from ``start``.
    polish : bool
        Finish with :func:`quadratic_polish` on the whole cache (gives the
        uncertainty); without it the coarse search's optimum is returned.
    cache : ReducedCache, optional
        Reuse a cache (no raw pass is then made for it).
    budget, work : int
        Cache size (bytes) and per-evaluation work bounds (:func:`build_cache`).
    coarse_work : int
        Per-evaluation work of the coarse search, which runs on every k-th
        cached scan position; the final polish (:func:`quadratic_polish`) uses the whole cache.
    coarse_tolerance : float, optional
        Stopping tolerance of the coarse Nelder-Mead in optimiser units
        (degrees, percent). Default 0.03 when a polish follows (it only has to
        land within a fraction of the polish's 0.3 deg / 0.5 % steps), else
        0.003 (its optimum is then the result). A caller that polishes later
        itself (:func:`~stemcal.fit.coarse.cold_start`) passes 0.03.

    Returns
    -------
    FitResult
    """
    t0 = time.perf_counter()
    if not 0 < overfocus_bound < 1:
        raise ValueError(f"overfocus_bound must be in (0, 1), got {overfocus_bound}")
    if rotation_bound <= 0 or centre_bound <= 0:
        raise ValueError("rotation_bound and centre_bound must be > 0")
    ctx, dataset = as_dataset(ctx, dataset)
    passes = 0
    if cache is None:
        cache = build_cache(ctx, dataset, params=start, budget=budget, work=work, progress=progress)
        passes += 1
    # Coarse search on a scan-sub-sampled view of the cache, polish on all of it.
    k = 1
    while k < 8 and cache.subsample(k).work(start.disk_radius_px) > coarse_work:
        k += 1
    coarse = BlurLoss(cache.subsample(k), start, free=tuple(free), metric=metric, upsample=upsample)
    loss = BlurLoss(cache, start, free=tuple(free), metric=metric, upsample=upsample)
    x0 = loss.x0()
    half = {"scan_rotation": rotation_bound, "overfocus": 100 * overfocus_bound,
            "cy": centre_bound, "cx": centre_bound}
    bounds = [(x - half[f], x + half[f]) for f, x in zip(loss.free, x0)]
    start_loss = loss(x0) if (polish or method == "none") else coarse(x0)
    if method == "none":
        res = optimize.OptimizeResult(x=x0, fun=start_loss, success=True, message="polish only")
    else:
        tol = coarse_tolerance if coarse_tolerance is not None else (0.03 if polish else 3e-3)
        res = minimise(coarse, bounds, method=method, x0=x0, xatol=tol,
                       fatol=math.inf if tol >= 0.01 else 1e-12)
    fine_steps = {"scan_rotation": 0.3, "overfocus": 0.5, "cy": 0.5, "cx": 0.5}
    steps = np.array([fine_steps[f] for f in loss.free])
    if polish:
        best_x, best_loss, info = quadratic_polish(loss, res.x, steps, bounds)
    else:
        best_x, best_loss, info = np.asarray(res.x), float(res.fun), {}
    best = loss.params_at(best_x)
    unc = dict(zip(loss.free, uncertainty_from(info).tolist()))
    if "overfocus" in unc:
        unc["overfocus"] = abs(best.overfocus) * unc["overfocus"] / 100  # percent -> metres
    at_edge = [f for f, x, (lo, hi) in zip(loss.free, best_x, bounds)
               if min(x - lo, hi - x) < 1e-3 * (hi - lo)]
    message = str(getattr(res, "message", ""))
    if at_edge:
        message = f"optimum at the search bound for {at_edge}; widen the bounds or improve the start"
    success = bool(res.success) and not at_edge and math.isfinite(best_loss)
    images: dict[str, np.ndarray] = {}
    blur = contrast = float("nan")
    if confirm:
        images = full_pass(ctx, dataset, best, progress=progress)
        passes += 1
        blur, contrast = image_quality(images)
    seconds = time.perf_counter() - t0
    log.info("refine: %s -> rot %.4f deg, overfocus %.6g m in %d evaluations, %.2f s",
             start.scan_rotation, best.scan_rotation, best.overfocus, loss.nfev, seconds)
    quality = assess(success, message, best, unc)
    return FitResult(params=best, start=start, loss=best_loss, quality=quality, blur=blur, contrast=contrast,
                     nfev=loss.nfev + coarse.nfev, passes=passes, seconds=seconds, success=success,
                     message=message, metric=metric, images=images,
                     extra={"start_loss": start_loss, "bin": cache.bin, "stride": cache.stride,
                            "coarse_stride": cache.stride * k, "coarse_nfev": coarse.nfev,
                            "uncertainty": unc,
                            "bounds": [list(b) for b in bounds], "free": list(loss.free)})
