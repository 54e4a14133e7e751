"""Where stemcal keeps its files by default: catalog, spool, configuration, keys, server state.

Each location follows the XDG base directories and can be moved by an
environment variable of its own. Standard library only: the CLI, the
configuration and the catalog all ask here, and nothing here is heavy.

==================  ==========================  ===============================================
what                overridden by               default
==================  ==========================  ===============================================
catalog             ``--catalog``,              ``$XDG_DATA_HOME/stemcal/catalog``
                    ``$STEMCAL_CATALOG``        (``~/.local/share/stemcal/catalog``)
spool               ``$STEMCAL_SPOOL``          ``$XDG_STATE_HOME/stemcal/spool``
configuration       ``$STEMCAL_CONFIG``         ``$XDG_CONFIG_HOME/stemcal/config.toml``
keys file           ``$STEMCAL_KEYS_FILE``      ``$XDG_CONFIG_HOME/stemcal/keys.toml``
server state        --                          ``$XDG_STATE_HOME/stemcal/server/<hash>``
==================  ==========================  ===============================================
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["catalog_location", "is_server_uri", "default_catalog_dir", "spool_dir",
           "config_path", "keys_file_path", "server_state_base"]

_SERVER_URI = re.compile(r"https?://", re.IGNORECASE)
#: A URI's scheme (two characters or more, so that no drive letter looks like one).
_ANY_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _xdg(name: str, fallback: str, environ: Mapping[str, str] | None) -> Path:
    return Path(_env(environ).get(name) or Path.home() / fallback).expanduser()


def is_server_uri(location: str | os.PathLike) -> bool:
    """Whether a catalog location is a tiled server (``http(s)://...``), not a directory."""
    return isinstance(location, str) and bool(_SERVER_URI.match(location))


def default_catalog_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The embedded catalog's directory when none is given: ``$XDG_DATA_HOME/stemcal/catalog``."""
    return _xdg("XDG_DATA_HOME", ".local/share", environ) / "stemcal" / "catalog"


def catalog_location(location: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> str | Path:
    """The catalog to use: ``location``, else ``$STEMCAL_CATALOG``, else the default directory.

    Returns
    -------
    str or Path
        A tiled server URI as given (a ``str``), or a directory (a ``Path``,
        with ``~`` expanded, not resolved).

    Raises
    ------
    ValueError
        A string that looks like a URI but is not ``http(s)://`` (``htp://host``,
        ``http:/host``, ``ftp://host``): taken as a directory it would quietly make a new
        local catalog where the operator meant a server.
    """
    loc = location if location not in (None, "") else _env(environ).get("STEMCAL_CATALOG")
    if not loc:
        return default_catalog_dir(environ)
    if is_server_uri(str(loc)):
        return str(loc)
    uri = _ANY_URI.match(loc) if isinstance(loc, str) else None
    if uri:
        raise ValueError(f"catalog {loc!r} is not an http:// or https:// address of a catalog "
                         f"server (scheme {uri.group(1)!r}) nor a directory; for a directory "
                         f"whose name holds ':/', write it as ./{loc}")
    return Path(loc).expanduser()


def _overridable(var: str, xdg: str, fallback: str, *parts: str,
                 environ: Mapping[str, str] | None) -> Path:
    """``$var`` if set, else ``$xdg/stemcal/parts...`` (``~/fallback`` for an unset ``$xdg``)."""
    env = _env(environ)
    if env.get(var):
        return Path(env[var]).expanduser()
    return _xdg(xdg, fallback, environ).joinpath("stemcal", *parts)


def spool_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The spool directory: ``$STEMCAL_SPOOL``, else ``$XDG_STATE_HOME/stemcal/spool``."""
    return _overridable("STEMCAL_SPOOL", "XDG_STATE_HOME", ".local/state", "spool",
                        environ=environ)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$STEMCAL_CONFIG``, else ``$XDG_CONFIG_HOME/stemcal/config.toml``."""
    return _overridable("STEMCAL_CONFIG", "XDG_CONFIG_HOME", ".config", "config.toml",
                        environ=environ)


def keys_file_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$STEMCAL_KEYS_FILE``, else ``$XDG_CONFIG_HOME/stemcal/keys.toml``."""
    return _overridable("STEMCAL_KEYS_FILE", "XDG_CONFIG_HOME", ".config", "keys.toml",
                        environ=environ)


def server_state_base(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``stemcal serve`` keeps per-catalog state: ``$XDG_STATE_HOME/stemcal/server``."""
    return _xdg("XDG_STATE_HOME", ".local/state", environ) / "stemcal" / "server"
