"""Deliver records and runs, or keep them: the one owner of deliver-or-spool.

Above the catalog (:mod:`stemcal.catalog.store`), the spool files
(:mod:`stemcal.catalog.spool`) and the run journals
(:mod:`stemcal.catalog.journal`):

* :func:`write_record_or_spool` puts a record into the spool, writes it to the
  catalog and removes it from the spool once the catalog has it. A failed
  write leaves it spooled with the reason; a write cut off by the death of
  the process leaves it spooled too.
* :func:`open_catalog_or_unavailable` gives a stand-in for a catalog that
  cannot be opened, so that a calibration still runs and keeps its runs and
  record.
* :func:`sync` delivers every kept run and record to its catalog, exactly
  once; a locked entry (being written right now by a live process) is left
  for later.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..locations import catalog_location, is_server_uri
from ..record import CalibrationRecord
from . import replay, store
from .journal import journal_dir, journals, read_journal, try_lock
from .keys import KeyInURIError
from .standin import CatalogUnavailableError, UnavailableCatalog, current_catalog
from .spool import (failure_reason, find, fsync_dir, locked, spool_dir, spool_path, spool_record,
                    spooled)

log = logging.getLogger(__name__)

__all__ = ["UnavailableCatalog", "CatalogUnavailableError", "open_catalog_or_unavailable",
           "write_record_or_spool", "sync", "SyncReport", "Catalogs", "is_refusal",
           "is_not_a_catalog", "answer_within", "current_catalog"]


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the catalog refusing the API key (HTTP 401/403, or no key at all)."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) in (401, 403):
        return True
    return type(exc).__name__ == "CannotPrompt"  # tiled: a server that needs a key, none given


def is_not_a_catalog(exc: BaseException) -> bool:
    """Whether ``exc`` says that a server answered, but not as a tiled server: a page that
    is not JSON (another web server), JSON that is not tiled's description of itself, or
    no such address (HTTP 404). A server error (5xx) or no answer counts as an outage."""
    import json

    from pydantic import ValidationError

    response = getattr(exc, "response", None)
    return (isinstance(exc, (json.JSONDecodeError, ValidationError))
            or getattr(response, "status_code", None) == 404)


#: Seconds to wait for a catalog server to answer when it is opened
#: (``$STEMCAL_CATALOG_TIMEOUT`` overrides): a port that accepts and never answers
#: otherwise held a calibration for about 60 s of tiled's retries before its scan.
OPEN_TIMEOUT = 20.0


def open_timeout() -> float:
    """:data:`OPEN_TIMEOUT`, or ``$STEMCAL_CATALOG_TIMEOUT`` (seconds > 0) where set."""
    text = os.environ.get("STEMCAL_CATALOG_TIMEOUT", "").strip()
    if not text:
        return OPEN_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"$STEMCAL_CATALOG_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def answer_within(request: Callable[[], Any], timeout: float, *, name: str,
                  setting: str = "") -> Any:
    """``request()`` (a catalog request) in a daemon thread, waiting at most ``timeout``
    seconds: its result, or what it raised; ``TimeoutError`` (``"no answer within T s"``
    and ``setting``) past that, the request left to end on its own. A tiled client retries
    a server that accepts and never answers for about a minute."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = request()
        except BaseException as exc:  # handed to the calling thread below
            box["error"] = exc

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s{setting}")
    if "error" in box:
        raise box["error"]
    return box["result"]


def open_catalog_or_unavailable(location: str | Path | None = None, *,
                                readable_storage: Iterable[str | Path] = ()) -> Any:
    """:func:`~stemcal.catalog.store.open_catalog`, or an :class:`UnavailableCatalog` where it
    cannot be opened.

    A server that is down, fails (5xx) or refuses the key, or a directory that
    cannot be created, written or read, gives the stand-in (with one warning) so
    that a calibration can still run and keep what it makes; so does a server that
    does not answer within :func:`open_timeout` (20 s by default). A server that answers
    but is not a tiled server (:func:`is_not_a_catalog`: kept runs could never be
    delivered there) or not a catalog of Bluesky runs, or a URI holding a key, is
    a ``ValueError`` (bad input, nothing to keep yet).
    """
    location = catalog_location(location)
    timeout = open_timeout() if is_server_uri(location) else None
    try:
        if timeout is not None:
            return answer_within(
                lambda: store.open_catalog(location, readable_storage=readable_storage),
                timeout, name="stemcal-catalog-open", setting=" ($STEMCAL_CATALOG_TIMEOUT)")
        return store.open_catalog(location, readable_storage=readable_storage)
    except KeyInURIError:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted below
        if is_server_uri(location) and is_not_a_catalog(exc):
            raise ValueError(f"{location} answers, but not as a tiled catalog server "
                             f"({failure_reason(exc)}): check the address (tiled serves "
                             "http(s)://HOST:PORT/api)") from exc
        if isinstance(exc, ValueError) and "CatalogOfBlueskyRuns" in str(exc):
            raise
        reason, refused = failure_reason(exc), is_refusal(exc)
    if not is_server_uri(location):
        location = Path(location).resolve()
    log.warning("catalog %s cannot be opened (%s); runs and records will be kept in the spool",
                location, reason)
    return UnavailableCatalog(location, reason, refused)


def write_record_or_spool(client: Any, record: CalibrationRecord,
                          images: Mapping[str, np.ndarray] | None = None, *,
                          location: str | Path | None = None) -> tuple[str, bool, str | None]:
    """Write ``record`` to the catalog, keeping it in the spool until the catalog has it.

    The record goes into the spool first (fsync'd, locked against ``sync``),
    then into the catalog (:func:`~stemcal.catalog.store.write_record`); only
    then is the spool file removed. Any failure of the catalog (server down,
    key refused, permission denied, disk full, damaged database; httpx,
    tiled, OSError, SQLite errors...) leaves the record spooled with the
    reason, and so does the process dying in the middle (``kill -9``).

    Parameters
    ----------
    client : CatalogOfBlueskyRuns or UnavailableCatalog
        From :func:`~stemcal.catalog.store.open_catalog` / :func:`open_catalog_or_unavailable`.
    record, images
        As :func:`~stemcal.catalog.store.write_record` (images are checked first:
        bad ones raise, unspooled).
    location : str or path, optional
        The catalog's location if ``client`` was not opened by
        :func:`~stemcal.catalog.store.open_catalog`.

    Returns
    -------
    (uid, spooled, reason)
        ``spooled`` False and ``reason`` None when the catalog has it.

    Raises
    ------
    RecordExistsError
        The catalog already has that record complete (nothing written or kept).
    OSError
        The spool could not be written (then nothing was tried).
    """
    store.check_images(images)
    client = current_catalog(client)
    loc = location if location is not None else store.catalog_location_of(client)
    if isinstance(client, UnavailableCatalog):
        spool_record(record, images, loc, client.reason, refused=client.refused,
                     expected=client.expected)
        client.keep(record.uid)
        return record.uid, True, client.reason
    path, held = spool_record(record, images, loc, "being written to the catalog", hold=True)
    try:
        try:
            store.write_record(client, record, images)
        except store.RecordExistsError:
            _remove(path)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must keep the record
            reason, refused = failure_reason(exc), is_refusal(exc)
        else:
            _remove(path)
            return record.uid, False, None
        log.warning("could not write calibration record %s to %s: %s", record.uid, loc, reason)
        spool_record(record, images, loc, reason, refused=refused)  # the reason, in its place
    finally:
        os.close(held)
    return record.uid, True, reason


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


@dataclasses.dataclass
class SyncReport:
    """What :func:`sync` did, for records and for runs. Each item is ``(uid, location)`` or
    ``(uid, location, reason)``; ``busy`` are entries a live process is writing now."""

    delivered: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    already_there: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    pending: list[tuple[str, str | None, str]] = dataclasses.field(default_factory=list)
    runs_delivered: list[tuple[str, str | None, str]] = dataclasses.field(default_factory=list)
    runs_pending: list[tuple[str, str | None, str]] = dataclasses.field(default_factory=list)
    busy: list[str] = dataclasses.field(default_factory=list)
    #: ``(path, reason)`` of spool files that cannot be read (cut off, overwritten): left in
    #: place, named, and the others delivered all the same.
    damaged: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def stuck(self) -> bool:
        """Whether something stays kept because its catalog failed or its file cannot be
        read (``sync`` exits 1)."""
        return bool(self.pending or self.runs_pending or self.damaged)

    def to_dict(self) -> dict[str, Any]:
        return {"delivered": [{"uid": u, "catalog": loc} for u, loc in self.delivered],
                "already_there": [{"uid": u, "catalog": loc} for u, loc in self.already_there],
                "pending": [{"uid": u, "catalog": loc, "reason": r} for u, loc, r in self.pending],
                "runs": {"delivered": [{"uid": u, "catalog": loc, "how": h}
                                       for u, loc, h in self.runs_delivered],
                         "pending": [{"uid": u, "catalog": loc, "reason": r}
                                     for u, loc, r in self.runs_pending]},
                "busy": list(self.busy),
                "damaged": [{"path": p, "reason": r} for p, r in self.damaged]}


class Catalogs:
    """Catalog clients by location, opened once; a location that failed stays failed."""

    def __init__(self, opener: Callable[[str], Any]) -> None:
        self.opener = opener
        self.clients: dict[str, Any] = {}
        self.failed: dict[str, str] = {}

    def get(self, loc: str | None) -> tuple[Any, str | None]:
        if loc is None:
            return None, "no target catalog recorded"
        if loc in self.failed:
            return None, self.failed[loc]
        if loc not in self.clients:
            try:
                self.clients[loc] = self.opener(loc)
            except Exception as exc:  # noqa: BLE001 - any failure keeps it for later
                self.failed[loc] = failure_reason(exc)
                return None, self.failed[loc]
        return self.clients[loc], None


def _claimed(items: Iterable[Any], path_of: Callable[[Any], Path],
             report: SyncReport) -> Iterator[Any]:
    """The items whose file this process could lock (held while the caller works on one);
    a file locked by a live writer is reported ``busy``, one gone meanwhile skipped."""
    for item in items:
        path = path_of(item)
        fd = try_lock(path)
        if fd is None:
            if path.exists():
                report.busy.append(path.stem)
            continue
        try:
            if path.exists():
                yield item
        finally:
            os.close(fd)


def _attempt(catalogs: Catalogs, loc: str | None, uid: str,
             pending: list[tuple[str, str | None, str]], work: Callable[[Any], Any]) -> bool:
    """``work(client)`` for the catalog at ``loc``; on any failure ``(uid, loc, reason)`` goes
    to ``pending`` and the answer is False."""
    client, why = catalogs.get(loc)
    if client is None:
        pending.append((uid, loc, why))
        return False
    try:
        work(client)
    except Exception as exc:  # noqa: BLE001 - any failure keeps it for later
        pending.append((uid, loc, failure_reason(exc)))
        return False
    return True


def _sync_runs(d: Path, catalogs: Catalogs, report: SyncReport,
               only: Collection[str] | None) -> None:
    if only is None:
        paths = journals(d)
    else:  # the named ones only: no other journal is opened
        paths = [p for p in (journal_dir(d) / f"{uid}.jsonl" for uid in only) if p.exists()]
    for path in _claimed(paths, lambda p: p, report):
        try:
            journal = read_journal(path)
        except (OSError, ValueError) as exc:
            log.warning("%s", exc)
            report.damaged.append((str(path), str(exc)))
            continue
        how: list[str] = []
        if _attempt(catalogs, journal.location, journal.run_uid, report.runs_pending,
                    lambda c: how.append(replay.deliver_run(c, journal, location=journal.location,
                                                            spool_raw=d / "raw"))):
            report.runs_delivered.append((journal.run_uid, journal.location, how[0]))
            _remove(path)


def _deliver_record(client: Any, entry: Any, report: SyncReport, spool_raw: Path) -> None:
    # write_record looks whether the catalog holds the record complete already (and
    # refuses): asking here first as well cost two more requests to the catalog. Its frames
    # moved with its run (runs are synced first): the record says where they are now
    record = replay.relocated_record(entry.record, client, entry.location, spool_raw)
    try:
        store.write_record(client, record, entry.images)
    except store.RecordExistsError:
        report.already_there.append((entry.uid, entry.location))
    else:
        report.delivered.append((entry.uid, entry.location))


def _kept_reason(path: Path) -> str | None:
    """Why the run journal at ``path`` was kept, where it can be read."""
    try:
        return read_journal(path).kept
    except (OSError, ValueError):
        return None


def _sync_records(d: Path, catalogs: Catalogs, report: SyncReport,
                  only: Collection[str] | None) -> None:
    if only is None:
        entries = spooled(d, damaged=report.damaged)
    else:  # the named ones only: no other spool file is read
        entries = []
        for uid in only:
            try:
                entry = find(uid, d)
            except ValueError as exc:
                log.warning("%s", exc)
                report.damaged.append((str(spool_path(uid, d)), str(exc)))
                continue
            if entry is not None:
                entries.append(entry)
    damaged = {Path(p).stem for p, _ in report.damaged}
    why_runs = {uid: why for uid, _, why in report.runs_pending}
    why_runs.update((uid, "being written") for uid in report.busy)
    for entry in _claimed(entries, lambda e: e.path, report):
        run = entry.record.acquisition_uid
        run_journal = journal_dir(d) / f"{run}.jsonl"
        if run and run not in damaged and run_journal.exists():
            # its run is still kept (pending, being written, or not asked for): delivered
            # now, the record would name frames that move when the run is delivered. Where
            # the catalog cannot be had at all, that is the reason that counts
            client, why = catalogs.get(entry.location)
            if client is None:
                report.pending.append((entry.uid, entry.location, why))
                continue
            why = why_runs.get(run) or _kept_reason(run_journal)
            why = f" ({why})" if why else ""
            report.pending.append((entry.uid, entry.location,
                                   f"its acquisition run {run} is not delivered yet{why}"))
            continue
        if _attempt(catalogs, entry.location, entry.uid, report.pending,
                    lambda c: _deliver_record(c, entry, report, d / "raw")):
            _remove(entry.path)
            log.info("spooled record %s is in catalog %s", entry.uid, entry.location)


def sync(*, open_catalog: Callable[[str], Any] | None = None,
         directory: str | os.PathLike | None = None, only: Collection[str] | None = None,
         catalogs: Catalogs | None = None) -> SyncReport:
    """Deliver every kept run and record to its catalog, exactly once.

    Runs first (so that a record's ``acquisition_uid`` resolves once the
    record is there), then records. A record is identified by its uid
    (``start.calibration.uid``): one the catalog already holds complete is not
    written again; one of which the catalog holds only a cut-off copy (no stop
    document) is written again as a new run, and the cut-off copy stays,
    never counting as a record. So a sync is never stuck on a cut-off write.
    A run or record whose catalog cannot be opened or written stays kept with
    the reason; one a live process is writing right now is left alone (``busy``).
    A record whose acquisition run is still kept (not delivered by this sync, its
    journal readable) waits for it: delivered first, it would name frames that move
    into the catalog's data directory with the run.

    Parameters
    ----------
    open_catalog : callable, optional
        ``location -> client``; default :func:`stemcal.catalog.store.open_catalog`.
    directory : path, optional
        Spool directory; default :func:`spool_dir`.
    only : collection of str, optional
        Deliver only the runs and records with these uids (the others are not looked at).
    catalogs : optional
        Clients already opened, by location (:class:`Catalogs`; the courier's); default
        a new one opened with ``open_catalog``.
    """
    d = Path(directory) if directory is not None else spool_dir()
    report = SyncReport()
    if not d.is_dir():
        return report
    if catalogs is None:
        catalogs = Catalogs(open_catalog or store.open_catalog)
    with locked(d):
        _sync_runs(d, catalogs, report, only)
        _sync_records(d, catalogs, report, only)
    return report
