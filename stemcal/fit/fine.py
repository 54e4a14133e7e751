"""Refinement of rotation and overfocus (optionally centre) by the blur loss.

Two stages: a search on the whole disk at one target px per scan px (cheap,
on a sub-sampled cache), widened and retried while its optimum sits at the
search bound; then the final stage: each parameter from the parts of the
disk the geometric model holds on, with the uncertainty in parts
(:mod:`.parts`), the significance of the contrast (:mod:`.null`) and the
quality.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..twin.params import OverfocusParams
from .cache import DEFAULT_BUDGET, DEFAULT_WORK, ReducedCache, build_cache
from .loss import BlurLoss
from .null import MIN_SIGNIFICANCE, contrast_significance
from .optimise import Minimum, minimise
from .parts import finish
from .passes import as_dataset, full_pass, image_quality, require_2d_scan
from .result import FitResult

log = logging.getLogger(__name__)

#: Uncertainties above which a fit is flagged (degrees, relative overfocus).
MAX_ROTATION_UNCERTAINTY = 0.5
MAX_OVERFOCUS_UNCERTAINTY = 0.02
#: Widenings of the search when its optimum sits at a bound, and the widest half-widths
#: (degrees, relative overfocus, detector px): each retry is centred on the last optimum
#: with twice the half-widths, up to these.
MAX_WIDENINGS = 3
WIDEST = {"scan_rotation": 45.0, "overfocus": 0.5, "cy": 12.0, "cx": 12.0}


def assess(success: bool, message: str, params: OverfocusParams, unc: dict, *,
           significance: float | None = None, parts: str | None = None) -> str:
    """``"ok"`` or the reason a fit should not be trusted.

    In this order: no convergence; no significant contrast (``significance`` below
    :data:`~stemcal.fit.null.MIN_SIGNIFICANCE`); the parts of the disk disagree
    (``parts``, the reason from :meth:`~stemcal.fit.parts.Uncertainty.flag`); an
    uncertainty above :data:`MAX_ROTATION_UNCERTAINTY` / :data:`MAX_OVERFOCUS_UNCERTAINTY`.
    """
    if not success:
        return f"fit did not converge: {message}"
    if significance is not None and not significance >= MIN_SIGNIFICANCE:
        return (f"no specimen contrast: the fitted image is not sharper than frames at shuffled "
                f"scan positions ({significance:.1f} sigma, {MIN_SIGNIFICANCE:.0f} needed)")
    if parts:
        return parts
    rot = unc.get("scan_rotation")
    if rot is not None and not (rot <= MAX_ROTATION_UNCERTAINTY):
        return f"rotation uncertain ({rot:.2f} deg): too little specimen detail or too much blur"
    of = unc.get("overfocus")
    if of is not None and not (of <= MAX_OVERFOCUS_UNCERTAINTY * abs(params.overfocus)):
        return (f"overfocus uncertain ({100 * of / abs(params.overfocus):.1f} %): too little "
                "specimen detail or too much blur")
    return "ok"


def _at_edge(free: Sequence[str], x: np.ndarray, bounds) -> list[str]:
    return [f for f, v, (lo, hi) in zip(free, x, bounds) if min(v - lo, hi - v) < 1e-3 * (hi - lo)]


def search(cache: ReducedCache, start: OverfocusParams, half: dict, *, free: Sequence[str],
           metric: str = "contrast", method: str = "sobol-nm", coarse_work: int = 3_000_000,
           tolerance: float = 0.03, widenings: int = MAX_WIDENINGS) -> dict:
    """The coarse search: :func:`~stemcal.fit.optimise.minimise` of the whole-disk loss
    on every k-th cached scan position, in the box ``start +- half`` (degrees, relative
    overfocus, px).

    While the optimum sits at a bound of the box, the search is repeated centred on it
    with twice the half-widths (at most :data:`WIDEST`), up to ``widenings`` times.
    Returns a dict: ``params``, ``result`` (SciPy's), ``bounds`` (optimiser units of
    the last box around ``start``), ``half``, ``at_edge`` (names still at a bound),
    ``widened`` (retries made), ``nfev``, ``k``.
    """
    k = 1
    while k < 8 and cache.work(start.disk_radius_px, step=k) > coarse_work:
        k += 1
    half = {f: float(half[f]) for f in free}
    centre, nfev, widened = start, 0, 0
    while True:
        loss = BlurLoss(cache, centre, free=tuple(free), metric=metric, step=k)
        x0 = loss.x0()
        units = {f: 100 * h if f == "overfocus" else h for f, h in half.items()}
        bounds = [(x - units[f], x + units[f]) for f, x in zip(free, x0)]
        res = minimise(loss, bounds, method=method, x0=x0, xatol=tolerance,
                       fatol=math.inf if tolerance >= 0.01 else 1e-12)
        nfev += loss.nfev
        edge = _at_edge(free, res.x, bounds)
        best = loss.params_at(res.x)
        if not edge or widened >= widenings or all(half[f] >= WIDEST[f] for f in edge):
            break
        log.info("search optimum at the bound for %s: retry around it, wider", edge)
        centre = best
        half = {f: min(2 * h, WIDEST[f]) for f, h in half.items()}
        widened += 1
    return {"params": best, "result": res, "bounds": bounds, "half": half, "at_edge": edge,
            "widened": widened, "nfev": nfev, "k": k}


def refine(dataset, start: OverfocusParams, *, ctx=None, free: Sequence[str] = ("scan_rotation", "overfocus"),
           rotation_bound: float = 6.0, overfocus_bound: float = 0.12, centre_bound: float = 3.0,
           metric: str = "contrast", method: str = "sobol-nm", cache: ReducedCache | None = None,
           budget: int = DEFAULT_BUDGET, work: int = DEFAULT_WORK, coarse_work: int = 3_000_000,
           confirm: bool = True, polish: bool = True, upsample: dict | None = None,
           coarse_tolerance: float | None = None,
           widenings: int = MAX_WIDENINGS, descan_sigma: np.ndarray | None = None,
           progress: bool = False, on_stage: Callable[[str], None] | None = None) -> FitResult:
    """Refine scan rotation and overfocus (and optionally cy, cx) by the blur loss.

    The dataset is read once into a :class:`~stemcal.fit.cache.ReducedCache`
    and the loss evaluated there: a search on the whole disk (:func:`search`,
    widened while its optimum sits at a bound), then the final stage
    (:mod:`.parts`): each parameter from the parts of the disk the geometric
    model holds on, with the uncertainty in parts and the
    significance of the contrast (:mod:`.null`). A last full-resolution OverfocusUDF pass at
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
        Loss metric of the search (:data:`stemcal.fit.METRICS`). ``contrast``
        (default): contrast shared between four interleaved groups of frames.
        ``unbiased`` uses all pairs of detector pixels, but removing the
        self-products leaves a term that depends on the sub-pixel phase of the
        projection (on a small disk without noise its optimum sat 0.4 deg off).
        ``crete`` is the published blur metric. The final stage always uses the
        contrast between nine groups (:mod:`.rings`).
    method : {'sobol-nm', 'shgo', 'nelder-mead', 'none'}
        Optimiser of the search (:func:`minimise`); ``'none'`` goes straight to
        the polish from ``start``.
    polish : bool
        Finish with the final stage (:func:`~stemcal.fit.parts.finish`: each parameter
        from the parts of the disk, the uncertainty, the quality checks); without it
        the search's optimum is returned.
    upsample : dict, optional
        Target px per scan px of the final stage by parameter (default
        :data:`~stemcal.fit.parts.UPSAMPLE`).
    cache : ReducedCache, optional
        Reuse a cache (no raw pass is then made for it).
    budget, work : int
        Cache size (bytes) and per-evaluation work bounds (:func:`build_cache`).
    coarse_work : int
        Per-evaluation work of the search, which runs on every k-th cached scan position.
    coarse_tolerance : float, optional
        Stopping tolerance of the search's Nelder-Mead in optimiser units
        (degrees, percent). Default 0.03 when a polish follows (it only has to
        land within a fraction of the polish's 0.3 deg / 0.5 % steps), else 0.003.
    widenings : int
        Retries of the search, each around its last optimum with twice the half-widths,
        while that optimum sits at a bound (:data:`MAX_WIDENINGS`, :data:`WIDEST`).
    descan_sigma : (2, 2) array, optional
        1-sigma errors of the descan matrix (detector px per scan px), carried into the
        uncertainty of rotation and overfocus.
    on_stage : callable ``(stage: str) -> None``, optional
        Called with ``"refinement"`` before the search and ``"final stage"`` before
        the parts-of-disk stage (the confirming pass reports as a LiberTEM pass).

    Returns
    -------
    FitResult
        ``extra["uncertainty"]``: total 1-sigma per fitted parameter (deg, m, px);
        ``extra["uncertainty_parts"]``: its parts and the two disk estimates;
        ``extra["significance"]``: the contrast against shuffled scan positions.
    """
    t0 = time.perf_counter()
    if not 0 < overfocus_bound < 1:
        raise ValueError(f"overfocus_bound must be in (0, 1), got {overfocus_bound}")
    if rotation_bound <= 0 or centre_bound <= 0:
        raise ValueError("rotation_bound and centre_bound must be > 0")
    stage = on_stage or (lambda name: None)
    ctx, dataset = as_dataset(ctx, dataset)
    require_2d_scan(dataset)
    passes = 0
    if cache is None:
        cache = build_cache(ctx, dataset, params=start, budget=budget, work=work, progress=progress)
        passes += 1
    free = tuple(free)
    half = {"scan_rotation": rotation_bound, "overfocus": overfocus_bound,
            "cy": centre_bound, "cx": centre_bound}
    extra: dict = {"bin": cache.bin, "stride": cache.stride, "free": list(free)}
    if method == "none":
        found = {"params": start, "at_edge": [], "widened": 0, "nfev": 0, "k": 1,
                 "result": Minimum(x=np.empty(0), fun=math.nan, success=True,
                                   message="polish only")}
    else:
        stage("refinement")
        tol = coarse_tolerance if coarse_tolerance is not None else (0.03 if polish else 3e-3)
        found = search(cache, start, half, free=free, metric=metric, method=method,
                       coarse_work=coarse_work, tolerance=tol, widenings=widenings)
        extra.update({"coarse_stride": cache.stride * found["k"], "coarse_nfev": found["nfev"],
                      "widened": found["widened"],
                      "bounds": [list(b) for b in found["bounds"]]})
    res = found["result"]
    at_edge = list(found["at_edge"])
    message = str(getattr(res, "message", ""))
    nfev = found["nfev"]
    unc: dict = {}
    significance = None
    parts_flag = None
    if polish:
        stage("final stage")
        fin = finish(cache, found["params"], free=free, upsample=upsample,
                     descan_sigma_matrix=descan_sigma)
        best = fin.params
        used = fin.used_loss()
        best_loss = used.value(best)
        nfev += fin.nfev
        unc = fin.uncertainty
        parts_flag = fin.disagreement()
        significance = contrast_significance(used, best, value=best_loss)
        extra["uncertainty_parts"] = fin.parts
        extra["significance"] = significance
    else:
        best, best_loss = found["params"], float(res.fun)
    if at_edge:
        widest = ", ".join(f"{f} +-{100 * found.get('half', half)[f]:.0f} %" if f == "overfocus"
                           else f"{f} +-{found.get('half', half)[f]:g}" for f in at_edge)
        message = (f"optimum at the search bound for {at_edge} after {found['widened']} "
                   f"widening(s) (last box {widest}); improve the start")
    success = bool(res.success) and not at_edge and math.isfinite(best_loss)
    images: dict[str, np.ndarray] = {}
    blur = contrast = float("nan")
    if confirm:
        images = full_pass(ctx, dataset, best, progress=progress)
        passes += 1
        blur, contrast = image_quality(images)
    seconds = time.perf_counter() - t0
    log.info("refine: %s -> rot %.4f deg, overfocus %.6g m in %d evaluations, %.2f s",
             start.scan_rotation, best.scan_rotation, best.overfocus, nfev, seconds)
    quality = assess(success, message, best, unc, significance=significance, parts=parts_flag)
    extra["uncertainty"] = unc
    return FitResult(params=best, start=start, loss=best_loss, quality=quality, blur=blur,
                     contrast=contrast, nfev=nfev, passes=passes, seconds=seconds,
                     success=success, message=message, metric=metric, images=images, extra=extra)

