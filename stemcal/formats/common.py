"""What every format shares: the one-line error, what a file says of itself, atomic writing.

Readers check a file's own metadata against its size before LiberTEM sees it
(a :class:`Probe`), so truncated or corrupt files fail with a
:class:`DatasetError`; writers write to a temporary name next to the target
and move it into place (:func:`atomic`), so a failure leaves no half file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DatasetError", "Probe", "MAX_SIDE", "check_dtype", "check_sides", "nav_from_counts",
           "check_4d", "atomic", "atomic_output", "write_text", "check_destination"]

logger = logging.getLogger(__name__)

#: Largest scan or detector side accepted, pixels (as the CLI's shape options). A
#: file or ``nav_shape`` beyond it is refused before anything is allocated.
MAX_SIDE = 65536
#: Pixel dtypes the passes handle: integers of any width, float32 and float64.
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class DatasetError(ValueError):
    """A data file cannot be opened as a 4D-STEM data set; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


@dataclasses.dataclass(frozen=True)
class Probe:
    """What a file says about itself, read without LiberTEM."""

    loader: str
    n_frames: int
    sig_shape: tuple[int, ...]
    nav_shape: tuple[int, ...] | None  # None: the file does not say (1D)
    load_kwargs: dict[str, Any]
    #: The scan shape is the array's own two scan axes (a 4D ``.npy`` or HDF5 dataset), not
    #: a count from a header: another shape with the same number of frames would put
    #: frames at other scan positions.
    nav_from_array: bool = False


def check_dtype(path: Path, dtype: np.dtype) -> None:
    """Refuse pixel types the passes cannot handle (bool, float16, complex, strings...)."""
    native = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
    if dtype.fields is not None or not (native.kind in "ui" or native in _FLOAT_DTYPES):
        raise DatasetError(f"{path}: pixel dtype {dtype.str!r} ({dtype}) is not supported "
                           f"(expected integers, float32 or float64)")


def check_sides(path: Path, what: str, shape: tuple[int, ...]) -> None:
    """Refuse a scan or frame side above :data:`MAX_SIDE` (absurd or corrupt metadata)."""
    if any(n > MAX_SIDE for n in shape):
        raise DatasetError(f"{path}: {what} {tuple(shape)} exceeds the limit of {MAX_SIDE} "
                           f"pixels per side (corrupt metadata?)")


def nav_from_counts(n_frames: int, per_line: int,
                     lines: int | None = None) -> tuple[int, int] | None:
    """2D navigation shape from per-trigger counts, or None where they do not tell it."""
    if lines is None:
        if per_line <= 0 or n_frames % per_line:
            return None
        lines = n_frames // per_line
    if lines * per_line != n_frames or (n_frames > 1 and 1 in (lines, per_line)):
        return None  # per-frame or per-scan triggering: the scan width is unknown
    return (lines, per_line)


def check_4d(data: np.ndarray) -> np.ndarray:
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
def atomic(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
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
    return atomic(Path(path), keep_suffix=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


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
