"""Bluesky callbacks of stemcal: documents in, records and views out.

* :class:`CalibrationRecorder` (:mod:`.recorder`) -- calibrates acquisition runs
  from their documents (in a worker thread) and writes calibration records to a
  tiled catalog; a plan waits on :meth:`CalibrationRecorder.result_status`.
* :mod:`.run_collector` -- one run's documents collected (:class:`CalibrationRun`),
  the status a plan waits on (:class:`ResultStatus`).
* :class:`~.live_view.LiveView` -- the images of a live scan while its frames
  arrive, in a figure (:mod:`.live_figure`).
"""
from .recorder import IMAGE_NAMES, CalibrationRecorder
from .run_collector import (AcquiredData, CalibrationRun, DocumentOrderError, ResultStatus,
                            RunNotCalibrated)

__all__ = ["CalibrationRecorder", "CalibrationRun", "ResultStatus", "AcquiredData",
           "DocumentOrderError", "RunNotCalibrated", "IMAGE_NAMES"]
