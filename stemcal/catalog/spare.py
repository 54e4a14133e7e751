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

Where it lives: ``$TMPDIR/stemcal-UID/`` (mode 0700, owned by the user; refused
otherwise), one socket and one lock file per key; the lock is held by the living
spare, so there is at most one per key, and a spare killed with ``kill -9``
leaves a socket file that the next spare replaces. A spare accepts connections
only from its own user (``SO_PEERCRED``). ``STEMCAL_COURIER_SPARE=0`` turns spares
off; another number sets the idle time in seconds.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .journal import try_lock

log = logging.getLogger(__name__)

__all__ = ["IDLE_S", "ENV", "VOLATILE", "SPARE_WAIT_S", "idle_seconds", "spare_key", "spare_dir",
           "spare_alive", "spare_waiting", "claim", "start_spare", "serve", "dismiss",
           "ClaimedCourier"]

#: How long a spare waits to be claimed (s) before it exits.
IDLE_S = 300.0
#: The environment variable that turns spares off (``0``) or sets their idle time (s).
ENV = "STEMCAL_COURIER_SPARE"
#: Variables a shell sets anew for each command; left out of the key (the claiming
#: command's own values are set in the spare when it is claimed).
VOLATILE = frozenset({"PWD", "OLDPWD", "_", "SHLVL", "COLUMNS", "LINES"})
#: How long a claim waits for the spare's answer (s); a spare that is waiting answers at once.
CLAIM_TIMEOUT_S = 5.0
#: How long a command waits for a spare that is still importing (s; its imports take
#: 2.5-3 s of CPU) before it starts a courier of its own; it waits beside its own work.
SPARE_WAIT_S = 6.0
#: What the spare imports ahead: what opening an embedded catalog and writing runs and
#: records into it imports (the courier's :data:`~.courier.WARM_MODULES` besides).
IMPORTS = ("tiled.catalog", "tiled.server.app", "tiled.client", "starlette.testclient",
           "bluesky_tiled_plugins.writing.tiled_writer", "stemcal.catalog.store",
           "stemcal.catalog.delivery")


def idle_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How long a spare waits to be claimed; 0 where spares are off (``STEMCAL_COURIER_SPARE``)."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not value:
        return IDLE_S
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
    except ValueError:
        if value not in _warned:   # once per process, not at every look
            _warned.add(value)
            log.warning("%s=%r is not a number of seconds: no spare courier", ENV, value)
        return 0.0
    return max(seconds, 0.0)


_warned: set[str] = set()


def _tree_fingerprint(root: Path, pattern: str) -> list[tuple[str, int, int]]:
    out = []
    for p in sorted(root.rglob(pattern)):
        with contextlib.suppress(OSError):
            st = p.stat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


def spare_key(environ: Mapping[str, str] | None = None) -> str:
    """What a spare must share with the command that claims it, as a short hash: the
    interpreter, stemcal's source files, the site-packages directories and the
    environment (less :data:`VOLATILE`)."""
    import site

    import stemcal

    env = dict(os.environ if environ is None else environ)
    h = hashlib.sha256()
    root = Path(stemcal.__file__).parent
    h.update(repr((sys.executable, sys.version, str(root))).encode())
    h.update(repr(_tree_fingerprint(root, "*.py")).encode())
    for d in sorted(set(site.getsitepackages() + [site.getusersitepackages()])):
        with contextlib.suppress(OSError):
            h.update(f"{d}:{os.stat(d).st_mtime_ns}".encode())
    h.update(repr(sorted((k, v) for k, v in env.items() if k not in VOLATILE)).encode())
    return h.hexdigest()[:20]


def spare_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$TMPDIR/stemcal-UID``, created with mode 0700; refused (OSError) where it is
    not a directory of this user's that only this user can enter."""
    env = os.environ if environ is None else environ
    base = Path(env.get("TMPDIR") or tempfile.gettempdir())
    d = base / f"stemcal-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        d.mkdir(mode=0o700)
    st = os.lstat(d)
    if not (os.path.isdir(d) and not os.path.islink(d) and st.st_uid == os.getuid()
            and st.st_mode & 0o077 == 0):
        raise OSError(errno.EPERM, f"{d} is not a private directory of this user")
    return d


def _paths(key: str, environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    d = spare_dir(environ)
    sock = d / f"courier-{key}.sock"
    if len(os.fsencode(sock)) > 100:   # AF_UNIX paths: 107 bytes at most
        raise OSError(errno.ENAMETOOLONG, f"{sock}: too long a path for a Unix socket")
    return sock, d / f"courier-{key}.lock"


class _Quit(Exception):
    """Told to leave (a spare for another key has started)."""


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


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _held(lock_path: Path) -> bool:
    """Whether a spare holds ``lock_path`` (it is alive: importing, waiting or being claimed).
    Lock files are never removed, so one that is there and not held has no spare."""
    if not lock_path.exists():
        return False
    fd = try_lock(lock_path)
    if fd is None:
        return True
    os.close(fd)   # closing drops the lock this took
    return False


def _spare_paths(environ: Mapping[str, str] | None) -> tuple[str, Path, Path] | None:
    """(key, socket, lock) of this process's spare; None where spares are off or their
    directory cannot be had."""
    env = dict(os.environ if environ is None else environ)
    if not idle_seconds(env):
        return None
    try:
        key = spare_key(env)
        return (key, *_paths(key, env))
    except OSError as exc:
        log.debug("no spare courier: %s", exc)
        return None


def spare_alive(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a spare courier for this process's key is alive (spares on)."""
    paths = _spare_paths(environ)
    return paths is not None and _held(paths[2])


def spare_waiting(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a spare courier for this process's key listens (its imports done)."""
    paths = _spare_paths(environ)
    return paths is not None and paths[1].exists() and _held(paths[2])


def claim(args: Sequence[str], stderr: TextIO, *, environ: Mapping[str, str] | None = None,
          wait: float = 0.0) -> ClaimedCourier | None:
    """The spare courier for this process's key, now running ``courier.main(args)`` with
    a new pipe as its input and output and ``stderr`` as its error stream; None where
    there is none (spares off, none alive, it declined or did not answer). A spare that
    is alive but not listening yet (importing) is waited for up to ``wait`` s."""
    env = dict(os.environ if environ is None else environ)
    paths = _spare_paths(env)
    if paths is None:
        return None
    key, sock_path, lock_path = paths
    end = time.monotonic() + wait
    while True:
        if sock_path.exists():
            got = _claim_at(sock_path, key, args, stderr, env)
            if got is not None or not _held(lock_path):
                return got
        elif not _held(lock_path):
            return None
        if time.monotonic() >= end:
            return None
        time.sleep(0.02)


def _claim_at(sock_path: Path, key: str, args: Sequence[str], stderr: TextIO,
              env: dict[str, str]) -> ClaimedCourier | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CLAIM_TIMEOUT_S)
    pipes: list[int] = []
    try:
        s.connect(str(sock_path))
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        pipes = [in_r, in_w, out_r, out_w]
        message = json.dumps({"key": key, "args": list(args), "cwd": os.getcwd(), "env": env})
        socket.send_fds(s, [message.encode()], [in_r, out_w, stderr.fileno()])
        reply = _read_line(s)
        answer = json.loads(reply) if reply else {}
        pid = int(answer.get("pid") or 0)
        if not pid:
            log.debug("the spare courier declined: %s", answer.get("declined", "no answer"))
            for fd in pipes:
                os.close(fd)
            return None
    except (OSError, ValueError) as exc:  # none listening (a stale socket), or it died
        log.debug("no spare courier at %s: %s", sock_path, exc)
        for fd in pipes:
            with contextlib.suppress(OSError):
                os.close(fd)
        return None
    finally:
        s.close()
    os.close(in_r)
    os.close(out_w)
    log.debug("claimed the spare courier %d", pid)
    return ClaimedCourier(pid, os.fdopen(in_w, "w"), os.fdopen(out_r, "r"))


def _read_line(s: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        data = s.recv(4096)
        if not data:
            break
        buf += data
    return buf.decode()


def start_spare(module: str, environ: Mapping[str, str] | None = None) -> bool:
    """Start a spare courier (``python -P -m module --spare KEY``) for this process's key
    where spares are on and none is alive for it; it runs on in a session of its own
    after this process exits. It is started through ``sh -c 'CMD &'``, which returns at
    once: the spare is not this process's child (no zombie in a long-lived process).
    Returns whether one was started."""
    env = dict(os.environ if environ is None else environ)
    paths = _spare_paths(env)
    if paths is None:
        return False
    key, _, lock_path = paths
    if _held(lock_path):   # one is alive (the spare takes the lock; a second exits)
        return False
    try:
        _dismiss_others(key, env)
    except OSError as exc:
        log.debug("could not dismiss other spare couriers: %s", exc)
    argv = [sys.executable, "-P", "-m", module, "--spare", key]
    try:
        subprocess.run(["/bin/sh", "-c", '"$@" &', "sh", *argv], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       start_new_session=True, env=env, cwd="/", timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("could not start a spare courier: %s", exc)
        return False
    return True


def dismiss(environ: Mapping[str, str] | None = None, wait: float = 10.0) -> None:
    """Tell every spare courier of this user (in this ``$TMPDIR``) to leave, waiting up to
    ``wait`` s for those still importing to listen."""
    env = os.environ if environ is None else environ
    end = time.monotonic() + wait
    try:
        while True:
            _dismiss_others(None, env)
            if time.monotonic() > end or not any(
                    _held(lock) for lock in spare_dir(env).glob("courier-*.lock")):
                return
            time.sleep(0.1)
    except OSError as exc:
        log.debug("no spare couriers to dismiss: %s", exc)


def _dismiss_others(key: str | None, environ: Mapping[str, str]) -> None:
    """Tell the waiting spares of keys other than ``key`` to leave: one idle spare per
    user (each holds 300-400 MB)."""
    for path in spare_dir(environ).glob("courier-*.sock"):
        if path.name == f"courier-{key}.sock":
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(str(path))
            s.sendall(json.dumps({"quit": True}).encode())
        except ConnectionRefusedError:   # left by a spare that was killed: clear it away
            _clear_stale(path)
        except OSError:
            pass
        finally:
            s.close()


def _clear_stale(sock_path: Path) -> None:
    """Remove a socket whose lock no spare holds (its spare was killed; lock files stay)."""
    if _held(sock_path.with_suffix(".lock")):
        return   # alive after all (being claimed right now)
    with contextlib.suppress(OSError):
        sock_path.unlink()


def serve(key: str, warm_up: Callable[[], None] = lambda: None) -> list[str] | None:
    """The spare's life before it is claimed (``python -m stemcal.catalog.courier --spare
    KEY``): take the key's lock (exit if another spare holds it), import ahead
    (:data:`IMPORTS`, then ``warm_up()``), listen;
    when claimed, take over the claiming command's streams, directory and environment
    and return its courier arguments. None: not claimed within the idle time, or the key
    is not this process's (code or environment changed since it was started)."""
    if key != spare_key():
        return None
    sock_path, lock_path = _paths(key)
    os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600))
    end = time.monotonic() + 0.3   # a command looking whether a spare is alive holds it briefly
    while (lock := try_lock(lock_path)) is None:
        if time.monotonic() > end:   # another spare of this key is alive
            return None
        time.sleep(0.01)
    import importlib

    for name in IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the claimed courier reports what fails
            log.debug("spare courier: could not import %s ahead (%s)", name, exc)
    warm_up()
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()   # a spare before this one was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    listener.listen(4)
    end = time.monotonic() + idle_seconds()
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([listener], [], [], left)
            if not ready:
                return None
            conn, _ = listener.accept()
            with conn:
                try:
                    args = _take(conn, key, sock_path)
                except _Quit:
                    return None
                if args is not None:
                    return args
    finally:
        listener.close()
        # the path is this spare's while it holds the lock (a claim has unlinked it already)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        os.close(lock)


def _take(conn: socket.socket, key: str, sock_path: Path) -> list[str] | None:
    """Read a claim from ``conn``; where it is this user's and this key's, take over its
    streams, directory and environment, answer with this pid and return the arguments."""
    conn.settimeout(CLAIM_TIMEOUT_S)
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            return None
        data, fds, _, _ = socket.recv_fds(conn, 1 << 22, 3)
        while data and not data.endswith(b"}"):   # a large environment: the rest follows
            more = conn.recv(1 << 20)
            if not more:
                break
            data += more
        claim_: dict[str, Any] = json.loads(data)
        if claim_.get("quit"):   # a spare for another key has started: one idle spare a user
            raise _Quit
        if claim_.get("key") != key or len(fds) != 3:
            conn.sendall(json.dumps({"declined": "another key"}).encode() + b"\n")
            return None
        try:
            os.chdir(claim_["cwd"])
        except OSError as exc:
            conn.sendall(json.dumps({"declined": f"its directory: {exc}"}).encode() + b"\n")
            return None
        # no one else may claim it now; then become the claiming command's courier
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.environ.clear()
        os.environ.update(claim_["env"])
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        return [str(a) for a in claim_["args"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("spare courier: a claim failed (%s)", exc)
        return None
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
