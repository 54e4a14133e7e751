# Plans, as top-level names (bluesky-queueserver exposes only those).
from stemcal.catalog import calibration_history, latest_calibration  # noqa: F401
from stemcal.plans import (DEFAULT_TOLERANCES, calibrate, overfocus_scan,  # noqa: F401
                           recalibrate_if_stale, verify_calibration)


def calibrate_here(**kwargs):
    """The calibrate plan with this session's devices, catalog and recorder."""
    return (yield from calibrate(detector, scan, optics, catalog_client=catalog,
                                 callback=recorder, **kwargs))


def recalibrate_here(tolerances=None, **kwargs):
    """recalibrate_if_stale with this session's devices and catalog."""
    return (yield from recalibrate_if_stale(detector, scan, optics, catalog_client=catalog,
                                            tolerances=tolerances or DEFAULT_TOLERANCES,
                                            callback=recorder, **kwargs))
