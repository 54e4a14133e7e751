"""The result object of a calibration fit."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..twin.params import OverfocusParams


@dataclasses.dataclass
class FitResult:
    """Outcome of :func:`stemcal.fit.refine` (or the cold start).

    Attributes
    ----------
    params : OverfocusParams
        Fitted geometry.
    start : OverfocusParams
        Where the fit started.
    loss : float
        Metric value at ``params`` on the reduced cache.
    blur : float
        Crete blur effect (0 sharp .. 1 blurred) of the full-resolution,
        coverage-normalised shifted sum at ``params`` (NaN without the confirming pass).
    contrast : float
        Squared contrast of that image (see :func:`stemcal.fit.contrast_loss`, sign flipped).
    nfev : int
        Number of loss evaluations.
    passes : int
        Number of passes over the raw dataset.
    seconds : float
        Wall time, seconds.
    success : bool
    message : str
    metric : str
        Name of the minimised metric.
    images : dict
        Full-resolution OverfocusUDF images at ``params`` (empty without the confirming pass).
    extra : dict
        Further diagnostics (cache reduction, bounds, start metric,
        ``uncertainty`` per fitted parameter, ``descan`` from the cold start...).
    quality : str
        ``"ok"``, or why the result should not be trusted.
    """

    params: OverfocusParams
    start: OverfocusParams
    loss: float
    blur: float
    contrast: float
    nfev: int
    passes: int
    seconds: float
    success: bool
    message: str
    metric: str
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    quality: str = "ok"

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (parameters, metrics, counts; no images)."""
        p = self.params
        return {
            "scan_rotation": p.scan_rotation, "flip_y": p.flip_y, "overfocus": p.overfocus,
            "cy": p.cy, "cx": p.cx, "blur": self.blur, "contrast": self.contrast,
            "loss": self.loss, "metric": self.metric, "nfev": self.nfev, "passes": self.passes,
            "seconds": self.seconds, "success": self.success, "message": self.message,
            "quality": self.quality,
            "params": p.to_dict(), **{k: v for k, v in self.extra.items() if _jsonable(v)},
        }


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict, tuple))
