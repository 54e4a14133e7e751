"""A 4D-STEM file by its suffix: open it as a LiberTEM data set, or write one.

:func:`open_dataset` reads ``.npy`` (4D), Merlin ``.hdr``/``.mib`` and HDF5
(``.h5``/``.hdf5``) files. Before handing a file to LiberTEM it reads the
file's own metadata and checks it against the file size, so that truncated or
corrupt files, impossible navigation shapes and empty acquisitions fail with a
:class:`~stemcal.formats.common.DatasetError` instead of silently padded data
or a deep traceback. The checks read the file in this process: it must be
reachable here as well as from the executor's workers (which, for compressed
HDF5, need ``hdf5plugin`` imported, e.g. through the dask worker's
``--preload hdf5plugin``). :func:`write_dataset` writes each format.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import MAX_SIDE, DatasetError, Probe
from .dectris import probe_hdf5, write_hdf5
from .mib import probe_mib, write_mib
from .npy import probe_npy, write_npy

__all__ = ["open_dataset", "describe", "write_dataset", "dataset_files"]

logger = logging.getLogger(__name__)

_PROBES = {".npy": probe_npy, ".hdr": probe_mib, ".mib": probe_mib,
           ".h5": probe_hdf5, ".hdf5": probe_hdf5}


def _whole(n: Any) -> int:
    """``n`` as an int if it is an integer (or an integral float); else ``ValueError``."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, float, np.integer, np.floating)):
        raise TypeError(f"not a number: {n!r}")
    if not float(n).is_integer():
        raise ValueError(f"not an integer: {n!r}")
    return int(n)


def _resolve_nav(path: Path, probe: Probe, nav_shape: Any) -> tuple[int, int]:
    if probe.n_frames == 0:
        raise DatasetError(f"{path}: data set has zero frames")
    if math.prod(probe.sig_shape) == 0:
        raise DatasetError(f"{path}: frames are empty (shape {probe.sig_shape})")
    if nav_shape is None:
        if probe.nav_shape is None:
            raise DatasetError(f"{path}: the file does not give a 2D scan shape for its "
                               f"{probe.n_frames} frames; give the scan's shape (nav_shape=(ny, nx), "
                               "--nav-shape NY NX on the command line)")
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
    own = probe.nav_shape
    if probe.nav_from_array and own is not None and nav != tuple(own) and min(own) > 1:
        # a 2D scan stored as such: another shape would move frames to other positions
        # (a series stored as one row or column, (1, n) or (n, 1), may be given its shape)
        raise DatasetError(f"{path}: the file's array holds a {own[0]} x {own[1]} scan; nav_shape "
                           f"{nav} would put its frames at other scan positions (leave the scan "
                           "shape out, --nav-shape on the command line, to use the file's)")
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
        DECTRIS ``ntrigger``/``nimages``, a ``.mib`` without ``.hdr``). It may
        override a shape counted from a header (``.hdr``, DECTRIS counts), but not
        a 4D array's own scan axes, except a series stored as ``(1, n)`` or
        ``(n, 1)``.
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
        a ``nav_shape`` that does not match the frame count or an array's own scan
        axes, zero frames, or an unknown scan shape.
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
