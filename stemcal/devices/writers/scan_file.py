"""The writer of triggered scans: one HDF5 file per acquisition, one 4D event."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from event_model import StreamRange, compose_stream_resource

from .base import HDF5WriterBase, scan_shape

__all__ = ["HDF5StreamWriter", "IMAGE_DIMS"]

logger = logging.getLogger(__name__)

#: Names of the image axes, in order (the event axis ``time`` is added by consumers).
IMAGE_DIMS = ("scan_y", "scan_x", "detector_y", "detector_x")


class HDF5StreamWriter(HDF5WriterBase):
    """Write each acquisition to its own HDF5 file and describe it with stream documents.

    Each file holds one dataset of shape ``(1, ny, nx, sy, sx)``, one frame per
    chunk; the leading length-1 axis is the event axis, along which a
    consumer (tiled's HDF5 consolidator) joins the files of a run. Frames are
    written as they arrive (:meth:`begin`, :meth:`write_frames`, :meth:`end`)
    into a hidden temporary file, renamed to its final name when it is closed.
    The dataset's attributes say how much it holds: ``frames_expected``
    (``ny * nx``), ``frames_written`` (the first that many frames in scan
    order; unwritten frames read as 0) and ``complete``.

    Parameters
    ----------
    write_dir : path
        Directory for the files (created at :meth:`open`).
    dataset : str
        Dataset path inside each file.
    compression : {None, 'bslz4'}
        ``'bslz4'`` needs :mod:`hdf5plugin` imported by every reader.
    """

    def __init__(self, write_dir: str | os.PathLike, *, dataset: str = "/entry/data/data",
                 compression: str | None = None) -> None:
        if compression not in (None, "bslz4"):
            raise ValueError(f"compression must be None or 'bslz4', got {compression!r}")
        super().__init__(write_dir, dataset=dataset)
        self.compression = compression

    def begin(self, shape: tuple[int, int, int, int], dtype: Any) -> None:
        """Create the (temporary) file of one acquisition of ``shape`` ``(ny, nx, sy, sx)``.

        Raises
        ------
        RuntimeError
            Before :meth:`open`, or while another acquisition's file is open.
        ValueError
            ``shape`` is not four positive integers.
        """
        import h5py

        shape = scan_shape(shape)
        filters: dict[str, Any] = {}
        if self.compression == "bslz4":
            import hdf5plugin

            filters = dict(hdf5plugin.Bitshuffle(cname="lz4"))
        with self._lock:
            self._check_can_begin()
            path = self._next_path()
            f = h5py.File(self._tmp(path), "w")
            try:
                ds = f.create_dataset(self.dataset, shape=(1, *shape), dtype=np.dtype(dtype),
                                      chunks=(1, 1, 1) + shape[2:], fillvalue=0, **filters)
                ds.attrs["dims"] = ["time", *IMAGE_DIMS]
                ds.attrs["frames_expected"] = shape[0] * shape[1]
                ds.attrs["frames_written"] = 0
                ds.attrs["complete"] = False
            except BaseException:
                f.close()
                self._tmp(path).unlink(missing_ok=True)
                raise
            self._file, self._path, self._shape, self._written = f, path, shape, 0

    def write_frames(self, start: int, frames: np.ndarray) -> None:
        """Write ``frames`` ``(k, sy, sx)`` at flat scan positions ``start .. start + k - 1``."""
        frames = np.asarray(frames)
        with self._lock:
            k = self._check_frames(start, frames)
            nx = self._shape[1]
            ds = self._file[self.dataset]
            i = 0
            while i < k:  # one contiguous piece of a scan row at a time
                y, x = divmod(start + i, nx)
                m = min(nx - x, k - i)
                ds[0, y, x:x + m] = frames[i:i + m]
                i += m
            self._written += k

    def end(self, complete: bool = True) -> Path | None:
        """Close the acquisition's file and queue its StreamResource + StreamDatum.

        Parameters
        ----------
        complete : bool
            Whether the acquisition ended normally; the file is marked
            complete only if also every frame was written.

        Returns
        -------
        Path or None
            The file (absolute path); None, and no file, if no frame was
            written (or no acquisition was begun).
        """
        with self._lock:
            path = self._close_file(complete)
            if path is None:
                return None
            tmp = self._tmp(path)
            if self._written == 0:
                tmp.unlink(missing_ok=True)
                return None
            os.replace(tmp, path)
            if not self.is_open:  # closed meanwhile: keep the file, nobody collects documents
                logger.warning("acquisition file %s written after the writer was closed", path)
                return path
            bundle = compose_stream_resource(
                mimetype=self.mimetype, uri="file://localhost" + path.as_posix(),
                data_key=self._data_key, parameters={"dataset": self.dataset,
                                                     "chunk_shape": (1,),
                                                     # closed once written: no SWMR, so the
                                                     # catalog and the calibration callback
                                                     # can open the file at the same time
                                                     "swmr": False})
            datum = bundle.compose_stream_datum(indices=StreamRange(start=0, stop=1))
            self._pending += [("stream_resource", bundle.stream_resource_doc),
                              ("stream_datum", datum)]
            return path

    def write(self, frames: np.ndarray) -> Path:
        """Write a whole acquisition ``frames`` (ny, nx, sy, sx) to a new file at once.

        Returns
        -------
        Path
            The absolute path of the new file (its documents are queued).
        """
        if not self.is_open:
            raise RuntimeError("write() before open()")
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must be 4D (ny, nx, sy, sx), got shape {frames.shape}")
        self.begin(frames.shape, frames.dtype)
        try:
            self.write_frames(0, frames.reshape((-1,) + frames.shape[2:]))
        except BaseException:
            self._abandon()
            raise
        path = self.end(complete=True)
        assert path is not None
        return path

    def collect_stream_docs(self) -> Iterator[tuple[str, dict]]:
        """Yield the queued documents (each once), resource before its datum."""
        with self._lock:
            pending, self._pending = self._pending, []
        yield from pending

    def discard(self) -> list[Path]:
        """Delete the files of queued (uncollected) documents, drop the documents.

        For an acquisition that is repeated (a paused scan taken again on
        resume): its partial file would otherwise be left unreferenced.

        Returns
        -------
        list of Path
            The files deleted.
        """
        with self._lock:
            pending, self._pending = self._pending, []
        gone = []
        for name, doc in pending:
            if name == "stream_resource":
                path = Path(doc["uri"].removeprefix("file://localhost"))
                path.unlink(missing_ok=True)
                gone.append(path)
        return gone

    def close(self) -> None:
        """Stop writing: end an open file (incomplete) and drop queued documents.

        Files stay on disk; a file whose documents were dropped is logged.
        """
        with self._lock:
            self.end(complete=False)
            for name, doc in self._pending:
                if name == "stream_resource":
                    logger.info("stream documents of %s dropped uncollected", doc["uri"])
            self._name = self._data_key = None
            self._pending = []

    def _abandon(self) -> None:
        """Close and delete the current file without documents."""
        with self._lock:
            f, path, self._file = self._file, self._path, None
            if f is not None and path is not None:
                f.close()
                self._tmp(path).unlink(missing_ok=True)

    @staticmethod
    def _tmp(path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp")
