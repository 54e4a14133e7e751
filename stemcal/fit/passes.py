"""Full-resolution passes over the raw data, and the quality of their images."""
from __future__ import annotations

import numpy as np

from ..twin.params import OverfocusParams
from .metrics import contrast_loss, crete_blur, filled_image

__all__ = ["as_dataset", "full_pass", "image_quality"]


def as_dataset(ctx, dataset):
    """A LiberTEM context and dataset for ``dataset`` (a DataSet or a 4D array)."""
    if ctx is None:
        from ..executors import InlineContext
        ctx = InlineContext()
    if isinstance(dataset, np.ndarray):
        if dataset.ndim != 4:
            raise ValueError(f"need a 4D array (ny, nx, sy, sx), got shape {dataset.shape}")
        dataset = ctx.load("memory", data=dataset, num_partitions=max(1, min(8, dataset.shape[0])))
    return ctx, dataset


def require_2d_scan(dataset) -> tuple[int, int]:
    """The scan shape ``(ny, nx)`` of a LiberTEM dataset, which a fit needs two-dimensional.

    Raises
    ------
    ValueError
        A line scan (one row or one column): the beam's motion along one line cannot
        give the scan's rotation against the detector together with its handedness.
    """
    nav = tuple(int(n) for n in dataset.shape.nav)
    if len(nav) != 2 or min(nav) < 2:
        raise ValueError(f"a scan of {'x'.join(map(str, nav))} positions cannot be calibrated: "
                         "rotation and flip need a 2D scan (at least 2 rows and 2 columns)")
    return nav[0], nav[1]


def full_pass(ctx, dataset, params: OverfocusParams, *, progress: bool = False) -> dict[str, np.ndarray]:
    """One OverfocusUDF pass over the raw data; the images as NumPy arrays."""
    from ..processing import OverfocusUDF
    res = ctx.run_udf(dataset=dataset, udf=OverfocusUDF(params), progress=progress)
    return {k: np.asarray(v.data) for k, v in res.items()}


def image_quality(images: dict[str, np.ndarray]) -> tuple[float, float]:
    """(Crete blur, contrast) of a full pass's normalised shifted sum."""
    S, C = images["shifted_sum"], images["coverage"]
    return crete_blur(filled_image(S, C)), -contrast_loss(S, C)
