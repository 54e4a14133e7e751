"""Frames of a contiguous HDF5 dataset read by mapping the file, block by block.

:class:`~stemcal.devices.FrameStreamWriter` stores a live scan's frames as
one contiguous, unfiltered HDF5 dataset, allocated in full when the scan
begins, and writes them with ``os.pwrite``. A reader that maps the file's
pages gets the frames straight from the page cache; HDF5's read copies each
frame once more (~0.02 ms of system time per 256x256 uint16 frame on the
development machine, a fifth to a quarter of the live chain's system time). Each block is
mapped only while it is used, so the mapped pages do not pile up in the
reader's resident memory over a scan.
"""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FrameMap"]

log = logging.getLogger(__name__)


class FrameMap:
    """Read frames ``[i, j)`` of a contiguous HDF5 dataset by mapping its file.

    Make one with :meth:`open`, which returns None where the dataset is not
    stored that way (chunked, filtered, not allocated, or the file shorter
    than the dataset); then read through HDF5.
    """

    def __init__(self, fd: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._fd = fd
        self._offset = offset
        self.shape = shape
        self.dtype = dtype
        self._frame_bytes = int(np.prod(shape[1:])) * dtype.itemsize

    @classmethod
    def open(cls, path: Path, ds: Any) -> "FrameMap | None":
        """A map of ``ds`` (an h5py dataset of frames ``(n, sy, sx)`` in ``path``), or None."""
        import h5py

        try:
            plist = ds.id.get_create_plist()
            offset = ds.id.get_offset()
            if (ds.ndim != 3 or plist.get_layout() != h5py.h5d.CONTIGUOUS
                    or plist.get_nfilters() or offset is None or ds.dtype.hasobject):
                return None
            shape = tuple(int(n) for n in ds.shape)
            size = int(np.prod(shape)) * ds.dtype.itemsize
            fd = os.open(path, os.O_RDONLY)
        except (OSError, ValueError) as exc:
            log.debug("reading %s through HDF5: %s", path, exc)
            return None
        if size == 0 or os.fstat(fd).st_size < int(offset) + size:
            os.close(fd)  # a file shorter than its dataset: HDF5 says what is missing
            return None
        return cls(fd, int(offset), shape, np.dtype(ds.dtype))

    def frames(self, i: int, j: int) -> np.ndarray:
        """Frames ``i .. j-1``, read-only; the block is unmapped when the array is dropped.

        Raises
        ------
        ValueError
            A range outside the dataset, or a file that has become shorter
            than the dataset (reading such pages would kill the process).
        """
        n = self.shape[0]
        if not 0 <= i <= j <= n:
            raise ValueError(f"frames {i}..{j} are outside the dataset's {n}")
        start = self._offset + i * self._frame_bytes
        length = (j - i) * self._frame_bytes
        if length == 0:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        if os.fstat(self._fd).st_size < start + length:
            raise ValueError(f"the file is shorter than its frames {i}..{j}: it was cut")
        base = start - start % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(self._fd, length + (start - base), access=mmap.ACCESS_READ, offset=base)
        arr = np.frombuffer(m, dtype=self.dtype, count=length // self.dtype.itemsize,
                            offset=start - base)   # holds the map; unmapped with it
        return arr.reshape((j - i,) + self.shape[1:])

    def close(self) -> None:
        """Close the file (maps still referenced stay valid until dropped)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
