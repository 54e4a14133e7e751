"""The catalog: calibration records and acquisition runs in tiled, and what keeps them safe.

* :mod:`~stemcal.catalog.store` -- open a catalog (embedded directory or tiled
  server) and write a record as a run of its own.
* :mod:`~stemcal.catalog.embedded` -- the embedded catalog that many processes
  use at once (SQLite in WAL mode, :mod:`~stemcal.catalog.writelock`);
  :mod:`~stemcal.catalog.migrate` moves old DuckDB tables into it.
* :mod:`~stemcal.catalog.queries` -- history, one record, the record in force,
  staleness, a record's images; only complete runs count.
* :mod:`~stemcal.catalog.spool` -- the durable local files of records not yet
  in the catalog; :mod:`~stemcal.catalog.journal` -- the same for the
  documents of runs (:class:`RunKeeper`).
* :mod:`~stemcal.catalog.delivery` -- deliver-or-spool and ``sync``, above them;
  :mod:`~stemcal.catalog.replay` delivers a kept run; :mod:`~stemcal.catalog.courier`
  -- a process of its own that opens an embedded catalog and delivers what an
  acquiring command keeps, while it scans (``stemcal calibrate``).
* :mod:`~stemcal.catalog.server`, :mod:`~stemcal.catalog.serverapp`,
  :mod:`~stemcal.catalog.keys`, :mod:`~stemcal.catalog.appendonly` --
  ``stemcal serve``: a tiled server with keys that only adds.
"""
from .delivery import (SyncReport, UnavailableCatalog, open_catalog_or_unavailable, sync,
                       write_record_or_spool)
from .journal import RunKeeper
from .queries import (COMPLETE, FAILED, INCOMPLETE, HistoryEntry, calibration_history,
                      check_tolerances, get_record, history_entries, latest_calibration,
                      record_images, record_state, resolve_run, staleness)
from .store import (SCALARS, RecordExistsError, catalog_location_of, open_catalog, run_state,
                    write_record)

__all__ = ["open_catalog", "write_record", "run_state", "catalog_location_of", "RecordExistsError",
           "SCALARS", "calibration_history", "history_entries", "HistoryEntry", "get_record",
           "latest_calibration", "staleness", "record_images", "record_state", "resolve_run",
           "check_tolerances", "COMPLETE", "INCOMPLETE", "FAILED", "write_record_or_spool",
           "open_catalog_or_unavailable", "UnavailableCatalog", "sync", "SyncReport",
           "RunKeeper"]
