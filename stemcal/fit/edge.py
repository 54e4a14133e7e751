"""The beam's position from the aperture edge, and the descan measured from it.

The bright-field disk is the image of the beam-forming aperture: its edge is
the one part of a frame that does not depend on the specimen (or on how well
a model predicts the specimen's contrast). Frames are averaged over blocks of
the scan, which smears the specimen's shadow image (it moves by ``A^-1`` per
scan px) while the disk stays where the descan puts it; each block average's
edge is located along rays and a circle is fitted to the edge points with
outlier weights, so that the rays a strong scatterer or a Bragg disk spoils
do not pull the centre. The block centres, regressed on the blocks' scan
positions, give the descan matrix and its standard errors.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from .disk import NoFeaturesError

__all__ = ["EdgeFit", "edge_centres", "block_means", "DescanEstimate", "descan_from_edges"]


@dataclasses.dataclass(frozen=True)
class EdgeFit:
    """Circles fitted to the aperture edge of each image.

    Attributes
    ----------
    centres : (n, 2) float
        Centre (y, x) of each image's disk, in the images' pixels; NaN where too few
        rays found an edge.
    radii : (n,) float
        Fitted radius, px.
    kept : (n,) float
        Fraction of the rays that carry weight in the final fit.
    """

    centres: np.ndarray
    radii: np.ndarray
    kept: np.ndarray


def edge_centres(images: np.ndarray, centre: tuple[float, float], radius: float, *,
                 n_rays: int = 72, smooth: float = 1.0, step: float = 0.25,
                 inner: tuple[float, float] = (0.75, 0.9), outer: tuple[float, float] = (1.1, 1.3),
                 tukey: float = 2.5, iterations: int = 8) -> EdgeFit:
    """Disk centres from the aperture edge of ``images`` (n, h, w).

    Each image (smoothed by a Gaussian of ``smooth`` px) is sampled along
    ``n_rays`` rays from ``centre`` every ``step`` px. Per ray, the level
    inside is the median over ``inner`` (fractions of ``radius``), outside the
    median over ``outer``; the edge is the last crossing of the half level
    going outwards, interpolated linearly. Rays whose step is below a quarter
    of the median step are dropped. The circle ``rho = R + u . dc`` is fitted by
    iteratively reweighted least squares (Tukey's biweight at ``tukey`` times
    the median absolute residual), so that edge points moved by specimen
    features or neighbouring disks lose their weight.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3:
        raise ValueError(f"images must be (n, h, w), got shape {images.shape}")
    n = len(images)
    theta = np.linspace(0.0, 2 * math.pi, n_rays, endpoint=False)
    u = np.stack([np.sin(theta), np.cos(theta)], axis=-1)
    rho = np.arange(inner[0] * radius, outer[1] * radius, step)
    pts = np.asarray(centre, dtype=float)[None, None, :] + rho[None, :, None] * u[:, None, :]
    coords = [pts[..., 0].ravel(), pts[..., 1].ravel()]
    i_in = (rho >= inner[0] * radius) & (rho <= inner[1] * radius)
    i_out = (rho >= outer[0] * radius) & (rho <= outer[1] * radius)
    X = np.hstack([np.ones((n_rays, 1)), u])
    centres = np.full((n, 2), np.nan)
    radii = np.full(n, np.nan)
    kept = np.zeros(n)
    for i in range(n):
        img = ndimage.gaussian_filter(images[i], smooth) if smooth else images[i]
        prof = ndimage.map_coordinates(img, coords, order=1, mode="nearest").reshape(n_rays, -1)
        edge = _ray_edges(prof, rho, i_in, i_out, step)
        ok = np.isfinite(edge)
        if ok.sum() < 8:
            continue
        coef, w = _robust_circle(X[ok], edge[ok], tukey, iterations)
        centres[i] = np.asarray(centre) + coef[1:]
        radii[i] = coef[0]
        kept[i] = float((w > 0).sum()) / n_rays
    return EdgeFit(centres, radii, kept)


def _ray_edges(prof: np.ndarray, rho: np.ndarray, i_in: np.ndarray, i_out: np.ndarray,
               step: float) -> np.ndarray:
    """Edge radius along each ray (NaN where none): last half-level crossing outwards."""
    level_in = np.median(prof[:, i_in], axis=1)
    level_out = np.median(prof[:, i_out], axis=1)
    half = 0.5 * (level_in + level_out)
    contrast = level_in - level_out
    above = prof > half[:, None]
    k = prof.shape[1]
    last = np.where(above.any(axis=1), k - 1 - np.argmax(above[:, ::-1], axis=1), -1)
    good = (last >= 0) & (last < k - 1) & (contrast > 0.25 * max(float(np.median(contrast)), 0.0))
    good &= contrast > 0
    edge = np.full(len(prof), np.nan)
    rows = np.flatnonzero(good)
    j = last[rows]
    a = prof[rows, j] - half[rows]
    b = prof[rows, j + 1] - half[rows]
    edge[rows] = rho[j] + step * a / np.where(a - b != 0, a - b, 1.0)
    return edge


def _robust_circle(X: np.ndarray, edge: np.ndarray, tukey: float,
                   iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """IRLS fit of ``edge = X @ (R, dy, dx)`` with Tukey weights; (coefficients, weights)."""
    w = np.ones(len(edge))
    coef = np.zeros(3)
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(X * w[:, None], edge * w, rcond=None)
        r = edge - X @ coef
        s = 1.4826 * float(np.median(np.abs(r))) + 1e-3
        w = np.clip(1.0 - (r / (tukey * s)) ** 2, 0.0, None) ** 2
        if (w > 0).sum() < 6:
            break
    return coef, w


def block_means(frames: np.ndarray, scan_yx: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean frame and mean scan position of each ``block x block`` block of scan positions.

    ``scan_yx`` are the frames' positions on their (possibly strided) grid, any unit;
    blocks count grid steps. Returns ``(images (m, h, w) float64, positions (m, 2))``.
    """
    scan_yx = np.asarray(scan_yx, dtype=float)
    steps = np.diff(np.unique(scan_yx[:, 0]))
    steps = np.concatenate([steps, np.diff(np.unique(scan_yx[:, 1]))])
    pitch = float(steps.min()) if steps.size else 1.0
    grid = np.rint((scan_yx - scan_yx.min(axis=0)) / pitch).astype(int) // max(int(block), 1)
    nbx = int(grid[:, 1].max()) + 1
    label = grid[:, 0] * nbx + grid[:, 1]
    order = np.argsort(label, kind="stable")
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    groups = np.split(order, bounds)
    images = np.stack([frames[g].mean(axis=0, dtype=np.float64) for g in groups])
    positions = np.stack([scan_yx[g].mean(axis=0) for g in groups])
    return images, positions


@dataclasses.dataclass(frozen=True)
class DescanEstimate:
    """Beam centre against scan position from the aperture edge of block averages.

    ``centre(s) = offset + matrix @ (s - s_mid)`` (detector px; matrix rows are detector
    axes, columns scan axes, detector px per scan px). Elements not significant against
    their standard error (``|D| < threshold * stderr``) are set to zero in ``matrix`` and
    listed in ``zeroed``; ``measured`` keeps the regression's values and ``bound`` the
    2-sigma bound on each element's size (``|measured| + 2 stderr``).

    Attributes
    ----------
    matrix, measured, stderr, bound : (2, 2) float
    offset, offset_stderr : (2,) float
        Beam centre at the scan middle and its standard error, detector px.
    residual : float
        RMS misfit of the block centres, detector px.
    blocks : int
        Number of blocks used; ``block`` their side, scan px.
    radius : float
        Median fitted disk radius, detector px.
    zeroed : list of (int, int)
    """

    matrix: np.ndarray
    measured: np.ndarray
    stderr: np.ndarray
    bound: np.ndarray
    offset: np.ndarray
    offset_stderr: np.ndarray
    residual: float
    blocks: int
    block: int
    radius: float
    zeroed: list

    def sigma(self) -> np.ndarray:
        """1-sigma error of each element of ``matrix``: its standard error where kept,
        half its 2-sigma bound where set to zero."""
        zero = np.zeros((2, 2), dtype=bool)
        for i, j in self.zeroed:
            zero[i, j] = True
        return np.where(zero, self.bound / 2, self.stderr)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"matrix": self.matrix.tolist(), "offset": self.offset.tolist(),
                "measured": self.measured.tolist(), "stderr": self.stderr.tolist(),
                "bound": self.bound.tolist(), "zeroed": [list(z) for z in self.zeroed],
                "offset_stderr": self.offset_stderr.tolist(), "residual_px": self.residual,
                "blocks": self.blocks, "block": self.block}


#: A descan element is kept only when it exceeds this many standard errors.
SIGNIFICANCE = 3.0


def descan_from_edges(frames: np.ndarray, scan_yx: np.ndarray, s_mid: np.ndarray,
                      centre: tuple[float, float], radius: float, *, pix_scale: float = 1.0,
                      pix_offset: float = 0.0, blocks_per_side: int = 8,
                      significance: float = SIGNIFICANCE, **edge_kw) -> DescanEstimate:
    """Descan matrix and beam centre from the aperture edge of block-averaged frames.

    Parameters
    ----------
    frames : (n, h, w)
        Frames (possibly binned: detector px = ``index * pix_scale + pix_offset``).
    scan_yx : (n, 2)
        Their scan positions, scan px.
    s_mid : (2,)
        The scan position the offset refers to.
    centre, radius : float
        Starting disk centre and radius, in the frames' pixels.
    blocks_per_side : int
        About this many blocks along the shorter scan side (at least 3; blocks of at
        least one position).
    significance : float
        Elements below ``significance`` standard errors are reported as zero.

    Raises
    ------
    NoFeaturesError
        Fewer than six blocks with an edge.
    """
    scan_yx = np.asarray(scan_yx, dtype=float)
    side = min(len(np.unique(scan_yx[:, 0])), len(np.unique(scan_yx[:, 1])))
    block = max(1, int(round(side / max(3, blocks_per_side))))
    images, pos = block_means(frames, scan_yx, block)
    edges = edge_centres(images, centre, radius, **edge_kw)
    c = edges.centres * pix_scale + pix_offset
    ok = np.all(np.isfinite(c), axis=1)
    if ok.sum() < 6:
        raise NoFeaturesError("the aperture edge was found in too few parts of the scan to "
                              "measure the beam's motion")
    X = np.hstack([pos - s_mid, np.ones((len(pos), 1))])
    keep = ok.copy()
    for _ in range(2):  # a 3-sigma clip of blocks spoilt by an edge feature
        coef, *_ = np.linalg.lstsq(X[keep], c[keep], rcond=None)
        res = c - X @ coef
        sig = np.sqrt(np.mean(res[keep] ** 2, axis=0))
        keep = ok & np.all(np.abs(res) <= 3 * sig + 1e-9, axis=1)
    m = int(keep.sum())
    coef, *_ = np.linalg.lstsq(X[keep], c[keep], rcond=None)
    res = c[keep] - X[keep] @ coef
    dof = max(m - 3, 1)
    s2 = (res ** 2).sum(axis=0) / dof                       # per detector axis
    cov = np.linalg.inv(X[keep].T @ X[keep])                  # (3, 3)
    se = np.sqrt(np.outer(s2, np.diag(cov)))                  # (2 det axes, 3 coefs)
    measured = coef[:2].T.copy()
    stderr = se[:, :2]
    zero = np.abs(measured) < significance * stderr
    matrix = np.where(zero, 0.0, measured)
    offset = coef[2].copy()
    for a in range(2):  # refit each detector axis with its zeroed elements left out
        if zero[a].any():
            cols = [j for j in range(2) if not zero[a, j]] + [2]
            sub, *_ = np.linalg.lstsq(X[keep][:, cols], c[keep, a], rcond=None)
            matrix[a, cols[:-1]] = sub[:-1]
            offset[a] = sub[-1]
    return DescanEstimate(
        matrix=matrix, measured=measured, stderr=stderr, bound=np.abs(measured) + 2 * stderr,
        offset=offset, offset_stderr=se[:, 2], residual=float(np.sqrt(np.mean(res ** 2))),
        blocks=m, block=block, radius=float(np.nanmedian(edges.radii[keep])) * pix_scale,
        zeroed=[tuple(int(v) for v in ij) for ij in np.argwhere(zero)])
