"""Bluesky plans of stemcal.

* :func:`overfocus_scan` -- one calibration acquisition, returns the run uid.
"""
from .scan import overfocus_scan

__all__ = ["overfocus_scan"]
