"""NumPy ``.npy`` files holding one 4D array ``(ny, nx, sy, sx)``: reader check and writer."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .common import DatasetError, Probe, atomic, check_4d, check_dtype, check_sides

__all__ = ["probe_npy", "write_npy"]


def probe_npy(path: Path) -> Probe:
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
    check_dtype(path, dtype)
    if dtype.kind == "f" and dtype.byteorder == ">":
        raise DatasetError(f"{path}: big-endian float pixels ({dtype.str!r}) in a .npy file are "
                           f"not supported by LiberTEM's reader; save them little-endian")
    if min(shape) < 0:
        raise DatasetError(f"{path}: negative size in the .npy header shape {tuple(shape)}")
    check_sides(path, "shape", tuple(shape))
    expected = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise DatasetError(f"{path}: file is {size} bytes but its header needs {expected} "
                           f"(truncated or corrupt)")
    return Probe("npy", shape[0] * shape[1], tuple(shape[2:]), tuple(shape[:2]),
                  {"path": str(path)}, nav_from_array=True)


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
    arr = check_4d(data)
    path = Path(path)
    with atomic(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return path
