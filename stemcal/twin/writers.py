"""Write 4D-STEM arrays ``(ny, nx, sy, sx)`` in formats that LiberTEM 0.16 reads.

Every writer validates its input, writes to a temporary name in the target
directory and moves the result into place with :func:`os.replace`, so a failure
leaves no half-written file behind.

* :func:`write_npy` -- a plain 4D NumPy ``.npy`` file.
* :func:`write_mib` -- Quantum Detectors Merlin ``.mib`` frames plus a ``.hdr``.
* :func:`write_hdf5` -- DECTRIS-style HDF5: a bitshuffle-LZ4 data file and a
  ``<stem>_master.h5`` file that reaches it through an :class:`h5py.ExternalLink`.
* :func:`write_dataset` -- dispatch on the file suffix.
* :func:`dataset_files`, :func:`check_destination` -- what a write will create, and
  whether it can, checked before any work; :func:`atomic_output`, :func:`write_text`
  -- the same all-or-nothing writing for other files (reports, truth JSON).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["write_npy", "write_mib", "write_hdf5", "write_dataset", "dataset_files",
           "check_destination", "atomic_output", "write_text"]

logger = logging.getLogger(__name__)

#: Header size of a single-chip (1x1) Merlin frame, in bytes.
MIB_HEADER_SIZE = 384
#: Where DECTRIS master files keep the acquisition counts.
_DECTRIS_SPECIFIC = "entry/instrument/detector/detectorSpecific"


def _check_4d(data: np.ndarray) -> np.ndarray:
    """Return ``data`` as an array after checking it is a non-empty numeric 4D stack."""
    arr = np.asarray(data)
    if arr.ndim != 4:
        raise ValueError(f"data must be 4D (ny, nx, sy, sx), got {arr.ndim}D shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"data must not have an empty axis, got shape {arr.shape}")
    if arr.dtype.kind not in "buif":
        raise ValueError(f"data must be numeric, got dtype {arr.dtype}")
    return arr


@contextlib.contextmanager
def _atomic(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    With ``keep_suffix`` the temporary name ends in ``path``'s suffix (for
    writers that choose the format by the name, e.g. matplotlib's ``savefig``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tail = path.suffix if keep_suffix else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{tail}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # disk full, file too large...: say which file
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("wrote %s", path)


def atomic_output(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Context manager: write to the yielded temporary path; it replaces ``path`` on success.

    The temporary file sits next to ``path`` and keeps its suffix; on any
    error it is removed, so ``path`` is either the old file or the complete new one.
    """
    return _atomic(Path(path), keep_suffix=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def dataset_files(path: str | os.PathLike) -> list[Path]:
    """The files :func:`write_dataset` ``(path, ...)`` creates, without writing anything.

    Raises
    ------
    ValueError
        For a suffix :func:`write_dataset` does not know.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return [path]
    if suffix in (".mib", ".hdr"):
        base = path.with_suffix("")
        return [base.with_suffix(".mib"), base.with_suffix(".hdr")]
    if suffix in (".h5", ".hdf5"):
        return [path, path.with_name(f"{path.stem}_master{path.suffix}")]
    raise ValueError(f"unknown suffix {suffix!r} for {path}: use .npy, .mib, .hdr, .h5 or .hdf5")


def check_destination(paths: list[Path]) -> None:
    """Check, before any work, that each of ``paths`` can be written.

    Each must not be an existing directory, and its nearest existing parent
    must be a writable directory (missing directories below it are created on
    writing).

    Raises
    ------
    ValueError
        Naming the path and the problem.
    """
    for path in map(Path, paths):
        if path.is_dir():
            raise ValueError(f"{path}: is a directory, not a file name")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"{path}: cannot create it ({parent} is not a directory)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{path}: cannot create it ({parent} is not writable)")


def write_npy(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write a 4D array as a ``.npy`` file.

    Parameters
    ----------
    path
        Destination file (conventionally ``*.npy``; the name is used as given).
    data
        Array of shape ``(ny, nx, sy, sx)``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``data`` is not a non-empty numeric 4D array.
    """
    arr = _check_4d(data)
    path = Path(path)
    with _atomic(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return path


def _to_mib_dtype(arr: np.ndarray) -> np.ndarray:
    """Convert to ``uint8``/``uint16``, refusing values that would change."""
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("MIB data must be integer-valued; got non-integer or "
                             "non-finite floats")
    elif arr.dtype.kind not in "biu":
        raise ValueError(f"MIB data must be unsigned integers, got dtype {arr.dtype}")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise ValueError(f"MIB data must lie in [0, 65535], got range [{lo}, {hi}]")
    return arr.astype(np.uint16)


def _mib_frame_header(seq: int, width: int, height: int, pixel: str, depth: int,
                      stamp: _dt.datetime) -> bytes:
    """One single-chip Merlin frame header, NUL-padded to :data:`MIB_HEADER_SIZE` bytes."""
    thresholds = ["1.000000E+1"] + ["0.000000E+0"] * 7
    dacs = ["000"] * 27
    fields = [
        "MQ1", f"{seq:06d}", f"{MIB_HEADER_SIZE:05d}", "01", f"{width:04d}", f"{height:04d}",
        pixel, "   1x1", "01", stamp.strftime("%Y-%m-%d %H:%M:%S.%f"), "0.001000",
        "0", "0", "0", *thresholds, "3RX", *dacs, "MQ1A",
        stamp.strftime("%Y-%m-%dT%H:%M:%S.%f000Z"), "1000000ns", str(depth),
    ]
    text = (",".join(fields) + ",").encode("ascii")  # the reader needs the trailing comma
    if len(text) > MIB_HEADER_SIZE:  # pragma: no cover - fixed-width fields
        raise AssertionError("MIB header too long")
    return text.ljust(MIB_HEADER_SIZE, b"\0")


def _mib_hdr_text(n_frames: int, per_trigger: int, depth: int, stamp: _dt.datetime) -> str:
    """Merlin ``.hdr`` acquisition header (tab-separated ``Key:\\tvalue`` lines)."""
    rows = [
        ("Time and Date Stamp (day, mnth, yr, hr, min, s)", stamp.strftime("%d/%m/%Y %H:%M:%S")),
        ("Chip ID", "stemcal-twin,-,-,-"),
        ("Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX)", "Medipix 3RX"),
        ("Assembly Size (NX1, 2X2)", "   1x1"),
        ("Chip Mode  (SPM, CSM, CM, CSCM)", "SPM"),
        ("Counter Depth (number)", str(depth)),
        ("Gain", "SLGM"),
        ("Active Counters", "Alternating"),
        ("Acquisition Type (Normal, Th_scan, Config)", "Normal"),
        ("Frames in Acquisition (Number)", str(n_frames)),
        ("Frames per Trigger (Number)", str(per_trigger)),
        ("Trigger Start (Positive, Negative, Internal)", "Rising Edge"),
        ("Trigger Stop (Positive, Negative, Internal)", "Internal"),
        ("Readout System", "stemcal digital twin"),
    ]
    return "HDR,\t\n" + "".join(f"{k}:\t{v}\n" for k, v in rows) + "End\t"


def write_mib(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write a 4D array as Quantum Detectors Merlin ``<stem>.mib`` + ``<stem>.hdr``.

    Each frame is a 384-byte single-chip ASCII header followed by big-endian
    pixels (``U08`` for ``uint8`` input, ``U16`` otherwise). The ``.hdr`` sets
    ``Frames per Trigger`` to the scan width ``nx`` (one trigger per scan line),
    from which LiberTEM infers the navigation shape ``(ny, nx)``.

    Parameters
    ----------
    path
        ``<stem>.mib`` or ``<stem>.hdr`` (either names the pair).
    data
        Array of shape ``(ny, nx, sy, sx)``: ``uint8``, ``uint16`` or any
        integer-valued array within ``[0, 65535]``.

    Returns
    -------
    Path
        The ``.hdr`` path (what to pass to ``ctx.load('mib', path=...)``).

    Raises
    ------
    ValueError
        If ``data`` is not 4D or does not fit ``uint16`` exactly.
    """
    arr = _to_mib_dtype(_check_4d(data))
    ny, nx, sy, sx = arr.shape
    pixel, depth = ("U08", 6) if arr.dtype == np.uint8 else ("U16", 12)
    frames = arr.reshape(ny * nx, sy, sx).astype(arr.dtype.newbyteorder(">"), copy=False)
    base = Path(path).with_suffix("")
    mib, hdr = base.with_suffix(".mib"), base.with_suffix(".hdr")
    stamp = _dt.datetime.now()
    with _atomic(hdr) as tmp_hdr, _atomic(mib) as tmp_mib:  # .mib lands first
        with open(tmp_mib, "wb") as fh:
            for i, frame in enumerate(frames):
                fh.write(_mib_frame_header(i + 1, sx, sy, pixel, depth, stamp))
                fh.write(np.ascontiguousarray(frame).tobytes())
        tmp_hdr.write_text(_mib_hdr_text(ny * nx, nx, depth, stamp), encoding="ascii")
    return hdr


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

    arr = _check_4d(data)
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
        spec = f.require_group(_DECTRIS_SPECIFIC)
        for key, value in (("ntrigger", ny), ("nimages", nx), ("x_pixels_in_detector", sx),
                           ("y_pixels_in_detector", sy)):
            spec[key] = np.uint32(value)
    with _atomic(master) as tmp_master, _atomic(data_path) as tmp_data:  # data lands first
        tmp_data.write_bytes(data_image.getbuffer())
        tmp_master.write_bytes(master_image.getbuffer())
    return master


def write_dataset(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write ``data`` in the format named by the suffix of ``path``.

    Parameters
    ----------
    path
        ``*.npy``, ``*.mib``/``*.hdr`` or ``*.h5``/``*.hdf5``.
    data
        Array of shape ``(ny, nx, sy, sx)``.

    Returns
    -------
    Path
        The path LiberTEM should load (see the individual writers).

    Raises
    ------
    ValueError
        For an unknown suffix or invalid data.
    """
    dataset_files(path)  # unknown suffix: ValueError before anything is written
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return write_npy(path, data)
    if suffix in (".mib", ".hdr"):
        return write_mib(path, data)
    return write_hdf5(path, data)
