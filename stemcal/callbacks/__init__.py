"""Bluesky callbacks of stemcal.

* :class:`CalibrationRecorder` -- calibrates acquisition runs from their
  documents (in a worker thread) and writes calibration records to a tiled
  catalog; a plan waits on :meth:`CalibrationRecorder.result_status`.
"""
from .calibration import (IMAGE_NAMES, AcquiredData, CalibrationRecorder, CalibrationRun,
                          DocumentOrderError, ResultStatus, RunNotCalibrated)

__all__ = ["CalibrationRecorder", "CalibrationRun", "ResultStatus", "AcquiredData",
           "DocumentOrderError", "RunNotCalibrated", "IMAGE_NAMES"]
