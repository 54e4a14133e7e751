"""Read calibration records back: history, one record, the one in force, its images.

Records are runs with ``purpose`` :data:`stemcal.runs.RECORD_PURPOSE`
(written by :func:`stemcal.catalog.store.write_record`), identified by
``start.calibration.uid``. Only a *complete* run counts: one whose stop
document says ``exit_status == "success"`` (the query
``Key("stop.exit_status") == "success"``, the same on SQLite and
PostgreSQL). A run without a stop document (its write was cut off) or with
another exit status is never a valid calibration; :func:`history_entries`
shows it with its state. Sorting happens here, not in tiled: its SQLite
catalog orders metadata as JSON text.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..checks import is_real
from ..record import CalibrationRecord
from ..runs import OPTICS_STATE_KEYS, RECORD_PURPOSE

log = logging.getLogger(__name__)

__all__ = ["calibration_history", "history_entries", "HistoryEntry", "get_record", "staleness",
           "latest_calibration", "record_images", "check_tolerances", "record_state", "state_of",
           "COMPLETE", "INCOMPLETE", "FAILED", "resolve_run", "record_runs", "COPY_OF",
           "entries_from_metadata", "find_entry"]

_UID_PREFIX = re.compile(r"[0-9a-f-]{8,36}")

#: Start key of a run that ``stemcal sync`` wrote again because a cut-off copy holds its uid.
COPY_OF = "stemcal_copy_of"
#: States of a run (:func:`state_of`). Only a complete record run is a calibration.
COMPLETE, INCOMPLETE, FAILED = "complete", "incomplete", "failed"


def state_of(metadata: Mapping[str, Any]) -> str:
    """The state of a run from its metadata.

    :data:`COMPLETE`: a stop document with ``exit_status == "success"``;
    :data:`INCOMPLETE`: no stop document (its write was cut off, or it is still
    being written); :data:`FAILED`: a stop document with another exit status.
    """
    stop = metadata.get("stop")
    if not stop:
        return INCOMPLETE
    return COMPLETE if stop.get("exit_status") == "success" else FAILED


def _calibrations(client: Any) -> Any:
    """The calibration runs of ``client`` (a tiled search result), whatever their state."""
    from tiled.queries import Key

    return client.search(Key("purpose") == RECORD_PURPOSE)


def _complete(runs: Any) -> Any:
    """The runs of ``runs`` whose stop document says success (the valid copies)."""
    from tiled.queries import Key

    return runs.search(Key("stop.exit_status") == "success")


def record_runs(client: Any, uid: str) -> Any:
    """Every run holding record ``uid`` (``start.calibration.uid``), whatever its state."""
    from tiled.queries import Key

    return _calibrations(client).search(Key("calibration.uid") == uid)


def record_state(client: Any, uid: str) -> str | None:
    """Whether the catalog holds record ``uid`` (full uid).

    Returns
    -------
    str or None
        :data:`COMPLETE` if a complete copy is there; else :data:`INCOMPLETE`
        if a copy whose write was cut off is, else :data:`FAILED` if only a copy
        with another exit status is; None if none is.
    """
    return state_of_copies(record_copies(client, uid))


def record_copies(client: Any, uid: str) -> dict[str, dict]:
    """Run uid -> metadata of every run holding record ``uid``, whatever its state (one
    request: the search's page holds each run's metadata)."""
    return {key: run.metadata for key, run in record_runs(client, uid).items()}


def state_of_copies(copies: Mapping[str, Any]) -> str | None:
    """:func:`record_state` from :func:`record_copies`' answer."""
    return _state_among({state_of(md) for md in copies.values()})


def _state_among(states: set[str]) -> str | None:
    """A record's state from those of its copies: complete if one is, else incomplete if
    one is (still being written, or cut off), else failed; None without a copy."""
    if not states:
        return None
    return COMPLETE if COMPLETE in states else INCOMPLETE if INCOMPLETE in states else FAILED


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One record of :func:`history_entries`: the record, its state and the run holding it."""

    record: CalibrationRecord
    state: str
    run_uid: str


def _entries(runs: Iterable[Any]) -> Iterable[HistoryEntry]:
    return _entries_of(run.metadata for run in runs)


def _entries_of(metadatas: Iterable[Mapping[str, Any]]) -> Iterable[HistoryEntry]:
    for md in metadatas:
        start = md["start"]
        try:
            record = CalibrationRecord.from_dict(dict(start["calibration"]))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("skipping unreadable calibration run %s: %s", start.get("uid"), exc)
            continue
        yield HistoryEntry(record, state_of(md), str(start.get("uid")))


def _newest_first(entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
    """One entry per record, the complete copy if there is one, sorted by ``time``, newest
    first (ties: last written first).

    Sorted here: tiled's SQLite catalog sorts metadata as JSON text ("200.0" > "1000.0").
    """
    rank = {COMPLETE: 0, FAILED: 1, INCOMPLETE: 2}
    best: dict[str, HistoryEntry] = {}
    order: list[str] = []
    for e in entries:  # insertion order
        uid = e.record.uid
        if uid not in best:
            order.append(uid)
            best[uid] = e
        elif rank[e.state] < rank[best[uid].state]:
            best[uid] = e
    chosen = [best[uid] for uid in order][::-1]  # insertion order, reversed
    chosen.sort(key=lambda e: e.record.time, reverse=True)  # stable
    return chosen


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


def history_entries(client: Any, *, limit: int | None = None) -> list[HistoryEntry]:
    """Every calibration record of the catalog with its state, newest first.

    Unlike :func:`calibration_history`, records whose run is incomplete (its
    write was cut off) or failed are listed too, with that state; a record
    with several copies (a cut-off one and the one ``stemcal sync`` delivered
    later) is listed once, as its complete copy.
    """
    _check_limit(limit)
    direct = _direct_metadata(client)
    if direct is not None:
        return _newest_first(_entries_of(direct))[:limit]
    return _newest_first(_entries(_calibrations(client).values()))[:limit]


def entries_from_metadata(metadatas: Iterable[Mapping[str, Any]], *,
                          limit: int | None = None) -> list[HistoryEntry]:
    """:func:`history_entries` from the metadata of the record runs (every state, in the
    order written), e.g. :func:`stemcal.catalog.snapshot.record_run_metadata`."""
    _check_limit(limit)
    return _newest_first(_entries_of(metadatas))[:limit]


def find_entry(metadatas: Iterable[Mapping[str, Any]], uid: str) -> tuple[HistoryEntry, str]:
    """(entry, state) of record ``uid`` (or a unique prefix of >= 8 characters) among the
    metadata of the record runs: :func:`get_record` and :func:`record_state` in one, on
    metadata already read. Raises as :func:`get_record`."""
    prefix = _check_prefix(uid)
    mine = [md for md in metadatas
            if str((md["start"].get("calibration") or {}).get("uid", "")).startswith(prefix)]
    found = _newest_first(_entries_of(mine))
    _check_found(found, uid)
    entry = found[0]
    state = _state_among({state_of(md) for md in mine
                          if (md["start"].get("calibration") or {}).get("uid") == entry.record.uid})
    return entry, state


def calibration_history(client: Any, *, limit: int | None = None,
                        valid_only: bool = False) -> list[CalibrationRecord]:
    """Calibration records, newest first: only complete ones (stop with ``exit_status`` success).

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
    limit : int, optional
        At most this many (the newest).
    valid_only : bool
        Only records with ``quality == "ok"``.

    Returns
    -------
    list of CalibrationRecord
        Superseded records included; runs whose record cannot be read are skipped
        with a warning; incomplete and failed runs are left out
        (:func:`history_entries` lists them).

    Notes
    -----
    Sorted here, not by tiled (its SQLite catalog orders metadata as text), so the
    metadata of all matching runs is fetched.
    """
    from tiled.queries import Key

    _check_limit(limit)
    direct = _direct_metadata(client)
    if direct is not None:
        found = _newest_first(_entries_of(md for md in direct if state_of(md) == COMPLETE))
        return [e.record for e in found if not valid_only or e.record.quality == "ok"][:limit]
    runs = _complete(_calibrations(client))
    if valid_only:
        runs = runs.search(Key("calibration.quality") == "ok")
    return [e.record for e in _newest_first(_entries(runs.values()))][:limit]


def get_record(client: Any, uid: str) -> CalibrationRecord:
    """The calibration record with ``uid``, or a unique uid prefix of >= 8 characters.

    The complete copy if the catalog holds one, else the copy there is
    (:func:`record_state` tells which).

    Raises
    ------
    KeyError
        No calibration record has that uid (prefix).
    ValueError
        ``uid`` is shorter than 8 characters or not uid-like, or the prefix is ambiguous.
    """
    from tiled.queries import Like

    prefix = _check_prefix(uid)
    found = _newest_first(_entries(
        _calibrations(client).search(Like("calibration.uid", f"{prefix}%")).values()))
    _check_found(found, uid)
    return found[0].record


def is_uid_prefix(uid: str) -> bool:
    """Whether ``uid`` can name a record or run: a uuid or a prefix of at least 8 of its
    characters (hex digits and '-', either case)."""
    return bool(_UID_PREFIX.fullmatch(str(uid).lower()))


def _check_prefix(uid: str) -> str:
    prefix = str(uid).lower()
    if not is_uid_prefix(prefix):
        raise ValueError(f"uid must be >= 8 characters of a uuid (hex digits and '-'), got {uid!r}")
    return prefix


def _check_found(found: list[HistoryEntry], uid: str) -> None:
    if not found:
        raise KeyError(f"no calibration record with uid {uid!r} in this catalog")
    if len(found) > 1:
        raise ValueError(f"uid prefix {uid!r} matches several calibration records; give more of it")


def staleness(record: CalibrationRecord, optics_state: Mapping[str, Any],
              tolerances: Mapping[str, float]) -> list[str]:
    """Keys of ``tolerances`` whose values differ between ``record`` and ``optics_state``.

    Parameters
    ----------
    record : CalibrationRecord
    optics_state : dict
        Current microscope state (same keys and units as ``record.optics_state``).
    tolerances : dict of str to float
        Absolute tolerance per key, in that key's unit. Only these keys are compared;
        a key missing (or ``None``) on either side counts as changed, and non-numeric
        values must be equal.

    Returns
    -------
    list of str
        The changed keys, in the order of ``tolerances``; empty if the record still holds.
    """
    check_tolerances(tolerances)
    changed = []
    for key, tol in tolerances.items():
        old, new = record.optics_state.get(key), optics_state.get(key)
        if old is None or new is None:
            changed.append(key)
        elif is_real(old) and is_real(new):
            if not abs(float(old) - float(new)) <= tol:
                changed.append(key)
        elif old != new:
            changed.append(key)
    return changed


def check_tolerances(tolerances: Mapping[str, float]) -> None:
    """``ValueError`` unless ``tolerances`` maps one or more keys of a calibration's optics
    state (:data:`stemcal.runs.OPTICS_STATE_KEYS`) to finite numbers >= 0. With none, every
    record would hold for every state; a key no record has (a typing error) would make
    every record stale."""
    if not isinstance(tolerances, Mapping):
        raise ValueError(f"tolerances must map optics state keys to numbers, got {tolerances!r}")
    if not tolerances:
        raise ValueError("tolerances compare nothing: every calibration would hold for every "
                         f"microscope state; give one or more of {', '.join(OPTICS_STATE_KEYS)}")
    unknown = [k for k in tolerances if k not in OPTICS_STATE_KEYS]
    if unknown:
        raise ValueError(f"tolerances: unknown key(s) {', '.join(map(repr, unknown))}; a "
                         f"calibration's optics state has {', '.join(OPTICS_STATE_KEYS)}")
    bad = {k: v for k, v in tolerances.items()
           if not is_real(v) or v < 0}
    if bad:
        raise ValueError(f"tolerances must be finite numbers >= 0, got {bad}")


def latest_calibration(client: Any, optics_state: Mapping[str, Any],
                       tolerances: Mapping[str, float]) -> CalibrationRecord | None:
    """The newest valid, not superseded record that holds for ``optics_state``.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
    optics_state : dict
        Current microscope state.
    tolerances : dict of str to float
        Absolute tolerance per compared key (see :func:`staleness`).

    Returns
    -------
    CalibrationRecord or None
        ``None`` if no valid record matches.

    Notes
    -----
    Numeric keys are filtered by the catalog (range queries on
    ``calibration.optics_state.<key>``), the rest by :func:`staleness`. Only
    complete record runs count (a run without a stop document, or whose exit
    status is not success, is never a calibration). A record is skipped when a
    later complete record supersedes it, whatever that one's quality.
    """
    from tiled.queries import Key

    check_tolerances(tolerances)
    direct = _direct_metadata(client)
    if direct is not None:
        return _latest_among(direct, optics_state, tolerances)
    base = _complete(_calibrations(client))
    runs = base.search(Key("calibration.quality") == "ok")
    for key, tol in tolerances.items():
        value = optics_state.get(key)
        if value is None:
            return None  # compared key unknown now: nothing can match
        if is_real(value):  # float(): tiled's SQLite casts by the exact Python type
            pad = tol + 1e-9 * (abs(float(value)) + tol)  # the exact test is staleness()
            field = Key(f"calibration.optics_state.{key}")
            runs = runs.search(field >= float(value) - pad).search(field <= float(value) + pad)
    for record in (e.record for e in _newest_first(_entries(runs.values()))):
        if staleness(record, optics_state, tolerances):
            continue
        if len(base.search(Key("calibration.supersedes") == record.uid)):
            log.debug("calibration %s is superseded", record.uid)
            continue
        return record
    return None


def _latest_among(metadatas: list[dict], optics_state: Mapping[str, Any],
                  tolerances: Mapping[str, float]) -> CalibrationRecord | None:
    """:func:`latest_calibration` on the record runs' metadata, read directly."""
    if any(optics_state.get(key) is None for key in tolerances):
        return None  # compared key unknown now: nothing can match
    complete = [md for md in metadatas if state_of(md) == COMPLETE]
    superseded = {(md["start"].get("calibration") or {}).get("supersedes") for md in complete}
    for record in (e.record for e in _newest_first(_entries_of(complete))):
        if record.quality != "ok" or staleness(record, optics_state, tolerances):
            continue
        if record.uid in superseded:
            log.debug("calibration %s is superseded", record.uid)
            continue
        return record
    return None


def _direct_metadata(client: Any) -> list[dict] | None:
    """The record runs' metadata of an embedded catalog read straight from its
    ``catalog.db`` (:mod:`stemcal.catalog.snapshot`: no tiled round trips; with 1,000
    records ``latest_calibration`` took 1.8 s through tiled); None for a server, a
    client that does not say where it is, or where the direct read cannot be done."""
    from .snapshot import record_run_metadata

    location = getattr(client, "_stemcal_location", None)
    return record_run_metadata(location) if location else None


def resolve_run(client: Any, uid: str) -> Any:
    """The run ``uid`` (e.g. a record's ``acquisition_uid``), preferring a complete copy.

    A run whose write was cut off and that ``stemcal sync`` wrote again later
    has a complete copy under a new uid, whose start says
    ``stemcal_copy_of: uid`` (:mod:`stemcal.catalog.replay`); that copy is
    returned. Otherwise the run itself, whatever its state.

    Raises
    ------
    KeyError
        No run ``uid`` and no copy of it.
    """
    from tiled.client.container import Container
    from tiled.queries import Key

    from .standin import current_catalog

    client = current_catalog(client)   # a stand-in a session replaced: its catalog
    try:
        run = Container.__getitem__(client, uid)
    except KeyError:
        run = None
    if run is not None and state_of(run.metadata) == COMPLETE:
        return run
    copies = list(_complete(client.search(Key(COPY_OF) == uid)).values()[:1])
    if copies:
        return copies[0]
    if run is None:
        raise KeyError(f"no run {uid!r} in this catalog")
    return run


def record_images(client: Any, uid: str) -> dict[str, np.ndarray]:
    """The 2D images stored with the calibration record ``uid`` (full uid), from its complete run.

    Returns
    -------
    dict of str to ndarray
        Image name -> array of shape ``(h, w)`` (NaN was stored as 0).

    Raises
    ------
    KeyError
        The catalog holds no complete copy of the record.
    """
    runs = list(_complete(record_runs(client, uid)).values()[:1])
    if not runs:
        raise KeyError(f"no complete calibration record {uid!r} in this catalog")
    stream = runs[0]["primary"]
    names = [k for k in stream if k in stream.metadata.get("data_keys", {})
             and stream.metadata["data_keys"][k].get("dtype") == "array"]
    return {name: stream[name].read()[0] for name in names}
