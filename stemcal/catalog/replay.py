"""Deliver a kept run (a run journal, :mod:`stemcal.catalog.journal`) to its catalog.

What :func:`deliver_run` does with a journal of run ``X``:

* the catalog holds ``X`` complete: nothing (already there);
* the catalog does not hold ``X``: the documents are written through
  ``TiledWriter``, as they would have been live;
* the catalog holds a copy of ``X`` whose write was cut off (no stop
  document): the catalog is append-only, so that copy stays, and the whole
  run is written again as a new run (fresh uid) whose start carries
  ``stemcal_copy_of: X``. :func:`stemcal.catalog.queries.resolve_run` finds it
  for ``X``, so a record's ``acquisition_uid`` always resolves to the
  complete copy;
* the journal itself has no stop document (its process was killed in the
  middle of the run): the documents there are delivered once, as an
  incomplete run, which never counts as a calibration; a copy already in the
  catalog is left as it is.

Detector files the run references outside the catalog's data directory
(``DIR/raw`` of an embedded catalog, the ``data_dir`` a server announces)
are copied there first and the references rewritten, so that the catalog
can serve them; copies that were kept in the spool's ``raw/`` are then removed.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ..locations import is_server_uri
from ..runs import resource_path
from .embedded import RAW
from .journal import Journal
from .queries import COMPLETE, COPY_OF

log = logging.getLogger(__name__)

__all__ = ["deliver_run", "data_dir_of", "COPY_OF", "DELIVERED", "ALREADY_THERE", "CUT_OFF"]

DELIVERED, ALREADY_THERE, CUT_OFF = "delivered", "already there", "cut off"
_RUN_START_DOCS = ("descriptor", "stop", "stream_resource", "resource")


def data_dir_of(client: Any, location: str | None) -> Path | None:
    """The directory the catalog reads detector files from: ``DIR/raw``, or a server's
    announced ``data_dir`` (None if it announces none)."""
    if location is not None and not is_server_uri(location):
        return Path(location) / RAW
    announced = (dict(client.metadata or {}).get("stemcal") or {}).get("data_dir")
    return Path(announced) if announced else None


def _renamed(docs: list[tuple[str, dict]], old: str, new: str) -> list[tuple[str, dict]]:
    out = []
    for name, doc in docs:
        doc = copy.deepcopy(doc)
        if name == "start":
            doc["uid"] = new
            doc[COPY_OF] = old
        elif name in _RUN_START_DOCS and doc.get("run_start") == old:
            doc["run_start"] = new
        out.append((name, doc))
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _relocated(docs: list[tuple[str, dict]], data_dir: Path | None,
               spool_raw: Path) -> tuple[list[tuple[str, dict]], list[Path]]:
    """(documents with external files inside ``data_dir``, spool copies to remove after)."""
    if data_dir is None:
        return docs, []
    out, moved = [], []
    for name, doc in docs:
        if name == "stream_resource" and str(doc.get("uri", "")).startswith("file:"):
            src = resource_path(doc["uri"])
            if not _inside(src, data_dir):
                dst = data_dir / src.name
                if not (dst.exists() and dst.stat().st_size == src.stat().st_size):
                    data_dir.mkdir(parents=True, exist_ok=True)
                    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
                    shutil.copyfile(src, tmp)
                    os.replace(tmp, dst)
                doc = {**doc, "uri": "file://localhost" + dst.resolve().as_posix()}
                if _inside(src, spool_raw):
                    moved.append(src)
        out.append((name, doc))
    return out, moved


def _same_file_in(src: Path, data_dir: Path | None) -> Path | None:
    """``data_dir``'s copy of the spool file ``src`` (same name and size), or None."""
    if data_dir is None:
        return None
    dst = data_dir / src.name
    try:
        if dst.is_file() and (not src.exists() or dst.stat().st_size == src.stat().st_size):
            return dst
    except OSError:
        return None
    return None


def _remove_delivered_copies(docs: list[tuple[str, dict]], data_dir: Path | None,
                             spool_raw: Path) -> None:
    """Remove the spool's copies of a delivered run's frames that the data directory holds."""
    for name, doc in docs:
        if name == "stream_resource" and str(doc.get("uri", "")).startswith("file:"):
            src = resource_path(doc["uri"])
            if _inside(src, spool_raw) and src.exists() and _same_file_in(src, data_dir):
                src.unlink(missing_ok=True)
                log.info("removed %s: its run's catalog has it in %s", src, data_dir)


def relocated_record(record: Any, client: Any, location: str | None,
                     spool_raw: Path) -> Any:
    """``record`` with ``fit_settings["data"]["uri"]`` pointing where :func:`deliver_run`
    moved its frames (from ``spool_raw`` into the catalog's data directory; the spool's
    URI kept as ``spooled_uri``); unchanged where they were not in the spool or the data
    directory holds no copy of them yet (their run not delivered)."""
    import dataclasses

    data = dict((record.fit_settings or {}).get("data") or {})
    uri = data.get("uri")
    if not (isinstance(uri, str) and uri.startswith("file:")):
        return record
    try:
        src = resource_path(uri)
    except ValueError:
        return record
    if not _inside(src, spool_raw):
        return record
    dst = _same_file_in(src, data_dir_of(client, location))
    if dst is None:   # not moved yet (its run not delivered)
        return record
    data.update(uri=dst.resolve().as_uri(), spooled_uri=uri)
    return dataclasses.replace(record, fit_settings={**record.fit_settings, "data": data})


def deliver_run(client: Any, journal: Journal, *, location: str | None,
                spool_raw: Path) -> str:
    """Deliver the run of ``journal`` to ``client``; returns what was done (see module docstring).

    Raises
    ------
    Exception
        Whatever the catalog or the file copies raise; the journal stays.
    """
    from .store import run_state, tiled_writer

    state = run_state(client, journal.run_uid)
    if state == COMPLETE:
        # a delivery cut off after the catalog took the run, before the spool's copies of
        # its frames were removed: they are in the data directory, so those go now
        _remove_delivered_copies(journal.documents, data_dir_of(client, location), spool_raw)
        return ALREADY_THERE
    if state is not None and not journal.has_stop:
        return CUT_OFF
    docs = journal.documents
    if state is not None:
        docs = _renamed(docs, journal.run_uid, str(uuid.uuid4()))
    docs, moved = _relocated(docs, data_dir_of(client, location), spool_raw)
    writer = tiled_writer(client)
    for name, doc in docs:
        writer(name, doc)
    for p in moved:
        p.unlink(missing_ok=True)
    log.info("run %s delivered to %s%s", journal.run_uid, location,
             "" if state is None else f" as {docs[0][1]['uid']} (a cut-off copy holds its uid)")
    return DELIVERED if journal.has_stop else CUT_OFF
