"""Keep a Merlin acquisition as MIB as well as HDF5.

tiled 0.2.20 (and bluesky-tiled-plugins' consolidators) can serve external
HDF5, TIFF, JPEG, CSV or raw bytes, but has no adapter for Merlin's MIB
format. So :class:`MIBKeepingWriter` writes each acquisition twice: the HDF5
file the catalog serves (exactly as :class:`~stemcal.devices.HDF5StreamWriter`,
same StreamResource/StreamDatum documents) and, next to it with the same
stem, a ``.mib`` + ``.hdr`` pair in the format of
:func:`stemcal.formats.mib.write_mib` (what ``libertem-live-mib-sim`` serves
and ``ctx.load('mib', path=...hdr)`` reads). The HDF5 dataset's attributes
``raw_file`` (the ``.hdr`` path) and ``raw_format`` (``"MIB"``) point to the
copy, and the detector's data key in the event descriptor gets
``raw_format: "MIB"`` (see :meth:`MIBKeepingWriter.data_key_info`).

:class:`MIBKeepingFrameWriter` does the same for live scans
(:class:`~stemcal.devices.writers.frame_stream.FrameStreamWriter`): the copy is
written when the scan ends, and ``raw_file`` is a fixed-size attribute made
before SWMR writing starts (which cannot create attributes), filled then.

The pixel values of the copy are exactly those received; its frame headers
are regenerated (LiberTEM-live hands over decoded frames, not the detector's
original headers). A copy is written only for a complete acquisition; an
interrupted one keeps its (incomplete) HDF5 file only.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...formats import write_mib
from .frame_stream import FrameStreamWriter
from .scan_file import HDF5StreamWriter

__all__ = ["MIBKeepingWriter", "MIBKeepingFrameWriter"]

#: Bytes reserved for the ``raw_file`` attribute of a live scan's dataset.
RAW_FILE_ATTR_BYTES = 4096

logger = logging.getLogger(__name__)


class _KeepsMIB:
    """What both MIB-keeping writers share: the format name, the data-key field, the last copy."""

    raw_format = "MIB"
    #: The ``.hdr`` of the last MIB copy written, or None.
    last_raw_file: Path | None = None

    def data_key_info(self) -> dict[str, Any]:
        """Extra fields for the image data key of the event descriptor."""
        return {"raw_format": self.raw_format}


class MIBKeepingWriter(_KeepsMIB, HDF5StreamWriter):
    """:class:`~stemcal.devices.HDF5StreamWriter` that also keeps each scan as ``.mib`` + ``.hdr``.

    Parameters are those of :class:`~stemcal.devices.HDF5StreamWriter`.
    Frames must be ``uint8`` or ``uint16`` (Merlin counter depths 1/6/12),
    as :func:`~stemcal.formats.mib.write_mib` writes.
    """

    def end(self, complete: bool = True) -> Path | None:
        """Write the MIB copy of a complete acquisition, then close its HDF5 file as usual."""
        with self._lock:
            f, path = self._file, self._path
            try:
                if f is not None and path is not None and complete:
                    ds = f[self.dataset]
                    if self._written == int(ds.attrs["frames_expected"]):
                        hdr = write_mib(path.with_suffix(".mib"), np.asarray(ds[0]))
                        ds.attrs["raw_file"] = str(hdr)
                        ds.attrs["raw_format"] = self.raw_format
                        self.last_raw_file = hdr
            finally:  # the HDF5 file is closed and documented even if the copy failed
                result = super().end(complete)
            return result


class MIBKeepingFrameWriter(_KeepsMIB, FrameStreamWriter):
    """:class:`~stemcal.devices.writers.frame_stream.FrameStreamWriter` that also keeps each complete
    scan as ``.mib`` + ``.hdr`` (frames ``uint8``/``uint16``).

    The dataset's ``raw_file`` attribute (the ``.hdr`` path, as bytes padded
    with NUL to :data:`RAW_FILE_ATTR_BYTES`; empty when no copy was written)
    and ``raw_format`` (``"MIB"``) point to the copy.
    """

    def _prepare_dataset(self, ds: Any) -> None:
        ds.attrs.create("raw_file", np.bytes_(b""), dtype=f"S{RAW_FILE_ATTR_BYTES}")
        ds.attrs["raw_format"] = self.raw_format

    def end(self, complete: bool = True) -> Path | None:
        """Write the MIB copy of a complete scan, then close its HDF5 file as usual."""
        with self._lock:
            f, path, shape = self._file, self._path, self._shape
            try:
                if f is not None and path is not None and shape is not None and complete \
                        and self._written == shape[0] * shape[1]:
                    ds = f[self.dataset]
                    hdr = write_mib(path.with_suffix(".mib"), np.asarray(ds[()]).reshape(shape))
                    name = str(hdr).encode()
                    if len(name) <= RAW_FILE_ATTR_BYTES:
                        ds.attrs["raw_file"] = np.bytes_(name)
                    else:
                        logger.warning("MIB copy %s: path too long for the raw_file attribute",
                                       hdr)
                    self.last_raw_file = hdr
            finally:  # the HDF5 file is closed even if the copy failed
                result = super().end(complete)
            return result
