"""The record runs of an embedded catalog, read straight from its SQLite file.

Reading commands (``stemcal history``, ``show``, ``export``) need only the
start and stop metadata of the record runs. Opening the embedded catalog
through tiled imports its server side (about 2 s); this module reads the
same metadata from ``DIR/catalog.db`` with the standard library's
:mod:`sqlite3`, read-only (``mode=ro``: it never writes, never migrates,
and under the catalog's WAL mode never waits for a writer).

Anything unexpected -- no catalog, a damaged or unknown file, a schema
this module does not know -- gives ``None``, and the caller opens the
catalog through tiled as before, whose errors are the ones reported.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from ..locations import is_server_uri
from ..runs import RECORD_PURPOSE

log = logging.getLogger(__name__)

__all__ = ["record_run_metadata"]

#: Top-level runs whose start document has the record purpose, in the order written
#: (tiled's own order: node id). The root node is the one without a parent.
_QUERY = ("SELECT metadata FROM nodes WHERE parent = (SELECT id FROM nodes WHERE parent IS NULL) "
          "AND json_extract(metadata, '$.start.purpose') = ? ORDER BY id")


def record_run_metadata(location: str | Path) -> list[dict[str, Any]] | None:
    """Metadata (``{"start": ..., "stop": ...}``) of every record run in the embedded
    catalog at directory ``location``, whatever its state, in the order written; None for
    a server URI or where it cannot be read this way (the caller then goes through tiled)."""
    if is_server_uri(str(location)):
        return None
    path = Path(location) / "catalog.db"
    if not path.is_file():
        return None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            rows = con.execute(_QUERY, (RECORD_PURPOSE,)).fetchall()
        finally:
            con.close()
        found = [json.loads(text) for (text,) in rows]
    except (sqlite3.Error, ValueError, TypeError) as exc:
        log.debug("catalog %s not read directly (%s); through tiled instead", location, exc)
        return None
    if not all(isinstance(md, dict) and isinstance(md.get("start"), dict) for md in found):
        return None
    return found
