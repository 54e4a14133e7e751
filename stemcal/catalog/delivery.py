"""Deliver a calibration record, or keep it: the one owner of deliver-or-spool.

Above both the catalog (:mod:`stemcal.catalog.store`) and the spool
(:mod:`stemcal.catalog.spool`): :func:`write_record_or_spool` writes a record
or, if the catalog fails in any way, spools it; :func:`sync` later delivers
every spooled record to its catalog exactly once;
:func:`open_catalog_or_unavailable` gives a stand-in for a catalog that
cannot be opened, so that a calibration still runs and spools its record.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..locations import catalog_location, is_server_uri
from ..record import CalibrationRecord
from . import store
from .spool import failure_reason, fsync_dir, locked, spool_dir, spool_record, spooled

log = logging.getLogger(__name__)

__all__ = ["UnavailableCatalog", "open_catalog_or_unavailable", "write_record_or_spool", "sync",
           "SyncReport"]


class UnavailableCatalog:
    """Stands in for a catalog that could not be opened; records for it are spooled.

    Made by :func:`open_catalog_or_unavailable`; :func:`write_record_or_spool`
    spools every record given with it. It supports nothing else.
    """

    specs: tuple = ()

    def __init__(self, location: str | Path | None, reason: str) -> None:
        self._stemcal_location = None if location is None else str(location)
        self.reason = reason

    def __repr__(self) -> str:
        return f"UnavailableCatalog({self._stemcal_location!r}, {self.reason!r})"


def open_catalog_or_unavailable(location: str | Path | None = None, *,
                                readable_storage: Iterable[str | Path] = ()) -> Any:
    """:func:`~stemcal.catalog.store.open_catalog`, or an :class:`UnavailableCatalog` where it
    cannot be opened.

    A server that is down or refuses the key, or a directory that cannot be
    created or written, gives the stand-in (with a warning) so that a
    calibration can still run and spool its record. A server that answers but
    is not a catalog of Bluesky runs is still a ``ValueError``.
    """
    location = catalog_location(location)
    try:
        return store.open_catalog(location, readable_storage=readable_storage)
    except ValueError as exc:
        if "CatalogOfBlueskyRuns" in str(exc):
            raise
        reason = failure_reason(exc)
    except Exception as exc:  # noqa: BLE001 - whatever stops it, records must not be lost
        reason = failure_reason(exc)
    if not is_server_uri(location):
        location = Path(location).resolve()
    log.warning("catalog %s cannot be opened (%s); records will be spooled", location, reason)
    return UnavailableCatalog(location, reason)


def write_record_or_spool(client: Any, record: CalibrationRecord,
                          images: Mapping[str, np.ndarray] | None = None, *,
                          location: str | Path | None = None) -> tuple[str, bool, str | None]:
    """Write ``record`` (:func:`~stemcal.catalog.store.write_record`), or spool it if the
    catalog fails.

    Any failure of the catalog write (server down, permission denied, disk full,
    path not creatable; httpx, tiled, OSError, SQLite errors...) puts the record,
    its images and the catalog location into the durable spool
    (:func:`stemcal.catalog.spool.spool_record`) for ``stemcal sync``.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns or UnavailableCatalog
        From :func:`~stemcal.catalog.store.open_catalog` / :func:`open_catalog_or_unavailable`.
    record, images
        As :func:`write_record` (images are checked first: bad ones raise, unspooled).
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
        The catalog already has that uid (nothing written or spooled).
    OSError
        The catalog failed and the spool could not be written either.
    """
    store.check_images(images)
    loc = location if location is not None else store.catalog_location_of(client)
    if isinstance(client, UnavailableCatalog):
        reason = client.reason
    else:
        try:
            store.write_record(client, record, images)
            return record.uid, False, None
        except store.RecordExistsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must keep the record
            reason = failure_reason(exc)
            log.warning("could not write calibration record %s to %s: %s", record.uid, loc, reason)
    spool_record(record, images, loc, reason)
    return record.uid, True, reason


@dataclasses.dataclass
class SyncReport:
    """What :func:`sync` did. Each item is ``(uid, location)`` or ``(uid, location, reason)``."""

    delivered: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    already_there: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    pending: list[tuple[str, str | None, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"delivered": [{"uid": u, "catalog": loc} for u, loc in self.delivered],
                "already_there": [{"uid": u, "catalog": loc} for u, loc in self.already_there],
                "pending": [{"uid": u, "catalog": loc, "reason": r} for u, loc, r in self.pending]}


def sync(*, open_catalog: Callable[[str], Any] | None = None,
         directory: str | os.PathLike | None = None) -> SyncReport:
    """Deliver every spooled record to its catalog, exactly once.

    Records are idempotent by uid: one whose uid the catalog already holds
    (e.g. written just before a crash, or by an earlier sync) is not written
    again; its spool file is removed if the catalog's run is complete (has a
    stop document), else kept and reported. A record whose catalog cannot be
    opened or written stays spooled with the reason.

    Parameters
    ----------
    open_catalog : callable, optional
        ``location -> client``; default :func:`stemcal.catalog.store.open_catalog`.
    directory : path, optional
        Spool directory; default :func:`spool_dir`.
    """
    opener = open_catalog or store.open_catalog
    d = Path(directory) if directory is not None else spool_dir()
    report = SyncReport()
    if not d.is_dir():
        return report
    with locked(d):
        clients: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for entry in spooled(d):
            loc = entry.location
            if loc is None:
                report.pending.append((entry.uid, None, "no target catalog recorded"))
                continue
            if loc in failed:
                report.pending.append((entry.uid, loc, failed[loc]))
                continue
            if loc not in clients:
                try:
                    clients[loc] = opener(loc)
                except Exception as exc:  # noqa: BLE001 - any failure keeps the record spooled
                    failed[loc] = failure_reason(exc)
                    report.pending.append((entry.uid, loc, failed[loc]))
                    continue
            client = clients[loc]
            try:
                state = store.run_state(client, entry.uid)
                if state is None:
                    store.write_record(client, entry.record, entry.images)
                    report.delivered.append((entry.uid, loc))
                elif state == "complete":
                    report.already_there.append((entry.uid, loc))
                else:
                    report.pending.append((entry.uid, loc, "the catalog holds an incomplete run "
                                           "with this uid (a write was cut off); not rewritten"))
                    continue
            except Exception as exc:  # noqa: BLE001
                report.pending.append((entry.uid, loc, failure_reason(exc)))
                continue
            entry.path.unlink()
            fsync_dir(d)
            log.info("spooled record %s is in catalog %s", entry.uid, loc)
    return report
