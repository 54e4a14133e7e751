"""Run work off a Bokeh document's event loop and come back to it with the result.

Bokeh models may only be changed on their document's thread (a server
callback); slow work (passes, fits, catalog reads) must not run there, or the
page freezes. :func:`run_then` runs the work in a daemon thread and schedules
the result's handling as a next-tick callback of the document.
:class:`Throttle` passes on at most one of a burst of updates per interval
(progress reports come once per tile).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

__all__ = ["run_then", "on_document", "Throttle", "one_line"]

log = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """An exception as one line for the page: its message, else its type."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def on_document(doc: Any, fn: Callable[..., None], *args: Any) -> None:
    """Call ``fn(*args)`` on ``doc``'s thread (soon); from any thread."""
    doc.add_next_tick_callback(partial(fn, *args))


def run_then(doc: Any, work: Callable[[], Any], done: Callable[[Any], None],
             failed: Callable[[BaseException], None], *, name: str = "stemcal-app-job") -> None:
    """Run ``work()`` in a thread; then ``done(result)`` or ``failed(exception)`` on the
    document's thread."""
    def run() -> None:
        try:
            result = work()
        except Exception as exc:  # reported on the page, one line (the traceback at debug)
            log.info("%s failed: %s", name, one_line(exc))
            log.debug("%s failed", name, exc_info=True)
            on_document(doc, failed, exc)
        else:
            on_document(doc, done, result)

    threading.Thread(target=run, name=name, daemon=True).start()


class Throttle:
    """Pass ``value`` on to ``fn`` on the document's thread, at most once per ``interval``
    seconds; the newest value of a burst is the one passed on (``flush`` passes it now)."""

    def __init__(self, doc: Any, fn: Callable[[Any], None], interval: float = 0.1) -> None:
        self._doc, self._fn, self._interval = doc, fn, interval
        self._lock = threading.Lock()
        self._value: Any = None
        self._scheduled = False
        self._last = 0.0

    def __call__(self, value: Any) -> None:
        with self._lock:
            self._value = value
            if self._scheduled:
                return
            self._scheduled = True
            delay = max(0.0, self._last + self._interval - time.monotonic())
        if delay > 0:
            threading.Timer(delay, self._schedule).start()
        else:
            self._schedule()

    def _schedule(self) -> None:
        on_document(self._doc, self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            value, self._scheduled, self._last = self._value, False, time.monotonic()
        self._fn(value)
