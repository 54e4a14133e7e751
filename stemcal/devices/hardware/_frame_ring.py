"""A ring of frame slots in shared memory: how frames cross from a receiver process.

The DECTRIS receiver process (``_dectris_receiver.py``) copies each tile of
frames into a free slot and announces it (slot, flat scan position, count);
the backend hands that slot's frames on and gives the slot back. The slots
live in one file (in ``/dev/shm`` where there is one) that both processes map;
the backend removes its name once the receiver has it open, so nothing is
left behind when either process dies. The ring's memory is reused for every
tile: a scan costs no fresh memory, whatever its size.

Standalone (NumPy only): the receiver loads it by path, without importing
:mod:`stemcal`.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FrameRing", "RingLayout"]

#: Bytes of frames per slot (at least one frame): a tile of LiberTEM-live's (at most 1 MiB
#: or one frame) fits one slot.
SLOT_BYTES = 2**20
#: Slots in a ring.
SLOTS = 16


@dataclass(frozen=True)
class RingLayout:
    """Where a ring is and how it is cut: ``slots`` slots of ``slot_frames`` frames
    ``frame_shape`` of ``dtype`` (a NumPy dtype string), in the file ``path``."""

    path: str
    slots: int
    slot_frames: int
    frame_shape: tuple[int, int]
    dtype: str

    @property
    def slot_bytes(self) -> int:
        return self.slot_frames * int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RingLayout":
        return cls(str(d["path"]), int(d["slots"]), int(d["slot_frames"]),
                   (int(d["frame_shape"][0]), int(d["frame_shape"][1])), str(d["dtype"]))


class FrameRing:
    """A mapped ring of ``layout.slots`` slots of frames.

    :meth:`create` makes the file and maps it; :meth:`open` maps an existing
    one (the other process). :meth:`slot` is a view of the first ``k`` frames
    of a slot, ``(k, sy, sx)``.
    """

    def __init__(self, layout: RingLayout) -> None:
        self.layout = layout
        with open(layout.path, "r+b") as fh:
            self._map = mmap.mmap(fh.fileno(), layout.slots * layout.slot_bytes)
        self._frames = np.frombuffer(self._map, dtype=np.dtype(layout.dtype)).reshape(
            (layout.slots, layout.slot_frames) + tuple(layout.frame_shape))

    @classmethod
    def create(cls, frame_shape: tuple[int, int], dtype: Any, *, slots: int = SLOTS,
               slot_bytes: int = SLOT_BYTES) -> "FrameRing":
        """A new ring file (``/dev/shm`` if there is one, else the temporary directory)."""
        dtype = np.dtype(dtype)
        frame_bytes = int(np.prod(frame_shape)) * dtype.itemsize
        where = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="stemcal-ring-", dir=where)
        layout = RingLayout(path, int(slots), max(1, int(slot_bytes) // frame_bytes),
                            (int(frame_shape[0]), int(frame_shape[1])), dtype.str)
        try:
            os.ftruncate(fd, layout.slots * layout.slot_bytes)
        finally:
            os.close(fd)
        return cls(layout)

    def slot(self, index: int, k: int) -> np.ndarray:
        """The first ``k`` frames of slot ``index``."""
        return self._frames[index, :k]

    def unlink(self) -> None:
        """Remove the file's name (the mappings stay valid)."""
        Path(self.layout.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Unmap (views of the slots must be gone)."""
        self._frames = None  # type: ignore[assignment]
        try:
            self._map.close()
        except BufferError:  # a view is still alive; the mapping goes with it
            pass
