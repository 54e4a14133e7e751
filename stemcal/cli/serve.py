"""``stemcal serve``: the catalog as a tiled server with writer, reader and admin keys."""
from __future__ import annotations

import argparse
from typing import Any

from .args import CLIError, add_catalog, integer

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """The ``serve`` subcommand."""
    srv = sub.add_parser("serve", help="serve a catalog directory with tiled (API keys from "
                                       "$STEMCAL_WRITER_KEY/$STEMCAL_READER_KEY/"
                                       "$STEMCAL_ADMIN_KEY or the keys file)")
    add_catalog(srv)
    srv.add_argument("directory", nargs="?", metavar="DIR",
                     help="the catalog directory, the older spelling of --catalog DIR")
    srv.add_argument("--host", help="interface to bind (default: [server] host of the "
                                    "configuration, else 127.0.0.1)")
    srv.add_argument("--port", type=integer("--port", maximum=65535),
                     help="TCP port (default: [server] port of the configuration, else 8000)")
    srv.add_argument("--database", metavar="URI",
                     help="keep the catalog in this PostgreSQL database "
                          "(postgresql://user@host/db, no password; default: [server] database, "
                          "else DIR/catalog.db)")
    srv.add_argument("--tables", metavar="URI",
                     help="PostgreSQL database of the event tables (default: [server] tables, "
                          "else the --database)")
    srv.add_argument("--data-dir", metavar="DIR",
                     help="the data directory writers put detector files into, shared with "
                          "them (default: [server] data_dir, else DIR/raw)")
    srv.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..catalog.server import serve
    from ..config import load_config, server_settings, server_storage
    from ..session import catalog_location
    if args.directory is not None and args.catalog is not None:
        raise CLIError("give the catalog once: --catalog DIR (DIR alone is the older spelling)")
    cfg = load_config()
    host, port = server_settings(cfg)
    stored = server_storage(cfg)
    loc, remote = catalog_location(args.catalog if args.catalog is not None else args.directory)
    if remote:
        raise CLIError(f"serve needs a catalog directory, not a URI ({loc})")
    database = args.database or stored["database"]
    serve(loc, host=args.host or host, port=args.port or port, database=database,
          tables=args.tables or (stored["tables"] if database == stored["database"] else None),
          data_dir=args.data_dir or stored["data_dir"])  # exec: becomes the server
    return 0
