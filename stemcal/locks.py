"""Advisory file locks (``flock``) that a process holds for as long as it lives.

A lock held through an open file descriptor ends with the process, also with
``kill -9``: the journals of the catalog courier (:mod:`stemcal.catalog.journal`)
and the spare processes (:mod:`stemcal.spares`) use that to tell a living owner
from one that has gone.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["try_lock"]


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path``, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
