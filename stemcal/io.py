"""Open 4D-STEM files as LiberTEM data sets, with one-line errors for bad input.

:func:`open_dataset` reads ``.npy`` (4D), Merlin ``.hdr``/``.mib`` and HDF5
(``.h5``/``.hdf5``) files. Before handing a file to LiberTEM it reads the
file's own metadata and checks it against the file size, so that truncated or
corrupt files, impossible navigation shapes and empty acquisitions fail with a
:class:`DatasetError` instead of silently padded data or a deep traceback.
The checks read the file in this process: it must be reachable here as well as
from the executor's workers (which, for compressed HDF5, need ``hdf5plugin``
imported, e.g. through the dask worker's ``--preload hdf5plugin``).
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DatasetError", "open_dataset", "describe"]

logger = logging.getLogger(__name__)

#: Where DECTRIS (and :func:`stemcal.twin.writers.write_hdf5`) keep the frames.
DEFAULT_HDF5_DATASET = "entry/data/data"
_DECTRIS_SPECIFIC = "entry/instrument/detector/detectorSpecific"
#: Largest scan or detector side accepted, pixels (as the CLI's shape options). A
#: file or ``nav_shape`` beyond it is refused before anything is allocated.
MAX_SIDE = 65536
#: Pixel dtypes the passes handle: integers of any width, float32 and float64.
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    """Refuse pixel types the passes cannot handle (bool, float16, complex, strings...)."""
    native = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
    if dtype.fields is not None or not (native.kind in "ui" or native in _FLOAT_DTYPES):
        raise DatasetError(f"{path}: pixel dtype {dtype.str!r} ({dtype}) is not supported "
                           f"(expected integers, float32 or float64)")


def _check_sides(path: Path, what: str, shape: tuple[int, ...]) -> None:
    """Refuse a scan or frame side above :data:`MAX_SIDE` (absurd or corrupt metadata)."""
    if any(n > MAX_SIDE for n in shape):
        raise DatasetError(f"{path}: {what} {tuple(shape)} exceeds the limit of {MAX_SIDE} "
                           f"pixels per side (corrupt metadata?)")


class DatasetError(ValueError):
    """A data file cannot be opened as a 4D-STEM data set; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


@dataclasses.dataclass(frozen=True)
class _Probe:
    """What a file says about itself, read without LiberTEM."""

    loader: str
    n_frames: int
    sig_shape: tuple[int, ...]
    nav_shape: tuple[int, ...] | None  # None: the file does not say (1D)
    load_kwargs: dict[str, Any]


def _nav_from_counts(n_frames: int, per_line: int,
                     lines: int | None = None) -> tuple[int, int] | None:
    """2D navigation shape from per-trigger counts, or None where they do not tell it."""
    if lines is None:
        if per_line <= 0 or n_frames % per_line:
            return None
        lines = n_frames // per_line
    if lines * per_line != n_frames or (n_frames > 1 and 1 in (lines, per_line)):
        return None  # per-frame or per-scan triggering: the scan width is unknown
    return (lines, per_line)


def _probe_npy(path: Path) -> _Probe:
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except Exception as exc:  # a corrupt header: ValueError, SyntaxError, TokenError, ...
        raise DatasetError(f"{path}: not a readable .npy file "
                           f"({type(exc).__name__}: {exc})") from exc
    if len(shape) != 4:
        raise DatasetError(f"{path}: expected a 4D array (ny, nx, sy, sx), "
                           f"got {len(shape)}D shape {tuple(shape)}")
    if dtype.hasobject or fortran:
        what = "object dtype" if dtype.hasobject else "Fortran order"
        raise DatasetError(f"{path}: .npy with {what} is not supported")
    _check_dtype(path, dtype)
    if dtype.kind == "f" and dtype.byteorder == ">":
        raise DatasetError(f"{path}: big-endian float pixels ({dtype.str!r}) in a .npy file are "
                           f"not supported by LiberTEM's reader; save them little-endian")
    if min(shape) < 0:
        raise DatasetError(f"{path}: negative size in the .npy header shape {tuple(shape)}")
    _check_sides(path, "shape", tuple(shape))
    expected = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise DatasetError(f"{path}: file is {size} bytes but its header needs {expected} "
                           f"(truncated or corrupt)")
    return _Probe("npy", shape[0] * shape[1], tuple(shape[2:]), tuple(shape[:2]),
                  {"path": str(path)})


def _read_hdr(path: Path) -> dict[str, str]:
    """Parse a Merlin ``.hdr`` file into a dict of ``Key -> value`` strings."""
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    if not lines or not lines[0].startswith("HDR"):
        raise DatasetError(f"{path}: not a Merlin .hdr file (first line must start with 'HDR')")
    fields = {}
    for line in lines[1:]:
        key, sep, value = line.partition("\t")
        if sep and key != "End":
            fields[key.rstrip(":")] = value.strip()
    return fields


def _mib_frame_layout(path: Path) -> tuple[int, tuple[int, int], np.dtype]:
    """Frame size in bytes, frame shape and pixel dtype from a ``.mib`` file's first header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).decode("ascii").split(",")
            if head[0] != "MQ1":
                raise ValueError("does not start with 'MQ1'")
            header_size = int(head[2])
            if not 64 <= header_size <= 2**20:
                raise ValueError(f"header size {header_size} outside 64..{2**20} bytes")
            fh.seek(0)
            fields = fh.read(header_size).decode("ascii").split(",")
            width, height, pixel = int(fields[4]), int(fields[5]), fields[6].upper()
    except (OSError, ValueError, IndexError) as exc:
        raise DatasetError(f"{path}: not a readable Merlin .mib frame header ({exc})") from exc
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise DatasetError(f"{path}: MIB frame header gives a {height} x {width} frame "
                           f"(each side must be 1..{MAX_SIDE}; corrupt header?)")
    if pixel not in ("U08", "U16", "U32"):
        raise DatasetError(f"{path}: MIB pixel type {pixel!r} is not supported (U08/U16/U32)")
    dtype = np.dtype(f">u{int(pixel[1:]) // 8}")
    return header_size + width * height * dtype.itemsize, (height, width), dtype


def _probe_mib(path: Path) -> _Probe:
    if path.suffix.lower() == ".hdr":
        hdr: dict[str, str] | None = _read_hdr(path)
        files = sorted(Path(p) for p in glob.glob(glob.escape(str(path.with_suffix(""))) + "*.mib"))
        if not files:
            raise DatasetError(f"{path}: no .mib file next to this .hdr")
        kwargs: dict[str, Any] = {"path": str(path)}
    else:
        sibling = path.with_suffix(".hdr")
        hdr = _read_hdr(sibling) if sibling.is_file() else None
        files = [path]
        kwargs = {"path": str(path), "disable_glob": True}
    n_frames, layout = 0, None
    for f in files:
        this = _mib_frame_layout(f) if f.stat().st_size else None
        if this is None:
            raise DatasetError(f"{f}: empty .mib file (zero frames)")
        if layout is not None and this != layout:
            raise DatasetError(f"{f}: frame size or type differs from {files[0].name}")
        layout = this
        size = f.stat().st_size
        if size % layout[0]:
            raise DatasetError(f"{f}: {size} bytes is not a whole number of {layout[0]}-byte "
                               f"frames (truncated or corrupt)")
        n_frames += size // layout[0]
    assert layout is not None
    nav = None
    if hdr is not None:
        try:
            declared = int(hdr["Frames in Acquisition (Number)"])
            per_trigger = int(hdr["Frames per Trigger (Number)"])
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"{path}: .hdr lacks a valid frame count ({exc!r})") from exc
        if declared != n_frames:
            raise DatasetError(f"{path}: .hdr declares {declared} frames but the .mib data holds "
                               f"{n_frames} (truncated or mismatched)")
        if "ScanX" in hdr and "ScanY" in hdr:
            try:
                scan_x, scan_y = int(hdr["ScanX"]), int(hdr["ScanY"])
            except ValueError as exc:
                raise DatasetError(f"{path}: .hdr has an invalid ScanX/ScanY ({exc})") from exc
            nav = _nav_from_counts(n_frames, scan_x, scan_y)
        else:
            nav = _nav_from_counts(n_frames, per_trigger)
    return _Probe("mib", n_frames, layout[1], nav, kwargs)


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


def _probe_hdf5(path: Path) -> _Probe:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filters)

    try:
        with h5py.File(path, "r") as f:
            name = _find_hdf5_dataset(f, path)
            dset = f[name]
            _check_dtype(path, dset.dtype)
            lead = 1 if dset.ndim == 5 else 0  # (1, ny, nx, sy, sx): one event of a run
            shape = tuple(dset.shape)[lead:]
            _check_sides(path, f"dataset {name} shape", shape)
            if dset.chunks is not None:
                _check_bitshuffle_chunks(dset, path)
            nav_dims = len(shape) - 2
            if math.prod(shape[:nav_dims]) and math.prod(shape[nav_dims:]):
                # reading both ends catches missing chunks and filters
                dset[(0,) * (lead + nav_dims)]
                dset[(0,) * lead + (-1,) * nav_dims]
            nav = shape[:2] if nav_dims == 2 else None
            spec = f.get(_DECTRIS_SPECIFIC)
            counted = isinstance(spec, h5py.Group) and {"ntrigger", "nimages"} <= set(spec)
            if nav is None and counted:
                per_line, lines = int(spec["nimages"][()]), int(spec["ntrigger"][()])
                nav = _nav_from_counts(shape[0], per_line, lines)
    except DatasetError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError, ...
        raise DatasetError(f"{path}: not a readable HDF5 file "
                           f"({type(exc).__name__}: {exc})") from exc
    return _Probe("hdf5", math.prod(shape[:nav_dims]), shape[nav_dims:], nav,
                  {"path": str(path), "ds_path": name})


_PROBES = {".npy": _probe_npy, ".hdr": _probe_mib, ".mib": _probe_mib,
           ".h5": _probe_hdf5, ".hdf5": _probe_hdf5}


def _whole(n: Any) -> int:
    """``n`` as an int if it is an integer (or an integral float); else ``ValueError``."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, float, np.integer, np.floating)):
        raise TypeError(f"not a number: {n!r}")
    if not float(n).is_integer():
        raise ValueError(f"not an integer: {n!r}")
    return int(n)


def _resolve_nav(path: Path, probe: _Probe, nav_shape: Any) -> tuple[int, int]:
    if probe.n_frames == 0:
        raise DatasetError(f"{path}: data set has zero frames")
    if math.prod(probe.sig_shape) == 0:
        raise DatasetError(f"{path}: frames are empty (shape {probe.sig_shape})")
    if nav_shape is None:
        if probe.nav_shape is None:
            raise DatasetError(f"{path}: the file does not give a 2D scan shape for its "
                               f"{probe.n_frames} frames; pass nav_shape=(ny, nx)")
        return probe.nav_shape  # type: ignore[return-value]
    try:
        nav = tuple(_whole(n) for n in nav_shape)
    except (TypeError, ValueError, OverflowError):
        raise DatasetError(f"nav_shape must be two positive integers, got {nav_shape!r}") from None
    if len(nav) != 2 or min(nav) <= 0:
        raise DatasetError(f"nav_shape must be two positive integers (ny, nx), got {nav_shape!r}")
    if max(nav) > MAX_SIDE:
        raise DatasetError(f"nav_shape {nav} exceeds the limit of {MAX_SIDE} scan pixels per side")
    if math.prod(nav) != probe.n_frames:
        raise DatasetError(f"{path}: nav_shape {nav} has {math.prod(nav)} positions but the file "
                           f"holds {probe.n_frames} frames")
    return nav  # type: ignore[return-value]


def open_dataset(ctx: Any, path: str | os.PathLike, *, nav_shape: tuple[int, int] | None = None,
                 sig_dims: int = 2) -> Any:
    """Open a 4D-STEM file as a LiberTEM data set with 2D navigation and 2D frames.

    Parameters
    ----------
    ctx
        A :class:`libertem.api.Context`.
    path
        ``*.npy`` (a 4D array), ``*.hdr``/``*.mib`` (Merlin) or ``*.h5``/``*.hdf5``
        (``entry/data/data`` if present, else the first 3D/4D dataset; external
        links are followed, so DECTRIS master files work).
    nav_shape
        Scan shape ``(ny, nx)``; its product must equal the number of frames.
        Required where the file does not give a 2D scan shape (3D HDF5 without
        DECTRIS ``ntrigger``/``nimages``, a ``.mib`` without ``.hdr``).
    sig_dims
        Number of detector dimensions; only 2 is supported.

    Returns
    -------
    libertem.io.dataset.base.DataSet
        The initialised data set.

    Raises
    ------
    DatasetError
        With a one-line message, for a missing file, unknown suffix, unreadable,
        truncated or corrupt file, a non-4D ``.npy``, HDF5 without a 3D/4D dataset,
        a ``nav_shape`` that does not match the frame count, zero frames, or an
        unknown scan shape.
    """
    path = Path(path)
    if sig_dims != 2:
        raise DatasetError(f"sig_dims={sig_dims} is not supported; frames must be 2D")
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file")
    probe_fn = _PROBES.get(path.suffix.lower())
    if probe_fn is None:
        raise DatasetError(f"{path}: unknown suffix {path.suffix!r} "
                           f"(expected one of {', '.join(sorted(_PROBES))})")
    probe = probe_fn(path)
    if len(probe.sig_shape) != 2:
        raise DatasetError(f"{path}: frames must be 2D, got shape {probe.sig_shape}")
    nav = _resolve_nav(path, probe, nav_shape)
    logger.debug("loading %s with %s loader, nav_shape=%s", path, probe.loader, nav)
    try:
        ds = ctx.load(probe.loader, nav_shape=nav, **probe.load_kwargs)
    except Exception as exc:  # LiberTEM raises DataSetException, ValueError, OSError, ...
        raise DatasetError(f"{path}: LiberTEM cannot load it "
                           f"({type(exc).__name__}: {exc})") from exc
    if tuple(ds.shape.nav) != nav or tuple(ds.shape.sig) != probe.sig_shape:
        raise DatasetError(f"{path}: LiberTEM read shape {tuple(ds.shape)}, expected "
                           f"{nav + tuple(probe.sig_shape)}")
    return ds


def describe(ds: Any) -> dict[str, Any]:
    """Summarise a LiberTEM data set.

    Parameters
    ----------
    ds
        A LiberTEM data set, e.g. from :func:`open_dataset`.

    Returns
    -------
    dict
        ``nav_shape`` and ``sig_shape`` (tuples of int), ``dtype`` (native-order
        name such as ``"uint16"``) and ``n_frames`` (int).
    """
    nav, sig = tuple(int(n) for n in ds.shape.nav), tuple(int(n) for n in ds.shape.sig)
    return {"nav_shape": nav, "sig_shape": sig,
            "dtype": np.dtype(ds.dtype).newbyteorder("=").name, "n_frames": math.prod(nav)}
