"""The *Live run* tab: the newest run of the acquisition session, while it is taken.

In an acquisition session (the IPython profile) the app is given the
session's :class:`~stemcal.callbacks.CalibrationRecorder`. This tab polls
its newest :class:`~stemcal.callbacks.live_view.LiveView` twice a second and
shows the OverfocusUDF images of the frames that have arrived, how many, and
the blur; when the recorder has calibrated the run, its record, which
*Adjust this run's record* opens in the Adjust tab. Nothing flows back into
the session: the tab only reads what the recorder already made.

Model names: ``live_status``, ``live_adjust`` and the image sources
``live_point``, ``live_selected``, ``live_shifted_sum_normalised``, ``live_sum``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import Button, Div

from ..record import CalibrationRecord
from .background import one_line
from .figures import ImageRow
from .history_tab import HISTORY_IMAGES
from .services import AppServices

__all__ = ["LiveTab", "POLL_MS"]

#: How often the tab looks at the recorder's newest live view, milliseconds.
POLL_MS = 500


class LiveTab:
    """The Live run tab of one page; ``on_adjust(record)`` opens a record for adjusting."""

    def __init__(self, app: AppServices, doc: Any,
                 on_adjust: Callable[[CalibrationRecord], None]) -> None:
        self.app, self.doc, self._on_adjust = app, doc, on_adjust
        self.images = ImageRow("live", HISTORY_IMAGES)
        self.status = Div(name="live_status", text="no live run yet", width=900,
                          render_as_text=True)
        self.adjust_button = Button(name="live_adjust", label="Adjust this run's record",
                                    disabled=True, width=200)
        self.adjust_button.on_click(self._adjust)
        self.layout = column(row(self.status, self.adjust_button), self.images.layout)
        self.record: CalibrationRecord | None = None
        self._shown: tuple | None = None
        self._callback = doc.add_periodic_callback(self.poll, POLL_MS)

    def stop(self) -> None:
        """Stop polling (the page was closed)."""
        try:
            self.doc.remove_periodic_callback(self._callback)
        except ValueError:  # already removed with the session
            pass

    def poll(self) -> None:
        """Show the newest live view if it changed (document thread)."""
        found = self.app.recorder.newest_live_view()
        if found is None:
            return
        uid, view = found
        projection = view.projection
        done = projection.frames_done if projection is not None else 0
        total = projection.n_frames if projection is not None else 0
        outcome = self._outcome(uid)
        key = (uid, done, id(view.images), outcome)
        if key == self._shown:
            return
        self._shown = key
        if view.images:
            self.images.show({k: v for k, v in view.images.items() if k in HISTORY_IMAGES})
        purpose = (view.start_doc or {}).get("purpose", "")
        blur = f", blur {view.blur:.4f}" if view.blur is not None else ""
        error = f"; live view stopped: {view.error}" if view.error else ""
        self.status.text = (f"run {uid[:8]} ({purpose}): {done} / {total} frames{blur}{error}"
                            f"{'; ' + outcome if outcome else ''}")

    def _outcome(self, uid: str) -> str:
        """What the recorder made of the run so far ('' while it works); keeps its record."""
        self.record, text = None, ""
        try:
            status = self.app.recorder.result_status(uid)
        except KeyError:
            status = None
        if status is not None and status.done:
            try:
                result = status.result
            except Exception as exc:  # noqa: BLE001 - the run was not calibrated: say why
                result, text = None, f"not calibrated: {one_line(exc)}"
            if isinstance(result, CalibrationRecord):
                self.record = result
                text = (f"record {result.uid[:8]}: rotation {result.scan_rotation:.3f} deg, "
                        f"quality {result.quality}")
            elif result is not None:
                text = "checked"
        self.adjust_button.disabled = self.record is None
        return text

    def _adjust(self) -> None:
        if self.record is not None:
            self._on_adjust(self.record)
