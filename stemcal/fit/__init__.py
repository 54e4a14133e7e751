"""Blur metrics, the loss, the reduced cache and the refinement."""
from ._blur import METRICS, BlurMetric, contrast_loss, crete_blur, crete_loss, filled_image
from .cache import ReducedCache, build_cache, choose_reduction
from .loss import BlurLoss
from .fine import refine
from .result import FitResult

__all__ = ["METRICS", "BlurMetric", "contrast_loss", "crete_blur", "crete_loss", "filled_image",
           "ReducedCache", "build_cache", "choose_reduction", "BlurLoss", "refine", "FitResult"]
