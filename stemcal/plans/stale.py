"""The recalibrate_if_stale plan: the calibration in force, calibrating only if none holds."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bluesky.utils import MsgGenerator

from ..catalog import calibration_history, check_tolerances, latest_calibration, staleness
from ..record import CalibrationRecord
from ..runs import check_md, optics_state, plain
from .calibrate import calibrate, check_calibrate_args
from .recorder_wait import check_recorder
from .scan import check_live

__all__ = ["recalibrate_if_stale"]


def recalibrate_if_stale(detector: Any, scan: Any, optics: Any, *, catalog_client: Any,
                         tolerances: Mapping[str, float], callback: Any = None,
                         subscribe: bool = False, md: Mapping[str, Any] | None = None,
                         **calibrate_kwargs: Any) -> MsgGenerator[CalibrationRecord]:
    """Return the calibration in force; calibrate first if none holds for the current state.

    The current state is :func:`optics_state` of ``optics.state()`` and
    ``scan.state()`` when the plan runs; the record in force is
    :func:`stemcal.catalog.latest_calibration` for it. Only without one does the
    plan run :func:`calibrate`.

    Parameters
    ----------
    detector, scan, optics : devices
    catalog_client : CatalogOfBlueskyRuns
        Where records are looked up (and written).
    tolerances : dict of str to float
        Absolute tolerance per :func:`optics_state` key, e.g. :data:`DEFAULT_TOLERANCES`.
    callback : CalibrationRecorder
        As :func:`calibrate` (required: a calibration may be needed).
    subscribe : bool
        As :func:`calibrate`.
    md : dict, optional
        Start-document metadata of the acquisitions, if any.
    **calibrate_kwargs
        ``max_attempts``, ``focus_limits``, ``focus_step``, ``timeout``, ``live`` of
        :func:`calibrate`.

    Returns
    -------
    CalibrationRecord
        The stored record in force, or the new one (which may be invalid:
        check ``valid``).
    """
    check_tolerances(tolerances)
    unknown = set(calibrate_kwargs) - {"max_attempts", "focus_limits", "focus_step", "timeout",
                                       "live"}
    if unknown:
        raise ValueError(f"unknown calibrate argument(s): {sorted(unknown)}")
    check_calibrate_args(calibrate_kwargs.get("max_attempts", 3),
                          calibrate_kwargs.get("focus_limits"), calibrate_kwargs.get("focus_step"),
                          calibrate_kwargs.get("timeout", 600.0))
    check_live(calibrate_kwargs.get("live", False))
    md = check_md(md)
    check_recorder(callback)

    def inner() -> MsgGenerator[CalibrationRecord]:
        state = optics_state(optics.state(), scan.state())
        record = latest_calibration(catalog_client, state, tolerances)
        if record is not None:
            return record
        newest = calibration_history(catalog_client, limit=1, valid_only=True)
        reason = ({"changed": staleness(newest[0], state, tolerances), "record": newest[0].uid}
                  if newest else {"changed": [], "record": None})
        _md = {"plan_name": "recalibrate_if_stale",
               "plan_args": {"detector": repr(detector), "scan": repr(scan),
                             "optics": repr(optics), "tolerances": dict(tolerances),
                             **{k: plain(v) for k, v in calibrate_kwargs.items()}},
               "recalibration_reason": reason}
        _md.update(md or {})
        return (yield from calibrate(detector, scan, optics, callback=callback,
                                     subscribe=subscribe, md=_md, **calibrate_kwargs))

    return inner()
