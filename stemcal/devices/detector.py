"""The generic 4D-STEM pixelated detector: a controller (sim or hardware) plus HDF5 writers.

:class:`PixelatedDetector` is a classic ophyd :class:`~ophyd.Device`; the
detector models (:class:`~stemcal.devices.PixelatedDetector`,
:class:`~stemcal.devices.ArinaDetector`) are its leaves, which differ only in
their defaults. Each
``trigger()`` acquires one whole scan through its *controller* (for example
:class:`stemcal.devices.SimBackend` or a hardware backend,
:mod:`stemcal.devices.hardware`), which hands the frames over in scan
order as they arrive; the *writer* (:class:`HDF5StreamWriter`) puts them into
one HDF5 file per acquisition as they come, and the status finishes when the
file is complete and closed. The frames reach Bluesky as external data: the
data key ``<name>_image`` has ``external: 'STREAM:'`` and the writer emits one
``StreamResource`` (one HDF5 file) and one ``StreamDatum`` (its single row) per
acquisition through :meth:`PixelatedDetector.collect_asset_docs`.

Interruptions. An acquisition that fails midway (connection lost, timeout,
refused command) fails the trigger status; one interrupted by
:meth:`PixelatedDetector.stop`, :meth:`~PixelatedDetector.pause` or
:meth:`~PixelatedDetector.unstage` finishes it without error (like ophyd's area
detectors, so that an interrupted plan's cleanup is not interrupted in turn).
Either way the frames received so far stay in a closed, readable file marked
incomplete (dataset attributes ``complete=False`` and ``frames_written``,
the first ``frames_written`` frames in scan order; the rest are 0), whose
stream documents wait to be collected; without any frame no file and no
documents remain.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus
from ophyd.device import Staged

from .signals import ReadbackSignal
from .status import AcquisitionStatus
from .writers.frame_stream import FRAME_DIMS, FrameStreamWriter
from .writers.scan_file import IMAGE_DIMS, HDF5StreamWriter

__all__ = ["PixelatedDetector", "DetectorController", "DetectorWriter", "FrameSink"]

logger = logging.getLogger(__name__)

#: ``sink(start, frames)``: frames ``(k, sy, sx)`` at flat scan positions ``start .. start+k-1``.
FrameSink = Callable[[int, np.ndarray], None]



class DetectorController(Protocol):
    """What :class:`PixelatedDetector` needs from a controller (sim or real)."""

    source: str
    sig_shape: tuple[int, int]
    pixel_size: float
    bit_depth: int
    dtype: np.dtype

    def prepare(self) -> None:
        """Get ready to acquire (called at stage); raise if that is impossible."""

    def frame_shape(self) -> tuple[int, int, int, int]:
        """``(ny, nx, sy, sx)`` of the next acquisition."""

    def acquire(self, on_frames: FrameSink | None = None) -> np.ndarray | None:
        """Acquire a whole scan (blocking); raise if not prepared or interrupted.

        ``on_frames(start, frames)`` is called with consecutive blocks of
        frames in scan order as they arrive (before the call returns); a
        block is valid during the call only. Returns the scan
        ``(ny, nx, sy, sx)``; a controller that handed every frame to
        ``on_frames`` may return None instead (the hardware backends do:
        they keep nothing).
        """

    def disarm(self) -> None:
        """Return to idle; idempotent. A running :meth:`acquire` stops and raises."""


class DetectorWriter(Protocol):
    """What :class:`PixelatedDetector` needs from a writer.

    ``open``, ``write``, ``collect_stream_docs`` and ``close`` are required.
    A writer that also has ``begin``/``write_frames``/``end`` gets the frames
    as they arrive (and keeps those of an interrupted acquisition);
    ``discard`` and ``has_pending`` serve pause/resume and interrupted plans.
    """

    def open(self, name: str, data_key: str) -> None:
        """Get ready to write the data key ``data_key`` (called at stage)."""

    def write(self, frames: np.ndarray) -> Path:
        """Write one acquisition, queue its stream documents, return the file."""

    def begin(self, shape: tuple[int, int, int, int], dtype: Any) -> None:
        """Start the file of one acquisition of ``shape`` (ny, nx, sy, sx)."""

    def write_frames(self, start: int, frames: np.ndarray) -> None:
        """Write frames ``(k, sy, sx)`` at flat scan positions ``start ..``."""

    def end(self, complete: bool) -> Path | None:
        """Close the acquisition's file, queue its documents; None if no frame came."""

    def discard(self) -> list[Path]:
        """Delete the files of queued, uncollected documents and drop the documents."""

    @property
    def has_pending(self) -> bool:
        """Whether documents wait to be collected."""

    def collect_stream_docs(self) -> Iterator[tuple[str, dict]]:
        """Yield and forget the queued ``(name, doc)`` stream documents."""

    def close(self) -> None:
        """Stop writing and drop queued documents; idempotent."""


class PixelatedDetector(Device):
    """A 4D-STEM pixel detector acquiring one whole scan per ``trigger()``.

    Parameters
    ----------
    name : str
        Device name; the image data key is ``f"{name}_image"``.
    backend : DetectorController
        The controller, e.g. ``SimBackend(microscope)``; a real-protocol
        controller implements the same interface.
    write_dir : path
        Where the HDF5 files go (used by the default writer).
    writer : DetectorWriter, optional
        Default :class:`HDF5StreamWriter` ``(write_dir)``.
    interrupt_timeout : float
        Seconds :meth:`stop`/:meth:`pause`/:meth:`unstage` wait for an
        interrupted acquisition to end.
    stream_writer : FrameStreamWriter, optional
        The writer of live (fly) acquisitions, default
        :class:`~stemcal.devices.writers.frame_stream.FrameStreamWriter` in the
        writer's directory.

    Components
    ----------
    data_file : str (read)
        Path of the last file written.
    pixel_size : float (configuration)
        Detector pixel pitch, metres.
    sig_shape : [int, int] (configuration)
        Detector shape (sy, sx), pixels.
    bit_depth : int (configuration)
        Counter depth, bits.

    Notes
    -----
    ``stage()`` and ``unstage()`` are idempotent; ``trigger()`` before
    ``stage()`` raises ``RuntimeError``. :meth:`stop`, :meth:`pause` (called by
    the RunEngine when it pauses) and :meth:`unstage` interrupt a running
    acquisition: they disarm the controller and wait (at most
    ``interrupt_timeout`` seconds) for the frames received so far to be
    written to an incomplete file, whose documents wait to be collected (a
    plan reads them into a stream of its own, see
    :func:`stemcal.plans.overfocus_scan`). :meth:`resume` deletes such a
    partial file if it was not collected, since the RunEngine repeats the
    trigger after a pause; the next trigger re-arms the controller.

    Live (fly) mode. :meth:`kickoff` starts the same acquisition, but into
    :attr:`stream_writer`: one SWMR HDF5 file with one frame per index, whose
    StreamResource is ready at once and whose StreamDatum ranges
    (:meth:`collect_asset_docs`, up to :meth:`get_index` frames) announce the
    frames as they land, so that a callback can process them while the scan
    runs. :meth:`complete` is the status of that acquisition;
    :meth:`describe_collect` describes one frame ``(sy, sx)`` per index. A
    RunEngine pause does not interrupt a live acquisition (see :meth:`pause`).
    See :func:`stemcal.plans.overfocus_scan` with ``live=True``.
    """

    data_file = Cpt(ReadbackSignal, value="", kind="normal")
    pixel_size = Cpt(ReadbackSignal, value=0.0, units="m", kind="config")
    sig_shape = Cpt(ReadbackSignal, value=[0, 0], kind="config")
    bit_depth = Cpt(ReadbackSignal, value=0, units="bit", kind="config")

    def __init__(self, name: str, *, backend: DetectorController,
                 write_dir: str | os.PathLike | None = None,
                 writer: DetectorWriter | None = None, interrupt_timeout: float = 30.0,
                 stream_writer: FrameStreamWriter | None = None, **kwargs: Any) -> None:
        if writer is None:
            if write_dir is None:
                raise ValueError("give write_dir (or a writer)")
            writer = HDF5StreamWriter(write_dir)
        if stream_writer is None:
            where = write_dir if write_dir is not None else getattr(writer, "write_dir", None)
            if where is None:
                raise ValueError("give write_dir (or a stream_writer) for live acquisitions")
            stream_writer = FrameStreamWriter(where)
        super().__init__(prefix="", name=name, **kwargs)
        self.backend = backend
        self.writer = writer
        self.stream_writer = stream_writer
        self._complete_status: DeviceStatus | None = None
        self.interrupt_timeout = float(interrupt_timeout)
        self._busy = threading.Lock()
        self._last_shape: tuple[int, int, int, int] | None = None
        self._thread: threading.Thread | None = None
        self._interrupted = threading.Event()  # set by stop/pause/unstage during an acquisition
        self._rearm = False                    # the controller was disarmed while staged
        self.pixel_size.put(float(backend.pixel_size), internal=True)
        self.sig_shape.put([int(n) for n in backend.sig_shape], internal=True)
        self.bit_depth.put(int(backend.bit_depth), internal=True)

    @property
    def image_key(self) -> str:
        """Data key of the external 4D image."""
        return f"{self.name}_image"

    @property
    def acquiring(self) -> bool:
        """Whether an acquisition (a trigger) is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def has_uncollected_data(self) -> bool:
        """Whether stream documents (e.g. of an interrupted acquisition) wait to be collected."""
        return bool(getattr(self.writer, "has_pending", False)) or self.stream_writer.has_pending

    def state(self) -> dict[str, Any]:
        """Plain dict of the detector settings: ``pixel_size`` (m), ``sig_shape``, ``bit_depth``."""
        return {"pixel_size": float(self.pixel_size.get()),
                "sig_shape": [int(n) for n in self.sig_shape.get()],
                "bit_depth": int(self.bit_depth.get())}

    # -- bluesky interface ------------------------------------------------------------------
    def stage(self) -> list[object]:
        """Disarm, reset the writer, prepare the controller and open the writer (idempotent)."""
        if self._staged == Staged.yes:
            return [self]
        self._interrupt("stage")
        self.backend.disarm()
        self.writer.close()
        self.backend.prepare()
        self.writer.open(self.name, self.image_key)
        self.stream_writer.close()
        self.stream_writer.open(self.name, self.image_key)
        self._complete_status = None
        self._last_shape = None
        self._rearm = False
        return super().stage()

    def unstage(self) -> list[object]:
        """Interrupt a running acquisition, disarm the controller, close the writer (idempotent)."""
        self._interrupt("unstage")
        self.backend.disarm()
        self.writer.close()
        self.stream_writer.close()
        return super().unstage()

    def stop(self, *, success: bool = False) -> None:
        """Interrupt a running acquisition (its frames so far stay in an incomplete file)."""
        self._interrupt("stop")
        super().stop(success=success)

    def pause(self) -> None:
        """RunEngine pause: interrupt a running triggered acquisition, as :meth:`stop`.

        A live acquisition (:meth:`kickoff`) goes on: a scan cannot be held
        midway, and the plan (not rewound) goes on collecting it on resume.
        An abort or stop while paused interrupts it when the detector is
        stopped or unstaged.
        """
        live = self._complete_status
        if live is not None and not live.done:
            logger.info("%s: paused; the live acquisition goes on", self.name)
            return
        self._interrupt("pause")

    def resume(self) -> None:
        """RunEngine resume: delete an uncollected partial file (the trigger is repeated)."""
        discard = getattr(self.writer, "discard", None)
        for path in discard() if callable(discard) else ():
            logger.info("%s: partial acquisition %s discarded on resume", self.name, path)

    def trigger(self) -> DeviceStatus:
        """Acquire a whole scan and write it; the status finishes when the file is written.

        Raises
        ------
        RuntimeError
            Before ``stage()``, or while an acquisition is still running.
        """
        return self._launch(self.writer, None)

    def kickoff(self) -> DeviceStatus:
        """Start a live acquisition (see the class notes); done once its file is created.

        :meth:`complete` returns the status of the acquisition itself.

        Raises
        ------
        RuntimeError
            Before ``stage()``, or while an acquisition is still running.
        """
        started = DeviceStatus(self)
        self._complete_status = self._launch(self.stream_writer, started)
        return started

    def complete(self) -> DeviceStatus:
        """The status of the live acquisition started by :meth:`kickoff`."""
        if self._complete_status is None:
            raise RuntimeError(f"{self.name}: complete() before kickoff()")
        return self._complete_status

    def _launch(self, writer: Any, started: DeviceStatus | None) -> AcquisitionStatus:
        """Run one acquisition into ``writer`` on a thread; its status, which reports the
        frames written so far (``watch``: bluesky's progress bars show them).

        ``started`` (live mode) finishes once the writer has begun the file,
        or fails with the error that prevented it.
        """
        verb = "trigger()" if started is None else "kickoff()"
        if self._staged != Staged.yes:
            raise RuntimeError(f"{self.name}: {verb} before stage()")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"{self.name}: {verb} while an acquisition is running")
        self._interrupted.clear()
        status = AcquisitionStatus(self)

        def written(start: int, frames: np.ndarray) -> None:  # the writer's sink, counted
            writer.write_frames(start, frames)
            status.set_progress(start + len(frames))

        def acquire() -> None:
            try:
                if self._rearm:
                    self.backend.prepare()
                    self._rearm = False
                if not callable(getattr(writer, "begin", None)):  # a whole-scan writer
                    frames = self.backend.acquire()
                    path = writer.write(frames)
                    self._last_shape = tuple(int(n) for n in frames.shape)  # type: ignore
                    self.data_file.put(str(path), internal=True)
                    return self._finish(status, None)
                shape = tuple(int(n) for n in self.backend.frame_shape())
                writer.begin(shape, self.backend.dtype)  # type: ignore[arg-type]
                self._last_shape = shape  # type: ignore[assignment]
                status.set_progress(0, target=shape[0] * shape[1])
                if started is not None:
                    started.set_finished()
                try:
                    if _takes_on_frames(self.backend):
                        self.backend.acquire(on_frames=written)
                    else:  # a controller that returns the whole scan only
                        frames = np.asarray(self.backend.acquire())
                        written(0, frames.reshape((-1,) + frames.shape[-2:]))
                except BaseException:
                    path = writer.end(complete=False)
                    if path is not None:
                        self.data_file.put(str(path), internal=True)
                    raise
                path = writer.end(complete=True)
                self.data_file.put(str(path), internal=True)
            except Exception as exc:  # reported through the status
                if started is not None and not started.done:
                    started.set_exception(exc)
                self._finish(status, exc)
            else:
                self._finish(status, None)

        self._thread = threading.Thread(target=acquire, name=f"{self.name}-acquire", daemon=True)
        self._thread.start()
        return status

    def _finish(self, status: AcquisitionStatus, exc: Exception | None) -> None:
        """End a trigger: release the detector, then finish ``status``."""
        self._busy.release()
        if exc is None:
            status.set_finished()
        elif self._interrupted.is_set():
            logger.info("%s: acquisition interrupted: %s", self.name, exc)
            status.set_finished()
        else:
            status.set_exception(exc)

    def _interrupt(self, why: str) -> None:
        """Stop a running acquisition and wait (bounded) until its file is closed."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return  # (a failed DeviceStatus calls stop() on the acquisition thread itself)
        logger.info("%s: interrupting the acquisition (%s)", self.name, why)
        self._interrupted.set()
        self._rearm = True
        self.backend.disarm()
        thread.join(self.interrupt_timeout)
        if thread.is_alive():
            logger.warning("%s: the acquisition did not stop within %g s", self.name,
                           self.interrupt_timeout)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Data keys: ``data_file`` plus the external image ``(ny, nx, sy, sx)``."""
        desc = dict(super().describe())
        shape = self._last_shape or self.backend.frame_shape()
        desc[self.image_key] = self._image_data_key(shape, IMAGE_DIMS, self.writer)
        return desc

    def _image_data_key(self, shape: Any, dims: Any, writer: Any) -> dict[str, Any]:
        """The external image's data key: ``shape`` and ``dims`` of one index, plus what
        ``writer`` adds (e.g. a MIB-keeping writer: where the raw copy is)."""
        key = {"source": self.backend.source, "dtype": "array",
               "dtype_numpy": np.dtype(self.backend.dtype).str,
               "shape": [int(n) for n in shape], "dims": list(dims), "external": "STREAM:"}
        key.update(getattr(writer, "data_key_info", dict)())
        return key

    def describe_collect(self) -> dict[str, dict[str, Any]]:
        """Data key of a live acquisition: one frame ``(sy, sx)`` per index (flat scan position)."""
        return {self.image_key: self._image_data_key(self.backend.sig_shape, FRAME_DIMS[1:],
                                                     self.stream_writer)}

    def get_index(self) -> int:
        """Frames of the live acquisition written so far (what :meth:`collect_asset_docs` may
        announce)."""
        return self.stream_writer.get_index()

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """Yield the StreamResource/StreamDatum documents not yet collected, once each.

        Those of finished triggered acquisitions, then those of a live
        acquisition (frames written so far, at most ``index`` in all).
        """
        yield from self.writer.collect_stream_docs()
        yield from self.stream_writer.collect_stream_docs(index)


def _takes_on_frames(backend: Any) -> bool:
    """Whether ``backend.acquire`` accepts ``on_frames`` (frames handed over as they come)."""
    import inspect

    try:
        params = inspect.signature(backend.acquire).parameters
    except (TypeError, ValueError):
        return False
    return "on_frames" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
