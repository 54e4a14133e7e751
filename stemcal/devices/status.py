"""ophyd statuses that report their progress: ``watch()``, as bluesky's progress bars use it.

bluesky's :class:`~bluesky.utils.ProgressBarManager` (``RE.waiting_hook``)
draws a bar for each status the RunEngine waits on that has ``watch(func)``
(ophyd's ``MoveStatus`` has one for motors). :class:`WatchMixin` gives any
status that interface; the owner calls :meth:`WatchMixin.set_progress`.

* :class:`AcquisitionStatus` -- a detector's acquisition: frames written of
  the scan (:class:`~stemcal.devices.PixelatedDetector`).
* :class:`stemcal.callbacks.ResultStatus` -- a calibration's fit: percent, by stage.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ophyd import DeviceStatus

__all__ = ["WatchMixin", "AcquisitionStatus"]

logger = logging.getLogger(__name__)


class WatchMixin:
    """``watch(func)`` for an ophyd status: ``func(**progress)`` at every change.

    The keywords are ophyd's: ``name`` (what is being done), ``current``,
    ``initial``, ``target`` (in ``unit``), ``unit``, ``precision``,
    ``fraction`` (the fraction *left*, 1 -> 0; ``target`` is None while
    the total is not known), ``time_elapsed`` and
    ``time_remaining`` (seconds; None until it can be estimated). Watchers
    are called once when they register, at :meth:`set_progress` (at most
    every :attr:`notify_period` s while only the count moves) and when the
    status finishes. Call :meth:`_init_watch` in ``__init__``
    before the status's own ``__init__`` (which may finish it at once).
    """

    #: Seconds between two notifications that move only the count (0: at every one).
    notify_period: float = 0.0

    def _init_watch(self, what: str, *, target: float = 100.0, unit: str = "%",
                    precision: int = 1) -> None:
        self._watchers: list[Callable[..., None]] = []
        self._watch_lock = threading.Lock()
        self._what, self._label = what, ""
        self._current, self._target, self._unit = 0.0, float(target), unit
        self._precision = precision
        self._started = time.monotonic()
        self._notified = -float("inf")   # when watchers last heard of a progress

    def _after_init_watch(self) -> None:
        """Call after the status's ``__init__``: watchers hear of its end too."""
        self.add_callback(lambda _st: self._notify())  # type: ignore[attr-defined]

    def watch(self, func: Callable[..., None]) -> None:
        """Call ``func(**progress)`` as the progress changes (:meth:`set_progress`), and once now."""
        with self._watch_lock:
            self._watchers.append(func)
            self._notified = time.monotonic()
        self._call(func, self._progress())

    def set_progress(self, current: float, *, target: float | None = None,
                     label: str | None = None) -> None:
        """``current`` of ``target`` (in the status's unit) done, at stage ``label``.

        Watchers hear of it at once where the target or stage changed or the
        target is reached, otherwise at most every :attr:`notify_period`
        seconds; with no watcher nothing is done beyond counting.
        """
        now = time.monotonic()
        with self._watch_lock:
            changed = ((target is not None and float(target) != self._target)
                       or (label is not None and str(label) != self._label))
            if target is not None:
                self._target = float(target)
            if label is not None:
                self._label = str(label)
            self._current = min(self._target, max(self._current, float(current)))
            due = bool(self._watchers) and (changed or self._current >= self._target
                                            or now - self._notified >= self.notify_period)
            if due:
                self._notified = now
        if due:
            self._notify()

    def _progress(self) -> dict[str, Any]:
        with self._watch_lock:
            current, target, label = self._current, self._target, self._label
        done = current / target if target > 0 else 0.0
        elapsed = time.monotonic() - self._started
        remaining = elapsed * (1 - done) / done if 0.05 < done < 1 else None
        return {"name": f"{self._what}: {label}" if label else self._what,
                "current": round(current, self._precision), "initial": 0.0,
                "target": target if target > 0 else None,  # None: no bar, "in progress"
                "unit": self._unit, "precision": self._precision, "fraction": 1.0 - done,
                "time_elapsed": elapsed, "time_remaining": remaining}

    def _notify(self) -> None:
        progress = self._progress()
        with self._watch_lock:
            watchers = list(self._watchers)
        for func in watchers:
            self._call(func, progress)

    @staticmethod
    def _call(func: Callable[..., None], progress: dict[str, Any]) -> None:
        try:
            func(**progress)
        except Exception:  # a display's fault is never the acquisition's
            logger.exception("progress watcher %r failed", func)


class AcquisitionStatus(WatchMixin, DeviceStatus):
    """A detector's acquisition: a :class:`~ophyd.DeviceStatus` whose progress is the
    frames written so far of the scan (unit ``frames``), set at every tile of
    frames; watchers hear of it ten times a second (a bar's redraw)."""

    notify_period = 0.1

    def __init__(self, device: Any, frames: int = 0, **kwargs: Any) -> None:
        self._init_watch(f"{getattr(device, 'name', device)}: acquisition",
                         target=float(frames), unit="frames", precision=0)
        super().__init__(device, **kwargs)
        self._after_init_watch()
