"""Read calibration records back: history, one record, the one in force, its images.

Records are runs with ``purpose`` :data:`stemcal.runs.RECORD_PURPOSE`
(written by :func:`stemcal.catalog.store.write_record`). Sorting happens
here, not in tiled: its SQLite catalog orders metadata as JSON text.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..checks import is_real
from ..record import CalibrationRecord
from ..runs import RECORD_PURPOSE

log = logging.getLogger(__name__)

__all__ = ["calibration_history", "get_record", "staleness", "latest_calibration",
           "record_images", "check_tolerances"]

_UID_PREFIX = re.compile(r"[0-9a-f-]{8,36}")


def _calibrations(client: Any) -> Any:
    """The calibration runs of ``client`` (a tiled search result)."""
    from tiled.queries import Key

    return client.search(Key("purpose") == RECORD_PURPOSE)


def _records(runs: Iterable[Any]) -> Iterable[CalibrationRecord]:
    for run in runs:
        start = run.metadata["start"]
        try:
            yield CalibrationRecord.from_dict(dict(start["calibration"]))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("skipping unreadable calibration run %s: %s", start.get("uid"), exc)


def _newest_first(runs: Any) -> list[CalibrationRecord]:
    """Records of ``runs`` sorted by ``time``, newest first (ties: last written first).

    Sorted here: tiled's SQLite catalog sorts metadata as JSON text ("200.0" > "1000.0").
    """
    records = list(_records(runs.values()))[::-1]  # insertion order, reversed
    records.sort(key=lambda r: r.time, reverse=True)  # stable
    return records


def calibration_history(client: Any, *, limit: int | None = None,
                        valid_only: bool = False) -> list[CalibrationRecord]:
    """Calibration records, newest first.

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
        with a warning.

    Notes
    -----
    Sorted here, not by tiled (its SQLite catalog orders metadata as text), so the
    metadata of all matching runs is fetched.
    """
    from tiled.queries import Key

    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    runs = _calibrations(client)
    if valid_only:
        runs = runs.search(Key("calibration.quality") == "ok")
    return _newest_first(runs)[:limit]


def get_record(client: Any, uid: str) -> CalibrationRecord:
    """The calibration record with ``uid``, or a unique uid prefix of >= 8 characters.

    Raises
    ------
    KeyError
        No calibration record has that uid (prefix).
    ValueError
        ``uid`` is shorter than 8 characters or not uid-like, or the prefix is ambiguous.
    """
    from tiled.queries import Like

    prefix = str(uid).lower()
    if not _UID_PREFIX.fullmatch(prefix):
        raise ValueError(f"uid must be >= 8 characters of a uuid (hex digits and '-'), got {uid!r}")
    found = list(_records(_calibrations(client).search(Like("uid", f"{prefix}%")).values()[:2]))
    if not found:
        raise KeyError(f"no calibration record with uid {uid!r} in this catalog")
    if len(found) > 1:
        raise ValueError(f"uid prefix {uid!r} matches several calibration records; give more of it")
    return found[0]


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
    ``calibration.optics_state.<key>``), the rest by :func:`staleness`. A record is
    skipped when a later record supersedes it, whatever that one's quality.
    """
    from tiled.queries import Key

    check_tolerances(tolerances)
    base = _calibrations(client)
    runs = base.search(Key("calibration.quality") == "ok")
    for key, tol in tolerances.items():
        value = optics_state.get(key)
        if value is None:
            return None  # compared key unknown now: nothing can match
        if is_real(value):  # float(): tiled's SQLite casts by the exact Python type
            pad = tol + 1e-9 * (abs(float(value)) + tol)  # the exact test is staleness()
            field = Key(f"calibration.optics_state.{key}")
            runs = runs.search(field >= float(value) - pad).search(field <= float(value) + pad)
    for record in _newest_first(runs):
        if staleness(record, optics_state, tolerances):
            continue
        if len(base.search(Key("calibration.supersedes") == record.uid)):
            log.debug("calibration %s is superseded", record.uid)
            continue
        return record
    return None


def record_images(client: Any, uid: str) -> dict[str, np.ndarray]:
    """The 2D images stored with the calibration record ``uid`` (full uid).

    Returns
    -------
    dict of str to ndarray
        Image name -> array of shape ``(h, w)`` (NaN was stored as 0).
    """
    stream = client[uid]["primary"]
    names = [k for k in stream if k in stream.metadata.get("data_keys", {})
             and stream.metadata["data_keys"][k].get("dtype") == "array"]
    return {name: stream[name].read()[0] for name in names}
