"""A Merlin-style 4D-STEM detector: a controller (sim or real) plus an HDF5 stream writer.

:class:`MerlinDetector` is a classic ophyd :class:`~ophyd.Device`. Each
``trigger()`` acquires one whole scan through its *controller* (for example
:class:`stemcal.devices.SimBackend`), hands the ``(ny, nx, sy, sx)`` frames to
its *writer* (:class:`HDF5StreamWriter`) and returns a status that finishes
when the file is on disk. The frames reach Bluesky as external data: the
data key ``<name>_image`` has ``external: 'STREAM:'`` and the writer emits one
``StreamResource`` (one HDF5 file) and one ``StreamDatum`` (its single row) per
trigger through :meth:`MerlinDetector.collect_asset_docs`.
"""
from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from event_model import StreamRange, compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus
from ophyd.device import Staged

from .signals import ReadbackSignal

__all__ = ["MerlinDetector", "HDF5StreamWriter", "DetectorController", "DetectorWriter",
           "IMAGE_DIMS"]

#: Names of the image axes, in order (the event axis ``time`` is added by consumers).
IMAGE_DIMS = ("scan_y", "scan_x", "detector_y", "detector_x")


class DetectorController(Protocol):
    """What :class:`MerlinDetector` needs from a controller (sim or real)."""

    source: str
    sig_shape: tuple[int, int]
    pixel_size: float
    bit_depth: int
    dtype: np.dtype

    def prepare(self) -> None:
        """Get ready to acquire (called at stage); raise if that is impossible."""

    def frame_shape(self) -> tuple[int, int, int, int]:
        """``(ny, nx, sy, sx)`` of the next acquisition."""

    def acquire(self) -> np.ndarray:
        """Acquire a whole scan (blocking); raise if not prepared."""

    def disarm(self) -> None:
        """Return to idle; idempotent."""


class DetectorWriter(Protocol):
    """What :class:`MerlinDetector` needs from a writer."""

    def open(self, name: str, data_key: str) -> None:
        """Get ready to write the data key ``data_key`` (called at stage)."""

    def write(self, frames: np.ndarray) -> Path:
        """Write one acquisition, queue its stream documents, return the file."""

    def collect_stream_docs(self) -> Iterator[tuple[str, dict]]:
        """Yield and forget the queued ``(name, doc)`` stream documents."""

    def close(self) -> None:
        """Stop writing and drop queued documents; idempotent."""


class HDF5StreamWriter:
    """Write each acquisition to its own HDF5 file and describe it with stream documents.

    Each file holds one dataset of shape ``(1, ny, nx, sy, sx)``, one frame per
    chunk; the leading length-1 axis is the event axis, along which a
    consumer (tiled's HDF5 consolidator) joins the files of a run.

    Parameters
    ----------
    write_dir : path
        Directory for the files (created at :meth:`open`).
    dataset : str
        Dataset path inside each file.
    compression : {None, 'bslz4'}
        ``'bslz4'`` needs :mod:`hdf5plugin` imported by every reader.
    """

    mimetype = "application/x-hdf5"

    def __init__(self, write_dir: str | os.PathLike, *, dataset: str = "/entry/data/data",
                 compression: str | None = None) -> None:
        if compression not in (None, "bslz4"):
            raise ValueError(f"compression must be None or 'bslz4', got {compression!r}")
        self.write_dir = Path(write_dir)
        self.dataset = dataset
        self.compression = compression
        self._name: str | None = None
        self._data_key: str | None = None
        self._pending: list[tuple[str, dict]] = []
        self._count = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.write_dir)!r}, dataset={self.dataset!r})"

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` was called since the last :meth:`close`."""
        return self._data_key is not None

    def open(self, name: str, data_key: str) -> None:
        """Start writing files named after ``name`` for the data key ``data_key``."""
        self.write_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._name, self._data_key = name, data_key
            self._pending = []

    def write(self, frames: np.ndarray) -> Path:
        """Write ``frames`` (ny, nx, sy, sx) to a new file; queue StreamResource + StreamDatum.

        Returns
        -------
        Path
            The absolute path of the new file.
        """
        import h5py

        if not self.is_open:
            raise RuntimeError("write() before open()")
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must be 4D (ny, nx, sy, sx), got shape {frames.shape}")
        filters: dict[str, Any] = {}
        if self.compression == "bslz4":
            import hdf5plugin

            filters = dict(hdf5plugin.Bitshuffle(cname="lz4"))
        with self._lock:
            self._count += 1
            count = self._count
        path = (self.write_dir / f"{self._name}_{count:05d}_{secrets.token_hex(4)}.h5").resolve()
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset(self.dataset, data=frames[np.newaxis],
                                 chunks=(1, 1, 1) + frames.shape[2:], **filters)
                f[self.dataset].attrs["dims"] = ["time", *IMAGE_DIMS]
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        bundle = compose_stream_resource(
            mimetype=self.mimetype, uri="file://localhost" + path.as_posix(),
            data_key=self._data_key, parameters={"dataset": self.dataset, "chunk_shape": (1,)})
        datum = bundle.compose_stream_datum(indices=StreamRange(start=0, stop=1))
        with self._lock:
            self._pending += [("stream_resource", bundle.stream_resource_doc),
                              ("stream_datum", datum)]
        return path

    def collect_stream_docs(self) -> Iterator[tuple[str, dict]]:
        """Yield the queued documents (each once), resource before its datum."""
        with self._lock:
            pending, self._pending = self._pending, []
        yield from pending

    def close(self) -> None:
        """Stop writing; queued, uncollected documents are dropped."""
        with self._lock:
            self._name = self._data_key = None
            self._pending = []


class MerlinDetector(Device):
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
    ``stage()`` raises ``RuntimeError``.
    """

    data_file = Cpt(ReadbackSignal, value="", kind="normal")
    pixel_size = Cpt(ReadbackSignal, value=0.0, units="m", kind="config")
    sig_shape = Cpt(ReadbackSignal, value=[0, 0], kind="config")
    bit_depth = Cpt(ReadbackSignal, value=0, units="bit", kind="config")

    def __init__(self, name: str, *, backend: DetectorController,
                 write_dir: str | os.PathLike | None = None,
                 writer: DetectorWriter | None = None, **kwargs: Any) -> None:
        if writer is None:
            if write_dir is None:
                raise ValueError("give write_dir (or a writer)")
            writer = HDF5StreamWriter(write_dir)
        super().__init__(prefix="", name=name, **kwargs)
        self.backend = backend
        self.writer = writer
        self._busy = threading.Lock()
        self._last_shape: tuple[int, int, int, int] | None = None
        self.pixel_size.put(float(backend.pixel_size), internal=True)
        self.sig_shape.put([int(n) for n in backend.sig_shape], internal=True)
        self.bit_depth.put(int(backend.bit_depth), internal=True)

    @property
    def image_key(self) -> str:
        """Data key of the external 4D image."""
        return f"{self.name}_image"

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
        self.backend.disarm()
        self.writer.close()
        self.backend.prepare()
        self.writer.open(self.name, self.image_key)
        self._last_shape = None
        return super().stage()

    def unstage(self) -> list[object]:
        """Disarm the controller and close the writer (idempotent)."""
        self.backend.disarm()
        self.writer.close()
        return super().unstage()

    def trigger(self) -> DeviceStatus:
        """Acquire a whole scan and write it; the status finishes when the file is written.

        Raises
        ------
        RuntimeError
            Before ``stage()``, or while an acquisition is still running.
        """
        if self._staged != Staged.yes:
            raise RuntimeError(f"{self.name}: trigger() before stage()")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"{self.name}: trigger() while an acquisition is running")
        status = DeviceStatus(self)

        def acquire() -> None:
            try:
                frames = self.backend.acquire()
                path = self.writer.write(frames)
                self._last_shape = tuple(int(n) for n in frames.shape)  # type: ignore[assignment]
                self.data_file.put(str(path), internal=True)
            except Exception as exc:  # reported through the status
                self._busy.release()
                status.set_exception(exc)
            else:
                self._busy.release()
                status.set_finished()

        threading.Thread(target=acquire, name=f"{self.name}-acquire", daemon=True).start()
        return status

    def describe(self) -> dict[str, dict[str, Any]]:
        """Data keys: ``data_file`` plus the external image ``(ny, nx, sy, sx)``."""
        desc = dict(super().describe())
        shape = self._last_shape or self.backend.frame_shape()
        desc[self.image_key] = {
            "source": self.backend.source,
            "dtype": "array",
            "dtype_numpy": np.dtype(self.backend.dtype).str,
            "shape": list(shape),
            "dims": list(IMAGE_DIMS),
            "external": "STREAM:",
        }
        return desc

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        """Yield the StreamResource/StreamDatum documents of finished acquisitions, once each."""
        yield from self.writer.collect_stream_docs()
