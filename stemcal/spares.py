"""Spare processes: a process started ahead of the command that will use it, its imports done.

A command that starts a process which spends seconds importing before it can work
(the catalog courier, :mod:`stemcal.catalog.spare`; the command line's own
process, :mod:`stemcal.cli.spare`) can leave a spare of it behind when it ends: a
process that does those imports at once and then waits, for at most its idle time
(:data:`IDLE_S` by default), for the next command to claim it. The claiming
command hands it its command line, working directory, umask, environment and
three file descriptors (its new standard streams) over a Unix socket
(``SCM_RIGHTS``); from then on the spare is that command's process in every
respect, only without the imports. Where there is no spare (the first command,
after a pause, another environment, another version of the code) the command
does without one.

What a spare must never do is run other code or settings than a process started
by the claiming command would. A spare serves only the key it was started for
(:func:`spare_key`): the Python executable, the stemcal source files (paths,
sizes, modification times), the site-packages directories (installing or removing
a package changes them) and the environment except for the variables a shell
changes between commands (:data:`VOLATILE`). It opens nothing of the claiming
command's (catalog, files) before it is claimed.

Where they live: ``$TMPDIR/stemcal-UID/`` (mode 0700, owned by the user; refused
otherwise), one socket and one lock file per kind (:class:`Kind`) and key; the
lock is held by the living spare (which writes its pid into it), so there is at
most one per kind and key, and a spare killed with ``kill -9`` leaves a socket file
that the next spare replaces. A new spare dismisses the waiting spares of its kind
for other keys (one idle spare of a kind per user) and removes their lock files once
no spare has held them for an hour. A spare that holds its lock but has not listened
:data:`STUCK_S` after it started is taken for hung and killed by the next command
that waits for it. A spare accepts connections
only from its own user (``SO_PEERCRED``). Each kind has an environment variable:
``0`` turns its spares off, another number sets their idle time in seconds.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .locks import try_lock

log = logging.getLogger(__name__)

__all__ = ["IDLE_S", "VOLATILE", "CLAIM_TIMEOUT_S", "Kind", "idle_seconds", "spare_key",
           "spare_dir", "spare_alive", "spare_waiting", "spare_pid", "connect", "read_line",
           "start_spare", "spare_arguments", "dismiss", "serve_claim"]

#: How long a spare waits to be claimed (s) before it exits.
IDLE_S = 300.0
#: Variables a shell sets anew for each command; left out of the key (the claiming
#: command's own values are set in the spare when it is claimed).
VOLATILE = frozenset({"PWD", "OLDPWD", "_", "SHLVL", "COLUMNS", "LINES"})
#: How long a claim waits for the spare's answer (s); a spare that is waiting answers at once.
CLAIM_TIMEOUT_S = 5.0
#: Lock files of other keys that no spare holds are removed once they are this old (s).
LOCK_AGE_S = 3600.0
#: A spare that has not listened this long after it started (s) is taken for hung and
#: killed by the next command that waits for it (ready takes 1.5-3 s).
STUCK_S = 120.0


@dataclass(frozen=True)
class Kind:
    """A kind of spare process: its files' prefix in :func:`spare_dir` (``NAME-KEY.sock``,
    ``NAME-KEY.lock``), the environment variable that turns it off or sets its idle time,
    and what messages call it."""

    name: str
    env: str
    label: str


def idle_seconds(kind: Kind, environ: Mapping[str, str] | None = None) -> float:
    """How long a spare waits to be claimed; 0 where spares of ``kind`` are off (its
    environment variable is ``0``)."""
    value = (os.environ if environ is None else environ).get(kind.env, "").strip()
    if not value:
        return IDLE_S
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
    except ValueError:
        if (kind.env, value) not in _warned:   # once per process, not at every look
            _warned.add((kind.env, value))
            log.warning("%s=%r is not a number of seconds: no %s", kind.env, value, kind.label)
        return 0.0
    return max(seconds, 0.0)


_warned: set[tuple[str, str]] = set()


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
    environment (less :data:`VOLATILE` and the spares' settings)."""
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
    h.update(repr(sorted((k, v) for k, v in env.items() if not _ignored(k))).encode())
    return h.hexdigest()[:20]


def _ignored(name: str) -> bool:
    """Left out of the key: :data:`VOLATILE`, and the spares' own settings
    (``STEMCAL_*_SPARE``: one kind's setting must not make the other's spares miss)."""
    return name in VOLATILE or (name.startswith("STEMCAL_") and name.endswith("_SPARE"))


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


def _paths(kind: Kind, key: str, environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    d = spare_dir(environ)
    sock = d / f"{kind.name}-{key}.sock"
    if len(os.fsencode(sock)) > 100:   # AF_UNIX paths: 107 bytes at most
        raise OSError(errno.ENAMETOOLONG, f"{sock}: too long a path for a Unix socket")
    return sock, d / f"{kind.name}-{key}.lock"


class _Quit(Exception):
    """Told to leave (a spare for another key has started)."""


def _held(lock_path: Path) -> bool:
    """Whether a spare holds ``lock_path`` (it is alive: importing, waiting or being claimed).
    A lock file that is there and not held has no spare."""
    if not lock_path.exists():
        return False
    fd = try_lock(lock_path)
    if fd is None:
        return True
    os.close(fd)   # closing drops the lock this took
    return False


def _spare_paths(kind: Kind, environ: Mapping[str, str] | None) -> tuple[str, Path, Path] | None:
    """(key, socket, lock) of this process's spare of ``kind``; None where such spares
    are off or their directory cannot be had."""
    env = dict(os.environ if environ is None else environ)
    if not idle_seconds(kind, env):
        return None
    try:
        key = spare_key(env)
        return (key, *_paths(kind, key, env))
    except OSError as exc:
        log.debug("no %s: %s", kind.label, exc)
        return None


def spare_alive(kind: Kind, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a spare of ``kind`` for this process's key is alive (spares on)."""
    paths = _spare_paths(kind, environ)
    return paths is not None and _held(paths[2])


def spare_waiting(kind: Kind, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a spare of ``kind`` for this process's key listens (its imports done)."""
    paths = _spare_paths(kind, environ)
    return paths is not None and paths[1].exists() and _held(paths[2])


def spare_pid(kind: Kind, environ: Mapping[str, str] | None = None) -> int | None:
    """The pid of the living spare of ``kind`` for this process's key (it writes it into
    its lock file), or None."""
    paths = _spare_paths(kind, environ)
    if paths is None or not _held(paths[2]):
        return None
    return _pid_in(paths[2]) or None


def _pid_in(lock_path: Path) -> int:
    """The pid a spare wrote into its lock file; 0 where there is none."""
    try:
        return int(lock_path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def connect(kind: Kind, args: Sequence[str], fds: Sequence[int], *,
            environ: Mapping[str, str] | None = None, wait: float = 0.0) -> tuple[socket.socket, int] | None:
    """Claim the spare of ``kind`` for this process's key: hand it ``args``, this
    directory, the environment ``environ``, the umask and ``fds`` (its new standard
    streams); return the connection (still open: a spare command reports its end over
    it) and its pid, or None where there is none (spares off, none alive, it declined
    or did not answer). A spare that is alive but not listening yet (importing) is
    waited for up to ``wait`` s."""
    env = dict(os.environ if environ is None else environ)
    paths = _spare_paths(kind, env)
    if paths is None:
        return None
    key, sock_path, lock_path = paths
    end = time.monotonic() + wait
    while True:
        if sock_path.exists():
            got = _connect_at(sock_path, key, args, fds, env, kind)
            if got is not None or not _held(lock_path):
                return got
        elif not _held(lock_path):
            return None
        if time.monotonic() >= end:
            if not sock_path.exists():
                _end_if_stuck(kind, key, lock_path)
            return None
        time.sleep(0.02)


def _end_if_stuck(kind: Kind, key: str, lock_path: Path) -> bool:
    """Kill the spare of ``key`` that holds ``lock_path`` but has not listened for
    :data:`STUCK_S` since it started (its pid and start are its lock file's content and
    time): a spare hung in its imports would otherwise cost every command its wait.
    The next command that ends starts a new one. Returns whether one was killed."""
    pid = _pid_in(lock_path)
    try:
        started = lock_path.stat().st_mtime
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid > 0 else []
    except OSError:
        return False
    if time.time() - started < STUCK_S or b"--spare" not in argv or key.encode() not in argv:
        return False   # young, or not that spare (the pid was reused)
    log.warning("a %s (pid %d) has not got ready in %.0f s: killed", kind.label, pid,
                time.time() - started)
    try:
        os.kill(pid, 9)
    except OSError:
        return False
    return True


def _connect_at(sock_path: Path, key: str, args: Sequence[str], fds: Sequence[int],
                env: dict[str, str], kind: Kind) -> tuple[socket.socket, int] | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CLAIM_TIMEOUT_S)
    try:
        s.connect(str(sock_path))
        umask = os.umask(0o077)
        os.umask(umask)
        message = json.dumps({"key": key, "args": list(args), "cwd": os.getcwd(), "env": env,
                              "umask": umask})
        socket.send_fds(s, [message.encode()], list(fds))
        reply = read_line(s)
        answer = json.loads(reply) if reply else {}
        pid = int(answer.get("pid") or 0)
        if not pid:
            log.debug("the %s declined: %s", kind.label, answer.get("declined", "no answer"))
            s.close()
            return None
    except (OSError, ValueError) as exc:  # none listening (a stale socket), or it died
        log.debug("no %s at %s: %s", kind.label, sock_path, exc)
        s.close()
        return None
    s.settimeout(None)
    log.debug("claimed the %s %d", kind.label, pid)
    return s, pid


def read_line(s: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        data = s.recv(4096)
        if not data:
            break
        buf += data
    return buf.decode()


def start_spare(kind: Kind, module: str, environ: Mapping[str, str] | None = None) -> bool:
    """Start a spare of ``kind`` (``python -P -m module --spare KEY --lock-fd N``) for
    this process's key where such spares are on and none is alive for it; it runs on in
    a session of its own after this process exits. Its lock is taken here and handed to
    it (fd ``N``), so that it counts as alive from the moment this returns: a command
    started right after this one's end waits for it instead of doing its imports beside
    it. It is started through ``sh -c 'CMD &'``, which returns at once: the spare is not
    this process's child (no zombie in a long-lived process). Returns whether one was
    started."""
    env = dict(os.environ if environ is None else environ)
    paths = _spare_paths(kind, env)
    if paths is None:
        return False
    key, _, lock_path = paths
    try:
        os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        log.debug("could not start a %s: %s", kind.label, exc)
        return False
    lock = try_lock(lock_path)
    if lock is None:   # one is alive (it holds the lock)
        return False
    try:
        try:
            _dismiss_others(key, env, kind)
            _clear_old_locks(kind, key, env)
        except OSError as exc:
            log.debug("could not dismiss other %ss: %s", kind.label, exc)
        argv = [sys.executable, "-P", "-m", module, "--spare", key, "--lock-fd", str(lock)]
        subprocess.run(["/bin/sh", "-c", '"$@" &', "sh", *argv], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       start_new_session=True, env=env, cwd="/", timeout=10, check=True,
                       pass_fds=(lock,))
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("could not start a %s: %s", kind.label, exc)
        return False
    finally:
        os.close(lock)   # the spare holds it now (the same open file)
    return True


def spare_arguments(argv: Sequence[str]) -> tuple[str, int | None] | None:
    """(key, lock fd or None) of a spare's command line ``--spare KEY [--lock-fd N]``;
    None where ``argv`` is not one."""
    argv = list(argv)
    if len(argv) == 2 and argv[0] == "--spare":
        return argv[1], None
    if len(argv) == 4 and argv[0] == "--spare" and argv[2] == "--lock-fd" and argv[3].isdigit():
        return argv[1], int(argv[3])
    return None


def dismiss(kind: Kind, environ: Mapping[str, str] | None = None, wait: float = 10.0) -> None:
    """Tell every spare of ``kind`` of this user (in this ``$TMPDIR``) to leave, waiting
    up to ``wait`` s for those still importing to listen."""
    env = os.environ if environ is None else environ
    end = time.monotonic() + wait
    try:
        while True:
            _dismiss_others(None, env, kind)
            if time.monotonic() > end or not any(
                    _held(lock) for lock in spare_dir(env).glob(f"{kind.name}-*.lock")):
                return
            time.sleep(0.1)
    except OSError as exc:
        log.debug("no %ss to dismiss: %s", kind.label, exc)


def _dismiss_others(key: str | None, environ: Mapping[str, str], kind: Kind) -> None:
    """Tell the waiting spares of ``kind`` and of keys other than ``key`` to leave: one
    idle spare of a kind per user (a courier holds 300-400 MB)."""
    for path in spare_dir(environ).glob(f"{kind.name}-*.sock"):
        if path.name == f"{kind.name}-{key}.sock":
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


def _clear_old_locks(kind: Kind, key: str, environ: Mapping[str, str]) -> None:
    """Remove the lock files of ``kind`` and other keys that no spare holds and that are
    older than :data:`LOCK_AGE_S`: each version of the code or environment leaves one, and
    they would pile up over the years (a lock file a spare is being started on is younger)."""
    now = time.time()
    for path in spare_dir(environ).glob(f"{kind.name}-*.lock"):
        if path.name == f"{kind.name}-{key}.lock":
            continue
        try:
            if now - path.stat().st_mtime < LOCK_AGE_S:
                continue
        except OSError:
            continue
        fd = try_lock(path)
        if fd is None:   # held: a spare of that key lives
            continue
        try:
            path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


def _clear_stale(sock_path: Path) -> None:
    """Remove a socket whose lock no spare holds (its spare was killed; its lock file is
    left to :func:`_clear_old_locks`)."""
    if _held(sock_path.with_suffix(".lock")):
        return   # alive after all (being claimed right now)
    with contextlib.suppress(OSError):
        sock_path.unlink()


def serve_claim(kind: Kind, key: str, imports: Sequence[str],
                warm_up: Callable[[], None] = lambda: None, lock_fd: int | None = None,
                ) -> tuple[list[str], socket.socket] | None:
    """A spare's life before it is claimed: hold the key's lock (``lock_fd``, taken by
    :func:`start_spare`; without one take it, and exit if another spare holds it) and
    write this pid into it, import ``imports`` ahead, then ``warm_up()``, listen; when
    claimed, take over the claiming command's streams, directory, umask and environment
    and return its arguments with the connection (open). None: not claimed within the
    idle time, told to leave, or the key is not this process's (code or environment
    changed since it was started)."""
    if key != spare_key():
        return None
    sock_path, lock_path = _paths(kind, key)
    if lock_fd is not None:
        lock = lock_fd
        os.set_inheritable(lock, False)   # not to the command's own children
    else:
        os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600))
        end = time.monotonic() + 0.3   # a command looking whether one is alive holds it briefly
        while (got := try_lock(lock_path)) is None:
            if time.monotonic() > end:   # another spare of this key is alive
                return None
            time.sleep(0.01)
        lock = got
    with contextlib.suppress(OSError):
        lock_path.write_text(f"{os.getpid()}\n")
    import importlib

    for name in imports:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the claimed process reports what fails
            log.debug("%s: could not import %s ahead (%s)", kind.label, name, exc)
    warm_up()
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()   # a spare before this one was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    os.chmod(sock_path, 0o600)
    listener.listen(4)
    end = time.monotonic() + idle_seconds(kind)
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([listener], [], [], left)
            if not ready:
                return None
            conn, _ = listener.accept()
            try:
                args = _take(conn, key, sock_path, kind)
            except _Quit:
                conn.close()
                return None
            if args is not None:
                return args, conn
            conn.close()
    finally:
        listener.close()
        # the path is this spare's while it holds the lock (a claim has unlinked it already)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        os.close(lock)


def _take(conn: socket.socket, key: str, sock_path: Path, kind: Kind) -> list[str] | None:
    """Read a claim from ``conn``; where it is this user's and this key's, take over its
    streams, directory, umask and environment, answer with this pid and return the
    arguments."""
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
        # no one else may claim it now; then become the claiming command's process
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        if isinstance(claim_.get("umask"), int):
            os.umask(claim_["umask"])
        os.environ.clear()
        os.environ.update(claim_["env"])
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        conn.settimeout(None)
        return [str(a) for a in claim_["args"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("%s: a claim failed (%s)", kind.label, exc)
        return None
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
