"""The *Adjust* tab: a dataset's images, the geometry's controls, Auto, Refine, Record.

Every change of a control re-projects the app's reduced cache
(:class:`~stemcal.app.projection.CacheProjector`) in a
:class:`~stemcal.app.worker.LatestRequestWorker`: a preview (a quarter of
the cached frames) while a slider is dragged, all cached frames when it is
released or a value is typed. The jobs run in threads, one at a time in the
whole app, with their progress in the page.

Model names (for tests and scripts): the controls'
(:mod:`stemcal.app.controls`); the buttons ``auto``, ``refine``, ``record``;
``operator`` (who adjusts); ``progress`` and ``status``; ``jobs`` (hidden: JSON of the
job running, the number finished and how the last one ended); ``blur`` (the text
``blur: 0.2527``) and ``contrast``; ``drawn`` (hidden: JSON of the page values the final
images on show were made with, their blur and contrast, and how many previews were shown
before them); ``recorded`` (hidden: the uid
of the last record made here); ``source`` (what is loaded); the image
sources ``adjust_point``, ``adjust_selected``, ``adjust_shifted_sum``, ``adjust_sum``.
"""
from __future__ import annotations

import html
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import Button, Div, Progress, TextInput

from . import actions
from .background import Throttle, on_document, one_line, run_then
from .controls import PARAMETERS, GeometryControls
from .figures import ImageRow
from .progress import ProgressView, Stage, StagedProgress
from .projection import IMAGE_ORDER, Projection
from .services import AppServices, Loaded
from .worker import LatestRequestWorker

__all__ = ["AdjustTab"]

class AdjustTab:
    """The Adjust tab of one page (Bokeh document) of ``app``."""

    def __init__(self, app: AppServices, doc: Any) -> None:
        self.app, self.doc = app, doc
        self.loaded: Loaded | None = None
        self.steps: list[str] = []
        self.busy = False
        self._previews = 0  # previews shown since the last final image
        #: (params, preview, seconds) of the newest projections shown, for measurements
        self.shown: deque[tuple[Any, bool, float]] = deque(maxlen=1000)
        self.shown_count = 0  # projections shown in all
        self.images = ImageRow("adjust", IMAGE_ORDER)
        self.controls = GeometryControls(self._changed)
        self.source = Div(name="source", text="no dataset: open a record in the History tab")
        self.blur = Div(name="blur", text="blur: -", styles={"font-size": "18px"})
        self.contrast = Div(name="contrast", text="")
        self.drawn = Div(name="drawn", text="", visible=False, render_as_text=True)
        self.recorded = Div(name="recorded", text="", visible=False, render_as_text=True)
        self.jobs = Div(name="jobs", text=json.dumps({"running": None, "finished": 0}),
                        visible=False)
        self._finished = 0
        # messages quote file names, uids and errors: text, never markup
        self.status = Div(name="status", text="", width=700, render_as_text=True)
        self._problem: str | None = None   # the complaint about the page's geometry shown
        self.progress = Progress(name="progress", value=0, min=0, max=100, width=300)
        self.operator = TextInput(name="operator", title="adjusted by", value=app.operator,
                                  width=160)
        self.buttons = {
            "auto": Button(name="auto", label="Auto", button_type="primary", width=110),
            "refine": Button(name="refine", label="Refine from here", width=140),
            "record": Button(name="record", label="Record", button_type="success", width=110),
        }
        self.buttons["auto"].on_click(self._auto)
        self.buttons["refine"].on_click(self._refine)
        self.buttons["record"].on_click(self._record)
        self.worker = LatestRequestWorker(self._project, self._deliver)
        self._progress = Throttle(doc, self._show_progress)
        self.layout = column(
            self.source, self.images.layout,
            row(self.controls.layout,
                column(self.blur, self.contrast, row(*self.buttons.values()), self.operator,
                       self.progress, self.status, self.drawn, self.recorded, self.jobs)))
        self._enable()

    # -- what is loaded ---------------------------------------------------------------------
    def show_loaded(self, loaded: Loaded, step: str) -> None:
        """Adjust ``loaded`` from its start geometry (document thread)."""
        self.loaded = loaded
        self.steps = [step]
        src, cache = loaded.source, loaded.projector.cache
        (ny, nx), (sy, sx) = src.nav_shape, src.sig_shape
        self.source.text = (f"<b>{html.escape(src.label)}</b>: {ny}x{nx} scan of {sy}x{sx} "
                            f"frames; cache of {len(cache.frames)} frames (scan stride "
                            f"{cache.stride}, detector bin {cache.bin})")
        self.controls.set(loaded.start)
        self._enable()
        self._request(preview=False)

    def open_record(self, record: Any) -> None:
        """Load a record's frames and values (from the History or Live tab)."""
        def done(loaded: Loaded) -> None:
            self.show_loaded(loaded, "record")
            self.status.text = f"opened {loaded.source.label}"
        self._job(actions.LOAD_STAGES,
                  lambda progress: self.app.load_record(record, progress=progress), done, "open")

    # -- redraws ----------------------------------------------------------------------------
    def _changed(self, preview: bool) -> None:
        if self.loaded is None:
            return
        if not preview and (not self.steps or self.steps[-1] != "hand"):
            self.steps.append("hand")
        self._request(preview)

    def _request(self, preview: bool) -> None:
        if (page := self._on_page()) is not None:
            self.worker.request(page[1], preview=preview)

    def _project(self, params: Any, preview: bool) -> Projection | Exception:
        loaded = self.loaded
        try:
            return loaded.projector.project(params, preview=preview)
        except Exception as exc:  # an impossible geometry: say so on the page
            return exc

    def _deliver(self, params: Any, preview: bool, result: Projection | Exception) -> None:
        on_document(self.doc, self._show, result)

    def _show(self, result: Projection | Exception) -> None:
        if isinstance(result, Exception):
            self._geometry_problem(f"cannot project: {one_line(result)}")
            return
        if self._problem is not None and self.status.text == self._problem:
            self.status.text = ""   # the geometry is good again: its old complaint goes
        self._problem = None
        self.images.show(result.images)
        self.shown.append((result.params, result.preview, result.seconds))
        self.shown_count += 1
        self._previews += result.preview
        note = " (preview: a quarter of the frames)" if result.preview else ""
        self.blur.text = f"blur: {result.blur:.4f}{note}"
        self.contrast.text = (f"contrast: {result.contrast:.3g} (the fit's measure; higher is "
                              "sharper)")
        if not result.preview:
            values = {spec.name: spec.get(result.params) for spec in PARAMETERS}
            values["scan_rotation"] = (values["scan_rotation"] + 180.0) % 360.0 - 180.0
            self.drawn.text = json.dumps({**values, "flip_y": result.params.flip_y,
                                          "blur": result.blur, "contrast": result.contrast,
                                          "previews": self._previews})
            self._previews = 0

    # -- jobs -------------------------------------------------------------------------------
    def _job(self, stages: tuple[Stage, ...], work: Callable[[StagedProgress], Any],
             done: Callable[[Any], None], name: str) -> None:
        if self.busy:
            return
        self.busy = True
        self._enable()
        self._job_state(name)
        self.status.text = stages[0].label
        progress = StagedProgress(stages, self._progress)

        def run() -> Any:
            with self.app.job_lock:  # one raw pass or fit at a time in the whole app
                return work(progress)

        def finished(result: Any) -> None:
            progress.finish()
            self.busy = False
            self._enable()
            done(result)
            self._job_state(None, name, True)

        def failed(exc: BaseException) -> None:
            self.busy = False
            self._enable()
            self.progress.value = 0
            self.status.text = f"{name} failed: {one_line(exc)}"
            self._job_state(None, name, False)

        run_then(self.doc, run, finished, failed, name=f"stemcal-app-{name}")

    def _job_state(self, running: str | None, last: str | None = None, ok: bool = True) -> None:
        """The hidden ``jobs`` marker: the job running, and the last one finished."""
        if running is None:
            self._finished += 1
        self.jobs.text = json.dumps({"running": running, "finished": self._finished,
                                     "last": last, "ok": ok})

    def _show_progress(self, view: ProgressView) -> None:
        self.progress.value = int(round(100 * view.fraction))
        if self.busy:
            self.status.text = view.text

    def _auto(self) -> None:
        if self.loaded is None:
            return
        loaded = self.loaded

        def done(fit: Any) -> None:
            self._fitted(fit, "auto", f"Auto (cold start) in {fit.seconds:.1f} s")
        self._job(actions.AUTO_STAGES,
                  lambda progress: actions.auto(self.app.ctx, loaded.source, progress), done,
                  "auto")

    def _on_page(self) -> tuple[Loaded, Any] | None:
        """What is loaded and the geometry on the page, or None (said in the status line)."""
        if self.loaded is None:
            return None
        try:
            return self.loaded, self.controls.params(self.loaded.base)
        except ValueError as exc:
            self._geometry_problem(f"not a geometry: {one_line(exc)}")
            return None

    def _refine(self) -> None:
        if (page := self._on_page()) is None:
            return
        loaded, here = page

        def work(progress: StagedProgress) -> Any:
            return actions.refine_from(self.app.ctx, loaded.source, loaded.projector.cache,
                                       here, progress)

        def done(fit: Any) -> None:
            self._fitted(fit, "refine", f"refined in {fit.seconds:.1f} s, {fit.nfev} evaluations")
        self._job(actions.REFINE_STAGES, work, done, "refine")

    def _fitted(self, fit: Any, step: str, what: str) -> None:
        assert self.loaded is not None
        self.loaded.base = fit.params
        self.steps.append(step)
        self.controls.set(fit.params)
        unc = fit.extra.get("uncertainty", {}).get("scan_rotation")
        pm = f" +- {unc:.2g}" if isinstance(unc, float) else ""
        self.status.text = (f"{what}: rotation {fit.params.scan_rotation:.3f}{pm} deg, flip "
                            f"{fit.params.flip_y}, overfocus {fit.params.overfocus * 1e9:.1f} nm; "
                            f"quality {fit.quality}")
        self._request(preview=False)

    def _record(self) -> None:
        if (page := self._on_page()) is None:
            return
        loaded, params = page
        who, steps = self.operator.value or "", list(self.steps)

        def work(progress: StagedProgress) -> Any:
            return actions.manual_record(self.app.ctx, loaded.source, params,
                                         client=self.app.catalog(), adjusted_by=who, steps=steps,
                                         progress=progress)

        def done(result: Any) -> None:
            record, spooled, reason = result
            where = (f"spooled ({reason}); `stemcal sync` delivers it" if spooled
                     else "in the catalog")
            self.status.text = f"recorded {record.uid} ({where})"
            self.recorded.text = record.uid
            self.app.records_changed()
        self._job(actions.RECORD_STAGES, work, done, "record")

    def _geometry_problem(self, text: str) -> None:
        """Say what is wrong with the geometry on the page, until images are drawn again."""
        self.status.text = self._problem = text

    def _enable(self) -> None:
        ready = self.loaded is not None and not self.busy
        for button in self.buttons.values():
            button.disabled = not ready
        self.controls.enable(ready)
