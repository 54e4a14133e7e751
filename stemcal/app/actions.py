"""The app's three jobs: *Auto* (a cold start), *Refine from here*, *Record*.

Each runs in a worker thread of the app and reports through a
:class:`~stemcal.app.progress.StagedProgress`. They use the fit and the
catalog as every other caller does: :func:`~stemcal.fit.coarse.cold_start`,
:func:`~stemcal.fit.fine.refine` on the app's cache, one
:class:`~stemcal.processing.OverfocusUDF` pass and
:func:`~stemcal.catalog.write_record_or_spool`.

A manual record
---------------
*Record* stores the values on the page as a new
:class:`~stemcal.record.CalibrationRecord` whose ``fit_settings`` say how it
was made: ``method`` ``"manual"``, ``adjusted_by`` (who), ``from_record``
(the uid of the record the values were adjusted from, or None for a data
file), ``steps`` (what led to the values: ``record``, ``auto``, ``refine``,
``hand``, in order) and ``data`` (where the frames are, so that it can be
opened again). Made from a record it supersedes that record
(:meth:`~stemcal.record.CalibrationRecord.correct`) and keeps its
acquisition uid and optics state. Its blur and images come from a full pass
over the raw data at the recorded values; its uncertainty is not determined
(the values were set by hand), its quality ``"ok"``: the operator vouches for it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..callbacks.recorder import IMAGE_NAMES
from ..catalog import write_record_or_spool
from ..fit.cache import ReducedCache
from ..fit.coarse import cold_start
from ..fit.fine import refine
from ..fit.passes import full_pass, image_quality
from ..fit.result import FitResult
from ..record import CalibrationRecord, software_versions
from ..twin.params import OverfocusParams
from .progress import Stage, StagedProgress
from .sources import Source

__all__ = ["AUTO_STAGES", "REFINE_STAGES", "RECORD_STAGES", "LOAD_STAGES", "auto",
           "refine_from", "manual_record", "MANUAL_METHOD"]

#: ``fit_settings["method"]`` of a record made in the app.
MANUAL_METHOD = "manual"

LOAD_STAGES = (Stage("reading the data into the cache", 1.0, is_pass=True),)
AUTO_STAGES = (Stage("reading the data", 1.0, is_pass=True),
               Stage("cold start: disk, descan, shadow-image motion, blur", 4.0),
               Stage("confirming pass over the raw data", 1.0, is_pass=True))
REFINE_STAGES = (Stage("coarse search of rotation and overfocus", 1.0),
                 Stage("polish on the whole cache", 2.0))
RECORD_STAGES = (Stage("pass over the raw data at these values", 2.0, is_pass=True),
                 Stage("writing the record", 1.0))

#: Half-widths of the search of *Refine from here*: degrees, relative overfocus.
REFINE_ROTATION_BOUND = 2.0
REFINE_OVERFOCUS_BOUND = 0.05


def auto(ctx: Any, source: Source, progress: StagedProgress) -> FitResult:
    """A cold start on the source's data from its sizes alone (the page's values unused)."""
    return cold_start(source.dataset, ctx=ctx, **source.sizes.cold_start_kwargs(),
                      progress=progress)


def refine_from(ctx: Any, source: Source, cache: ReducedCache, here: OverfocusParams,
                progress: StagedProgress) -> FitResult:
    """Refine rotation and overfocus from the page's values on the app's cache.

    As the cold start does: a coarse search (within :data:`REFINE_ROTATION_BOUND`
    degrees and :data:`REFINE_OVERFOCUS_BOUND` of the overfocus), then the
    polish on the whole cache, which gives the uncertainty. Flip, centre and
    descan stay as they are. No pass over the raw data.
    """
    bounds = {"rotation_bound": REFINE_ROTATION_BOUND, "overfocus_bound": REFINE_OVERFOCUS_BOUND}
    progress.enter(0)
    coarse = refine(source.dataset, here, ctx=ctx, cache=cache, polish=False, confirm=False,
                    coarse_tolerance=0.03, **bounds)
    progress.enter(1)
    fit = refine(source.dataset, coarse.params, ctx=ctx, cache=cache, method="none",
                 confirm=False, **bounds)
    fit.nfev += coarse.nfev
    return fit


def manual_record(ctx: Any, source: Source, params: OverfocusParams, *, client: Any,
                  adjusted_by: str, steps: Sequence[str],
                  progress: StagedProgress) -> tuple[CalibrationRecord, bool, str | None]:
    """Record ``params`` as a manual calibration (see the module docstring).

    Returns
    -------
    (record, spooled, reason)
        ``spooled``: the catalog could not take it and it waits in the spool
        (``stemcal sync``), for ``reason``.
    """
    if not adjusted_by.strip():
        raise ValueError("say who adjusted the values (the operator field is empty)")
    try:
        images = full_pass(ctx, source.dataset, params, progress=progress)
    except AssertionError as exc:   # LiberTEM's reader finding fewer bytes than it opened
        raise OSError(f"cannot read the frames of {source.label}: the file changed since it "
                      "was opened (cut short?); open it again") from exc
    blur, _ = image_quality(images)
    if not math.isfinite(blur):
        # NaN or infinite pixels in the frames, or nothing the blur can be measured on: the
        # operator cannot have seen the specimen line up, so there is nothing to vouch for
        bad = "sum" in images and not np.all(np.isfinite(np.asarray(images["sum"])))
        raise ValueError("nothing to record: " + (
            "the frames hold NaN or infinite values" if bad else
            "the images at this geometry give no blur (nothing sharp to judge)"))
    summed = np.asarray(images.get("sum", np.ones(1)))
    if summed.size and not np.ptp(summed) > 0:
        # blank or uniform frames (no counts at all: blur 1.0) show nothing to line up
        raise ValueError("nothing to record: the frames are all alike (no counts, or no "
                         "pattern), so no geometry can be judged on them")
    progress.enter(1)
    prior = source.record
    settings = {"method": MANUAL_METHOD, "adjusted_by": adjusted_by.strip(),
                "from_record": prior.uid if prior is not None else None,
                "steps": list(steps), "data": dict(source.data)}
    values = {"scan_rotation": params.scan_rotation, "flip_y": params.flip_y,
              "overfocus": params.overfocus, "cy": params.cy, "cx": params.cx,
              "descan": params.descan, "scan_pixel_size": params.scan_pixel_size,
              "camera_length": params.camera_length,
              "detector_pixel_size": params.detector_pixel_size, "semiconv": params.semiconv,
              "uncertainty": {"scan_rotation": None, "overfocus": None}, "quality": "ok",
              "blur": blur, "fit_settings": settings, "versions": software_versions()}
    if prior is not None:
        record = prior.correct(**values)
    else:
        record = CalibrationRecord(acquisition_uid=None, **values)
    stored = {k: images[k] for k in IMAGE_NAMES if k in images}
    _, spooled, reason = write_record_or_spool(client, record, stored)
    return record, spooled, reason
