"""Open a catalog of Bluesky runs and write calibration records into it.

Each :class:`~stemcal.record.CalibrationRecord` is written as its own run
(start metadata ``purpose="calibration"``, the record under ``calibration``,
images and fitted values in stream ``primary``; :mod:`stemcal.runs`) through
``bluesky_tiled_plugins.TiledWriter``, so acquisition runs and calibrations
can share one catalog. The catalog is embedded (a directory, served
in-process) or a tiled server (an ``http(s)://`` URI).

Records are append-only: :func:`write_record` refuses a uid the catalog
already holds (:class:`RecordExistsError`) and nothing here updates or
deletes a run; a correction is a new record (``CalibrationRecord.correct``).
Reading records back is :mod:`stemcal.catalog.queries`; keeping a record the
catalog cannot take is :mod:`stemcal.catalog.delivery`.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..locations import catalog_location, is_server_uri
from ..record import CalibrationRecord
from ..runs import RECORD_PLAN_NAME, RECORD_PURPOSE

log = logging.getLogger(__name__)

#: Fitted values stored as scalars in stream ``primary``, with their units.
SCALARS = {"scan_rotation": "deg", "overfocus": "m", "cy": "px", "cx": "px", "blur": ""}
_RUNS_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}


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
        (:func:`stemcal.catalog.server.client_api_key`). ``None``: ``$STEMCAL_CATALOG`` if
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
    location = catalog_location(location)
    if is_server_uri(location):
        from tiled.client import from_uri

        from .server import client_api_key

        client = from_uri(location, api_key=client_api_key())
        if _RUNS_SPEC["name"] not in {spec.name for spec in client.specs}:
            raise ValueError(f"{location} is not a CatalogOfBlueskyRuns (specs {client.specs})")
        _remember_location(client, location)
        return client
    directory = Path(location).resolve()
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


def check_images(images: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
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

    arrays = check_images(images)
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
