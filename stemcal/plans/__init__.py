"""Bluesky plans of stemcal.

* :func:`overfocus_scan` (:mod:`.scan`) -- one calibration acquisition, returns the run uid.
* :func:`calibrate` (:mod:`.calibrate`) -- acquire and calibrate, retrying at other focus
  settings; returns the :class:`~stemcal.record.CalibrationRecord`.
* :func:`verify_calibration` (:mod:`.verify`) -- acquire and check a stored calibration is
  still sharpest.
* :func:`recalibrate_if_stale` (:mod:`.stale`) -- the calibration in force, calibrating
  only if none holds.

The plans wait for the calibration recorder through :mod:`.recorder_wait`, and
write the run documents of :mod:`stemcal.runs`.
"""
from .calibrate import calibrate, focus_schedule
from .scan import overfocus_scan
from .stale import recalibrate_if_stale
from .verify import sharpness_offset, verify_calibration

__all__ = ["overfocus_scan", "calibrate", "verify_calibration", "recalibrate_if_stale",
           "focus_schedule", "sharpness_offset"]
