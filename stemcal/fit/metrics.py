"""Blur metrics of projected images (pure functions, no I/O)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from skimage.measure import blur_effect

#: A metric maps (shifted_sum, coverage) to a float; lower is sharper. Both are
#: (2, H, W): the frames split into two interleaved halves (see BlurLoss.project).
BlurMetric = Callable[[np.ndarray, np.ndarray], float]


def crete_blur(image: np.ndarray, *, h_size: int = 11) -> float:
    """No-reference blur of Crete et al. (2007) via ``skimage.measure.blur_effect``.

    Returns a value in [0, 1]; 0 is sharp, 1 fully blurred.

    References
    ----------
    F. Crete, T. Dolmiere, P. Ladret, M. Nicolas, "The blur effect: perception
    and estimation with a new no-reference perceptual blur metric", Proc. SPIE
    6492, 2007.
    """
    image = np.asarray(image, dtype=float)
    if image.ndim != 2 or min(image.shape) < 3:
        raise ValueError(f"blur metric needs a 2D image of at least 3x3, got shape {image.shape}")
    return float(blur_effect(image, h_size=h_size))


def pair_contrasts(shifted_sum: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Cross-contrast of every pair of groups of frames, (K, K) (NaN on the diagonal and
    where a pair shares no coverage).

    ``shifted_sum`` and ``coverage`` are (K, H, W). For groups j != k, with ``F = S / C``,
    pixel weights ``w = sqrt(C_j C_k)`` and the weighted means ``m_j``, ``m_k`` over the
    pair's pixels: ``sum(w (F_j - m_j)(F_k - m_k)) / (sum(w) m_j m_k)``. The weights
    factorise (``a_j a_k`` with ``a = sqrt(C)``), so every sum over all pairs is one
    matrix product of the (K, pixels) arrays: nine groups cost hardly more than two.
    (Where the groups' coverages are equal these are the harmonic weights
    ``C_j C_k / (C_j + C_k)`` up to a constant factor.)
    """
    K = shifted_sum.shape[0]
    S = np.asarray(shifted_sum, dtype=float).reshape(K, -1)
    C = np.asarray(coverage, dtype=float).reshape(K, -1)
    a = np.sqrt(np.maximum(C, 0.0))       # uncovered pixels: a = 0, they add nothing
    aF = np.zeros_like(S)
    np.divide(S, a, out=aF, where=a > 0)  # a F = S / sqrt(C)
    with np.errstate(invalid="ignore", divide="ignore"):
        W = a @ a.T                                             # sum of w per pair
        M = aF @ a.T                                            # M[j, k] = sum w F_j
        X = aF @ aF.T                                           # sum w F_j F_k
        mj = M / W
        mk = mj.T
        out = (X / W - mj * mk) / (mj * mk)
    if not (W > 0).any():
        raise ValueError("nothing was projected into the image (coverage is zero)")
    bad = ~((W > 0) & (mj * mk != 0))
    out[bad] = np.nan
    np.fill_diagonal(out, np.nan)
    return out


def contrast_loss(shifted_sum: np.ndarray, coverage: np.ndarray) -> float:
    """Negative squared contrast shared between independent groups of frames (lower is sharper).

    ``shifted_sum`` and ``coverage`` hold K >= 2 groups of frames (interleaved
    scan positions), shape (K, H, W): minus the mean over pairs j < k of
    :func:`pair_contrasts`.

    Frames projected consistently add up coherently, so the normalised sums
    have the most contrast at the true geometry and misalignment averages
    features away: up to constants this is the least-squares misfit of all
    frames to one common specimen image, smooth in the geometry. Products
    *between* groups carry no noise variance, which would otherwise favour
    geometries that spread frames over more target pixels (a bias towards
    larger magnification, measured +0.4 % at 3 counts/px). More groups use
    more of the frame pairs (1 - 1/K of them).

    A single image pair of shape (H, W) is accepted too (then the plain,
    noise-biased weighted variance).
    """
    S = np.asarray(shifted_sum, dtype=float)
    C = np.asarray(coverage, dtype=float)
    if S.ndim == 2:
        S, C = np.stack([S, S]), np.stack([C, C])
    P = pair_contrasts(S, C)
    vals = P[np.triu_indices(len(P), 1)]
    vals = vals[np.isfinite(vals)]
    return -float(vals.mean()) if vals.size else 0.0


def filled_image(shifted_sum: np.ndarray, coverage: np.ndarray, *, rel_weight: float = 0.2) -> np.ndarray:
    """Coverage-normalised image, blending smoothly to the mean where coverage is low.

    ``(S + m w) / (C + w)`` with ``w = rel_weight * max(C)`` and ``m`` the mean
    intensity ``sum(S) / sum(C)``. Continuous in ``S`` and ``C``, so a loss on
    it stays continuous in the geometry, and uncovered borders are flat
    instead of edges.
    """
    cmax = float(coverage.max())
    if cmax <= 0:
        raise ValueError("nothing was projected into the image (coverage is zero)")
    m = float(shifted_sum.sum() / coverage.sum())
    w = rel_weight * cmax
    return (shifted_sum + m * w) / (coverage + w)


def crete_loss(shifted_sum: np.ndarray, coverage: np.ndarray) -> float:
    """:func:`crete_blur` of the :func:`filled_image` of a shifted sum.

    Halves given as (2, H, W) arrays are added first.
    """
    S = np.asarray(shifted_sum, dtype=float)
    C = np.asarray(coverage, dtype=float)
    if S.ndim == 3:
        S, C = S.sum(axis=0), C.sum(axis=0)
    return crete_blur(filled_image(S, C))


def gradient_loss(shifted_sum: np.ndarray, coverage: np.ndarray) -> float:
    """Like :func:`contrast_loss` but on image gradients (lower is sharper).

    ``-sum(w grad F_1 . grad F_2) / (sum(w) m_1 m_2)`` with ``F_k`` the
    smoothly filled halves (:func:`filled_image`). Gradients weight fine
    detail, which misalignment destroys first; the cross-product of two
    independent halves carries no noise bias.
    """
    S = np.asarray(shifted_sum, dtype=float)
    C = np.asarray(coverage, dtype=float)
    if S.ndim == 2:
        S, C = np.stack([S, S]), np.stack([C, C])
    f1, f2 = filled_image(S[0], C[0]), filled_image(S[1], C[1])
    w = C[0] * C[1] / np.maximum(C[0] + C[1], 1e-30)
    g1 = np.gradient(f1)
    g2 = np.gradient(f2)
    m1 = float((f1 * w).sum() / w.sum())
    m2 = float((f2 * w).sum() / w.sum())
    return float(-((g1[0] * g2[0] + g1[1] * g2[1]) * w).sum() / w.sum() / (m1 * m2))


def unbiased_contrast_loss(shifted_sum: np.ndarray, coverage: np.ndarray,
                           squares: np.ndarray | None = None) -> float:
    """Negative squared contrast of the normalised shifted sum, noise bias removed.

    ``squares`` (same shape as ``shifted_sum``) holds every splatted
    contribution squared (:func:`~stemcal.processing.kernels.splat_frames_moments`):
    ``S^2 - squares`` keeps only products of *different* detector pixels, whose
    noise is independent, so ``sum((S^2 - squares) / C) - sum(S)^2 / sum(C)``,
    divided by ``sum(C) m^2``, estimates the signal contrast with all pairs of
    frames (the grouped :func:`contrast_loss` uses 1 - 1/K of them). Lower is sharper.

    Caveat (measured): the removed self-products depend on the sub-pixel
    phase of the projection, and what is left does too; with few detector
    pixels (a disk of radius 11 px, 24x24 scan, no noise) the optimum sat
    0.4 degree off. With disks of 30+ px it was the more precise metric.
    """
    S = np.asarray(shifted_sum, dtype=float)
    C = np.asarray(coverage, dtype=float)
    if S.ndim == 3:
        S, C = S.sum(axis=0), C.sum(axis=0)
        squares = None if squares is None else np.asarray(squares).sum(axis=0)
    if squares is None:
        raise ValueError("unbiased contrast needs the squared contributions")
    ok = C > 0
    if not ok.any():
        raise ValueError("nothing was projected into the image (coverage is zero)")
    s, c, q = S[ok], C[ok], np.asarray(squares, dtype=float)[ok]
    total_c = float(c.sum())
    m = float(s.sum()) / total_c
    if m == 0:
        return 0.0
    signal = float(((s * s - q) / c).sum()) - float(s.sum()) ** 2 / total_c
    return -signal / (total_c * m * m)


#: Metrics by name, all with the :data:`BlurMetric` interface.
METRICS: dict[str, BlurMetric] = {"crete": crete_loss, "contrast": contrast_loss,
                                   "gradient": gradient_loss, "unbiased": unbiased_contrast_loss}
