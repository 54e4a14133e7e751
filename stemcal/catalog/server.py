"""A tiled server for a stemcal catalog, with API-key authentication.

``stemcal serve DIR`` serves the embedded catalog in ``DIR`` (the same
``catalog.db`` / ``data/`` / ``tables.duckdb`` layout as
:func:`stemcal.catalog.open_catalog`) over HTTP through ``tiled serve config``.

Security model
--------------
* Bound to ``127.0.0.1`` unless the configuration (``[server] host``) says
  otherwise; nothing listens on a public interface by default.
* No anonymous access and no password logins (:class:`KeysOnly`): a request
  needs an API key. Two keys, both chosen by the operator:

  - the *writer* key (``$STEMCAL_WRITER_KEY``): read, create and write;
  - the optional *reader* key (``$STEMCAL_READER_KEY``): ``read:metadata`` and
    ``read:data`` only, so it cannot write.

  Instead of the environment, a keys file may hold them (``writer_key``,
  ``reader_key``; ``$STEMCAL_KEYS_FILE``, default
  ``$XDG_CONFIG_HOME/stemcal/keys.toml``); it must be owned by the user and
  have no group/other permissions (``chmod 600``), else it is refused.
  Keys are never taken from the command line.
* Tiled stores only the SHA-256 of each key (and its first eight hex digits) in
  its authentication database (``auth.db`` in a 0700 per-catalog directory
  under ``$XDG_STATE_HOME/stemcal/server``, remade at every start so a changed
  key takes effect). The token-signing secret is tiled's default: random per
  server start, never written anywhere.

Clients (:func:`stemcal.catalog.open_catalog`) send ``$TILED_API_KEY``, else
the keys file's ``api_key``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Mapping

from tiled.server.protocols import InternalAuthenticator

from ..config import DEFAULT_HOST, DEFAULT_PORT
from ..locations import keys_file_path, server_state_base

log = logging.getLogger(__name__)

WRITER_ENV = "STEMCAL_WRITER_KEY"
READER_ENV = "STEMCAL_READER_KEY"
KEYS_FILE_ENV = "STEMCAL_KEYS_FILE"
#: Scopes of the reader key: it can list, read metadata and read arrays, nothing else.
READER_SCOPES = ["read:metadata", "read:data"]
_HEX_KEY = re.compile(r"[0-9a-f]{32,}")
_RUNS_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}


class KeysOnly(InternalAuthenticator):
    """A tiled authenticator that accepts no password: only API keys get in."""

    def __init__(self) -> None:
        self.confirmation_message = ""

    async def authenticate(self, username: str, password: str) -> None:  # noqa: D102
        return None


@dataclasses.dataclass(frozen=True)
class ServerKeys:
    """The writer key and the optional reader key (lower-case hex, >= 32 digits)."""

    writer: str = dataclasses.field(repr=False)
    reader: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, key in (("writer", self.writer), ("reader", self.reader)):
            if key is not None and not _HEX_KEY.fullmatch(key):
                raise ValueError(f"the {name} key must be at least 32 lower-case hex digits "
                                 "(e.g. `openssl rand -hex 32`)")
        if self.reader is not None and secrets.compare_digest(self.reader, self.writer):
            raise ValueError("the reader key must differ from the writer key")


def read_keys_file(path: str | os.PathLike) -> dict[str, Any]:
    """The TOML keys file at ``path``, after checking it is private.

    Raises
    ------
    PermissionError
        The file is readable or writable by group or others, or owned by another user.
    ValueError
        It is not valid TOML.
    """
    p = Path(path)
    st = p.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise PermissionError(f"keys file {p} has permissions {mode:04o}; it must be private "
                              f"(chmod 600 {p})")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(f"keys file {p} is owned by uid {st.st_uid}, not by this user")
    with open(p, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"keys file {p}: {exc}") from None


def load_server_keys(environ: Mapping[str, str] | None = None) -> ServerKeys:
    """The server's keys from ``$STEMCAL_WRITER_KEY``/``$STEMCAL_READER_KEY``, else the keys file.

    Raises
    ------
    ValueError
        No writer key anywhere, or a key is malformed (the message never shows a key).
    PermissionError
        The keys file is not private.
    """
    env = os.environ if environ is None else environ
    writer, reader = env.get(WRITER_ENV) or None, env.get(READER_ENV) or None
    path = keys_file_path(env)
    if writer is None and path.exists():
        data = read_keys_file(path)
        writer, reader = data.get("writer_key"), reader or data.get("reader_key")
    if not writer:
        raise ValueError(f"no writer key: set ${WRITER_ENV} (and optionally ${READER_ENV}) or "
                         f"put writer_key in {path} (chmod 600); keys are never taken from "
                         "the command line")
    return ServerKeys(str(writer), None if reader is None else str(reader))


def client_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The API key a client sends: ``$TILED_API_KEY``, else ``api_key`` of a private keys file."""
    env = os.environ if environ is None else environ
    if env.get("TILED_API_KEY"):
        return env["TILED_API_KEY"]
    path = keys_file_path(env)
    if path.exists():
        key = read_keys_file(path).get("api_key")
        return str(key) if key else None
    return None


def state_dir(catalog_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Private (0700) directory of the server for ``catalog_dir``: config and auth database."""
    tag = hashlib.sha256(str(catalog_dir.resolve()).encode()).hexdigest()[:12]
    d = server_state_base(environ) / tag
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def _init_auth_db(db: Path, keys: ServerKeys) -> None:
    """Make a fresh tiled authentication database holding the hashes of ``keys``."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from tiled.alembic_utils import stamp_head
    from tiled.authn_database import orm
    from tiled.authn_database.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.authn_database.core import create_service, initialize_database

    for old in db.parent.glob(db.name + "*"):  # the db and any -journal/-wal left over
        old.unlink()
    url = f"sqlite+aiosqlite:///{db}"

    async def setup() -> None:
        engine = create_async_engine(url)
        try:
            await initialize_database(engine)
            async with AsyncSession(engine, expire_on_commit=False) as session:
                for key, scopes, note in ((keys.writer, ["inherit"], "stemcal writer"),
                                          (keys.reader, READER_SCOPES, "stemcal reader")):
                    if key is None:
                        continue
                    principal = await create_service(session, "user")
                    secret = bytes.fromhex(key)
                    session.add(orm.APIKey(principal_id=principal.id, note=note, scopes=scopes,
                                           first_eight=key[:8],
                                           hashed_secret=hashlib.sha256(secret).digest()))
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


def _config_yaml(catalog_dir: Path, auth_db: Path, host: str, port: int) -> str:
    import json

    q = json.dumps  # JSON strings are valid YAML scalars
    return "\n".join([
        "trees:",
        "  - path: /",
        "    tree: catalog",
        "    args:",
        f"      uri: {q('sqlite:///' + str(catalog_dir / 'catalog.db'))}",
        "      writable_storage:",
        f"        - {q(str(catalog_dir / 'data'))}",
        f"        - {q('duckdb:///' + str(catalog_dir / 'tables.duckdb'))}",
        f"      readable_storage: [{q(str(catalog_dir / 'data'))}]",
        "      init_if_not_exists: true",
        f"      specs: [{q(_RUNS_SPEC)}]",
        "authentication:",
        "  allow_anonymous_access: false",
        "  providers:",
        "    - provider: stemcal",
        "      authenticator: stemcal.catalog.server:KeysOnly",
        "database:",
        f"  uri: {q('sqlite:///' + str(auth_db))}",
        "  init_if_not_exists: false",
        "uvicorn:",
        f"  host: {q(host)}",
        f"  port: {int(port)}",
        "",
    ])


@dataclasses.dataclass(frozen=True)
class ServerPlan:
    """What :func:`prepare_server` made: the command, its environment and the address."""

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
                   environ: Mapping[str, str] | None = None) -> ServerPlan:
    """Write the server's private config and auth database; return how to start it.

    Parameters
    ----------
    catalog_dir : path
        Embedded catalog directory (created if missing).
    keys : ServerKeys
        From :func:`load_server_keys`.
    host, port : str, int
        Where to listen; default ``127.0.0.1:8000``. A wildcard host (``0.0.0.0``,
        ``::``) is allowed but logged as a warning.
    """
    catalog = Path(catalog_dir).expanduser().resolve()
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    (catalog / "data").mkdir(parents=True, exist_ok=True)
    if host in ("0.0.0.0", "::", ""):
        log.warning("the catalog server will listen on every interface (%r)", host)
    sdir = state_dir(catalog, environ)
    auth_db = sdir / "auth.db"
    _init_auth_db(auth_db, keys)
    cfg = sdir / "config.yml"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_config_yaml(catalog, auth_db, host, int(port)))
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in (WRITER_ENV, READER_ENV, "TILED_API_KEY", "TILED_SINGLE_USER_API_KEY")}
    repo = str(Path(__file__).resolve().parents[2])  # the server imports stemcal.catalog.server:KeysOnly
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "tiled", "serve", "config", str(cfg)]
    return ServerPlan(argv=argv, env=env, host=host, port=int(port), state_dir=sdir)


def start_server(plan: ServerPlan, *, stdout: Any = None, stderr: Any = None) -> subprocess.Popen:
    """Start ``tiled serve`` as described by ``plan`` (a new process group)."""
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
            raise RuntimeError(f"the tiled server exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no server on {host}:{port} after {timeout} s")


def serve(catalog_dir: str | os.PathLike, *, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT) -> None:
    """Become the tiled server for ``catalog_dir`` (``exec``: signals reach tiled directly).

    Does not return; errors in the keys or settings raise before anything starts.
    """
    plan = prepare_server(catalog_dir, load_server_keys(), host=host, port=port)
    log.info("serving %s on %s", catalog_dir, plan.uri)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(plan.argv[0], plan.argv, plan.env)


__all__ = ["KeysOnly", "ServerKeys", "ServerPlan", "load_server_keys", "client_api_key",
           "keys_file_path", "read_keys_file", "prepare_server", "start_server", "wait_until_up",
           "serve", "READER_SCOPES"]
