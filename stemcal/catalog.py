"""Calibration records in a tiled catalog of Bluesky runs.

Each :class:`~stemcal.record.CalibrationRecord` is written as its own run
(start metadata ``purpose="calibration"``, the record under ``calibration``,
images and fitted values in stream ``primary``) through
``bluesky_tiled_plugins.TiledWriter``, so acquisition runs and calibrations
can share one catalog. The catalog is embedded (a directory, served
in-process) or a tiled server (an ``http(s)://`` URI).

Records are append-only: :func:`write_record` refuses a uid the catalog
already holds (:class:`RecordExistsError`) and nothing here updates or
deletes a run; a correction is a new record (``CalibrationRecord.correct``).
:func:`write_record_or_spool` keeps a record the catalog cannot take in the
local spool (:mod:`stemcal.spool`) for ``stemcal sync``.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .checks import is_real
from .record import CalibrationRecord
from .runs import RECORD_PLAN_NAME, RECORD_PURPOSE

log = logging.getLogger(__name__)

#: Fitted values stored as scalars in stream ``primary``, with their units.
SCALARS = {"scan_rotation": "deg", "overfocus": "m", "cy": "px", "cx": "px", "blur": ""}
_RUNS_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}
_UID_PREFIX = re.compile(r"[0-9a-f-]{8,36}")


def default_catalog_dir() -> Path:
    """Directory of the default embedded catalog.

    ``$STEMCAL_CATALOG`` if set, else ``$XDG_DATA_HOME/stemcal/catalog``, else
    ``~/.local/share/stemcal/catalog``. (:func:`open_catalog` also accepts a
    tiled ``http(s)://`` URI in ``$STEMCAL_CATALOG``.)
    """
    if env := os.environ.get("STEMCAL_CATALOG"):
        return Path(env).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home).expanduser() / "stemcal" / "catalog"


class _DropVersionLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Tiled version")


def open_catalog(location: str | Path | None = None, *,
                 readable_storage: Iterable[str | Path] = ()) -> Any:
    """Open (creating if needed) a catalog of Bluesky runs.

    Parameters
    ----------
    location : str or Path, optional
        A directory: the embedded catalog there (``catalog.db`` SQLite, ``data/``
        for arrays, ``tables.duckdb`` for tables), served in-process. An
        ``http(s)://`` URI: a tiled server, authenticated with ``$TILED_API_KEY``
        if set, else the ``api_key`` of the private keys file
        (:func:`stemcal.server.client_api_key`). ``None``: ``$STEMCAL_CATALOG`` if
        set, else :func:`default_catalog_dir`.
    readable_storage : iterable of str or Path
        Embedded catalog only: further directories whose external files
        (e.g. acquisition HDF5) the catalog may serve.

    Returns
    -------
    bluesky_tiled_plugins.clients.CatalogOfBlueskyRuns
        Tiled client of the catalog.

    Raises
    ------
    ValueError
        The server's node is not a ``CatalogOfBlueskyRuns``.
    """
    if location is None:
        location = os.environ.get("STEMCAL_CATALOG") or default_catalog_dir()
    if isinstance(location, str) and re.match(r"https?://", location):
        from tiled.client import from_uri

        from .server import client_api_key

        client = from_uri(location, api_key=client_api_key())
        if _RUNS_SPEC["name"] not in {spec.name for spec in client.specs}:
            raise ValueError(f"{location} is not a CatalogOfBlueskyRuns (specs {client.specs})")
        _remember_location(client, location)
        return client
    directory = Path(location).expanduser().resolve()
    client = _open_embedded(directory, [Path(p) for p in readable_storage])
    _remember_location(client, str(directory))
    return client


def _remember_location(client: Any, location: str) -> None:
    try:
        client._stemcal_location = location  # where a spooled record must go later
    except AttributeError:  # a stand-in client that takes no attributes
        pass


def catalog_location_of(client: Any) -> str | None:
    """The location :func:`open_catalog` opened ``client`` from (a directory or URI), or None."""
    return getattr(client, "_stemcal_location", None)


def _open_embedded(directory: Path, readable: list[Path]) -> Any:
    from tiled.catalog import from_uri
    from tiled.client import from_context
    from tiled.client.context import Context
    from tiled.server.app import build_app

    (directory / "data").mkdir(parents=True, exist_ok=True)
    db = directory / "catalog.db"
    # Initialising runs `tiled catalog init` in a subprocess (~3 s); skip it for an existing one.
    adapter = from_uri(f"sqlite:///{db}", init_if_not_exists=not db.exists(), specs=[_RUNS_SPEC],
                       writable_storage=[directory / "data", f"duckdb:///{directory / 'tables.duckdb'}"],
                       readable_storage=[directory / "data", *readable])
    app_log = logging.getLogger("tiled.server.app")  # logs "Tiled version ..." at start-up
    drop = _DropVersionLine()
    app_log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient`")
            context = Context.from_app(build_app(adapter))
    finally:
        app_log.removeFilter(drop)
    log.debug("opened embedded catalog %s", directory)
    return from_context(context)


def _image(name: str, image: Any) -> np.ndarray:
    arr = np.array(image)  # a copy
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise ValueError(f"image {name!r} must be a 2D numeric array, got {arr.dtype} {arr.shape}")
    if arr.dtype.kind == "f":
        arr[np.isnan(arr)] = 0
    return arr


class RecordExistsError(ValueError):
    """A record (run) with this uid is already in the catalog; records are never overwritten."""


def _check_images(images: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    arrays = {name: _image(name, img) for name, img in (images or {}).items()}
    if clash := set(arrays) & set(SCALARS):
        raise ValueError(f"image names {sorted(clash)} clash with the scalar keys {list(SCALARS)}")
    return arrays


def run_state(client: Any, uid: str) -> str | None:
    """Whether the catalog holds run ``uid`` (exact uid): None, ``"complete"`` or ``"incomplete"``.

    ``"incomplete"``: the run has no stop document (its write was cut off).
    """
    from tiled.client.container import Container

    try:  # the plain container lookup: no partial-uid or scan_id matching
        run = Container.__getitem__(client, uid)
    except KeyError:
        return None
    return "complete" if run.metadata.get("stop") else "incomplete"


def write_record(client: Any, record: CalibrationRecord,
                 images: Mapping[str, np.ndarray] | None = None) -> str:
    """Write ``record`` as a Bluesky run of its own.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
        From :func:`open_catalog`.
    record : CalibrationRecord
        Becomes the start document's ``calibration``; ``record.uid`` is the run uid,
        ``record.time`` its time.
    images : dict of str to ndarray, optional
        2D images (e.g. ``point``, ``selected``, ``shifted_sum_normalised``,
        ``sum`` of :class:`stemcal.processing.OverfocusUDF`), stored in stream
        ``primary`` with a leading event axis, shape ``(1, h, w)``; NaN is stored as 0.

    Returns
    -------
    str
        The uid of the record (and run).

    Raises
    ------
    ValueError
        An image is not 2D numeric or its name is one of :data:`SCALARS`.
    RecordExistsError
        The catalog already has a run with ``record.uid``: nothing is overwritten.
    """
    import event_model
    from bluesky_tiled_plugins import TiledWriter

    arrays = _check_images(images)
    if run_state(client, record.uid) is not None:
        raise RecordExistsError(
            f"the catalog already holds a run with uid {record.uid}; records are append-only "
            "(correct one with record.correct(...), which makes a new record)")
    data: dict[str, Any] = {name: float(getattr(record, name)) for name in SCALARS}
    data_keys: dict[str, Any] = {name: {"source": "stemcal", "dtype": "number", "shape": [],
                                        "units": unit} for name, unit in SCALARS.items()}
    for name, arr in arrays.items():
        data[name] = arr
        data_keys[name] = {"source": "stemcal", "dtype": "array", "shape": list(arr.shape),
                           "dtype_numpy": arr.dtype.str}
    run = event_model.compose_run(uid=record.uid, time=record.time, metadata={
        "purpose": RECORD_PURPOSE, "plan_name": RECORD_PLAN_NAME, "acquisition_uid": record.acquisition_uid,
        "calibration": record.to_dict()})
    desc = run.compose_descriptor(name="primary", data_keys=data_keys)
    event = desc.compose_event(data=data, timestamps={k: record.time for k in data}, time=record.time)
    writer = TiledWriter(client, max_array_size=0)  # every array as its own node, none in the table
    for name, doc in (("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                      ("event", event), ("stop", run.compose_stop(exit_status="success"))):
        writer(name, doc)
    log.info("wrote calibration record %s (quality %s)", record.uid, record.quality)
    return record.uid


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


def _failure(exc: BaseException) -> str:
    from .spool import failure_reason

    return failure_reason(exc)


def open_catalog_or_unavailable(location: str | Path | None = None, *,
                                readable_storage: Iterable[str | Path] = ()) -> Any:
    """:func:`open_catalog`, or an :class:`UnavailableCatalog` where it cannot be opened.

    A server that is down or refuses the key, or a directory that cannot be
    created or written, gives the stand-in (with a warning) so that a
    calibration can still run and spool its record. A server that answers but
    is not a catalog of Bluesky runs is still a ``ValueError``.
    """
    if location is None:
        location = os.environ.get("STEMCAL_CATALOG") or default_catalog_dir()
    try:
        return open_catalog(location, readable_storage=readable_storage)
    except ValueError as exc:
        if "CatalogOfBlueskyRuns" in str(exc):
            raise
        reason = _failure(exc)
    except Exception as exc:  # noqa: BLE001 - whatever stops it, records must not be lost
        reason = _failure(exc)
    if not (isinstance(location, str) and re.match(r"https?://", location)):
        location = Path(location).expanduser().resolve()
    log.warning("catalog %s cannot be opened (%s); records will be spooled", location, reason)
    return UnavailableCatalog(location, reason)


def write_record_or_spool(client: Any, record: CalibrationRecord,
                          images: Mapping[str, np.ndarray] | None = None, *,
                          location: str | Path | None = None) -> tuple[str, bool, str | None]:
    """Write ``record`` (:func:`write_record`), or spool it if the catalog fails.

    Any failure of the catalog write (server down, permission denied, disk full,
    path not creatable; httpx, tiled, OSError, SQLite errors...) puts the record,
    its images and the catalog location into the durable spool
    (:func:`stemcal.spool.spool_record`) for ``stemcal sync``.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns or UnavailableCatalog
        From :func:`open_catalog` / :func:`open_catalog_or_unavailable`.
    record, images
        As :func:`write_record` (images are checked first: bad ones raise, unspooled).
    location : str or path, optional
        The catalog's location if ``client`` was not opened by :func:`open_catalog`.

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
    from .spool import spool_record

    _check_images(images)
    loc = location if location is not None else catalog_location_of(client)
    if isinstance(client, UnavailableCatalog):
        reason = client.reason
    else:
        try:
            write_record(client, record, images)
            return record.uid, False, None
        except RecordExistsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must keep the record
            reason = _failure(exc)
            log.warning("could not write calibration record %s to %s: %s", record.uid, loc, reason)
    spool_record(record, images, loc, reason)
    return record.uid, True, reason


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
    _check_tolerances(tolerances)
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


def _check_tolerances(tolerances: Mapping[str, float]) -> None:
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

    _check_tolerances(tolerances)
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
