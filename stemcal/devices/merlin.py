"""A Quantum Detectors Merlin: the generic detector with Merlin's defaults.

Its frames come from :class:`~stemcal.devices.SimBackend` (the twin) or from
the real Merlin TCP protocol (:class:`~stemcal.devices.hardware.merlin.MerlinHardwareBackend`).
"""
from __future__ import annotations

from typing import Any

from .detector import PixelatedDetector

__all__ = ["MerlinDetector"]


class MerlinDetector(PixelatedDetector):
    """A Merlin acquiring one whole 4D-STEM scan per ``trigger()`` (or a live scan by
    ``kickoff()``); parameters and behaviour as :class:`~stemcal.devices.PixelatedDetector`."""

    def __init__(self, name: str = "merlin", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
