"""The UDF that hands a live acquisition's frames to a sink as LiberTEM decodes them.

Standalone (NumPy and LiberTEM only): the DECTRIS receiver process loads it by
path, without importing :mod:`stemcal`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from libertem.udf.base import UDF

__all__ = ["FrameSinkUDF"]


class FrameSinkUDF(UDF):
    """Hand the frames, in the detector's dtype, to ``sink(start, frames)`` tile by tile.

    ``start`` is the flat scan position of the tile's first frame and
    ``frames`` the tile ``(k, sy, sx)`` of whole frames (LiberTEM-live's
    detectors give at most 1 MiB, or one frame), valid during the call only:
    LiberTEM decodes every tile of a partition into the same buffer, so no
    fresh memory is touched per block. Nothing is kept: the result
    ``frames`` counts the frames handed over. The sink runs where the
    partition is processed, so this UDF is for an inline executor
    (partitions in scan order, in this process).
    """

    def __init__(self, sink: Callable[[int, np.ndarray], None]) -> None:
        super().__init__(sink=sink)

    def get_result_buffers(self) -> dict[str, Any]:
        """One ``single`` counter."""
        return {"frames": self.buffer(kind="single", dtype=np.int64)}

    def get_preferred_input_dtype(self) -> Any:
        """Frames as the detector sends them (no float conversion)."""
        return self.USE_NATIVE_DTYPE

    def process_tile(self, tile: np.ndarray) -> None:
        """Hand the tile's frames to the sink.

        Raises
        ------
        ValueError
            The dataset hands over parts of frames (LiberTEM-live's detectors do not).
        """
        if tile.shape[1:] != tuple(self.meta.dataset_shape.sig):
            raise ValueError(f"FrameSinkUDF needs tiles of whole frames, got {tile.shape[1:]} "
                             f"of {tuple(self.meta.dataset_shape.sig)}")
        self.params.sink(int(self.meta.slice.origin[0]), tile)
        self.results.frames[:] += tile.shape[0]

    def merge(self, dest: Any, src: Any) -> None:
        """Add the counts."""
        dest.frames[:] += src.frames
