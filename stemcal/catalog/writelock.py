"""One writer at a time per catalog directory, across every process: file locks.

An embedded catalog directory is used by several processes at once
(calibrations, the IPython profile, ``history``, ``stemcal serve``). SQLite
lets many read but only one write, and tiled's table store gives up at once
on a busy file. So every request that may write holds an exclusive ``flock``
on ``DIR/.write.lock`` from before tiled sees it until its response is sent
(:class:`WriteLockMiddleware`, an ASGI middleware around the in-process app of
every embedded client and around the server's app); readers take no lock.
The kernel drops a lock when its process dies, ``kill -9`` included, so a
killed writer never blocks the others; a writer that hangs while holding it
makes the others give up after :data:`LOCK_TIMEOUT_S` (HTTP 503 "the catalog
is locked"), so their records are spooled instead of waiting for ever.

:func:`file_lock` is the same lock as a context manager (creating or migrating
a catalog, the spool).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["WriteLockMiddleware", "file_lock", "CatalogLockedError", "READ_METHODS",
           "WRITE_LOCK", "INIT_LOCK", "LOCK_TIMEOUT_S"]

#: HTTP methods that never write.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Lock files in a catalog directory.
WRITE_LOCK = ".write.lock"
INIT_LOCK = ".init.lock"


#: How long a writer waits for the lock before giving up (seconds); a write takes well under 1 s.
LOCK_TIMEOUT_S = 60.0


class CatalogLockedError(TimeoutError):
    """Another process held the catalog's lock for longer than :data:`LOCK_TIMEOUT_S`."""


def _acquire(path: str, timeout: float | None = None) -> int:
    """An fd holding an exclusive ``flock`` on ``path``; waits at most ``timeout`` seconds
    (default :data:`LOCK_TIMEOUT_S`)."""
    limit = LOCK_TIMEOUT_S if timeout is None else timeout
    # O_RDONLY: a lock on an existing file in a read-only directory still works
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    deadline = time.monotonic() + limit
    delay = 0.002
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CatalogLockedError(
                        f"the catalog is locked: another process has held {path} for more "
                        f"than {limit:g} s") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.05)
    except BaseException:
        os.close(fd)
        raise


def _release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; wait at most
    ``timeout`` seconds for it (default :data:`LOCK_TIMEOUT_S`), else :class:`CatalogLockedError`."""
    fd = _acquire(str(path), timeout)
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

        try:
            fd = await anyio.to_thread.run_sync(_acquire, self.lock_path, abandon_on_cancel=False)
        except CatalogLockedError as exc:
            body = json.dumps({"detail": str(exc)}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            _release(fd)
