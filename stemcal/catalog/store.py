"""Open a catalog of Bluesky runs and write calibration records into it.

Each :class:`~stemcal.record.CalibrationRecord` is written as its own run
(start metadata ``purpose="calibration"``, the record under ``calibration``,
images and fitted values in stream ``primary``; :mod:`stemcal.runs`) through
``bluesky_tiled_plugins.TiledWriter``, so acquisition runs and calibrations
can share one catalog. The catalog is embedded (a directory, served
in-process) or a tiled server (an ``http(s)://`` URI).

Records are append-only: :func:`write_record` refuses a record the catalog
already holds complete (:class:`RecordExistsError`) and nothing here updates
or deletes a run; a correction is a new record (``CalibrationRecord.correct``).
A run whose write was cut off (no stop document) stays in the catalog but
never counts as a record (:mod:`stemcal.catalog.queries`).
Reading records back is :mod:`stemcal.catalog.queries`; keeping a record the
catalog cannot take is :mod:`stemcal.catalog.delivery`.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..locations import catalog_location, is_server_uri
from ..record import CalibrationRecord
from ..runs import RECORD_PLAN_NAME, RECORD_PURPOSE
from .embedded import RUNS_SPEC, open_embedded
from .queries import COMPLETE, record_copies, state_of, state_of_copies

log = logging.getLogger(__name__)

#: Fitted values stored as scalars in stream ``primary``, with their units.
SCALARS = {"scan_rotation": "deg", "overfocus": "m", "cy": "px", "cx": "px", "blur": ""}


def open_catalog(location: str | Path | None = None, *,
                 readable_storage: Iterable[str | Path] = (), create: bool = True) -> Any:
    """Open (creating if needed) a catalog of Bluesky runs.

    Parameters
    ----------
    location : str or Path, optional
        A directory: the embedded catalog there (:mod:`stemcal.catalog.embedded`),
        served in this process; many processes may use it at once. An
        ``http(s)://`` URI: a tiled server (``stemcal serve``), authenticated
        with ``$TILED_API_KEY`` if set, else the ``api_key`` of the private
        keys file (:func:`stemcal.catalog.keys.client_api_key`); a key inside
        the URI is refused. ``None``: ``$STEMCAL_CATALOG`` if set, else
        :func:`~stemcal.locations.default_catalog_dir`.
    readable_storage : iterable of str or Path
        Embedded catalog only: further directories whose external files
        (e.g. acquisition HDF5) the catalog may serve.
    create : bool
        Embedded catalog only: create (or migrate) it if needed. False: it
        must exist (reading commands).

    Returns
    -------
    bluesky_tiled_plugins.clients.CatalogOfBlueskyRuns
        Tiled client of the catalog.

    Raises
    ------
    ValueError
        The URI holds a key, or the server's node is not a ``CatalogOfBlueskyRuns``.
    FileNotFoundError
        ``create`` is False and there is no catalog in the directory.
    """
    location = catalog_location(location)
    if is_server_uri(location):
        from tiled.client import from_uri

        from .keys import client_api_key, refuse_key_in_uri

        refuse_key_in_uri(location)
        client = from_uri(location, api_key=client_api_key())
        if RUNS_SPEC["name"] not in {spec.name for spec in client.specs}:
            raise ValueError(f"{location} is not a CatalogOfBlueskyRuns (specs {client.specs})")
        _remember_location(client, location)
        return client
    directory = Path(location).resolve()
    if not create and not (directory / "catalog.db").is_file():
        from .embedded import OrphanedCatalogError, orphaned_contents
        why = orphaned_contents(directory)
        if why:
            raise OrphanedCatalogError(directory, why)
        raise FileNotFoundError(f"no catalog at {directory}")
    client = open_embedded(directory, [Path(p) for p in readable_storage], create=create)
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
    """The state of run ``uid`` (exact uid): None (no such run) or :func:`state_of` its metadata."""
    from tiled.client.container import Container

    from .standin import current_catalog

    client = current_catalog(client)   # a stand-in a session replaced: its catalog
    try:  # the plain container lookup: no partial-uid or scan_id matching
        run = Container.__getitem__(client, uid)
    except KeyError:
        return None
    return state_of(run.metadata)


def tiled_writer(client: Any, **kwargs: Any) -> Any:
    """bluesky_tiled_plugins' ``TiledWriter`` on ``client`` (``kwargs`` passed on).

    The writer asks its client for a variation that includes data sources
    (``include_data_sources()``: one request, a refresh of the root node, at every
    writer made; none where the client includes them already). That variation is made
    once per client and kept on it, so a courier delivering run after run, and every
    record written, saves the request. The root node's own metadata in it is that of
    its first use; a writer only creates nodes below it.
    """
    from bluesky_tiled_plugins import TiledWriter

    with_sources = getattr(client, "_stemcal_with_sources", None)
    if with_sources is None:
        with_sources = client.include_data_sources()
        try:
            client._stemcal_with_sources = with_sources
        except AttributeError:  # a client that takes no attributes
            pass
    return TiledWriter(with_sources, **kwargs)


def write_record(client: Any, record: CalibrationRecord,
                 images: Mapping[str, np.ndarray] | None = None) -> str:
    """Write ``record`` as a Bluesky run of its own.

    Parameters
    ----------
    client : CatalogOfBlueskyRuns
        From :func:`open_catalog`.
    record : CalibrationRecord
        Becomes the start document's ``calibration``; ``record.uid`` is normally the run uid,
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
        The catalog already holds a complete copy of the record: nothing is overwritten.

    Notes
    -----
    A record is identified by ``start.calibration.uid``. Its run has the
    record's uid as run uid, unless the catalog already holds a run of that
    uid (a copy whose write was cut off, which stays as it is: the catalog is
    append-only); then the run gets a fresh uid. Only a run whose stop
    document says ``exit_status == "success"`` counts as the record.
    """
    import event_model

    arrays = check_images(images)
    # one request: the record's copies by run uid. A run of uid record.uid is one of them
    # (only write_record makes runs of a record's uid, and tiled creates a run with its
    # start document's metadata in one request)
    copies = record_copies(client, record.uid)
    if state_of_copies(copies) == COMPLETE:
        raise RecordExistsError(
            f"the catalog already holds record {record.uid}; records are append-only "
            "(correct one with record.correct(...), which makes a new record)")
    run_uid = record.uid if record.uid not in copies else str(uuid.uuid4())
    data: dict[str, Any] = {name: float(getattr(record, name)) for name in SCALARS}
    data_keys: dict[str, Any] = {name: {"source": "stemcal", "dtype": "number", "shape": [],
                                        "units": unit} for name, unit in SCALARS.items()}
    for name, arr in arrays.items():
        data[name] = arr
        data_keys[name] = {"source": "stemcal", "dtype": "array", "shape": list(arr.shape),
                           "dtype_numpy": arr.dtype.str}
    run = event_model.compose_run(uid=run_uid, time=record.time, metadata={
        "purpose": RECORD_PURPOSE, "plan_name": RECORD_PLAN_NAME, "acquisition_uid": record.acquisition_uid,
        "calibration": record.to_dict()})
    desc = run.compose_descriptor(name="primary", data_keys=data_keys)
    event = desc.compose_event(data=data, timestamps={k: record.time for k in data}, time=record.time)
    writer = tiled_writer(client, max_array_size=0)  # every array as its own node, none in the table
    for name, doc in (("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                      ("event", event), ("stop", run.compose_stop(exit_status="success"))):
        writer(name, doc)
    log.info("wrote calibration record %s (run %s, quality %s)", record.uid, run_uid,
             record.quality)
    return record.uid
