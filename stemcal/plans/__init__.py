"""Bluesky plans of stemcal.

* :func:`overfocus_scan` -- one calibration acquisition, returns the run uid.
* :func:`calibrate` -- acquire and calibrate, retrying at other focus settings,
  returns the :class:`~stemcal.record.CalibrationRecord`.
* :func:`verify_calibration` -- acquire and check a stored calibration is still sharpest.
* :func:`recalibrate_if_stale` -- the calibration in force, calibrating only if none holds.
"""
from .calibrate import (calibrate, focus_schedule, recalibrate_if_stale, sharpness_offset,
                        verify_calibration)
from .scan import overfocus_scan

__all__ = ["overfocus_scan", "calibrate", "verify_calibration", "recalibrate_if_stale",
           "focus_schedule", "sharpness_offset"]
