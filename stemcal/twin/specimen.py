"""Built-in low-symmetry test specimen (a transmission function)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def test_specimen(shape: tuple[int, int], *, seed: int = 0, feature_size: float = 1.5,
                  contrast: float = 0.6) -> np.ndarray:
    """A random, low-symmetry transmission image.

    Blobs of several sizes plus a few straight bars (no symmetry axis, no
    period), smoothed to ``feature_size`` pixels.

    Parameters
    ----------
    shape : (h, w)
        Image shape, pixels.
    seed : int
        Seed of the random generator (same seed, same image).
    feature_size : float
        Gaussian smoothing sigma of the finest features, pixels.
    contrast : float
        Transmission spans ``[1 - contrast, 1]``.

    Returns
    -------
    (h, w) float64 in ``[1 - contrast, 1]``.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 4 or w < 4:
        raise ValueError(f"specimen shape must be at least 4x4, got {shape}")
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w))
    n_blobs = max(8, h * w // 25)
    ys = rng.integers(0, h, n_blobs)
    xs = rng.integers(0, w, n_blobs)
    img[ys, xs] = rng.uniform(0.5, 1.0, n_blobs)
    img = ndimage.gaussian_filter(img, feature_size)
    img /= img.max() + 1e-12
    coarse = ndimage.gaussian_filter(rng.standard_normal((h, w)), 4 * feature_size)
    img += 0.3 * coarse / (np.abs(coarse).max() + 1e-12)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(max(3, (h + w) // 60)):
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.05, 0.2) * min(h, w)
        d_along = (yy - y0) * np.sin(ang) + (xx - x0) * np.cos(ang)
        d_across = -(yy - y0) * np.cos(ang) + (xx - x0) * np.sin(ang)
        img += 0.6 * ((np.abs(d_along) < length) & (np.abs(d_across) < feature_size))
    img = ndimage.gaussian_filter(img, feature_size / 2)
    img -= img.min()
    img /= img.max() + 1e-12
    return 1.0 - contrast * img
