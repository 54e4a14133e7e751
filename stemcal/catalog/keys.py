"""API keys of the catalog server: where they come from and what each may do.

Three keys, all chosen by the operator (lower-case hex, >= 32 digits, e.g.
``openssl rand -hex 32``):

* the *writer* key (``$STEMCAL_WRITER_KEY``): the beamline's. Reads, adds
  runs (with their detector files) and finishes them; it can neither change
  nor delete a run once written (:mod:`stemcal.catalog.appendonly`);
* the optional *reader* key (``$STEMCAL_READER_KEY``): ``read:metadata`` and
  ``read:data`` only;
* the optional *admin* key (``$STEMCAL_ADMIN_KEY``): everything, including
  changing and deleting runs. The beamline does not hold it; without one,
  nothing written can be changed or deleted through the server at all.

Instead of the environment, a keys file may hold them (``writer_key``,
``reader_key``, ``admin_key``; ``$STEMCAL_KEYS_FILE``, default
``$XDG_CONFIG_HOME/stemcal/keys.toml``); it must be owned by the user and have
no group/other permissions (``chmod 600``), else it is refused. Keys are never
taken from the command line, and a catalog URI holding one is refused
(:func:`refuse_key_in_uri`): it would show in process lists and access logs.
Clients send ``$TILED_API_KEY``, else the keys file's ``api_key``
(:func:`client_api_key`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..locations import keys_file_path

__all__ = ["ServerKeys", "KeyInURIError", "load_server_keys", "client_api_key", "read_keys_file",
           "refuse_key_in_uri", "digest", "WRITER_ENV", "READER_ENV", "ADMIN_ENV",
           "KEYS_FILE_ENV", "READER_SCOPES", "WRITER_SCOPES"]

WRITER_ENV = "STEMCAL_WRITER_KEY"
READER_ENV = "STEMCAL_READER_KEY"
ADMIN_ENV = "STEMCAL_ADMIN_KEY"
KEYS_FILE_ENV = "STEMCAL_KEYS_FILE"
#: Scopes of the reader key: it can list, read metadata and read arrays, nothing else.
READER_SCOPES = ["read:metadata", "read:data"]
#: Scopes of the writer key: create runs, write their metadata and data, register detector
#: files (``register``); no ``delete:*`` and no key administration. What it writes is further
#: limited to adding (:mod:`stemcal.catalog.appendonly`).
WRITER_SCOPES = ["read:metadata", "read:data", "create:node", "write:metadata", "write:data",
                 "register"]
_HEX_KEY = re.compile(r"[0-9a-f]{32,}")


class KeyInURIError(ValueError):
    """A catalog URI holds an API key (or a password)."""


@dataclasses.dataclass(frozen=True)
class ServerKeys:
    """The writer key and the optional reader and admin keys (lower-case hex, >= 32 digits)."""

    writer: str = dataclasses.field(repr=False)
    reader: str | None = dataclasses.field(default=None, repr=False)
    admin: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        keys = {"writer": self.writer, "reader": self.reader, "admin": self.admin}
        for name, key in keys.items():
            if key is not None and not _HEX_KEY.fullmatch(key):
                raise ValueError(f"the {name} key must be at least 32 lower-case hex digits "
                                 "(e.g. `openssl rand -hex 32`)")
        given = [(n, k) for n, k in keys.items() if k is not None]
        for i, (a, ka) in enumerate(given):
            for b, kb in given[i + 1:]:
                if secrets.compare_digest(ka, kb):
                    raise ValueError(f"the {b} key must differ from the {a} key")

    def digests(self) -> dict[str, list[str]]:
        """``{role: [first eight hex digits, SHA-256 hex]}``: what the server stores of each key."""
        return {role: digest(key) for role, key in (("writer", self.writer),
                                                    ("reader", self.reader),
                                                    ("admin", self.admin)) if key is not None}


def digest(key: str) -> list[str]:
    """``[first eight hex digits, SHA-256 of the key's bytes (hex)]``: tiled's form of a key."""
    return [key[:8], hashlib.sha256(bytes.fromhex(key)).hexdigest()]


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
    """The server's keys from ``$STEMCAL_WRITER_KEY``/``_READER_KEY``/``_ADMIN_KEY``, else the
    keys file.

    Raises
    ------
    ValueError
        No writer key anywhere, or a key is malformed (the message never shows a key).
    PermissionError
        The keys file is not private.
    """
    env = os.environ if environ is None else environ
    keys = {"writer": env.get(WRITER_ENV) or None, "reader": env.get(READER_ENV) or None,
            "admin": env.get(ADMIN_ENV) or None}
    path = keys_file_path(env)
    if path.exists() and None in keys.values():
        data = read_keys_file(path)
        keys = {role: key or data.get(f"{role}_key") for role, key in keys.items()}
    if not keys["writer"]:
        raise ValueError(f"no writer key: set ${WRITER_ENV} (and optionally ${READER_ENV}, "
                         f"${ADMIN_ENV}) or put writer_key in {path} (chmod 600); keys are never "
                         "taken from the command line")
    return ServerKeys(**{role: None if key is None else str(key) for role, key in keys.items()})


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


def refuse_key_in_uri(uri: str) -> None:
    """Raise :class:`KeyInURIError` if the catalog URI ``uri`` holds an API key or a password."""
    parts = urllib.parse.urlsplit(uri)
    names = {k.lower() for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
    if "api_key" in names or "@" in parts.netloc:
        raise KeyInURIError("the catalog URI holds an API key or password; a key there would "
                            "show in process lists and access logs. Give the URI without it and "
                            "set $TILED_API_KEY (or api_key in the keys file)")
