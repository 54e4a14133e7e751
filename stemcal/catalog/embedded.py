"""The embedded catalog: one directory that many processes of one machine use at once.

Layout of a catalog directory ``DIR``:

=================  ===========================================================
``catalog.db``     tiled's catalog of nodes and metadata (SQLite, WAL journal,
                   30 s busy timeout)
``tables.sqlite``  tiled's table store: the events of every run (SQLite, WAL)
``data/``          arrays tiled writes (zarr): the images of a record
``raw/``           detector files (HDF5) that acquisition runs reference
``.write.lock``    held around every write request by every process
                   (:mod:`stemcal.catalog.writelock`)
``.init.lock``     held while the catalog is created or migrated
``.server.lock``   held by ``stemcal serve`` while it serves ``DIR``
=================  ===========================================================

Why this design: the calibrations, the IPython profile, ``history`` and a
``stemcal serve`` of the same directory each open it in their own process.
SQLite in WAL mode lets all of them read while one writes; one cross-process
file lock lets writes take turns instead of failing with "database is
locked" (tiled's SQLite table store has no busy timeout). Nothing runs
besides the processes that use the catalog, so nothing has to be started,
watched or backed up apart from the directory. The alternative, every
process talking to one ``stemcal serve``, is what a facility with several
machines uses (:mod:`stemcal.catalog.server`); on one machine it would make
every calibration depend on a server being up.

Catalogs written by stemcal before this layout kept their tables in
``tables.duckdb`` (DuckDB, one process at a time); opening one for writing
moves those tables into ``tables.sqlite`` once (:mod:`stemcal.catalog.migrate`).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .writelock import INIT_LOCK, WRITE_LOCK, WriteLockMiddleware, file_lock

log = logging.getLogger(__name__)

__all__ = ["RUNS_SPEC", "catalog_uri", "table_store_uri", "storage", "prepare",
           "open_embedded", "init_database", "RAW", "BUSY_TIMEOUT_S"]

RUNS_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}
#: Sub-directory for detector files referenced by runs.
RAW = "raw"
#: How long a process waits for SQLite's own locks (seconds).
BUSY_TIMEOUT_S = 30
#: How long a process waits for another one creating or migrating the catalog (seconds).
_INIT_TIMEOUT_S = 600


def catalog_uri(directory: Path) -> str:
    """The SQLAlchemy URI of ``directory``'s catalog database (with its busy timeout)."""
    return f"sqlite:///{directory / 'catalog.db'}?timeout={BUSY_TIMEOUT_S}"


def table_store_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'tables.sqlite'}"


def storage(directory: Path, readable: Iterable[str | Path] = ()) -> tuple[list[str], list[str]]:
    """(writable_storage, readable_storage) of tiled for the catalog in ``directory``."""
    writable = [str(directory / "data"), table_store_uri(directory)]
    seen: list[str] = []
    for p in (directory / "data", directory / RAW, *readable):
        if str(p) not in seen:
            seen.append(str(p))
    return writable, seen


class _DropVersionLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Tiled version")


#: Path prefix of tiled's "close the stream of this node" endpoint (DELETE).
STREAM_CLOSE_PREFIX = "/api/v1/stream/close/"


class StreamCloseMiddleware:
    """ASGI middleware: answers tiled's ``DELETE /api/v1/stream/close/...`` at once.

    A Bluesky run's writer (``TiledWriter``) closes the stream of every node it made
    when the run stops (7 requests for a record with four images). The server-side
    close tells a streaming cache's subscribers and the webhooks that the node is
    complete; an embedded catalog has neither (:func:`open_embedded` adds this
    middleware only then), so the request does nothing but look the node up, and
    through the in-process app and the write lock that cost 15-25 ms each (about a
    fifth of a record's delivery). Answered here as tiled does (200, ``null``),
    without that lookup.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "DELETE"
                and scope["path"].startswith(STREAM_CLOSE_PREFIX)):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"null"})
            return
        await self.app(scope, receive, send)


def init_database(uri: str) -> None:
    """Create tiled's catalog tables in the empty database at ``uri`` (SQLite or PostgreSQL).

    What ``tiled catalog init`` does, in this process (a thread of its own) instead
    of a new interpreter: about 1 s instead of 7-13 s.
    """
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
    from tiled.utils import ensure_specified_sql_driver

    url = ensure_specified_sql_driver(uri)
    created: list[bool] = []
    errors: list[BaseException] = []

    def work() -> None:
        import asyncio

        async def setup() -> None:
            engine = create_async_engine(url)
            try:
                try:
                    await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
                except UninitializedDatabase:
                    await initialize_database(engine)
                    created.append(True)
            finally:
                await engine.dispose()
        try:
            asyncio.run(setup())
            if created:
                stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, url)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=work, name="stemcal-catalog-init")
    t.start()
    t.join()
    if errors:
        raise errors[0]


def _wal(path: Path) -> None:
    """Put the SQLite file ``path`` in WAL mode (persistent; tiled's own pragma is ignored)."""
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        con.close()
    if mode != "wal":
        raise OSError(f"cannot put {path} in WAL mode (journal_mode {mode})")


def _create(directory: Path) -> None:
    """Create ``catalog.db`` whole or not at all: made under a temporary name, then renamed."""
    db = directory / "catalog.db"
    tmp = directory / ".catalog.db.new"
    for old in directory.glob(tmp.name + "*"):  # left by a creation that was cut off
        old.unlink()
    init_database(f"sqlite:///{tmp}")
    _wal(tmp)  # persistent in the file; its -wal is gone once the last connection closed
    os.replace(tmp, db)


def orphaned_contents(directory: Path) -> str | None:
    """Why ``directory`` holds a catalog's contents but no ``catalog.db`` (None where it
    does not): tables in ``tables.sqlite`` or files under ``data/``. A first creation cut
    off before ``catalog.db`` was renamed into place leaves neither."""
    found = []
    tables = directory / "tables.sqlite"
    if tables.exists() and tables.stat().st_size:
        try:
            con = sqlite3.connect(f"file:{tables}?mode=ro", uri=True)
            try:
                n = con.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            n = 1   # unreadable: something was there
        if n:
            found.append("tables.sqlite holds tables")
    data = directory / "data"
    if data.is_dir() and any(data.iterdir()):
        found.append("data/ holds files")
    return " and ".join(found) or None


class OrphanedCatalogError(RuntimeError):
    """A catalog directory whose ``catalog.db`` is gone while its contents are there."""

    def __init__(self, directory: Path, why: str) -> None:
        super().__init__(f"catalog {directory} has no catalog.db but {why}: it was deleted "
                         "or moved; restore it (or give another directory)")


def prepare(directory: Path) -> None:
    """Create the catalog in ``directory`` if it is not there, or bring an old one up to date.

    Safe to call from many processes at once: one does the work under
    ``.init.lock``, the others wait and find it done. An existing
    ``catalog.db`` is never re-created, whatever its state, nor a missing one where
    the directory holds a catalog's contents (:class:`OrphanedCatalogError`).
    """
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (directory / RAW).mkdir(exist_ok=True)
    with file_lock(directory / INIT_LOCK, timeout=_INIT_TIMEOUT_S):
        if not (directory / "tables.sqlite").exists():
            _wal(directory / "tables.sqlite")  # before tiled's first use of the file
        if not (directory / "catalog.db").exists():
            why = orphaned_contents(directory)
            if why:   # a new catalog.db here would hide every record whose data are here
                raise OrphanedCatalogError(directory, why)
            log.info("creating catalog %s", directory)
            _create(directory)
        from .migrate import legacy_tables, migrate_duckdb_tables
        if legacy_tables(directory):
            with file_lock(directory / WRITE_LOCK, timeout=_INIT_TIMEOUT_S):
                migrate_duckdb_tables(directory, table_store_uri(directory))


def open_embedded(directory: Path, readable: Sequence[str | Path] = (), *,
                  create: bool = True) -> Any:
    """A tiled client of the catalog in ``directory``, served in this process.

    Parameters
    ----------
    directory : Path
        Absolute catalog directory.
    readable : sequence of path
        Further directories whose external files (acquisition HDF5) the catalog may serve.
    create : bool
        Create or migrate the catalog if needed (:func:`prepare`); False for
        readers, which need an existing catalog and write nothing.
    """
    from tiled.catalog import from_uri
    from tiled.client import from_context
    from tiled.client.context import Context
    from tiled.server.app import build_app

    from .overrides import resolve_overrides

    if create:
        prepare(directory)
    writable, readable_storage = storage(directory, readable)
    adapter = from_uri(catalog_uri(directory), specs=[RUNS_SPEC], writable_storage=writable,
                       readable_storage=readable_storage)
    app_log = logging.getLogger("tiled.server.app")  # logs "Tiled version ..." at start-up
    drop = _DropVersionLine()
    app_log.addFilter(drop)
    try:
        app = build_app(adapter)
        resolve_overrides(app)   # tiled's settings override, once instead of per request
        app.add_middleware(WriteLockMiddleware, lock_path=directory / WRITE_LOCK)
        if (getattr(adapter.context, "streaming_cache", None) is None
                and getattr(adapter.context, "webhook_dispatcher", None) is None):
            app.add_middleware(StreamCloseMiddleware)   # outermost: before the write lock
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient`")
            context = Context.from_app(app)
    finally:
        app_log.removeFilter(drop)
    log.debug("opened embedded catalog %s", directory)
    return from_context(context)
