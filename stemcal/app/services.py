"""What a page's tabs use of the app: the loaded dataset, and the app's services.

:class:`~stemcal.app.application.StemcalApp` provides :class:`AppServices`; the
tabs (:mod:`.adjust_tab`, :mod:`.history_tab`, :mod:`.live_tab`) see only this.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Protocol

from ..record import CalibrationRecord
from ..twin.params import OverfocusParams
from .projection import CacheProjector
from .sources import Source

__all__ = ["Loaded", "AppServices"]


@dataclasses.dataclass
class Loaded:
    """A dataset ready to adjust: its source, its cache's projector, the geometry shown first
    and ``base``, which gives what the page does not set (the sizes, the semi-angle)."""

    source: Source
    projector: CacheProjector
    start: OverfocusParams
    base: OverfocusParams


class AppServices(Protocol):
    """The app as its tabs use it."""

    operator: str
    #: The session's CalibrationRecorder, or None.
    recorder: Any
    #: Held while a job (a raw pass or a fit) runs: one at a time in the whole app.
    job_lock: threading.Lock

    @property
    def ctx(self) -> Any:
        """The LiberTEM context of the passes."""

    def load_record(self, record: CalibrationRecord, *, progress: Any = False) -> Loaded:
        """The frames a record was made from, at its values."""

    def catalog(self) -> Any:
        """The catalog client (or a stand-in that spools)."""

    def history(self, limit: int | None = 200) -> list[CalibrationRecord]:
        """The newest records."""

    def record_images(self, uid: str) -> dict[str, Any]:
        """The images stored with a record."""

    def records_changed(self) -> None:
        """A record was written: every page reads the history again."""
