"""Keep the documents of every run until the catalog has them: the run journal.

:class:`RunKeeper` is subscribed to the RunEngine in place of a bare
``TiledWriter``. For each run it appends every document to a journal file,
``<spool>/runs/<run uid>.jsonl`` (flushed after each document, fsync'd at the
stop document), and passes it on to a ``TiledWriter`` of the catalog. When
the catalog took every document of the run, the journal is removed at the
stop; when the catalog is down, refuses the key or fails in the middle of a
run, nothing more of that run is sent to it and the journal is kept for
``stemcal sync`` (:func:`stemcal.catalog.delivery.sync`), which replays it.
So the acquisition a calibration record points to (``acquisition_uid``) is
never lost, and a process killed in the middle of a run leaves its journal
(up to the last document) behind too.

While a run is open its process holds an exclusive ``flock`` on the journal;
``sync`` leaves locked journals alone (they are being written).

File format: JSON lines. The first line is ``{"format": 1, "run": uid,
"location": catalog, "started": unix time}``; then one ``{"name": ...,
"doc": ...}`` per document (NumPy values as lists); a run that was kept ends
with ``{"kept": reason}``.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..locations import spool_dir
from ..locks import try_lock
from .spool import failure_reason, fsync_dir, redact_location

log = logging.getLogger(__name__)

__all__ = ["RunKeeper", "Journal", "read_journal", "journals", "journal_dir", "try_lock",
           "note_kept"]

FORMAT = 1


def journal_dir(spool: str | os.PathLike | None = None) -> Path:
    """Where run journals live: ``<spool>/runs``."""
    return (Path(spool) if spool is not None else spool_dir()) / "runs"


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a run journal")


@dataclasses.dataclass
class Journal:
    """A run journal read back (:func:`read_journal`)."""

    path: Path
    run_uid: str
    location: str | None
    documents: list[tuple[str, dict]]
    kept: str | None

    @property
    def has_stop(self) -> bool:
        return any(name == "stop" for name, _ in self.documents)


def read_journal(path: str | os.PathLike) -> Journal:
    """The journal at ``path``; a last line cut off by a crash is ignored.

    Raises
    ------
    ValueError
        Not a run journal of a known format.
    """
    p = Path(path)
    docs: list[tuple[str, dict]] = []
    kept = None
    with open(p, encoding="utf-8") as f:
        try:
            head = json.loads(f.readline())
        except ValueError:
            raise ValueError(f"unreadable run journal {p}") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise ValueError(f"unknown run journal format in {p}")
        for line in f:
            try:
                item = json.loads(line)
            except ValueError:  # the last line, cut off mid-write
                break
            if "kept" in item:
                kept = str(item["kept"])
            else:
                docs.append((item["name"], item["doc"]))
    return Journal(p, str(head["run"]), head.get("location"), docs, kept)


def journals(spool: str | os.PathLike | None = None) -> list[Path]:
    """The journal files, oldest first."""
    d = journal_dir(spool)
    return sorted(d.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if d.is_dir() else []


def note_kept(path: Path, reason: str) -> bool:
    """Append why the run of journal ``path`` is kept (the last such line counts), unless
    another process holds the journal (writing or delivering it). True if noted."""
    fd = try_lock(path)
    if fd is None:
        return False
    try:
        if not path.exists():
            return False
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kept": reason}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError as exc:
        log.warning("run journal %s: %s", path, failure_reason(exc))
        return False
    finally:
        os.close(fd)


class _OpenRun:
    """The journal of one open run and whether the catalog still takes its documents.

    A journal that cannot be written (spool directory not writable, disk full) is
    given up with one warning; the run itself goes on.
    """

    def __init__(self, directory: Path, uid: str, location: str | None) -> None:
        self.path = directory / f"{uid}.jsonl"
        self.failed: str | None = None
        self.file: Any = None
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.file = os.fdopen(fd, "a", encoding="utf-8")
            self._line({"format": FORMAT, "run": uid, "location": location,
                        "started": time.time()})
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        log.warning("run journal %s cannot be written (%s); the run is not kept for sync",
                    self.path, failure_reason(exc))
        if self.file is not None:
            self.file.close()
        self.file = None

    def _line(self, obj: dict) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps(obj, default=_plain, allow_nan=True) + "\n")
            self.file.flush()
        except OSError as exc:
            self._give_up(exc)

    def add(self, name: str, doc: dict) -> None:
        self._line({"name": name, "doc": doc})

    def close(self, *, keep: str | None) -> None:
        """Remove the journal (``keep`` None) or keep it, fsync'd, with the reason."""
        if self.file is None:
            return
        try:
            if keep is None:
                self.path.unlink()
            else:
                self._line({"kept": keep})
                if self.file is not None:
                    os.fsync(self.file.fileno())
                    fsync_dir(self.path.parent)
        except OSError as exc:
            log.warning("run journal %s: %s", self.path, failure_reason(exc))
        finally:
            if self.file is not None:
                self.file.close()  # releases the lock


class RunKeeper:
    """A RunEngine callback: every run into the catalog, and into a journal until it is there.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns or UnavailableCatalog
        Where runs go (:func:`stemcal.catalog.open_catalog_or_unavailable`);
        for an unavailable catalog every run is journalled and kept.
    location : str, optional
        The catalog's location, recorded in the journal for ``sync``.
    spool : path, optional
        Spool directory (default :func:`stemcal.locations.spool_dir`).
    """

    def __init__(self, client: Any, location: str | os.PathLike | None = None, *,
                 spool: str | os.PathLike | None = None) -> None:
        from .store import catalog_location_of, tiled_writer

        loc = location if location is not None else catalog_location_of(client)
        self.location = None if loc is None else redact_location(loc)
        self.directory = journal_dir(spool)
        self.unavailable = getattr(client, "reason", None)
        # a stand-in is told of each run kept (a courier delivers it at once)
        self._keep = getattr(client, "keep", None) if self.unavailable is not None else None
        # the catalog's writer is made at the first document (one request to the catalog):
        # a catalog that went away since it was opened then fails that run, which is kept
        # like any run the catalog failed, and the next run tries again
        self._client = client if self.unavailable is None else None
        # a stand-in that a reconnecting session replaces (UnavailableCatalog.found): the
        # runs that start after that go to the catalog
        self._stand_in = client if self.unavailable is not None else None
        self._make_writer = tiled_writer
        self.writer = None
        self._runs: dict[str, _OpenRun] = {}
        self._owner: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self.kept: list[Path] = []  # journals kept for sync, in order

    def _run_of(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("stop", "descriptor", "stream_resource", "resource"):
            run = doc.get("run_start")
        elif name in ("event", "event_page", "stream_datum"):
            run = self._owner.get(doc.get("descriptor", ""))
        elif name in ("datum", "datum_page"):
            run = self._owner.get(doc.get("resource", ""))
        else:
            run = None
        if name in ("descriptor", "stream_resource", "resource") and run is not None:
            self._owner[doc["uid"]] = run
        return run

    def __call__(self, name: str, doc: dict) -> None:
        run_uid = self._run_of(name, doc)
        if name == "start":
            self._found_again()
            self._runs[run_uid] = _OpenRun(self.directory, run_uid, self.location)
            if self.unavailable is not None:
                self._runs[run_uid].failed = self.unavailable
        run = self._runs.get(run_uid) if run_uid is not None else None
        if run is None:
            log.debug("run journal: %s document of an unknown run", name)
            return
        run.add(name, doc)
        if run.failed is None and self._client is not None:
            try:
                if self.writer is None:
                    self.writer = self._make_writer(self._client)
                self.writer(name, doc)
            except Exception as exc:  # noqa: BLE001 - the journal keeps the run
                run.failed = failure_reason(exc)
                log.warning("run %s: the catalog %s failed (%s); the run is kept in %s for "
                            "`stemcal sync`", run_uid, self.location, run.failed, run.path)
        if name == "stop":
            del self._runs[run_uid]
            self._owner = {k: v for k, v in self._owner.items() if v != run_uid}
            run.close(keep=run.failed)
            if run.failed is not None and run.path.exists():
                self.kept.append(run.path)
                if self._keep is not None:
                    self._keep(run_uid)

    def _found_again(self) -> None:
        """Write to the catalog from this run on where the stand-in was replaced by it."""
        back = getattr(self._stand_in, "replaced_by", None)
        if back is None:
            return
        from .store import catalog_location_of

        loc = catalog_location_of(back)
        self.location = redact_location(loc) if loc is not None else self.location
        self.unavailable, self._keep, self._stand_in = None, None, None
        self._client, self.writer = back, None
        log.info("the catalog %s is back: runs go there again", self.location)

    def close(self) -> None:
        """Keep the journals of runs still open (a plan that never stopped them)."""
        for uid, run in list(self._runs.items()):
            run.close(keep=run.failed or "the run was not stopped")
            if run.path.exists():
                self.kept.append(run.path)
            del self._runs[uid]

    def __iter__(self) -> Iterator[Path]:
        """The journals this keeper kept that are still there (not delivered since)."""
        return iter([p for p in self.kept if p.exists()])
