"""The figures the recorder writes: one report per calibration record, one per check.

* ``calibration_<record uid8>.png`` -- :func:`stemcal.report.write_report` of a
  record: the shifted sum projected with the run's guess beside the one
  projected with the fit, the sum, the centre frame, the detector with the
  fitted disk, the values with units and uncertainties, the quality in words.
* ``check_<record uid8>_run_<run uid8>.png`` -- a check of a stored record.

The "before" image is the live view's (:class:`~stemcal.callbacks.live_view.LiveView`
projects the frames with the guess while they arrive); where there is none
(live views off, or the view could not read the data) one more pass over the
data projects them with the guess. A figure is never worth a calibration:
failures are logged, not raised.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..runs import projection_params

__all__ = ["guess_projection", "calibration_figure", "check_figure"]

log = logging.getLogger(__name__)


def guess_projection(view: Any, ctx: Any, dataset: Any, start: Mapping[str, Any],
                     sig_shape: tuple[int, int]) -> tuple[np.ndarray | None, Any]:
    """(normalised shifted sum projected with the run's guess, that guess).

    The live view's final images where it projected every frame; else one
    full pass (:func:`stemcal.fit.passes.full_pass`). ``(None, guess)`` if
    that fails.
    """
    from ..fit.passes import full_pass

    guess = projection_params(start, sig_shape)
    images = getattr(view, "guess_images", None)
    if images and "shifted_sum_normalised" in images:
        return images["shifted_sum_normalised"], guess
    try:
        return full_pass(ctx, dataset, guess)["shifted_sum_normalised"], guess
    except Exception:  # noqa: BLE001 - a figure is never worth a calibration
        log.exception("could not project run %s with its guess", start.get("uid"))
        return None, guess


def _write(path: Path, *args: Any, **kwargs: Any) -> Path | None:
    from ..report import write_report

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_report(path, *args, **kwargs)
    except Exception:  # a figure is never worth losing a calibration
        log.exception("could not write figure %s", path)
        return None


def calibration_figure(figure_dir: Path, record: Any, images: Mapping[str, np.ndarray],
                       extra: Mapping[str, Any], before: np.ndarray | None,
                       guess: Any) -> Path | None:
    """Write ``calibration_<record uid8>.png`` for ``record`` (a CalibrationRecord).

    ``images`` are the fit's, ``extra`` adds ``passes``, ``seconds`` and the
    ``frame_sum`` (detector) to the record's values.
    """
    summary = {**record.to_dict(), "passes": extra.get("passes"), "seconds": extra.get("seconds")}
    return _write(Path(figure_dir) / f"calibration_{record.uid[:8]}.png", images, summary,
                  params=record.params(), before=before, guess=guess,
                  frame_sum=extra.get("frame_sum"),
                  title=f"calibration {record.uid[:8]} of run {str(record.acquisition_uid)[:8]}")


def check_figure(figure_dir: Path, record_uid: str, run_uid: str, params: Any,
                 images: Mapping[str, np.ndarray], blur: float) -> Path | None:
    """Write ``check_<record uid8>_run_<run uid8>.png``: run ``run_uid`` projected with the
    stored calibration ``record_uid`` (``params``)."""
    summary = {**params.to_dict(), "blur": blur, "uid": record_uid, "acquisition_uid": run_uid}
    return _write(Path(figure_dir) / f"check_{str(record_uid)[:8]}_run_{run_uid[:8]}.png",
                  images, summary, params=params,
                  title=f"check of calibration {str(record_uid)[:8]} on run {run_uid[:8]}",
                  quality_text="a check: verify_calibration compares this sharpness with "
                               "that of the neighbouring rotations and overfocus values")
