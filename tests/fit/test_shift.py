"""Shadow-image motion by summed cross-power spectra (stemcal.fit.shift) on frames with a
known shift."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from stemcal.fit.shift import disk_window, mean_shift, pair_shift, prepare, tracked_shift


def _shifted_pairs(shape, shift, n=40, seed=0, counts=None):
    """``n`` pairs (a, b) of a smooth random texture, ``b(x) = a(x - shift)``."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(n):
        tex = ndimage.gaussian_filter(rng.normal(size=(shape[0] + 20, shape[1] + 20)), 2.0)
        tex -= tex.min()
        a.append(tex[10:-10, 10:-10])
        b.append(ndimage.shift(tex, shift, order=3, mode="nearest")[10:-10, 10:-10])
    a, b = np.array(a), np.array(b)
    if counts:
        a = rng.poisson(np.clip(a / a.mean() * counts, 0, None)).astype(float)
        b = rng.poisson(np.clip(b / b.mean() * counts, 0, None)).astype(float)
    return a, b


@pytest.mark.parametrize("shape", [(67, 67), (64, 80), (71, 58)])  # prime sides too
@pytest.mark.parametrize("shift", [(2.3, -1.6), (-0.4, 3.75)])
def test_pair_shift_finds_a_known_shift(shape, shift):
    """Windows placed on the same specimen area in both frames (as tracked_shift does): a
    window fixed on the detector would pull the peak towards zero."""
    a, b = _shifted_pairs(shape, shift)
    c = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    r = min(shape) / 2 - 3
    wa = disk_window(shape, tuple(c - np.array(shift) / 2), r)
    wb = disk_window(shape, tuple(c + np.array(shift) / 2), r)
    idx = np.arange(len(a))
    m = pair_shift(prepare(a, wa), prepare(b, wb), idx, idx)
    np.testing.assert_allclose(m.shift, shift, atol=0.05)
    assert m.pairs == len(a) and m.strength > 10
    # the same as mean_shift over one stack holding both sets
    both = np.concatenate([prepare(a, wa), prepare(b, wb)])
    np.testing.assert_array_equal(mean_shift(both, idx, idx + len(a)).shift, m.shift)


def test_tracked_shift_at_low_counts():
    """Windows that follow the content; 3 counts/px Poisson noise."""
    shape = (90, 90)
    a, b = _shifted_pairs(shape, (4.2, -3.1), n=200, seed=1, counts=3)
    frames = np.concatenate([a, b])
    idx = np.arange(len(a))
    m = tracked_shift(frames, idx, idx + len(a), (44.5, 44.5), 40.0)
    np.testing.assert_allclose(m.shift, (4.2, -3.1), atol=0.15)


def test_prepare_is_windowed_and_mean_free():
    rng = np.random.default_rng(2)
    f = rng.uniform(0, 5, size=(3, 33, 31)).astype(np.float32)
    win = disk_window((33, 31), (16.0, 15.0), 14.0)
    p = prepare(f, win)
    assert p.dtype == np.float32 and p.shape == f.shape
    assert np.all(p[:, win == 0] == 0)
    # window-weighted mean removed: sum(p) = sum(w f) - mean * sum(w) = 0
    np.testing.assert_allclose(p.sum(axis=(1, 2)), 0, atol=1e-3)
    np.testing.assert_allclose(p, (f - ((f * win).sum(axis=(1, 2)) / win.sum())[:, None, None])
                               * win, rtol=1e-5, atol=1e-5)
