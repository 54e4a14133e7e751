"""DECTRIS-style HDF5 (a bitshuffle-LZ4 data file and a master file linking to it), and any
HDF5 file holding a 3D or 4D stack: reader check and writer."""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import DatasetError, Probe, atomic, check_4d, check_dtype, check_sides, nav_from_counts

__all__ = ["probe_hdf5", "write_hdf5", "DEFAULT_HDF5_DATASET", "DECTRIS_SPECIFIC"]

#: Where DECTRIS (and :func:`write_hdf5`) keep the frames.
DEFAULT_HDF5_DATASET = "entry/data/data"
#: Where DECTRIS master files keep the acquisition counts (``ntrigger``, ``nimages``).
DECTRIS_SPECIFIC = "entry/instrument/detector/detectorSpecific"


def _frames_like(obj: Any) -> bool:
    """A 3D or 4D dataset, or 5D with a leading length-1 (event) axis."""
    import h5py

    return isinstance(obj, h5py.Dataset) and (
        obj.ndim in (3, 4) or (obj.ndim == 5 and obj.shape[0] == 1))


def _find_hdf5_dataset(f: Any, path: Path) -> str:
    """Name of ``entry/data/data`` or else of the first 3D/4D dataset in ``f``.

    A 5D dataset ``(1, ny, nx, sy, sx)`` (one event of
    :class:`stemcal.devices.HDF5StreamWriter`) counts as 4D.
    """
    if f.get(DEFAULT_HDF5_DATASET, getlink=True) is not None:
        try:
            obj = f[DEFAULT_HDF5_DATASET]
        except (KeyError, OSError) as exc:
            raise DatasetError(f"{path}: cannot open {DEFAULT_HDF5_DATASET} (broken external "
                               f"link or unreadable target): {exc}") from exc
        if _frames_like(obj):
            return DEFAULT_HDF5_DATASET
    found: list[str] = []

    def visit(name: str, _link: Any) -> bool | None:
        try:
            obj = f.get(name)
        except (KeyError, OSError):
            return None
        if _frames_like(obj):
            found.append(name)
            return True
        return None

    f.visititems_links(visit)
    if not found:
        raise DatasetError(f"{path}: no 3D or 4D dataset in this HDF5 file (nor a 5D one "
                           f"with a leading length-1 axis)")
    return found[0]


#: HDF5 filter id of bitshuffle (hdf5plugin, DECTRIS); with LZ4/zstd each chunk starts
#: with a 12-byte header: uncompressed size (uint64 BE) and block size (uint32 BE).
_BITSHUFFLE = 32008


def _check_bitshuffle_chunks(dset: Any, path: Path) -> None:
    """Check every bitshuffle-compressed chunk's header before any chunk is decoded.

    The bitshuffle filter trusts the uncompressed size a chunk states: a corrupt
    size makes it write past its buffer and crash the process (seen with
    hdf5plugin 6 / HDF5 2.0). Reading the 12 header bytes of each chunk is cheap
    (one small read per frame) and turns that crash into a :class:`DatasetError`.
    """
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    if not any(code == _BITSHUFFLE and len(cd) > 4 and cd[4] in (2, 3)
               for code, _flags, cd, _name in filters) or not hasattr(dset.id, "chunk_iter"):
        return
    expected = math.prod(dset.chunks) * dset.dtype.itemsize
    chunks: list[tuple[int, int]] = []
    dset.id.chunk_iter(lambda info: chunks.append((info.byte_offset, info.size)))
    fd = os.open(dset.file.filename, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for offset, n in chunks:
            head = os.pread(fd, 12, offset) if offset + n <= size and n >= 12 else b""
            if len(head) < 12 or int.from_bytes(head[:8], "big") != expected:
                raise DatasetError(f"{path}: compressed chunk at byte {offset} of "
                                   f"{dset.file.filename} is corrupt (bad bitshuffle header)")
    finally:
        os.close(fd)


def probe_hdf5(path: Path) -> Probe:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filters)

    try:
        with h5py.File(path, "r") as f:
            name = _find_hdf5_dataset(f, path)
            dset = f[name]
            check_dtype(path, dset.dtype)
            lead = 1 if dset.ndim == 5 else 0  # (1, ny, nx, sy, sx): one event of a run
            shape = tuple(dset.shape)[lead:]
            check_sides(path, f"dataset {name} shape", shape)
            if dset.chunks is not None:
                _check_bitshuffle_chunks(dset, path)
            nav_dims = len(shape) - 2
            if math.prod(shape[:nav_dims]) and math.prod(shape[nav_dims:]):
                # reading both ends catches missing chunks and filters
                dset[(0,) * (lead + nav_dims)]
                dset[(0,) * lead + (-1,) * nav_dims]
            nav = shape[:2] if nav_dims == 2 else None
            spec = f.get(DECTRIS_SPECIFIC)
            counted = isinstance(spec, h5py.Group) and {"ntrigger", "nimages"} <= set(spec)
            if nav is None and counted:
                per_line, lines = int(spec["nimages"][()]), int(spec["ntrigger"][()])
                nav = nav_from_counts(shape[0], per_line, lines)
    except DatasetError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError, ...
        raise DatasetError(f"{path}: not a readable HDF5 file "
                           f"({type(exc).__name__}: {exc})") from exc
    return Probe("hdf5", math.prod(shape[:nav_dims]), shape[nav_dims:], nav,
                  {"path": str(path), "ds_path": name}, nav_from_array=nav_dims == 2)


def write_hdf5(path: str | os.PathLike, data: np.ndarray, *, dataset: str = "entry/data/data",
               compression: str | None = "bslz4") -> Path:
    """Write a 4D array DECTRIS-style: a data file plus ``<stem>_master.h5``.

    The data file at ``path`` holds the frames as a 3D ``(ny*nx, sy, sx)``
    dataset, one frame per chunk, compressed with bitshuffle-LZ4
    (:class:`hdf5plugin.Bitshuffle`). The master file next to it holds an
    :class:`h5py.ExternalLink` at ``dataset`` to the data file (a relative link:
    keep the two files together) and, as DECTRIS master files do,
    ``entry/instrument/detector/detectorSpecific/{ntrigger,nimages}`` set to
    ``(ny, nx)``. LiberTEM 0.16 reads through the link, e.g.
    ``ctx.load('hdf5', path=master, ds_path=dataset, nav_shape=(ny, nx))``;
    readers in other processes (dask workers) need ``import hdf5plugin``.

    Parameters
    ----------
    path
        Data file, e.g. ``scan.h5``; the master becomes ``scan_master.h5``.
    data
        Array of shape ``(ny, nx, sy, sx)``.
    dataset
        Path of the dataset inside both files.
    compression
        ``"bslz4"`` (bitshuffle + LZ4) or ``None`` for uncompressed.

    Returns
    -------
    Path
        The master file, which is what LiberTEM should load.

    Raises
    ------
    ValueError
        If ``data`` is not 4D or ``compression`` is unknown.
    """
    import h5py

    arr = check_4d(data)
    if compression not in ("bslz4", None):
        raise ValueError(f"compression must be 'bslz4' or None, got {compression!r}")
    ny, nx, sy, sx = arr.shape
    data_path = Path(path)
    master = data_path.with_name(f"{data_path.stem}_master{data_path.suffix or '.h5'}")
    filters: dict = {}
    if compression == "bslz4":
        import hdf5plugin

        filters = dict(hdf5plugin.Bitshuffle(cname="lz4"))
    # Both files are built in memory and written with plain file I/O: HDF5 itself never
    # writes to the disk, so a full disk is an ordinary OSError (HDF5 1.14 can crash
    # closing a file it could not extend).
    data_image, master_image = io.BytesIO(), io.BytesIO()
    with h5py.File(data_image, "w") as f:
        f.create_dataset(dataset, data=arr.reshape(ny * nx, sy, sx), chunks=(1, sy, sx),
                         **filters)
    with h5py.File(master_image, "w") as f:
        f[dataset] = h5py.ExternalLink(data_path.name, dataset)
        spec = f.require_group(DECTRIS_SPECIFIC)
        for key, value in (("ntrigger", ny), ("nimages", nx), ("x_pixels_in_detector", sx),
                           ("y_pixels_in_detector", sy)):
            spec[key] = np.uint32(value)
    with atomic(master) as tmp_master, atomic(data_path) as tmp_data:  # data lands first
        tmp_data.write_bytes(data_image.getbuffer())
        tmp_master.write_bytes(master_image.getbuffer())
    return master
