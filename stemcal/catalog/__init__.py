"""The catalog: calibration records and acquisition runs in tiled, and what keeps them safe.

* :mod:`~stemcal.catalog.store` -- open a catalog (embedded directory or tiled
  server) and write a record as a run of its own.
* :mod:`~stemcal.catalog.queries` -- history, one record, the record in force,
  staleness, a record's images.
* :mod:`~stemcal.catalog.spool` -- the durable local files of records the
  catalog could not take.
* :mod:`~stemcal.catalog.delivery` -- deliver-or-spool and ``sync``, above both.
* :mod:`~stemcal.catalog.server` -- ``stemcal serve``: a tiled server with keys.
"""
from .delivery import (SyncReport, UnavailableCatalog, open_catalog_or_unavailable, sync,
                       write_record_or_spool)
from .queries import (calibration_history, check_tolerances, get_record, latest_calibration,
                      record_images, staleness)
from .store import (SCALARS, RecordExistsError, catalog_location_of, open_catalog, run_state,
                    write_record)

__all__ = ["open_catalog", "write_record", "run_state", "catalog_location_of", "RecordExistsError",
           "SCALARS", "calibration_history", "get_record", "latest_calibration", "staleness",
           "record_images", "check_tolerances", "write_record_or_spool",
           "open_catalog_or_unavailable", "UnavailableCatalog", "sync", "SyncReport"]
