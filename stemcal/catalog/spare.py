"""A spare courier: a courier process started ahead of the command that will use it.

A courier (:mod:`.courier`) spends 2.5-3 s of CPU importing tiled's server side
before it can open the embedded catalog, and on 2 cores that competes with the
scan and the fit of the ``stemcal calibrate`` that started it. So when a
command's courier is done, the command leaves a spare behind: a courier process
that does those imports at once and then waits, for at most :data:`IDLE_S`, for
the next command to claim it. The next command hands it its command line,
working directory, environment and its three standard streams (file descriptors
over a Unix socket, ``SCM_RIGHTS``); from then on the spare is that command's
courier in every respect (same protocol, same journal and spool), only without
the imports. Where there is no spare (the first command, after a pause, another
environment, another version of the code) the command starts a courier of its
own as before.

What a spare must never do is deliver with other code or settings than a
courier started by the claiming command would. A spare serves only the key it
was started for (:func:`spare_key`): the Python executable, the stemcal source
files (paths, sizes, modification times), the site-packages directories
(installing or removing a package changes them) and the environment except for
the variables a shell changes between commands (:data:`VOLATILE`). It opens no
catalog before it is claimed, so nothing of one catalog carries over to another.

Where it lives, how it is claimed and what keeps it safe is common to spare
processes (:mod:`stemcal.spares`: ``$TMPDIR/stemcal-UID/courier-KEY.sock`` and
``.lock``, one spare per key, only the user's own connections).
``STEMCAL_COURIER_SPARE=0`` turns spare couriers off; another number sets the
idle time in seconds.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from .. import spares
from ..spares import IDLE_S, VOLATILE, Kind, spare_dir, spare_key

log = logging.getLogger(__name__)

__all__ = ["IDLE_S", "ENV", "VOLATILE", "SPARE_WAIT_S", "COURIER", "IMPORTS", "idle_seconds",
           "spare_key", "spare_dir", "spare_alive", "spare_waiting", "claim", "start_spare",
           "serve", "dismiss", "ClaimedCourier"]

#: The environment variable that turns spares off (``0``) or sets their idle time (s).
ENV = "STEMCAL_COURIER_SPARE"
#: How long a command waits for a spare that is still importing (s; its imports take
#: 2.5-3 s of CPU) before it starts a courier of its own; it waits beside its own work.
SPARE_WAIT_S = 6.0
#: What the spare imports ahead: what opening an embedded catalog and writing runs and
#: records into it imports (the courier's :data:`~.courier.WARM_MODULES` besides).
IMPORTS = ("tiled.catalog", "tiled.server.app", "tiled.client", "starlette.testclient",
           "bluesky_tiled_plugins.writing.tiled_writer", "stemcal.catalog.store",
           "stemcal.catalog.delivery")
#: The spare courier (:mod:`.courier`); the command line's spare command process
#: (:mod:`stemcal.cli.spare`) is another kind.
COURIER = Kind("courier", ENV, "spare courier")


class ClaimedCourier:
    """A claimed spare, with the part of :class:`subprocess.Popen`'s interface that
    :class:`~.courier.DeferredCatalog` uses (``pid``, ``stdin``, ``communicate``,
    ``kill``, ``wait``, ``returncode``). It is not this process's child: its end is
    seen as the end of its output, and its exit status is not known (``returncode``
    stays None; :attr:`ended` says what is known)."""

    def __init__(self, pid: int, stdin: TextIO, stdout: TextIO) -> None:
        self.pid = pid
        self.stdin = stdin
        self._stdout = stdout
        self.returncode: int | None = None
        #: How it ended, for the reason kept with what it did not deliver.
        self.ended = f"ended (a spare courier, pid {pid}; its exit status is not known)"

    def _alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # the pid is someone else's now: ours has gone
            return False
        return not _zombie(self.pid)

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        """Close its input, read its output to the end (the courier closes it when it
        exits), within ``timeout`` s (:class:`subprocess.TimeoutExpired` otherwise)."""
        with contextlib.suppress(OSError, ValueError):
            self.stdin.close()
        end = None if timeout is None else time.monotonic() + timeout
        fd = self._stdout.fileno()
        chunks: list[bytes] = []
        while True:
            left = None if end is None else max(end - time.monotonic(), 0.0)
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise subprocess.TimeoutExpired("spare courier", timeout or 0.0)
            data = os.read(fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
        self._stdout.close()
        # its output ends when it exits (or when it is killed): wait a moment for the pid
        deadline = time.monotonic() + 2.0
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        return b"".join(chunks).decode(errors="replace"), None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, 9)
        self.ended = "was killed (SIGKILL)"

    def wait(self, timeout: float | None = None) -> int | None:
        end = None if timeout is None else time.monotonic() + timeout
        while self._alive():
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired("spare courier", timeout or 0.0)
            time.sleep(0.01)
        return self.returncode


def claim(args: Sequence[str], stderr: TextIO, *, environ: Mapping[str, str] | None = None,
          wait: float = 0.0) -> ClaimedCourier | None:
    """The spare courier for this process's key, now running ``courier.main(args)`` with
    a new pipe as its input and output and ``stderr`` as its error stream; None where
    there is none (spares off, none alive, it declined or did not answer). A spare that
    is alive but not listening yet (importing) is waited for up to ``wait`` s."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        got = spares.connect(COURIER, args, [in_r, out_w, stderr.fileno()], environ=environ,
                             wait=wait)
    finally:
        os.close(in_r)
        os.close(out_w)
    if got is None:
        os.close(in_w)
        os.close(out_r)
        return None
    conn, pid = got
    conn.close()
    return ClaimedCourier(pid, os.fdopen(in_w, "w"), os.fdopen(out_r, "r"))


def serve(key: str, warm_up: Callable[[], None] = lambda: None,
          lock_fd: int | None = None) -> list[str] | None:
    """The spare courier's life before it is claimed (``python -m stemcal.catalog.courier
    --spare KEY``): :func:`stemcal.spares.serve_claim` with :data:`IMPORTS`; returns the courier
    arguments of the command that claimed it, or None."""
    got = spares.serve_claim(COURIER, key, IMPORTS, warm_up, lock_fd)
    if got is None:
        return None
    args, conn = got
    conn.close()
    return args


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def idle_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How long a spare courier waits to be claimed; 0 where they are off."""
    return spares.idle_seconds(COURIER, environ)


def spare_alive(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a spare courier for this process's key is alive (spares on)."""
    return spares.spare_alive(COURIER, environ)


def spare_waiting(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a spare courier for this process's key listens (its imports done)."""
    return spares.spare_waiting(COURIER, environ)


def start_spare(module: str, environ: Mapping[str, str] | None = None) -> bool:
    """Start a spare courier (``python -P -m module --spare KEY --lock-fd N``) where spares
    are on and none is alive for this key (:func:`stemcal.spares.start_spare`)."""
    return spares.start_spare(COURIER, module, environ)


def dismiss(environ: Mapping[str, str] | None = None, wait: float = 10.0) -> None:
    """Tell every spare courier of this user (in this ``$TMPDIR``) to leave."""
    spares.dismiss(COURIER, environ, wait)
