"""The bright-field disk: where the beam is on the detector, and how it moves.

The sum of all frames images the beam-forming aperture; each frame's disk
position, regressed on scan position, gives the descan error.
"""
from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from ..errors import NoFeaturesError


@dataclasses.dataclass(frozen=True)
class Disk:
    """Bright-field disk found in an image.

    Attributes
    ----------
    cy, cx : float
        Centre, detector px.
    radius : float
        Radius of a disk of the same area, detector px.
    level, background : float
        Mean intensity inside the disk and outside it.
    """

    cy: float
    cx: float
    radius: float
    level: float
    background: float

    @property
    def threshold(self) -> float:
        """Midway between background and disk level."""
        return 0.5 * (self.level + self.background)


def bright_region(img: np.ndarray) -> np.ndarray:
    """The largest region above ``img``'s Otsu threshold, its holes filled (bool mask).

    Raises
    ------
    NoFeaturesError
        If the image is uniform or nothing lies above the threshold.
    """
    lo, hi = np.percentile(img, [1, 99.5])
    if hi - lo <= 1e-9 * max(abs(hi), 1.0):
        raise NoFeaturesError("the frames are uniform: no bright-field disk on the detector")
    mask = img > threshold_otsu(img)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise NoFeaturesError("no bright-field disk found on the detector")
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))


def find_disk(image: np.ndarray, *, min_radius: float = 2.0) -> Disk:
    """Find the bright-field disk in a (summed) detector image.

    Otsu threshold, largest connected component (:func:`bright_region`), centroid of
    the binary disk and the radius of the disk of equal area.

    Raises
    ------
    NoFeaturesError
        If the image is uniform, the bright region is tiny, or it touches
        most of the detector border (beam off the detector or overfilling it).
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"need a 2D image, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise NoFeaturesError("the frame sum holds NaN or infinite values")
    disk = bright_region(img)
    area = float(disk.sum())
    radius = math.sqrt(area / math.pi)
    if radius < min_radius:
        raise NoFeaturesError(f"the bright-field disk is too small ({radius:.1f} px radius)")
    edge = np.concatenate([disk[0], disk[-1], disk[:, 0], disk[:, -1]])
    if edge.mean() > 0.5:
        raise NoFeaturesError("the bright region covers most of the detector edge: beam not "
                              "contained on the detector")
    cy, cx = ndimage.center_of_mass(disk)
    inner = ndimage.binary_erosion(disk, iterations=2)
    outer = ~ndimage.binary_dilation(disk, iterations=3)
    level = float(img[inner].mean()) if inner.any() else float(img[disk].mean())
    background = float(img[outer].mean()) if outer.any() else 0.0
    return Disk(float(cy), float(cx), radius, level, background)


#: The disk must stand this many noise standard deviations above the background. Pure
#: noise gave at most 0.8 (96 files of 0.1-20 counts/px, four shapes); a blank specimen
#: under a beam at 0.1 counts/px on a 16x16 scan about 19.
MIN_DISK_CONTRAST = 5.0


def disk_contrast(frames: np.ndarray, disk: Disk) -> float:
    """The disk's step (level - background of the mean frame) in units of the mean frame's
    noise.

    The noise is measured, not modelled: the standard deviation (from the median absolute
    deviation) of the difference of the mean frames of two interleaved halves of
    ``frames`` (n, h, w), divided by two; specimen contrast and a structured background
    cancel in the difference, counting noise does not. Pure noise gives about one unit
    (the threshold picks the brighter pixels), a bright-field disk tens at 0.1 counts/px
    and thousands at a few counts/px.
    """
    frames = np.asarray(frames)
    if len(frames) < 2:
        return float("inf")
    a = frames[0::2].mean(axis=0, dtype=np.float64)
    b = frames[1::2].mean(axis=0, dtype=np.float64)
    d = a - b
    noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / 2
    if noise <= 0:
        noise = float(d.std()) / 2
    step = disk.level - disk.background
    if noise <= 0:
        return float("inf") if step > 0 else 0.0
    return float(step / noise)


def check_disk_contrast(frames: np.ndarray, disk: Disk, minimum: float = MIN_DISK_CONTRAST) -> None:
    """Raise :class:`NoFeaturesError` unless the disk stands out of the noise
    (:func:`disk_contrast` >= ``minimum``)."""
    z = disk_contrast(frames, disk)
    if not z >= minimum:
        raise NoFeaturesError(f"no bright-field disk: the brightest region stands only {z:.1f} "
                              f"noise standard deviations above the rest ({minimum:.0f} needed)")


def _gaussian_taps(sigma: float) -> np.ndarray:
    """SciPy's ``gaussian_filter1d`` kernel (truncate 4): normalised, radius ``int(4 sigma + 0.5)``."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@numba.njit(nogil=True, cache=True, inline="always")
def _reflect(i, n):
    # scipy.ndimage mode 'reflect': (d c b a | a b c d | d c b a)
    while i < 0 or i >= n:
        if i < 0:
            i = -i - 1
        if i >= n:
            i = 2 * n - i - 1
    return i


@numba.njit(nogil=True, cache=True)
def _mask_centroids(frames, taps, threshold, upper, out):
    """Smooth each frame (separable ``taps``, reflected edges), mask it, centroid -> out."""
    n, h, w = frames.shape
    r = (taps.shape[0] - 1) // 2
    tmp = np.empty((h, w))
    sm = np.empty((h, w))
    for i in range(n):
        f = frames[i]
        if r > 0:
            for y in range(h):
                for x in range(w):
                    acc = 0.0
                    for k in range(-r, r + 1):
                        acc += taps[k + r] * f[y, _reflect(x + k, w)]
                    tmp[y, x] = acc
            for y in range(h):
                for x in range(w):
                    sm[y, x] = 0.0
                for k in range(-r, r + 1):
                    yy = _reflect(y + k, h)
                    t = taps[k + r]
                    for x in range(w):
                        sm[y, x] += t * tmp[yy, x]
        else:
            for y in range(h):
                for x in range(w):
                    sm[y, x] = f[y, x]
        total = 0.0
        my = 0.0
        mx = 0.0
        for y in range(h):
            for x in range(w):
                v = sm[y, x]
                if upper > threshold:
                    m = (v - threshold) / (upper - threshold)
                    m = min(max(m, 0.0), 1.0)
                else:
                    m = 1.0 if v > threshold else 0.0
                total += m
                my += m * y
                mx += m * x
        if total > 0:
            out[i, 0] = my / total
            out[i, 1] = mx / total


def disk_centres(frames: np.ndarray, threshold: float, *, upper: float | None = None,
                 pix_scale: float = 1.0, pix_offset: float = 0.0, smooth: float = 1.0) -> np.ndarray:
    """Centre of the bright-field disk in every frame, detector px (n, 2).

    Each frame is lightly smoothed (Gaussian ``smooth`` px, the kernel and
    reflected edges of ``scipy.ndimage.gaussian_filter``) and turned into a
    mask: binary above ``threshold``, or, with ``upper``, rising linearly from
    0 at ``threshold`` to 1 at ``upper``; the mask's centroid is the centre.
    A mask keeps the specimen's contrast inside the disk from pulling the
    centre as much as it pulls the centre of mass. Frames with an empty mask
    give NaN. Frames are shared out to the machine's cores.
    """
    from ..processing.threads import available_cores, run_threads
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (n, h, w), got shape {frames.shape}")
    n = len(frames)
    out = np.full((n, 2), np.nan)
    taps = _gaussian_taps(smooth) if smooth else np.ones(1)
    hi = float(upper) if upper is not None and upper > threshold else -np.inf

    def work(t: int, i0: int, i1: int) -> None:
        _mask_centroids(frames[i0:i1], taps, float(threshold), hi, out[i0:i1])

    run_threads(work, n, max(1, min(available_cores(), n)))
    return out * pix_scale + pix_offset


@dataclasses.dataclass(frozen=True)
class DescanFit:
    """Linear fit of the beam centre on scan position.

    ``centre(s) = offset + matrix @ (s - s_mid)``; matrix rows are detector
    axes (y, x), columns scan axes (y, x), detector px per scan px; ``offset``
    is the beam centre at the scan middle. ``residual`` is the RMS misfit, px.
    """

    matrix: np.ndarray
    offset: np.ndarray
    residual: float
    n: int


def fit_descan(centres: np.ndarray, scan_yx: np.ndarray, s_mid: np.ndarray) -> DescanFit:
    """Least-squares descan fit, robust to outliers (two passes, 3-sigma clip)."""
    ok = np.all(np.isfinite(centres), axis=1)
    if ok.sum() < 6:
        raise NoFeaturesError("the beam was found in too few frames to fit its motion")
    X = np.hstack([scan_yx - s_mid, np.ones((len(scan_yx), 1))])
    keep = ok.copy()
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(X[keep], centres[keep], rcond=None)
        res = np.linalg.norm(centres - X @ coef, axis=1)
        sigma = float(np.sqrt(np.mean(res[keep] ** 2)))
        keep = ok & (res <= 3 * sigma + 1e-9)
    return DescanFit(matrix=coef[:2].T.copy(), offset=coef[2].copy(), residual=sigma, n=int(keep.sum()))
