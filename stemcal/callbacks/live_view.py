"""Live view of a calibration scan: the OverfocusUDF images while the frames arrive.

:class:`LiveView` is a per-run Bluesky callback (the
:class:`~stemcal.callbacks.CalibrationRecorder`'s RunRouter factory gives
one to each run it handles). Every ``stream_datum`` of the run's ``primary``
stream announces frames; a worker thread reads them from the file the
``stream_resource`` names (HDF5, opened for SWMR reading while the detector
still writes; where HDF5 keeps them as one contiguous block, as
:class:`~stemcal.devices.writers.frame_stream.FrameStreamWriter` does, through a
:class:`~stemcal.callbacks.frame_map.FrameMap` of the file's pages) and adds them
to a :class:`LiveProjection`. On the thread that
delivers the documents (the RunEngine's, as GUI code needs) the
:class:`LiveFigure` is redrawn at most every ``redraw_period`` seconds, and
once more at ``stop`` with all frames; it is written as PNG to
``figure_dir`` if one is given.

Both layouts of :class:`~stemcal.devices.MerlinDetector` work: a live scan
(:func:`stemcal.plans.overfocus_scan` with ``live=True``: one frame per
index, datums every flush period) is shown as it comes; a triggered scan
(one 4D event, one datum at the end) is processed when that datum arrives.

The images use the geometry the run carries
(:func:`stemcal.runs.projection_params`): the stored calibration of a check
run, else the run's guess, completed by neutral values (rotation 0, no flip,
the detector middle, a disk of a quarter of the detector). With a wrong guess the shifted sum is blurred:
that is what the live view shows, and its title says so ("projected with the
guess ... until the fit is in"). When the recorder's fit of the run is in
(:meth:`LiveView.show_fit`), the view is redrawn with the fit's images
(:meth:`LiveView.redraw_fit`, on the RunEngine thread) and saved again.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.callbacks.core import CallbackBase

from ..processing.live_projection import LiveProjection
from ..runs import PRIMARY_STREAM, frame_layout, projection_params, resource_path
from .frame_map import FrameMap
from .live_figure import LiveFigure

__all__ = ["LiveView"]

log = logging.getLogger(__name__)

#: Frames read from the file per block (bounds the memory of one read).
READ_BLOCK = 256


class LiveView(CallbackBase):
    """Per-run callback: live OverfocusUDF images of the run's frames, and a figure.

    Parameters
    ----------
    figure : bool
        Keep a :class:`LiveFigure` (on screen where there is a display).
    figure_dir : path, optional
        Write the final figure there as ``live_<uid8>.png``.
    redraw_period : float
        Shortest time between redraws, seconds.
    on_screen : bool, optional
        Passed to :class:`LiveFigure` (default: whether there is a display).
    timeout : float
        Seconds ``stop`` waits for frames still being processed.
    clock : callable
        ``time.monotonic`` unless a test injects another.

    Attributes
    ----------
    projection : LiveProjection or None
        Made when the first frames are announced.
    history : list of (seconds, frames_done)
        When (``clock()``) each block of frames was projected.
    images : dict
        The images at the last redraw (all frames after ``stop``).
    blur : float or None
        Crete blur of the normalised shifted sum at the last redraw.
    error : str or None
        Why the view stopped early (bad metadata, unreadable file); the
        run itself is not affected.
    guess_images : dict
        The images of all frames projected with the run's geometry (set at
        ``stop`` when every frame was projected; empty otherwise).
    geometry : str
        What the images are projected with, as the title says it.
    """

    def __init__(self, *, figure: bool = True, figure_dir: str | Path | None = None,
                 redraw_period: float = 0.5, on_screen: bool | None = None,
                 timeout: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._want_figure = bool(figure)
        self.figure_dir = Path(figure_dir) if figure_dir is not None else None
        self.redraw_period = float(redraw_period)
        self._on_screen = on_screen
        self.timeout = float(timeout)
        self._clock = clock
        self.start_doc: dict | None = None
        self.projection: LiveProjection | None = None
        self.figure: LiveFigure | None = None
        self.history: list[tuple[float, int]] = []
        self.images: dict[str, np.ndarray] = {}
        self.blur: float | None = None
        self.error: str | None = None
        self.figure_path: Path | None = None
        self.guess_images: dict[str, np.ndarray] = {}
        self.geometry = ""
        self._fit: tuple[dict[str, np.ndarray], Any] | None = None
        self._descriptors: dict[str, dict] = {}
        self._resources: dict[str, dict] = {}
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._buffer: np.ndarray | None = None  # the worker's read buffer
        self._last_draw = -np.inf
        self._drawn = -1

    # -- documents (RunEngine thread) -----------------------------------------------------
    def start(self, doc: dict) -> dict:
        self.start_doc = doc
        return doc

    def descriptor(self, doc: dict) -> dict:
        self._descriptors[doc["uid"]] = doc
        return doc

    def stream_resource(self, doc: dict) -> dict:
        self._resources[doc["uid"]] = doc
        return doc

    def stream_datum(self, doc: dict) -> dict:
        if self.error is None:
            try:
                self._announce(doc)
            except Exception as exc:  # a live view never breaks the run
                self._fail(f"{type(exc).__name__}: {exc}")
        self._maybe_redraw()
        return doc

    def event(self, doc: dict) -> dict:
        self._maybe_redraw()
        return doc

    def stop(self, doc: dict) -> dict:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(self.timeout)
            if self._worker.is_alive():
                self._fail(f"frames still being processed after {self.timeout:g} s")
        self._maybe_redraw(force=True)
        p = self.projection
        if p is not None and self.error is None and p.frames_done == p.n_frames:
            self.guess_images = dict(self.images)
        self._save()
        return doc

    def _save(self) -> None:
        if self.figure is not None and self.figure_dir is not None and self.start_doc:
            try:
                self.figure_dir.mkdir(parents=True, exist_ok=True)
                self.figure_path = self.figure.save(
                    self.figure_dir / f"live_{self.start_doc['uid'][:8]}.png")
            except Exception:  # a figure is never worth losing a calibration
                log.exception("could not write the live figure")

    # -- the fit (from the recorder) --------------------------------------------------------
    def show_fit(self, images: dict[str, np.ndarray], params: Any) -> None:
        """The run's fit is in: its images (OverfocusUDF's, with the fitted geometry
        ``params``) replace the guess's at the next :meth:`redraw_fit`. Any thread."""
        self._fit = (dict(images), params)

    def redraw_fit(self) -> None:
        """Redraw (and save again) with the fit given to :meth:`show_fit`; on the thread
        that owns the figure (the RunEngine's). Nothing happens before :meth:`show_fit`."""
        from ..fit.passes import image_quality

        if self._fit is None:
            return
        images, params = self._fit
        self.images = images
        try:
            self.blur = float(image_quality(images)[0])
        except Exception:  # noqa: BLE001 - a live view never breaks the run
            self.blur = None
        self.geometry = f"projected with the fit: {_geometry_words(params)}"
        if self.figure is not None and self.projection is not None:
            try:
                n = self.projection.n_frames
                self.figure.update(images, n, n, self.blur, geometry=self.geometry)
            except Exception:
                log.exception("could not redraw the live figure with the fit")
            self._save()

    # -- frames ---------------------------------------------------------------------------
    def _announce(self, datum: dict) -> None:
        desc = self._descriptors.get(datum.get("descriptor"))
        if desc is None or desc.get("name") != PRIMARY_STREAM:
            return
        res = self._resources[datum["stream_resource"]]
        key = desc["data_keys"].get(res["data_key"], {})
        shape = [int(n) for n in key.get("shape") or ()]
        if len(shape) not in (2, 4):
            return  # not frames
        start = self.start_doc or {}
        nav, sig = frame_layout(shape, start)
        if self.projection is None:
            params = projection_params(start, sig)
            self.projection = LiveProjection(params, nav, sig)
            if isinstance(start.get("calibration_check"), dict):
                self.geometry = (f"projected with the calibration being checked: "
                                 f"{_geometry_words(params)}")
            else:
                self.geometry = (f"projected with the guess ({_geometry_words(params)}) "
                                 "until the fit is in")
            if self._want_figure:
                uid = str(start.get("uid", ""))[:8]
                self.figure = LiveFigure(f"live view of run {uid} ({start.get('purpose')})",
                                         on_screen=self._on_screen)
            self._worker = threading.Thread(target=self._work, name="stemcal-live-view",
                                            daemon=True)
            self._worker.start()
        dataset = (res.get("parameters") or {}).get("dataset")
        lo, hi = int(datum["indices"]["start"]), int(datum["indices"]["stop"])
        self._queue.put((resource_path(res["uri"]), dataset, len(shape), lo, hi))

    def _work(self) -> None:
        import h5py

        files: dict[Path, Any] = {}
        maps: dict[tuple[Path, str], FrameMap | None] = {}
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if self.error is not None:
                    continue
                path, dataset, ndim, lo, hi = item
                try:
                    if path not in files:  # no chunk cache: announced frames are read once
                        files[path] = h5py.File(path, "r", swmr=(ndim == 2), rdcc_nbytes=0)
                    ds = files[path][dataset]
                    if ndim == 2:
                        ds.refresh()
                        if (path, dataset) not in maps:
                            maps[path, dataset] = FrameMap.open(path, ds)
                        self._add_frames(ds, lo, hi, maps[path, dataset])
                    else:  # (events, ny, nx, sy, sx): one whole scan per index
                        for event in range(lo, hi):
                            self._add_scan(ds, event)
                except Exception as exc:
                    self._fail(f"cannot read frames {lo}..{hi} of {path}: "
                               f"{type(exc).__name__}: {exc}")
        finally:
            for m in maps.values():
                if m is not None:
                    m.close()
            for f in files.values():
                f.close()

    def _add_frames(self, ds: Any, lo: int, hi: int, mapped: FrameMap | None = None) -> None:
        assert self.projection is not None
        if mapped is None:
            shape = (READ_BLOCK,) + tuple(ds.shape[1:])
            if (self._buffer is None or self._buffer.shape != shape
                    or self._buffer.dtype != ds.dtype):
                self._buffer = np.empty(shape, dtype=ds.dtype)  # reused: no fresh memory
        for i in range(lo, hi, READ_BLOCK):
            j = min(hi, i + READ_BLOCK)
            if mapped is not None:
                block = mapped.frames(i, j)  # straight from the page cache: no copy
            else:
                block = self._buffer[:j - i]
                ds.read_direct(block, np.s_[i:j])
            self.projection.add(i, block)
            self.history.append((self._clock(), self.projection.frames_done))

    def _add_scan(self, ds: Any, event: int) -> None:
        assert self.projection is not None
        ny, nx = self.projection.geometry.nav_shape
        rows = max(1, READ_BLOCK // nx)
        for y in range(0, ny, rows):
            block = ds[event, y:y + rows]
            self.projection.add(y * nx, block.reshape((-1,) + block.shape[2:]))
            self.history.append((self._clock(), self.projection.frames_done))

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
            log.warning("live view stopped: %s", why)

    # -- drawing (RunEngine thread) -------------------------------------------------------
    def _maybe_redraw(self, force: bool = False) -> None:
        if self.projection is None:
            return
        now = self._clock()
        done = self.projection.frames_done
        if not force and (now - self._last_draw < self.redraw_period or done == self._drawn):
            return
        from ..fit.passes import image_quality

        self.images = self.projection.images()
        try:
            self.blur = float(image_quality(self.images)[0]) if done else None
        except Exception:  # too little covered yet for the metric
            self.blur = None
        self._last_draw, self._drawn = now, done
        if self.figure is not None:
            try:
                self.figure.update(self.images, done, self.projection.n_frames, self.blur,
                                   geometry=self.geometry)
            except Exception:
                log.exception("could not redraw the live figure")


def _geometry_words(params: Any) -> str:
    """A projection geometry in a few words: rotation, flip, overfocus."""
    return (f"rotation {params.scan_rotation:.2f} deg, {'flip' if params.flip_y else 'no flip'}, "
            f"overfocus {params.overfocus * 1e9:.1f} nm")
