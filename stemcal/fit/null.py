"""Is the fitted contrast real? The loss at the optimum against shuffled scan positions.

At the right geometry the frames' shadow images add up into one sharp
specimen image; with the scan positions shuffled among the frames nothing
adds up, and the contrast shared between the groups of frames is what noise
(and the specimen's own texture) give by chance. The optimum's contrast in
units of the spread of those shuffles is the fit's significance: pure noise,
a blank specimen or a beam without features give a few units at most (the
optimiser picks the best of many geometries), real data tens to thousands.
"""
from __future__ import annotations

import numpy as np

from ..twin.params import OverfocusParams
from .loss import BlurLoss

__all__ = ["MIN_SIGNIFICANCE", "contrast_significance"]

#: Below this many null standard deviations the fitted contrast is not trusted.
MIN_SIGNIFICANCE = 10.0


def contrast_significance(loss: BlurLoss, params: OverfocusParams, *, shuffles: int = 5,
                          seed: int = 0, value: float | None = None) -> float:
    """``(contrast(params) - mean(null)) / std(null)`` for ``loss`` (a :class:`BlurLoss`).

    The null: the same loss with the cached frames' scan positions permuted at random
    within each group (``shuffles`` permutations, seeded; :meth:`BlurLoss.shuffled`).
    ``value``: ``loss.value(params)`` where the caller has it already (one projection less).
    Returns ``inf`` when the null has no spread and the contrast is positive.
    """
    value = -(loss.value(params) if value is None else value)
    rng = np.random.default_rng(seed)
    null = [-loss.shuffled(rng).value(params) for _ in range(shuffles)]
    null_arr = np.asarray(null)
    spread = float(null_arr.std(ddof=1))
    if not spread > 0:
        return float("inf") if value > float(null_arr.mean()) else 0.0
    return float((value - null_arr.mean()) / spread)
