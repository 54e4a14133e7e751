"""Exceptions that cross the layers, in a module that imports nothing heavy.

The CLI's last-resort handler tells them apart from other errors without
importing the engine that raises them (``stemcal.fit`` costs about a second
to import; reading commands never need it).
"""
from __future__ import annotations

__all__ = ["NoFeaturesError"]


class NoFeaturesError(ValueError):
    """The data hold nothing to calibrate on (no beam, blank specimen...)."""
