"""The catalog server process (``python -m stemcal.catalog.serverapp``), started by ``stemcal serve``.

In this order:

1. take ``DIR/.server.lock`` (``flock``, non-blocking). If another server
   holds it, print one line naming it (from ``DIR/.server.lock.json``) and exit
   with status 3, before anything else is touched. The kernel drops the lock
   when the server dies, ``kill -9`` included;
2. create or bring up to date the catalog (SQLite in ``DIR``, or PostgreSQL);
3. write the private tiled configuration and authentication database (only
   SHA-256 digests of the keys, from ``$STEMCAL_SERVER_KEY_DIGESTS``);
4. serve tiled's app inside :class:`~stemcal.catalog.appendonly.AppendOnlyMiddleware`
   inside :class:`~stemcal.catalog.writelock.WriteLockMiddleware` with uvicorn.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

from tiled.server.protocols import InternalAuthenticator

__all__ = ["KeysOnly", "main", "EXIT_ALREADY_SERVED"]

#: Exit status of a server refused because another one serves the catalog.
EXIT_ALREADY_SERVED = 3
_LOCK = ".server.lock"


class KeysOnly(InternalAuthenticator):
    """A tiled authenticator that accepts no password: only API keys get in."""

    def __init__(self) -> None:
        self.confirmation_message = ""

    async def authenticate(self, username: str, password: str) -> None:  # noqa: D102
        return None


def _take_server_lock(catalog: Path) -> int:
    catalog.mkdir(parents=True, exist_ok=True)
    fd = os.open(catalog / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            info = json.loads((catalog / (_LOCK + ".json")).read_text())
            who = f"process {info.get('pid')} at {info.get('uri')}"
        except (OSError, ValueError):
            who = "another process"
        print(f"stemcal: error: catalog {catalog} is already served by {who}; not started",
              file=sys.stderr)
        sys.exit(EXIT_ALREADY_SERVED)
    return fd


def _build_auth_db(db: Path, digests: dict[str, list[str]]) -> None:
    """A fresh tiled authentication database holding the writer, reader and admin digests."""
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from tiled.alembic_utils import stamp_head
    from tiled.authn_database import orm
    from tiled.authn_database.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.authn_database.core import create_service, initialize_database

    from .keys import READER_SCOPES, WRITER_SCOPES

    # (role of the principal, scopes of the key); effective scopes are their intersection.
    # The writer's principal is an admin because only that role has `register` (detector
    # files); its key holds no delete:* and no key administration.
    grants = {"admin": ("admin", ["inherit"]), "writer": ("admin", WRITER_SCOPES),
              "reader": ("user", READER_SCOPES)}
    for old in db.parent.glob(db.name + "*"):  # the db and any -journal/-wal left over
        old.unlink()
    url = f"sqlite+aiosqlite:///{db}"

    async def setup() -> None:
        engine = create_async_engine(url)
        try:
            await initialize_database(engine)
            async with AsyncSession(engine, expire_on_commit=False) as session:
                for role, (first_eight, sha) in digests.items():
                    principal_role, scopes = grants[role]
                    principal = await create_service(session, principal_role)
                    session.add(orm.APIKey(principal_id=principal.id, note=f"stemcal {role}",
                                           scopes=scopes, first_eight=first_eight,
                                           hashed_secret=bytes.fromhex(sha)))
                    await session.commit()
        finally:
            await engine.dispose()

    old_umask = os.umask(0o077)
    try:
        asyncio.run(setup())
        stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, url)
    finally:
        os.umask(old_umask)
    os.chmod(db, 0o600)


def _prepare_catalog(catalog: Path, database: str | None, data_dir: Path | None) -> None:
    from .embedded import RAW, init_database, prepare
    from .server import _pg

    if database:
        for sub in ("data", RAW):
            (catalog / sub).mkdir(parents=True, exist_ok=True)
        init_database(_pg(database, "asyncpg"))
    else:
        prepare(catalog)
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _app(config: Any, catalog: Path, admin_sha256: str | None, data_dirs: list[str]) -> Any:
    from tiled.server.app import build_app_from_config

    from .appendonly import AppendOnlyMiddleware
    from .overrides import resolve_overrides
    from .writelock import WRITE_LOCK, WriteLockMiddleware

    app = build_app_from_config(config)
    resolve_overrides(app)   # tiled's settings override, once instead of per request
    # the last added is the outermost: the write lock holds around the append-only check
    app.add_middleware(AppendOnlyMiddleware, admin_sha256=admin_sha256, data_dirs=data_dirs)
    app.add_middleware(WriteLockMiddleware, lock_path=catalog / WRITE_LOCK)
    return app


def main(argv: list[str] | None = None) -> None:
    """Run the server (see the module docstring); returns when it stops."""
    ap = argparse.ArgumentParser(prog="python -m stemcal.catalog.serverapp")
    ap.add_argument("--catalog", required=True, type=Path)
    ap.add_argument("--state", required=True, type=Path)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--database")
    ap.add_argument("--tables")
    ap.add_argument("--data-dir", type=Path)
    a = ap.parse_args(argv)
    lock_fd = _take_server_lock(a.catalog)  # noqa: F841 - held for the life of the process
    digests = json.loads(os.environ.pop("STEMCAL_SERVER_KEY_DIGESTS", "{}"))
    from .server import tiled_config

    _prepare_catalog(a.catalog, a.database, a.data_dir)
    auth_db = a.state / "auth.db"
    _build_auth_db(auth_db, digests)
    config = tiled_config(a.catalog, auth_db=auth_db, host=a.host, port=a.port,
                          database=a.database, tables=a.tables, data_dir=a.data_dir)
    _write_private(a.state / "config.json", json.dumps(config, indent=1))
    from tiled.commandline._serve import _setup_log_config
    from tiled.config import parse_configs

    parsed = parse_configs(str(a.state / "config.json"))
    args = config["trees"][0]["args"]
    data_dir = args["metadata"]["stemcal"]["data_dir"]  # first: the one an error names
    readable = [data_dir, *(d for d in args["readable_storage"] if d != data_dir)]
    app = _app(parsed, a.catalog, (digests.get("admin") or [None, None])[1], readable)
    uri = f"http://{a.host}:{a.port}/api"
    (a.catalog / (_LOCK + ".json")).write_text(json.dumps({"pid": os.getpid(), "uri": uri}) + "\n")
    import uvicorn

    kw = dict(getattr(parsed, "uvicorn", None) or {})
    kw.pop("host", None)
    kw.pop("port", None)
    uvicorn.run(app, host=a.host, port=a.port, log_config=_setup_log_config(None, False), **kw)


if __name__ == "__main__":
    main()
