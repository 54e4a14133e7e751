"""Calibration by the blur of the shifted sum.

* :mod:`.metrics` -- blur metrics (Crete, contrast) and :data:`METRICS`;
* :mod:`.cache` -- the reduced cache of the raw data the loss runs on;
* :mod:`.loss` -- :class:`BlurLoss`, the loss of a geometry on the cache;
* :mod:`.optimise` -- the optimiser and its polish;
* :mod:`.passes` -- full-resolution passes and their image quality;
* :mod:`.fine` -- :func:`refine` from a guess;
* :mod:`.disk`, :mod:`.shift`, :mod:`.coarse` -- the cold start (:func:`cold_start`).
"""
from .cache import ReducedCache, build_cache, choose_reduction
from .fine import refine
from .loss import BlurLoss
from .metrics import METRICS, BlurMetric, contrast_loss, crete_blur, crete_loss, filled_image
from .result import FitResult

__all__ = ["METRICS", "BlurMetric", "contrast_loss", "crete_blur", "crete_loss", "filled_image",
           "ReducedCache", "build_cache", "choose_reduction", "BlurLoss", "refine", "FitResult"]
