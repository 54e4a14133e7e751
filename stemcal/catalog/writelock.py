"""One writer at a time per catalog directory, across every process: file locks.

An embedded catalog directory is used by several processes at once
(calibrations, the IPython profile, ``history``, ``stemcal serve``). SQLite
lets many read but only one write, and tiled's table store gives up at once
on a busy file. So every request that may write holds an exclusive ``flock``
on ``DIR/.write.lock`` from before tiled sees it until its response is sent
(:class:`WriteLockMiddleware`, an ASGI middleware around the in-process app of
every embedded client and around the server's app); readers take no lock.
The kernel drops a lock when its process dies, ``kill -9`` included, so a
killed writer never blocks the others.

:func:`file_lock` is the same lock as a context manager (creating or migrating
a catalog, the spool).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["WriteLockMiddleware", "file_lock", "READ_METHODS", "WRITE_LOCK", "INIT_LOCK"]

#: HTTP methods that never write.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Lock files in a catalog directory.
WRITE_LOCK = ".write.lock"
INIT_LOCK = ".init.lock"


def _acquire(path: str) -> int:
    # O_RDONLY: a lock on an existing file in a read-only directory still works
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    fd = _acquire(str(path))
    try:
        yield
    finally:
        _release(fd)


class WriteLockMiddleware:
    """ASGI middleware: every request but GET/HEAD/OPTIONS holds ``lock_path`` exclusively.

    Each request opens the file anew (an ``flock`` belongs to an open file
    description), so requests of one process exclude each other as well.
    The lock is waited for in a worker thread, never in the event loop.
    """

    def __init__(self, app: Any, lock_path: str | os.PathLike) -> None:
        self.app = app
        self.lock_path = str(Path(lock_path))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in READ_METHODS:
            await self.app(scope, receive, send)
            return
        import anyio

        fd = await anyio.to_thread.run_sync(_acquire, self.lock_path, abandon_on_cancel=False)
        try:
            await self.app(scope, receive, send)
        finally:
            _release(fd)
