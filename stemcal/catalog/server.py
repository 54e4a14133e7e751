"""``stemcal serve``: a catalog as a tiled server, with keys, for every reader and writer.

``stemcal serve DIR`` serves the catalog of ``DIR`` (the layout of
:mod:`stemcal.catalog.embedded`; its catalog and event tables optionally in
PostgreSQL instead) over HTTP. The server is a whole catalog: acquisition
runs go to it with their detector files, which the writer puts into the
*data directory* (``DIR/raw``, or ``[server] data_dir``: a directory writer
and server share, e.g. a mount); the server announces it in its root
metadata (``stemcal.data_dir``) and refuses a file registered from
elsewhere. Readers read slices of the 4D data lazily over HTTP.

The process (:mod:`stemcal.catalog.serverapp`) first takes ``DIR/.server.lock``
(a second ``stemcal serve`` of the same catalog exits at once, naming the
first, and touches nothing of it); then it writes its private configuration
and authentication database and serves tiled's app wrapped in the
append-only rules (:mod:`stemcal.catalog.appendonly`) and the catalog's write
lock (:mod:`stemcal.catalog.writelock`), shared with embedded users of ``DIR``.

Security model
--------------
* Bound to ``127.0.0.1`` unless the configuration (``[server] host``) says
  otherwise; nothing listens on a public interface by default.
* No anonymous access and no password logins: a request needs an API key
  (:mod:`stemcal.catalog.keys`: writer, reader, admin).
* Tiled stores only the SHA-256 of each key (and its first eight hex digits);
  the server process gets only those, never the keys. The authentication
  database lives in a 0700 per-catalog directory under
  ``$XDG_STATE_HOME/stemcal/server``, remade at every start so a changed key
  takes effect. The token-signing secret is tiled's default: random per
  server start, never written anywhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import DEFAULT_HOST, DEFAULT_PORT, check_database_uri
from ..locations import server_state_base
from .embedded import RAW, RUNS_SPEC, catalog_uri, storage
from .keys import (ADMIN_ENV, KEYS_FILE_ENV, READER_ENV, READER_SCOPES, WRITER_ENV, ServerKeys,
                   client_api_key, load_server_keys, read_keys_file)

log = logging.getLogger(__name__)

__all__ = ["ServerKeys", "ServerPlan", "load_server_keys", "client_api_key", "read_keys_file",
           "prepare_server", "start_server", "wait_until_up", "serve", "state_dir",
           "tiled_config", "READER_SCOPES", "WRITER_ENV", "READER_ENV", "ADMIN_ENV",
           "KEYS_FILE_ENV", "DIGESTS_ENV", "JSON_SEQ_EXPORTER"]

#: Environment variable that hands the key digests to the server process.
DIGESTS_ENV = "STEMCAL_SERVER_KEY_DIGESTS"
#: The exporter that lets clients (databroker's ``documents()``) get a run's documents.
JSON_SEQ_EXPORTER = "bluesky_tiled_plugins.exporters:json_seq_exporter"


def state_dir(catalog_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Private (0700) directory of the server for ``catalog_dir``: config and auth database."""
    tag = hashlib.sha256(str(Path(catalog_dir).resolve()).encode()).hexdigest()[:12]
    d = server_state_base(environ) / tag
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def _pg(uri: str, driver: str | None) -> str:
    """A PostgreSQL URI with the SQLAlchemy driver tiled needs (``asyncpg`` for the catalog)."""
    rest = uri.split("://", 1)[1]
    return f"postgresql{'+' + driver if driver else ''}://{rest}"


def tiled_config(catalog: Path, *, auth_db: Path, host: str, port: int,
                 database: str | None = None, tables: str | None = None,
                 data_dir: Path | None = None) -> dict[str, Any]:
    """The tiled server configuration (a dict; written as JSON, which is YAML) for ``catalog``."""
    writable, readable = storage(catalog, [data_dir] if data_dir else [])
    cat_uri = catalog_uri(catalog)
    if database:
        cat_uri = _pg(database, "asyncpg")
        writable = [writable[0], _pg(tables or database, None)]
    return {
        "trees": [{"path": "/", "tree": "catalog", "args": {
            "uri": cat_uri, "writable_storage": writable, "readable_storage": readable,
            "init_if_not_exists": False, "specs": [RUNS_SPEC],
            "metadata": {"stemcal": {"data_dir": str(data_dir or catalog / RAW)}}}}],
        "authentication": {"allow_anonymous_access": False, "providers": [
            {"provider": "stemcal", "authenticator": "stemcal.catalog.serverapp:KeysOnly"}]},
        "database": {"uri": f"sqlite:///{auth_db}", "init_if_not_exists": False},
        "media_types": {"BlueskyRun": {"application/json-seq": JSON_SEQ_EXPORTER}},
        "uvicorn": {"host": host, "port": int(port)},
    }


@dataclasses.dataclass(frozen=True)
class ServerPlan:
    """How to start the server (:func:`prepare_server`): command, environment, address."""

    argv: list[str]
    env: dict[str, str] = dataclasses.field(repr=False)
    host: str
    port: int
    state_dir: Path

    @property
    def uri(self) -> str:
        """``http://host:port/api``: the catalog URI for :func:`stemcal.catalog.open_catalog`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/api"


def prepare_server(catalog_dir: str | os.PathLike, keys: ServerKeys, *,
                   host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                   database: str | None = None, tables: str | None = None,
                   data_dir: str | os.PathLike | None = None,
                   environ: Mapping[str, str] | None = None) -> ServerPlan:
    """Check the settings and return how to start the server; writes nothing.

    Parameters
    ----------
    catalog_dir : path
        Catalog directory (created by the server if missing).
    keys : ServerKeys
        From :func:`load_server_keys`; the server process gets only their digests.
    host, port : str, int
        Where to listen; default ``127.0.0.1:8000``. A wildcard host (``0.0.0.0``,
        ``::``) is allowed but logged as a warning.
    database, tables : str, optional
        PostgreSQL URIs (no password) for the catalog and the event tables
        (default: ``database``), instead of the SQLite files in ``catalog_dir``.
    data_dir : path, optional
        The data directory writers put detector files into (default ``DIR/raw``).
    """
    catalog = Path(catalog_dir).expanduser().resolve()
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    if host in ("0.0.0.0", "::", ""):
        log.warning("the catalog server will listen on every interface (%r)", host)
    if database:
        check_database_uri("the catalog database", database)
    if tables:
        if not database:
            raise ValueError("a table store database needs a catalog database too")
        check_database_uri("the table database", tables)
    sdir = state_dir(catalog, environ)
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in (WRITER_ENV, READER_ENV, ADMIN_ENV, "TILED_API_KEY",
                        "TILED_SINGLE_USER_API_KEY")}
    env[DIGESTS_ENV] = json.dumps(keys.digests())
    repo = str(Path(__file__).resolve().parents[2])  # the server imports stemcal
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "stemcal.catalog.serverapp", "--catalog", str(catalog),
            "--state", str(sdir), "--host", host, "--port", str(int(port))]
    for flag, value in (("--database", database), ("--tables", tables),
                        ("--data-dir", data_dir and Path(data_dir).expanduser().resolve())):
        if value:
            argv += [flag, str(value)]
    return ServerPlan(argv=argv, env=env, host=host, port=int(port), state_dir=sdir)


def start_server(plan: ServerPlan, *, stdout: Any = None, stderr: Any = None) -> subprocess.Popen:
    """Start the server described by ``plan`` (a new process group)."""
    return subprocess.Popen(plan.argv, env=plan.env, stdout=stdout, stderr=stderr,
                            start_new_session=True)


def wait_until_up(host: str, port: int, timeout: float = 60.0,
                  proc: subprocess.Popen | None = None) -> None:
    """Poll ``host:port`` until it accepts connections.

    Raises
    ------
    RuntimeError
        ``proc`` exited first.
    TimeoutError
        Nothing listened within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the catalog server exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no server on {host}:{port} after {timeout} s")


def serve(catalog_dir: str | os.PathLike, *, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, database: str | None = None, tables: str | None = None,
          data_dir: str | os.PathLike | None = None) -> None:
    """Become the catalog server for ``catalog_dir`` (``exec``: signals reach it directly).

    Does not return; errors in the keys or settings raise before anything starts.
    """
    plan = prepare_server(catalog_dir, load_server_keys(), host=host, port=port,
                          database=database, tables=tables, data_dir=data_dir)
    log.info("serving %s on %s", catalog_dir, plan.uri)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(plan.argv[0], plan.argv, plan.env)
