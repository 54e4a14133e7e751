"""The calibration recorder: documents of acquisition runs in, calibration records out.

:class:`CalibrationRecorder` is subscribed to a RunEngine (``RE.subscribe(recorder)``).
Like ``bluesky_tiled_plugins.TiledWriter`` it routes documents through an
:class:`event_model.RunRouter` whose factory (:meth:`CalibrationRecorder.factory`)
gives each run of interest a fresh per-run callback (:class:`CalibrationRun`):

* ``purpose='calibration_data'`` (:func:`stemcal.plans.overfocus_scan`): at a
  successful ``stop`` the run's HDF5 file is opened with LiberTEM, calibrated
  by :func:`stemcal.fit.coarse.cold_start` and a
  :class:`~stemcal.record.CalibrationRecord` (with its images) written to the
  catalog by :func:`stemcal.catalog.write_record`;
* ``purpose='calibration_check'`` (:func:`stemcal.plans.verify_calibration`):
  the frames are projected with a stored geometry and its neighbours and the
  sharpness of each shifted sum measured.

The work runs in one worker thread (runs are processed in order), never on
the RunEngine thread. Each handled run has a :class:`ResultStatus`
(:meth:`CalibrationRecorder.result_status`) that finishes with the record
(or the check's measurements) as its ``result``; a plan waits on it.

Choices
-------
* Runs that end with ``exit_status`` other than ``'success'`` are not
  calibrated: no record is written and their status fails with
  :class:`RunNotCalibrated`.
* Data without anything to calibrate on (:class:`~stemcal.fit.disk.NoFeaturesError`)
  *do* give a record, with ``quality`` ``"no features: ..."`` (``valid`` False),
  so that the attempt and its reason are in the calibration history. Its
  geometry fields are the acquisition's starting point, not measurements:
  the overfocus guess (or setting), rotation 0, no flip, the detector middle
  and a disk of a quarter of the detector.
* Any other error of the fit fails the run's status (and is logged); no record.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.callbacks.core import CallbackBase
from event_model import RunRouter

from ..record import CalibrationRecord
from ..runs import (CALIBRATION_PURPOSE, CHECK_PURPOSE, fit_inputs, optics_state, read_check,
                    starting_geometry)
from .run_collector import (AcquiredData, CalibrationRun, DocumentOrderError, ResultStatus,
                            RunNotCalibrated)

log = logging.getLogger(__name__)

__all__ = ["CalibrationRecorder", "IMAGE_NAMES"]

#: OverfocusUDF images stored with a record (and shown in the figure).
IMAGE_NAMES = ("point", "selected", "shifted_sum_normalised", "sum")


class CalibrationRecorder:
    """Calibrate acquisition runs from their documents and store the records in a catalog.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns or None
        Where :func:`stemcal.catalog.write_record` puts the records
        (:func:`stemcal.catalog.open_catalog`). ``None``: only check runs
        (``purpose='calibration_check'``) can be handled.
    ctx : libertem.api.Context, optional
        Runs the passes over the data; default an inline context made on first
        use (and closed by :meth:`close`).
    figure_dir : path, optional
        Write the report figure of each record there (``calibration_<record
        uid8>.png``, see :mod:`stemcal.callbacks.figures`; of a check
        ``check_<record uid8>_run_<run uid8>.png``; matplotlib, no display
        needed), and each live view (``live_<run uid8>.png``).
    fit_kwargs : dict, optional
        Further keyword arguments of :func:`stemcal.fit.coarse.cold_start`
        (``budget``, ``rotation_bound``, ...); recorded in ``fit_settings``.
    live : bool
        Give each handled run a :class:`~stemcal.callbacks.live_view.LiveView`
        as well (default True): the OverfocusUDF images while the frames
        arrive, in a matplotlib figure (a window where there is a display,
        else off screen; written as ``live_<uid8>.png`` to ``figure_dir``).
        :meth:`live_view` returns a run's view.
    live_kwargs : dict, optional
        Further keyword arguments of :class:`~stemcal.callbacks.live_view.LiveView`
        (``redraw_period``, ``on_screen``, ...). A live view shows the guess
        until the run's fit is in, then is redrawn with the fit (on the
        RunEngine thread, at the next document or at :meth:`close`).

    Notes
    -----
    Subscribe the recorder itself (``RE.subscribe(recorder)``), or put
    :meth:`factory` into a RunRouter of your own. Documents are handled on the
    calling (RunEngine) thread; fits run one at a time in a worker thread.
    Use as a context manager, or call :meth:`close`, to stop the worker.
    """

    def __init__(self, client: Any, *, ctx: Any = None, figure_dir: str | Path | None = None,
                 fit_kwargs: Mapping[str, Any] | None = None, live: bool = True,
                 live_kwargs: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.live = bool(live)
        self.live_kwargs = dict(live_kwargs or {})
        self._live_views: dict[str, Any] = {}
        self.figure_dir = Path(figure_dir) if figure_dir is not None else None
        self.fit_kwargs = dict(fit_kwargs or {})
        for bad in {"ctx", "scan_pixel_size", "camera_length", "detector_pixel_size",
                    "overfocus"} & set(self.fit_kwargs):
            raise ValueError(f"fit_kwargs must not set {bad!r}: it comes from the run")
        self._ctx = ctx
        self._own_ctx = ctx is None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._statuses: dict[str, ResultStatus] = {}
        self._abandoned: dict[str, str] = {}   # run uid -> why nobody waits for its record
        self._recorded: set[str] = set()       # runs whose record is being or was written
        self._fitted_views: list[Any] = []  # live views to redraw with their fit
        self._router = RunRouter([self.factory])

    def __repr__(self) -> str:
        # not repr(client): a tiled client's repr lists the catalog, i.e. queries it
        from ..catalog import catalog_location_of
        return f"{type(self).__name__}(catalog={catalog_location_of(self.client)!r})"

    # -- documents ------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        """Route one document (the RunEngine subscription signature)."""
        if self._fitted_views:
            self.redraw_fitted()
        try:
            self._router(name, doc)
        except KeyError as exc:  # the RunRouter's lookups of runs/descriptors/resources
            raise DocumentOrderError(
                f"'{name}' document refers to {exc} that this recorder has not seen "
                "(out-of-order documents, or a run whose 'start' it missed)") from exc

    def factory(self, name: str, start: dict) -> tuple[list[CalibrationRun], list]:
        """RunRouter factory: a :class:`CalibrationRun` for runs this recorder handles."""
        purpose = start.get("purpose")
        if purpose == CALIBRATION_PURPOSE:
            work, what = self._calibrate, "calibration"
        elif purpose == CHECK_PURPOSE:
            work, what = self._check, "check"
        else:
            return [], []
        with self._lock:
            if start["uid"] in self._statuses:
                raise DocumentOrderError(f"run {start['uid']} started twice")
            self._statuses[start["uid"]] = status = ResultStatus(
                obj=start["uid"], name=f"{what} of run {start['uid'][:8]}")

        def on_stop(start: dict, stop: dict, data: AcquiredData | None,
                    reason: str | None = None) -> None:
            if stop.get("exit_status") != "success":
                status.set_exception(RunNotCalibrated(
                    f"run {start['uid']} ended with exit_status {stop.get('exit_status')!r}: "
                    "not calibrated"))
            elif data is None:
                status.set_exception(RunNotCalibrated(reason or "no data"))
            else:
                self._submit(status, work, start, data)

        callbacks: list[CallbackBase] = []
        if self.live:
            from .live_view import LiveView

            view = LiveView(figure_dir=self.figure_dir, **self.live_kwargs)
            with self._lock:
                self._live_views[start["uid"]] = view
                while len(self._live_views) > self.KEEP_LIVE_VIEWS:
                    self._live_views.pop(next(iter(self._live_views)))
            callbacks.append(view)  # before the calibration: its stop finishes the images first
        callbacks.append(CalibrationRun(on_stop))
        return callbacks, []

    #: Live views kept for :meth:`live_view` (the newest runs').
    KEEP_LIVE_VIEWS = 8

    def live_view(self, run_uid: str) -> Any:
        """The :class:`~stemcal.callbacks.live_view.LiveView` of run ``run_uid`` (one of the newest).

        Raises
        ------
        KeyError
            No view of that run (live views off, not handled, or too old).
        """
        with self._lock:
            try:
                return self._live_views[run_uid]
            except KeyError:
                raise KeyError(f"no live view of run {run_uid}") from None

    def newest_live_view(self) -> tuple[str, Any] | None:
        """``(run_uid, LiveView)`` of the newest run with a live view, or None (e.g. for
        the app's *Live run* tab, which follows the session's runs)."""
        with self._lock:
            if not self._live_views:
                return None
            uid = next(reversed(self._live_views))
            return uid, self._live_views[uid]

    def handles(self, run_uid: str) -> bool:
        """Whether this recorder received the start of run ``run_uid`` and handles it."""
        with self._lock:
            return run_uid in self._statuses

    def result_status(self, run_uid: str) -> ResultStatus:
        """The status of run ``run_uid``; its ``result`` is the record (or check measurements).

        Raises
        ------
        KeyError
            This recorder did not receive that run's start, or does not handle it.
        """
        with self._lock:
            try:
                return self._statuses[run_uid]
            except KeyError:
                raise KeyError(f"run {run_uid} is not handled by this recorder") from None

    def abandon(self, run_uid: str, reason: str) -> bool:
        """Nobody waits for run ``run_uid``'s calibration any more (a plan's ``timeout``).

        Its fit goes on (a pass cannot be stopped half-way), but the record it ends in is
        written with ``quality`` ``"abandoned: <reason>"``: not valid, so it never becomes
        the newest valid calibration that later runs are given. Returns True if so; False
        where the record was written already (it stands as it is) or the run is unknown.
        """
        with self._lock:
            status = self._statuses.get(run_uid)
            if status is None or status.done or run_uid in self._recorded:
                return False
            self._abandoned[run_uid] = " ".join(str(reason).split())
            return True

    def _to_record(self, run_uid: str, record: CalibrationRecord) -> CalibrationRecord:
        """``record`` as it is to be written: marked abandoned where :meth:`abandon` said so
        before this (after this, :meth:`abandon` leaves it alone)."""
        with self._lock:
            self._recorded.add(run_uid)
            reason = self._abandoned.pop(run_uid, None)
        if reason is None:
            return record
        log.warning("run %s: its calibration finished after the plan stopped waiting; recorded "
                    "as abandoned (not valid)", run_uid)
        return dataclasses.replace(record, quality=f"abandoned: {reason}")

    # -- work -----------------------------------------------------------------------------
    def _submit(self, status: ResultStatus, work: Callable[..., Any],
                start: dict, data: AcquiredData) -> None:
        """Run ``work(start, data, report)`` in the worker; ``report(stage, fraction)`` is
        the status's :meth:`~ResultStatus.report_progress`."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stemcal-calibration")
            pool = self._pool

        def job() -> None:
            try:
                result = work(start, data, status.report_progress)
            except BaseException as exc:  # reported through the status
                log.exception("handling run %s failed", start["uid"])
                status.set_exception(exc)
            else:
                status.set_result(result)

        pool.submit(job)

    def _context(self) -> Any:
        if self._ctx is None:
            from ..executors import InlineContext

            self._ctx = InlineContext()
        return self._ctx

    def _calibrate(self, start: dict, data: AcquiredData,
                   report: Callable[[str, float], None]) -> CalibrationRecord:
        from ..catalog import write_record_or_spool  # spools if the catalog fails
        from ..fit.coarse import cold_start
        from ..fit.disk import NoFeaturesError
        from ..fit.progress import FitProgress

        if self.client is None:
            raise RuntimeError("this recorder has no catalog client: it cannot store calibrations")
        inputs = fit_inputs(start)
        state = optics_state(start["optics"], start["scan"])
        settings: dict[str, Any] = {
            "method": "cold_start", **{f"{k}_input": v for k, v in inputs.items()},
            "cold_start_kwargs": dict(self.fit_kwargs),
            "data": {"uri": data.path.as_uri(), "dataset": data.dataset, "data_key": data.data_key,
                     "nav_shape": list(data.nav_shape), "sig_shape": list(data.sig_shape)},
            "acquisition_plan": start.get("plan_name"),
        }
        report("opening the data", 0.0)
        ctx = self._context()
        dataset = data.load(ctx)
        progress = FitProgress(report)
        try:
            fit = cold_start(dataset, ctx=ctx, **inputs,
                             **{"progress": progress, "on_stage": progress.stage, **self.fit_kwargs})
        except NoFeaturesError as exc:
            record = self._to_record(start["uid"],
                                     self._no_features_record(start, data, state, settings, exc))
            write_record_or_spool(self.client, record)
            return record
        settings.update({"metric": fit.metric, "loss": fit.loss, "contrast": fit.contrast,
                         "nfev": fit.nfev, "passes": fit.passes, "seconds": fit.seconds,
                         "success": fit.success, "message": fit.message,
                         "coarse": fit.extra.get("coarse"), "descan_fit": fit.extra.get("descan")})
        if fit.extra.get("defects"):   # detector pixels filled from their neighbours
            settings["detector_defects"] = dict(fit.extra["defects"])
        record = CalibrationRecord.from_fit(fit, acquisition_uid=start["uid"], optics_state=state,
                                            fit_settings=settings)
        images = {k: fit.images[k] for k in IMAGE_NAMES if k in fit.images}
        record = self._to_record(start["uid"], record)
        write_record_or_spool(self.client, record, images)
        view = self._view_of(start["uid"])
        if view is not None:  # redrawn on the RunEngine thread (next document, or close)
            view.show_fit(fit.images, record.params())
            with self._lock:
                self._fitted_views.append(view)
        if self.figure_dir is not None:
            from .figures import calibration_figure, guess_projection
            before, guess = guess_projection(view, ctx, dataset, start, data.sig_shape)
            calibration_figure(self.figure_dir, record, images,
                               {"passes": fit.passes, "seconds": fit.seconds,
                                "frame_sum": fit.extra.get("frame_sum")}, before, guess)
        return record

    @staticmethod
    def _no_features_record(start: dict, data: AcquiredData, state: dict, settings: dict,
                            exc: Exception) -> CalibrationRecord:
        """A record of the attempt: its geometry is where the run started, not a measurement."""
        p = starting_geometry(start, data.sig_shape)
        msg = " ".join(str(exc).split())
        return CalibrationRecord(
            acquisition_uid=start["uid"], scan_rotation=p.scan_rotation, flip_y=p.flip_y,
            overfocus=p.overfocus, cy=p.cy, cx=p.cx, descan=p.descan,
            quality=f"no features: {msg}", optics_state=state,
            scan_pixel_size=p.scan_pixel_size, camera_length=p.camera_length,
            detector_pixel_size=p.detector_pixel_size, semiconv=p.semiconv,
            uncertainty={"scan_rotation": None, "overfocus": None},
            fit_settings={**settings, "error": type(exc).__name__, "geometry": "not measured"})

    def _check(self, start: dict, data: AcquiredData,
               report: Callable[[str, float], None]) -> dict[str, Any]:
        from ..fit.passes import full_pass, image_quality
        from ..twin.params import OverfocusParams

        params, rot_step, of_step, record_uid = read_check(start)
        ctx = self._context()
        dataset = data.load(ctx)

        passes = iter(range(5))

        def measure(p: OverfocusParams) -> tuple[float, float, dict[str, np.ndarray]]:
            report("projecting", next(passes) / 5)
            images = full_pass(ctx, dataset, p)
            blur, contrast = image_quality(images)
            return blur, contrast, images

        blur, contrast, images = measure(params)
        rot = [measure(params.replace(scan_rotation=params.scan_rotation + s * rot_step))[1]
               for s in (-1, 1)]
        of = [measure(params.replace(overfocus=params.overfocus * (1 + s * of_step)))[1]
              for s in (-1, 1)]
        result = {"record_uid": record_uid, "acquisition_uid": start["uid"],
                  "blur": blur, "contrast": contrast,
                  "stencil": {"scan_rotation": [rot[0], contrast, rot[1]],
                              "overfocus": [of[0], contrast, of[1]]}}
        if self.figure_dir is not None:
            from .figures import check_figure
            check_figure(self.figure_dir, str(record_uid), start["uid"], params, images, blur)
        return result

    def _view_of(self, run_uid: str) -> Any:
        with self._lock:
            return self._live_views.get(run_uid)

    def redraw_fitted(self) -> None:
        """Redraw the live views whose fit is in (on the calling thread: call it on the
        RunEngine's, where the figures live). Done at every document and at :meth:`close`."""
        with self._lock:
            views, self._fitted_views = self._fitted_views, []
        for view in views:
            try:
                view.redraw_fit()
            except Exception:  # a live view never breaks the run
                log.exception("could not redraw a live view with its fit")

    # -- life cycle -----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> None:
        """Block until every handled run's status is done (for scripts and tests)."""
        with self._lock:
            statuses = list(self._statuses.values())
        for st in statuses:
            st.exception(timeout)  # waits; a failed run is not an error here

    def close(self) -> None:
        """Stop the worker and close a context made here; idempotent.

        Blocks until work already handed to the worker has finished.
        """
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self.redraw_fitted()
        if self._own_ctx and self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def __enter__(self) -> "CalibrationRecorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

