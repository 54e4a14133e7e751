"""What the detector's HDF5 writers share: directory, file names, queued documents, state."""
from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HDF5WriterBase", "scan_shape"]


def scan_shape(shape: Any) -> tuple[int, int, int, int]:
    """``shape`` as four positive ints ``(ny, nx, sy, sx)``; ``ValueError`` otherwise."""
    out = tuple(int(n) for n in shape)
    if len(out) != 4 or min(out) < 1:
        raise ValueError(f"shape must be (ny, nx, sy, sx) > 0, got {out}")
    return out  # type: ignore[return-value]


class HDF5WriterBase:
    """One HDF5 file per acquisition in ``write_dir``, dataset ``dataset``, documents queued.

    Subclasses write the files; this holds the state both kinds keep: the
    device name and data key given at :meth:`open`, the queue of stream
    documents waiting to be collected, the frames written to the current
    file, and a lock around all of it.
    """

    mimetype = "application/x-hdf5"

    def __init__(self, write_dir: str | os.PathLike, *, dataset: str = "/entry/data/data") -> None:
        self.write_dir = Path(write_dir)
        self.dataset = dataset
        self._name: str | None = None
        self._data_key: str | None = None
        self._pending: list[tuple[str, dict]] = []
        self._count = 0
        self._lock = threading.RLock()
        self._file: Any = None          # the open h5py.File of the current acquisition
        self._path: Path | None = None  # its final name
        self._shape: tuple[int, int, int, int] | None = None
        self._written = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.write_dir)!r}, dataset={self.dataset!r})"

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` was called since the last ``close``."""
        return self._data_key is not None

    @property
    def frames_written(self) -> int:
        """Frames written to the current (or last) acquisition's file."""
        return self._written

    @property
    def has_pending(self) -> bool:
        """Whether stream documents wait to be collected."""
        with self._lock:
            return bool(self._pending)

    def open(self, name: str, data_key: str) -> None:
        """Start writing files named after ``name`` for the data key ``data_key``."""
        self.write_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._name, self._data_key = name, data_key
            self._pending = []

    def _next_path(self, tag: str = "") -> Path:
        """A new, unique absolute file name ``<name>_<tag><count>_<random>.h5``."""
        self._count += 1
        return (self.write_dir
                / f"{self._name}_{tag}{self._count:05d}_{secrets.token_hex(4)}.h5").resolve()

    def _check_frames(self, start: int, frames: np.ndarray) -> int:
        """How many frames ``frames`` ``(k, sy, sx)`` at flat position ``start`` hold, after
        checking they fit the open acquisition (call with the lock held)."""
        if self._file is None or self._shape is None:
            raise RuntimeError("write_frames() outside begin()/end()")
        ny, nx, sy, sx = self._shape
        k = frames.shape[0] if frames.ndim == 3 else -1
        if frames.shape[1:] != (sy, sx) or k < 0 or not 0 <= start <= ny * nx - k:
            raise ValueError(f"frames {frames.shape} at {start} do not fit a scan "
                             f"{ny}x{nx} of {sy}x{sx} frames")
        return k

    def _close_file(self, complete: bool) -> Path | None:
        """Close the acquisition's file with its final attributes (``frames_written``;
        ``complete`` only if every frame came); its path, or None if none was open (call with
        the lock held)."""
        f, path, self._file = self._file, self._path, None
        if f is None or path is None:
            return None
        try:
            ds = f[self.dataset]
            ds.attrs["frames_written"] = self._written
            ds.attrs["complete"] = bool(complete
                                        and self._written == int(ds.attrs["frames_expected"]))
            ds.flush()
        finally:
            f.close()
        return path

    def _check_can_begin(self) -> None:
        """``RuntimeError`` before :meth:`open`, or while an acquisition's file is open."""
        if not self.is_open:
            raise RuntimeError("begin() before open()")
        if self._file is not None:
            raise RuntimeError("begin() while another acquisition's file is open")
