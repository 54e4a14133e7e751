"""One background thread that computes the newest request only (latest request wins).

While the operator drags a slider, requests come faster than images can be
projected. :class:`LatestRequestWorker` keeps one slot: a new request
replaces one still waiting, so the images follow the slider without a
backlog, and the event loop that takes the requests is never blocked. A
*final* request (the slider released, a value typed) is not replaced by a
later preview of the same values, and a preview of values already drawn in
full is dropped.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["LatestRequestWorker"]

log = logging.getLogger(__name__)


class LatestRequestWorker:
    """Compute ``work(key, preview)`` in a thread for the newest request; hand results to
    ``deliver(key, preview, result)``.

    Parameters
    ----------
    work : callable
        ``work(key, preview) -> result``; runs in the worker thread.
    deliver : callable
        ``deliver(key, preview, result)``; runs in the worker thread too (schedule
        any GUI change from there onto the GUI's own thread).
    name : str
        Name of the thread.
    """

    def __init__(self, work: Callable[[Hashable, bool], Any],
                 deliver: Callable[[Hashable, bool, Any], None], *, name: str = "stemcal-redraw"):
        self._work, self._deliver, self._name = work, deliver, name
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending: tuple[Hashable, bool] | None = None
        self._busy = False
        self._last_final: Hashable | None = None
        self.errors = 0

    def request(self, key: Hashable, *, preview: bool = False) -> None:
        """Ask for ``key`` (a preview or the final image); replaces a request still waiting."""
        with self._lock:
            if preview:
                if key == self._last_final:
                    return  # drawn in full already
                if self._pending is not None and not self._pending[1] and self._pending[0] == key:
                    return  # the final one of the same values is on its way
            self._pending = (key, preview)
            if self._busy:
                return
            self._busy = True
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._pending is None:
                    self._busy = False
                    self._idle.notify_all()
                    return
                key, preview = self._pending
                self._pending = None
            try:
                result = self._work(key, preview)
                if not preview:
                    with self._lock:
                        self._last_final = key
                self._deliver(key, preview, result)
            except Exception:  # one bad geometry must not stop the redraws
                self.errors += 1
                log.exception("redraw of %r failed", key)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is waiting or being computed; False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._busy, timeout)
