"""One acquisition run's documents, collected: where its frames are, and a status for its result.

:class:`CalibrationRun` is the per-run callback the
:class:`~stemcal.callbacks.recorder.CalibrationRecorder`'s RunRouter gives to
each run it handles. It checks the order of the documents and, at ``stop``,
finds the run's frames (:class:`AcquiredData`) by the contract of
:mod:`stemcal.runs`; :class:`ResultStatus` is the ophyd status a plan waits on.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bluesky.callbacks.core import CallbackBase
from ophyd.status import Status

from ..devices.status import WatchMixin
from ..runs import PRIMARY_STREAM, frame_layout, resource_path

__all__ = ["CalibrationRun", "ResultStatus", "AcquiredData", "DocumentOrderError",
           "RunNotCalibrated"]


class DocumentOrderError(RuntimeError):
    """A document arrived out of order (before its run's start, after its stop, ...)."""


class RunNotCalibrated(RuntimeError):
    """The run was not calibrated (it did not end successfully, or held no 4D data)."""


class ResultStatus(WatchMixin, Status):
    """An ophyd :class:`~ophyd.status.Status` that carries a result and reports progress.

    :meth:`set_result` stores the value and finishes the status; :attr:`result`
    returns it, or raises the exception the status failed with.

    ``watch`` (:class:`~stemcal.devices.status.WatchMixin`) is ophyd's progress
    interface, which bluesky's :class:`~bluesky.utils.ProgressBarManager`
    uses when a plan waits on the status: the name says what is done (e.g.
    ``"calibration of run 1a2b3c4d: refinement"``), the progress is in
    percent. :meth:`report_progress` feeds it.
    """

    _unset = object()

    def __init__(self, obj: Any = None, *, name: str | None = None, **kwargs: Any) -> None:
        self._result: Any = self._unset
        self._init_watch(name if name is not None else f"run {str(obj)[:8]}")
        self._label = "waiting"
        super().__init__(obj=obj, **kwargs)
        self._after_init_watch()

    def set_result(self, value: Any) -> None:
        """Store ``value`` and mark the status finished (successfully)."""
        self._result = value
        self.report_progress("done", 1.0)
        self.set_finished()

    @property
    def result(self) -> Any:
        """The value given to :meth:`set_result`.

        Raises
        ------
        RuntimeError
            The status is not done yet.
        Exception
            The exception the status failed with.
        """
        if not self.done:
            raise RuntimeError("the result is not ready (status not done)")
        exc = self.exception()
        if exc is not None:
            raise exc
        return self._result

    def report_progress(self, stage: str, fraction: float) -> None:
        """The work has reached ``stage`` with ``fraction`` (0..1) of it done; tell the watchers."""
        self.set_progress(100 * float(fraction), label=stage)


@dataclasses.dataclass(frozen=True)
class AcquiredData:
    """Where a run's 4D frames are: one HDF5 file.

    The dataset is ``(1, ny, nx, sy, sx)`` (a triggered scan: one 4D event)
    or ``(ny * nx, sy, sx)`` (a live scan: one frame per index, scan order).
    ``path`` is a local path, ``dataset`` the HDF5 dataset path, ``data_key``
    the descriptor's data key, ``nav_shape`` (ny, nx) and ``sig_shape`` (sy, sx)
    in pixels.
    """

    path: Path
    dataset: str
    data_key: str
    nav_shape: tuple[int, int]
    sig_shape: tuple[int, int]

    def load(self, ctx: Any) -> Any:
        """The frames as a LiberTEM data set with 2D navigation and 2D signal.

        The leading length-1 event axis of a triggered scan's file, or the
        flat frame axis of a live scan's, is shaped into the navigation by
        LiberTEM's HDF5 reader (``nav_shape=(ny, nx)``).
        """
        return ctx.load("hdf5", path=str(self.path), ds_path=self.dataset,
                        nav_shape=self.nav_shape, sig_shape=self.sig_shape)


def _local_path(uri: str) -> Path:
    try:
        return resource_path(uri)
    except ValueError as exc:
        raise RunNotCalibrated(str(exc)) from None


class CalibrationRun(CallbackBase):
    """Per-run callback: collects one run's documents, hands the run over at ``stop``.

    Documents must come in order: ``start`` first and once; descriptors,
    events, stream resources and datums between ``start`` and ``stop``; an
    event or datum only after what it refers to; nothing after ``stop``.
    Anything else raises :class:`DocumentOrderError`.

    Parameters
    ----------
    on_stop : callable
        ``on_stop(start, stop, data)`` with ``data`` the run's
        :class:`AcquiredData`, or ``None`` where the run holds no usable 4D data
        (then ``reason`` says why: ``on_stop(start, stop, None, reason)``).
        Called once, for every ``stop``, on the thread that delivered it.
    """

    def __init__(self, on_stop: Callable[..., None]) -> None:
        super().__init__()
        self._on_stop = on_stop
        self._start: dict | None = None
        self._stopped = False
        self._descriptors: dict[str, dict] = {}
        self._resources: dict[str, dict] = {}
        self._datums: list[dict] = []
        self._events = 0

    def _check(self, name: str) -> None:
        if self._start is None:
            raise DocumentOrderError(f"'{name}' document before the run's 'start'")
        if self._stopped:
            raise DocumentOrderError(f"'{name}' document after the run's 'stop' "
                                     f"(run {self._start['uid']})")

    def start(self, doc: dict) -> dict:
        if self._start is not None:
            raise DocumentOrderError(f"a second 'start' document ({doc.get('uid')}) for run "
                                     f"{self._start['uid']}")
        self._start = doc
        return doc

    def _check_owner(self, what: str, doc: dict, *, optional: bool = False) -> None:
        """``doc`` names this run as its ``run_start`` (or none, where ``optional``)."""
        owner = doc.get("run_start")
        if owner != self._start["uid"] and not (optional and owner is None):
            raise DocumentOrderError(f"{what} {doc.get('uid')} belongs to run {owner}, "
                                     f"not {self._start['uid']}")

    @staticmethod
    def _check_after(what: str, doc: dict, key: str, seen: dict, name: str) -> None:
        """The document ``doc[key]`` refers to (a ``name``) arrived before ``doc``."""
        if doc.get(key) not in seen:
            raise DocumentOrderError(f"{what} before its {name} {doc.get(key)}")

    def descriptor(self, doc: dict) -> dict:
        self._check("descriptor")
        self._check_owner("descriptor", doc)
        self._descriptors[doc["uid"]] = doc
        return doc

    def event(self, doc: dict) -> dict:
        self._check("event")
        self._check_after(f"event {doc.get('uid')}", doc, "descriptor", self._descriptors,
                          "descriptor")
        self._events += 1
        return doc

    def event_page(self, doc: dict) -> dict:
        self._check("event_page")
        self._check_after("event page", doc, "descriptor", self._descriptors, "descriptor")
        self._events += len(doc.get("seq_num", ()))
        return doc

    def stream_resource(self, doc: dict) -> dict:
        self._check("stream_resource")
        self._check_owner("stream resource", doc, optional=True)
        self._resources[doc["uid"]] = doc
        return doc

    def stream_datum(self, doc: dict) -> dict:
        self._check("stream_datum")
        what = f"stream datum {doc.get('uid')}"
        self._check_after(what, doc, "stream_resource", self._resources, "stream resource")
        self._check_after(what, doc, "descriptor", self._descriptors, "descriptor")
        self._datums.append(doc)
        return doc

    def stop(self, doc: dict) -> dict:
        self._check("stop")
        if doc.get("run_start") != self._start["uid"]:
            raise DocumentOrderError(f"stop document of run {doc.get('run_start')} sent to run "
                                     f"{self._start['uid']}")
        self._stopped = True
        try:
            data, reason = self._data(), None
        except RunNotCalibrated as exc:
            data, reason = None, str(exc)
        if data is None:
            self._on_stop(self._start, doc, None, reason)
        else:
            self._on_stop(self._start, doc, data)
        return doc

    def _data(self) -> AcquiredData | None:
        """The one 4D acquisition of the run: one 4D event, or the frames of a live scan."""
        found: dict[str, list] = {}
        for datum in self._datums:
            desc = self._descriptors[datum["descriptor"]]
            if desc.get("name") != PRIMARY_STREAM:
                continue  # e.g. the 'incomplete' stream of an interrupted acquisition
            res = self._resources[datum["stream_resource"]]
            key = desc["data_keys"].get(res["data_key"], {})
            shape = [int(n) for n in key.get("shape") or ()]
            if len(shape) in (2, 4):
                found.setdefault(res["uid"], []).append((res, datum, shape))
        uid = self._start["uid"]
        if len(found) != 1:
            raise RunNotCalibrated(f"run {uid} holds {len(found)} 4D acquisitions; "
                                   "calibration needs exactly one")
        (entries,) = found.values()
        res, datum, shape = entries[0]
        dataset = (res.get("parameters") or {}).get("dataset")
        if not dataset:
            raise RunNotCalibrated(f"run {uid}: stream resource names no HDF5 dataset")
        try:
            nav, sig = frame_layout(shape, self._start)
        except ValueError as exc:
            raise RunNotCalibrated(str(exc)) from None
        if len(shape) == 4:
            if len(entries) != 1 or datum["indices"]["stop"] - datum["indices"]["start"] != 1:
                raise RunNotCalibrated(f"run {uid}: the stream datum covers "
                                       f"{datum['indices']}; expected one acquisition")
        else:  # a live scan: frames per index, their datums contiguous from 0
            ranges = sorted((int(d["indices"]["start"]), int(d["indices"]["stop"]))
                            for _, d, _ in entries)
            covered = 0
            for lo, hi in ranges:
                if lo != covered:
                    break
                covered = hi
            if covered != nav[0] * nav[1]:
                raise RunNotCalibrated(f"run {uid}: {covered} of {nav[0] * nav[1]} frames of the "
                                       "live scan were announced; calibration needs all")
        return AcquiredData(path=_local_path(res["uri"]), dataset=dataset, data_key=res["data_key"],
                            nav_shape=nav, sig_shape=sig)
