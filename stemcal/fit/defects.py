"""Defective detector pixels: found on the mean frame, filled in every cached frame.

Pixel detectors have hot pixels (counting at a high rate whatever the beam), dead
pixels and columns (never counting), and gaps between their chips (a Merlin quad's
cross of 2-3 px). Each is fixed on the detector, so it adds the same pattern to every
frame: it does not move with the scan, and a fit that superimposes shadow images reads
it as specimen detail at the wrong geometry. Measured (2026-12-07, an adversarial
sweep of `stemcal fit` on simulated 48x48 scans of 96x96 frames): one hot pixel made
any scan at 20 counts/px or less unusable (the disk finder's threshold took the hot
pixel for the bright-field disk: "disk too small (0.6 px radius)"); one dead column
or a cross of zeros through the disk sent the rotation 50 deg off, flagged "no
specimen contrast"; nothing said why.

Found on the mean of the cached frames, in the cache's pixels:

* hot: more than :data:`HOT_OVER_NEIGHBOURS` times each of its eight neighbours and
  more than :data:`HOT_OVER_DISK` times the disk's level (a real feature of the mean
  frame is smooth on the pixel scale: the specimen's detail averages out over the
  scan, and the aperture edge and Bragg disks are several pixels across);
* dead: inside the disk (:data:`DEAD_INSIDE` px within its edge), below
  :data:`DEAD_BELOW` of the disk's level, where most of the pixels around it
  (:data:`DEAD_AROUND` px square) count (a live pixel inside the disk never averages
  near zero over a scan); a column or row dead all across the disk (a dead column, the
  gap between chips) along its whole length.

Each is filled in every cached frame by linear interpolation between the nearest good
pixels along its row or its column (the shorter gap): the shadow image goes on across
it, as the specimen does. On clean data nothing is found and the cache is untouched
(the validation set: simulated, multislice and noise, nothing found).
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from scipy import ndimage

from .disk import NoFeaturesError, bright_region

log = logging.getLogger(__name__)

__all__ = ["Defects", "find_defects", "fill_defects", "HOT_OVER_NEIGHBOURS", "HOT_OVER_DISK",
           "DEAD_BELOW", "DEAD_INSIDE", "DEAD_AROUND", "REACH", "MIN_COUNTS"]

#: A hot pixel's mean is above this many times each of its eight neighbours' ...
HOT_OVER_NEIGHBOURS = 3.0
#: ... and above this many times the disk's level.
HOT_OVER_DISK = 2.0
#: A dead pixel's mean is below this share of the disk's level ...
DEAD_BELOW = 0.05
#: ... at least this many px inside the disk's edge ...
DEAD_INSIDE = 1.0
#: ... where over 40 % of the pixels in a square of this side around it count.
DEAD_AROUND = 11
#: Farthest good pixel (px along a row or column) a defective one is filled from.
REACH = 10
#: Counts over the scan that make a zero (or an excess) mean something (P(0) = e^-20).
MIN_COUNTS = 20.0


@dataclasses.dataclass(frozen=True)
class Defects:
    """Defective pixels of a cache's frames: ``hot`` and ``dead`` boolean masks, (h, w)."""

    hot: np.ndarray
    dead: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.hot | self.dead

    def counts(self) -> dict[str, int]:
        return {"hot": int(self.hot.sum()), "dead": int(self.dead.sum())}


def _disk_region(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(distance from the disk's centre minus its radius, px; the disk's level) of a mean
    frame, from its 7x7 median (which hot pixels and lines up to 3 px wide do not
    survive); None where no disk stands out."""
    smooth = ndimage.median_filter(image, size=7, mode="nearest")
    try:
        disk = bright_region(smooth)
    except NoFeaturesError:
        return None
    radius = math.sqrt(float(disk.sum()) / math.pi)
    cy, cx = ndimage.center_of_mass(disk)
    yy, xx = np.indices(image.shape)
    level = float(np.median(image[disk]))
    return np.hypot(yy - cy, xx - cx) - radius, level


def find_defects(mean_frame: np.ndarray, frames: int | None = None) -> Defects:
    """Hot and dead pixels of ``mean_frame`` (the mean cached frame; module docstring).

    ``frames``: how many frames it is the mean of. Where given, a pixel is dead only where
    a live one would have counted at least :data:`MIN_COUNTS` over them (the disk's level
    times ``frames``), and hot only where it counted that many more than its brightest
    neighbour: at 0.01 counts/px a pixel of pure noise that never counted over 576 frames
    is no defect (0.3 % of them).
    """
    M = np.asarray(mean_frame, dtype=np.float64)
    none = Defects(np.zeros(M.shape, bool), np.zeros(M.shape, bool))
    if M.ndim != 2 or min(M.shape) < 8 or not np.all(np.isfinite(M)):
        return none
    region = _disk_region(M)
    if region is None:
        return none
    edge, level = region
    if not level > 0:
        return none
    around = np.ones((3, 3), bool)
    around[1, 1] = False
    neighbours = ndimage.maximum_filter(M, footprint=around, mode="nearest")
    hot = (M > HOT_OVER_NEIGHBOURS * neighbours) & (M > HOT_OVER_DISK * level)
    if frames is not None:
        hot &= (M - neighbours) * frames >= MIN_COUNTS
        if level * frames < MIN_COUNTS:   # too few counts for a zero to mean anything
            return Defects(hot, np.zeros(M.shape, bool))
    counting = ndimage.uniform_filter((M > 0.1 * level).astype(float), size=DEAD_AROUND,
                                      mode="nearest")
    inside = edge <= -DEAD_INSIDE
    dead = inside & (M < DEAD_BELOW * level) & (counting > 0.4)
    # a column or row dead all across the disk (a dead column, a chip gap) is dead along
    # its whole length: where it crosses the aperture edge it would otherwise leave notches
    # fixed on the detector, which the shadow motion's measurement locks onto
    for axis in (0, 1):
        lines = np.nonzero((inside.sum(axis=axis) >= 3)
                           & ((dead | ~inside).all(axis=axis)))[0]
        if axis == 0:
            dead[:, lines] = True
        else:
            dead[lines, :] = True
    return Defects(hot, dead & ~hot)


def _nearest_good(bad: np.ndarray, y: int, x: int, dy: int, dx: int) -> int | None:
    """Steps from (y, x) along (dy, dx) to the nearest good pixel, within :data:`REACH`."""
    h, w = bad.shape
    for k in range(1, REACH + 1):
        yy, xx = y + k * dy, x + k * dx
        if not (0 <= yy < h and 0 <= xx < w):
            return None
        if not bad[yy, xx]:
            return k
    return None


def _plan(bad: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each defective pixel: its index and two good sources with their weights."""
    rows = []
    for y, x in zip(*np.nonzero(bad)):
        best = None
        for (ay, ax), (by, bx) in (((0, -1), (0, 1)), ((-1, 0), (1, 0))):
            a = _nearest_good(bad, y, x, ay, ax)
            b = _nearest_good(bad, y, x, by, bx)
            if a is not None and b is not None:
                span = a + b
                cand = (span, (y + a * ay, x + a * ax, b / span), (y + b * by, x + b * bx, a / span))
            elif a is not None or b is not None:
                k, (sy, sx) = (a, (ay, ax)) if a is not None else (b, (by, bx))
                cand = (2 * REACH + k, (y + k * sy, x + k * sx, 1.0), (y + k * sy, x + k * sx, 0.0))
            else:
                continue
            if best is None or cand[0] < best[0]:
                best = cand
        if best is None:
            continue   # no good pixel within reach: left as it is
        (y1, x1, w1), (y2, x2, w2) = best[1], best[2]
        rows.append((y, x, y1, x1, w1, y2, x2, w2))
    if not rows:
        return tuple(np.empty(0, int) for _ in range(8))
    y, x, y1, x1, w1, y2, x2, w2 = np.array(rows, dtype=float).T
    return (y.astype(int), x.astype(int), y1.astype(int), x1.astype(int), w1,
            y2.astype(int), x2.astype(int), w2)


def fill_defects(frames: np.ndarray, defects: Defects) -> int:
    """Fill ``defects`` in every frame of ``frames`` (n, h, w), in place, by linear
    interpolation from the nearest good pixels along the row or column with the shorter
    gap (module docstring); integer frames are rounded. Returns the pixels filled."""
    bad = defects.mask.copy()
    filled = 0
    while bad.any():
        # a pixel with no good one along its row or column (where a row and a column gap
        # cross) is filled in a second round, from those filled in the first
        y, x, y1, x1, w1, y2, x2, w2 = _plan(bad)
        if y.size == 0:
            break
        values = (frames[:, y1, x1].astype(np.float32) * w1.astype(np.float32)
                  + frames[:, y2, x2].astype(np.float32) * w2.astype(np.float32))
        if np.issubdtype(frames.dtype, np.integer):
            info = np.iinfo(frames.dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        frames[:, y, x] = values.astype(frames.dtype)
        bad[y, x] = False
        filled += int(y.size)
    return filled
