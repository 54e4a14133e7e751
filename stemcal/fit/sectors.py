"""Rotation and overfocus from how the octants of the disk's shadow images move apart.

The frames' pixels are projected with trial parameters into separate images by
where they lie in the bright-field disk: each ring of :data:`~stemcal.fit.rings.RADII`
split into the octants of the angle of a pixel's offset ``q`` from its frame's beam
centre (:meth:`~stemcal.fit.rings.RingLoss.project_sectors`, one sweep over the
frames). A pixel ``p`` of the frame at scan position ``s`` lands at specimen
position ``s + A q``; with the trial ``A`` off the instrument's ``A0`` by
``E = A - A0`` every feature lands displaced by ``E q``. So the image of octant
``k`` is the specimen displaced by about ``E qbar_k`` (``qbar_k`` its pixels'
mean offset), and the displacement of each octant's image against the sum of the
others (Lucas-Kanade: the least-squares shift, with a gain and an offset free,
:func:`shifts`, both images smoothed alike by :data:`SMOOTH`) measures ``E``;
its projection on the two parameters' derivatives of ``A`` gives their
corrections ``u`` (degrees, percent of the overfocus). At the instrument's parameters every octant shows the same image
and ``u`` is zero: this is a null measurement, so the sub-pixel interpolation
biases a measured shift only where the shift is large.

A shift measured against a noisy image comes out too small (the noise in its
gradient dilutes the least-squares slope), so ``u`` is ``J (p0 - p)`` with a
gain matrix ``J`` below one at low dose. ``J`` is measured, per part of the disk
and per group left out, from two more projections at steps of the rotation and
the overfocus (:data:`~stemcal.fit.parts.SECTOR_STEP`), and each estimate is ``p + J^-1 u(p)``: the
estimate does not depend on the gain, and the jackknife over the interleaved
groups of frames (each left out in turn, counting noise being independent between
groups) gives its statistical error. The projections are three, plus one per
Newton step (at most :data:`MAX_STEPS`), against the 22 or more of sampling the
loss along each parameter (:func:`~stemcal.fit.parts.scan_parameter`).

The final stage takes the overfocus from here and samples the rotation
(:data:`~stemcal.fit.parts.METHOD`, ``"hybrid"``, says what make validate
measured with each). Noise-free it is exact (within 0.002 deg and 0.05 % on
geometric scans, with and without descan); at low counts it measures the
overfocus better than sampling the loss and the rotation worse. In relative
units its rotation and overfocus errors are alike, as the geometry says they
should be (a rotation moves a pixel by ``delta |q|``, a scale error by
``epsilon |q|``): over ten 40x40 scans at 3 counts/px 1.8e-3 rad and 2.5e-3 of
the overfocus; sampling the loss gave 1.4e-3 rad and 4.1e-3 there, three times
better on the rotation than on the overfocus, which is where it beats the
octants (and where to look next).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..processing.shift_kernel import octant_shift_equations
from ..twin.model import specimen_matrix
from ..twin.params import OverfocusParams
from .loss import loss_pool
from .rings import PARTS, RADII, RingLoss, jackknife_sigma

__all__ = ["NAMES", "MAX_STEPS", "octant_offsets", "overlap_masks", "shifts", "corrections",
           "sector_estimates"]

#: The parameters this stage estimates, in optimiser units (degrees, percent).
NAMES = ("scan_rotation", "overfocus")
#: Newton steps after the gain is measured; a step smaller than :data:`CONVERGED` of the
#: gain's steps ends them.
MAX_STEPS = 3
CONVERGED = 0.2
#: Rings of each part of the disk (indices into :data:`~stemcal.fit.rings.RADII`).
PART_RINGS = {name: tuple(j for j, r in enumerate(RADII) if lo < r <= hi + 1e-9)
              for name, (lo, hi) in PARTS.items()}
#: A pixel of an octant's image (or of the sum of the others) takes part in the shift
#: where its coverage is at least this share of the median coverage.
MIN_COVERAGE = 0.3


#: Passes of a [1, 2, 1] / 4 filter along y and x over each octant's image and its
#: reference (the sum of the others; ratios of shifted sum to coverage) before the shift
#: is measured. Against a noisy reference the measured shifts come out short (the noise in
#: its gradient dilutes the least-squares slope: the gain J was 0.27 on a 33x33 scan of
#: 107x107 frames at 3 counts/px); one pass raised it to 0.43 and cut the scatter of the
#: rotation's correction there by 1.7x, the mean correction at the truth still zero
#: within its error over 8 seeds; a second pass began to pull the overfocus (+0.04 %, 2.5 sigma). The
#: reference alone smoothed left a blur mismatch that moved noise-free estimates by
#: 0.01 deg; smoothing shifted sums and coverages (normalised smoothing) pulled the
#: overfocus by +0.2 %: an octant's coverage falls off towards one side.
SMOOTH = 1


def octant_offsets(rings: RingLoss) -> np.ndarray:
    """Mean offset ``qbar`` (detector px, (y, x)) of each ring's octants, (rings, 8, 2).

    Octant ``k`` holds the angles ``[k, k + 1) * 45`` deg of ``atan2(dy, dx)``; a ring
    weighs a pixel at radius ``r`` by the difference of the nested disks' weights
    (:mod:`stemcal.processing.ring_kernel`). Integrated on a fine polar grid.
    """
    r_out = np.array([d.geometry.r_out for d in rings.disks])
    r_in = np.array([d.geometry.r_in for d in rings.disks])
    r = np.linspace(0.0, float(r_out[-1]), 4001)[1:]

    def weight(j: int) -> np.ndarray:
        if r_out[j] <= r_in[j]:
            return (r < r_out[j]).astype(float)
        return np.clip((r_out[j] - r) / (r_out[j] - r_in[j]), 0.0, 1.0)

    out = np.zeros((len(r_out), 8, 2))
    for j in range(len(r_out)):
        share = weight(j) - (weight(j - 1) if j else 0.0)
        mean_r = float((share * r * r).sum() / (share * r).sum())
        # mean of (sin, cos) over a 45 deg wedge centred at (k + 1/2) 45 deg
        shrink = math.sin(math.pi / 8) / (math.pi / 8)
        for k in range(8):
            a = (k + 0.5) * math.pi / 4
            out[j, k] = mean_r * shrink * np.array([math.sin(a), math.cos(a)])
    return out


def overlap_masks(C: np.ndarray) -> np.ndarray:
    """(8, H, W) bool: where octant ``k``'s image and the sum of the others both have at
    least :data:`MIN_COVERAGE` of their median coverage, two pixels in from the edge of
    that area. ``C`` (8, H, W): the octants' coverages."""
    rest = C.sum(axis=0)[None] - C
    out = np.zeros(C.shape, bool)
    for k in range(len(C)):
        ok = np.ones(C.shape[1:], bool)
        for c in (C[k], rest[k]):
            pos = c[c > 0]
            ok &= (c > MIN_COVERAGE * float(np.median(pos))) if pos.size else False
        out[k] = ndimage.binary_erosion(ok, iterations=2 + SMOOTH, border_value=0)
    return out


def shifts(S: np.ndarray, C: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Least-squares displacement (target px, (y, x)) of each octant's image ``S[k] / C[k]``
    against the sum of the others, (8, 2): ``image(x) = a ref(x - d) + b`` linearised in
    ``d`` (Lucas-Kanade with a gain ``a`` and an offset ``b`` free) over ``good[k]``
    (:func:`overlap_masks`), image and reference both smoothed :data:`SMOOTH` times.
    NaN where that is fewer than 16 pixels or the images share no contrast."""
    S, C = np.ascontiguousarray(S, dtype=float), np.ascontiguousarray(C, dtype=float)
    none = np.zeros((0,) + S.shape)
    XtX, Xty = _equations(S, C, none, none, good)
    return _solve(XtX[0], Xty[0], good)


def _equations(all_S: np.ndarray, all_C: np.ndarray, part_S: np.ndarray, part_C: np.ndarray,
               good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shifts' normal equations, (K + 1, 8, 4, 4) and (K + 1, 8, 4): all groups, then
    each group of ``part_S``/``part_C`` (K, 8, H, W) left out
    (:func:`~stemcal.processing.shift_kernel.octant_shift_equations`, one call)."""
    rows, n = len(part_S) + 1, len(all_S)
    XtX = np.zeros((rows, n, 4, 4))
    Xty = np.zeros((rows, n, 4))
    octant_shift_equations(all_S, all_C, part_S, part_C, np.ascontiguousarray(good, dtype=bool),
                           SMOOTH, XtX, Xty)
    return XtX, Xty


def _solve(XtX: np.ndarray, Xty: np.ndarray, good: np.ndarray) -> np.ndarray:
    """(8, 2) shifts from one row's normal equations (:func:`shifts`)."""
    out = np.full((len(XtX), 2), np.nan)
    for k in range(len(XtX)):
        if good[k].sum() < 16:
            continue
        try:
            coef = np.linalg.solve(XtX[k], Xty[k])
        except np.linalg.LinAlgError:
            continue
        if math.isfinite(coef[0]) and coef[0] > 0:
            out[k] = -coef[2:] / coef[0]
    return out


def _derivatives(params: OverfocusParams) -> np.ndarray:
    """(4, 2): ``A`` (specimen px per detector px, raveled) per degree of rotation and per
    percent of overfocus, by central differences."""
    cols = []
    for name, h in (("scan_rotation", 1e-3), ("overfocus", 1e-3)):
        def at(x: float) -> np.ndarray:
            if name == "overfocus":
                return specimen_matrix(params.replace(overfocus=params.overfocus * (1 + x / 100))).ravel()
            return specimen_matrix(params.replace(scan_rotation=params.scan_rotation + x)).ravel()
        cols.append((at(h) - at(-h)) / (2 * h))
    return np.stack(cols, axis=1)


def corrections(m: np.ndarray, weight: np.ndarray, qbar: np.ndarray,
                derivatives: np.ndarray, upsample: float) -> np.ndarray:
    """Corrections ``u`` (degrees, percent of the overfocus) that the octants' shifts call
    for, before the gain: ``m`` (8, 2) one part's :func:`shifts` (target px), ``weight``
    (8,) the octants' coverages, ``qbar`` (8, 2) their mean offsets (detector px),
    ``derivatives`` :func:`_derivatives` at the projection's parameters. NaN where a
    shift could not be measured."""
    m = m / upsample          # specimen px
    if not np.all(np.isfinite(m)):
        return np.full(2, np.nan)
    rel = np.empty((len(m), 2))
    for k in range(len(m)):
        w = np.delete(weight, k)
        rel[k] = qbar[k] - (w[:, None] * np.delete(qbar, k, axis=0)).sum(axis=0) / max(float(w.sum()), 1e-300)
    E = np.linalg.lstsq(rel, m, rcond=None)[0].T      # m_k = E rel_k: (2, 2), specimen px per det px
    # A0 = A - E: the parameters' change whose derivative of A best gives -E
    return np.linalg.lstsq(derivatives, -E.ravel(), rcond=None)[0]


def _set(params: OverfocusParams, x: np.ndarray, base: OverfocusParams) -> OverfocusParams:
    """``params`` moved by ``x`` (degrees, percent of ``base``'s overfocus)."""
    return params.replace(scan_rotation=params.scan_rotation + float(x[0]),
                          overfocus=params.overfocus + base.overfocus * float(x[1]) / 100)


def _all_corrections(rings: RingLoss, params: OverfocusParams, qbar_rings: np.ndarray,
                     parts: Sequence[str], replicas: bool = True) -> dict[str, np.ndarray]:
    """Part -> (K + 1, 2) corrections at ``params``: all groups, then each left out
    (NaN rows without ``replicas``)."""
    S, C = rings.project_sectors(params, reuse=True)   # (K, R, 8, H, W); nothing kept
    K = S.shape[0]
    # the area any octant covers (the grid has room for larger magnifications): its box is
    # the outer ring's (each frame's inner rings lie within its outer ring's box), a third
    # of the sum over every ring
    seen = np.nonzero(C[:, -1].sum(axis=(0, 1)) > 0)
    if not seen[0].size:
        seen = np.nonzero(C.sum(axis=(0, 1, 2)) > 0)
    if not seen[0].size:
        return {part: np.full((K + 1, 2), np.nan) for part in parts}
    box = (slice(None), slice(None), slice(None), slice(seen[0].min(), seen[0].max() + 1),
           slice(seen[1].min(), seen[1].max() + 1))
    S, C = S[box], C[box]
    cov = C.sum(axis=(-2, -1))                             # (K, R, 8), without a copy of the box
    derivatives = _derivatives(params)

    def one(part: str) -> np.ndarray:
        js = list(PART_RINGS[part])
        rings_of = slice(js[0], js[-1] + 1)                      # consecutive rings: a view
        Sp, Cp = S[:, rings_of].sum(axis=1), C[:, rings_of].sum(axis=1)    # (K, 8, H, W)
        w = cov[:, js].sum(axis=0)                               # (R', 8)
        qbar = (w[..., None] * qbar_rings[js]).sum(axis=0) / np.maximum(w.sum(axis=0), 1e-300)[:, None]
        all_S, all_C = Sp.sum(axis=0), Cp.sum(axis=0)
        good = overlap_masks(all_C)
        groups = K if replicas else 0
        # the normal equations of every row in one kernel call (no copies per row)
        XtX, Xty = _equations(all_S, all_C, Sp[:groups], Cp[:groups], good)
        weight = cov[:, js].sum(axis=1)                          # (K, 8): each group's coverage
        total = weight.sum(axis=0)
        rows = np.full((K + 1, 2), np.nan)
        for r in range(groups + 1):
            m = _solve(XtX[r], Xty[r], good)
            rows[r] = corrections(m, total - (weight[r - 1] if r else 0.0), qbar, derivatives,
                                  rings.upsample)
        return rows

    # the parts on the loss's two threads (the shift kernel and NumPy's sums release the GIL)
    return dict(zip(parts, loss_pool().map(one, parts)))


def sector_estimates(rings: RingLoss, params: OverfocusParams, steps: dict, *,
                     follow: str = "disk70", converge: Sequence[str] = NAMES,
                     ) -> tuple[dict[str, dict[str, tuple[float, float]]], int]:
    """Rotation and overfocus from every part of the disk, by the octants' shifts.

    The corrections ``u`` are measured at ``params`` and at steps of each parameter
    (``steps``: name -> degrees or percent of the overfocus), which give the gain ``J``
    of every part and of every group left out; then Newton steps ``J^-1 u`` of the
    ``follow`` part until one is below :data:`CONVERGED` of those steps in the
    parameters ``converge`` (at most :data:`MAX_STEPS`; none where the first is already
    below: the estimate then comes from the projection at ``params``). Each part's
    estimate is ``p + J^-1 u(p)`` at the last ``p``, its sigma the jackknife of the
    same over the groups left out.

    Returns ``({part: {name: (value, sigma)}}, projections)``; degrees and metres.
    """
    h = np.array([float(steps[n]) for n in NAMES])
    parts = list(PARTS)
    qbar = octant_offsets(rings)
    base = params
    nfev = 0

    def measure(p: OverfocusParams) -> dict[str, np.ndarray]:
        nonlocal nfev
        nfev += 1
        return _all_corrections(rings, p, qbar, parts)

    u0 = measure(params)
    stepped = [measure(_set(params, h * e, base)) for e in np.eye(2)]
    # J[part][row] (2, 2): u(p) - u(p + h_i e_i) = J h_i e_i
    gains = {part: np.stack([(u0[part] - stepped[i][part]) / h[i] for i in range(2)], axis=-1)
             for part in parts}

    def step_of(u: dict, part: str, row: int = 0) -> np.ndarray:
        J = gains[part][row]
        if not (np.all(np.isfinite(J)) and np.all(np.isfinite(u[part][row]))):
            return np.full(2, np.nan)
        try:
            return np.linalg.solve(J, u[part][row])
        except np.linalg.LinAlgError:
            return np.full(2, np.nan)

    watch = np.array([n in converge for n in NAMES])

    def within(dx: np.ndarray) -> bool:
        return bool(np.all(np.abs(dx[watch]) <= CONVERGED * h[watch]))

    p, u = params, u0
    for _ in range(MAX_STEPS):
        dx = step_of(u, follow)
        if not np.all(np.isfinite(dx)):
            break
        if within(dx):
            break   # already within: the estimate p + J^-1 u(p) below, with no step more
        # at most the gain's steps twice over per Newton step (far from the optimum the
        # linearisation does not hold)
        dx = np.clip(dx, -2 * h, 2 * h)
        p = _set(p, dx, base)
        u = measure(p)
        if within(dx):
            break
    K = rings.groups
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for part in parts:
        values = np.array([step_of(u, part, row) for row in range(K + 1)])   # (K + 1, 2)
        est = {}
        for i, name in enumerate(NAMES):
            v = values[0, i]
            sigma = jackknife_sigma(values[1:, i]) if math.isfinite(v) else math.nan
            value = math.nan
            if math.isfinite(v):
                moved = _set(p, np.array([v, 0.0]) if i == 0 else np.array([0.0, v]), base)
                value = getattr(moved, name)
            if name == "overfocus":
                sigma = sigma / 100 * abs(base.overfocus)
            est[name] = (float(value), float(sigma))
        out[part] = est
    return out, nfev
