"""The verify_calibration plan: acquire and check that a stored calibration is still sharpest."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bluesky.utils import MsgGenerator

from ..checks import is_real
from ..record import CalibrationRecord
from ..runs import check_md, check_request
from .recorder_wait import check_recorder, status_of, subscribed, wait_status
from .scan import check_live, overfocus_scan

__all__ = ["verify_calibration", "sharpness_offset"]


def sharpness_offset(minus: float, centre: float, plus: float, step: float) -> float:
    """Where a parabola through three sharpness values peaks, relative to the centre.

    Parameters
    ----------
    minus, centre, plus : float
        Sharpness (higher is sharper) at ``-step``, 0 and ``+step``.
    step : float
        Stencil half-width, in the unit of the result.

    Returns
    -------
    float
        Offset of the maximum from the centre; NaN where the three values are not
        concave (no maximum near the centre).
    """
    curv = plus + minus - 2 * centre
    if not (curv < 0):
        return math.nan
    return step * (minus - plus) / (2 * curv)


def verify_calibration(detector: Any, scan: Any, optics: Any, record: CalibrationRecord, *,
                       callback: Any = None, subscribe: bool = False, rotation_step: float = 1.0,
                       overfocus_step: float = 0.03, rotation_tolerance: float = 0.5,
                       overfocus_tolerance: float = 0.02, timeout: float | None = 600.0,
                       md: Mapping[str, Any] | None = None,
                       live: bool = False) -> MsgGenerator[dict[str, Any]]:
    """Acquire and check that ``record`` still gives the sharpest shifted sum.

    One :func:`~stemcal.plans.overfocus_scan` run with ``purpose='calibration_check'``;
    the callback projects it (:class:`stemcal.processing.OverfocusUDF`) with
    the record's geometry and with the rotation changed by ``+-rotation_step``
    and the overfocus by ``+-overfocus_step`` (relative), and measures the
    contrast and Crete blur of each shifted sum. A parabola through each
    triple locates the sharpest setting; the record passes when that lies
    within the tolerances of the record's values.

    Parameters
    ----------
    detector, scan, optics : devices
    record : CalibrationRecord
        The calibration to check (its ``params()`` are used as they are).
    callback : CalibrationRecorder
        As :func:`calibrate` (required).
    subscribe : bool
        As :func:`calibrate`.
    rotation_step, overfocus_step : float
        Stencil half-widths, degrees and relative.
    rotation_tolerance, overfocus_tolerance : float
        Largest accepted offset of the sharpest setting, degrees and relative.
    timeout : float or None
        Seconds to wait for the check.
    md : dict, optional
        Start-document metadata; it wins over the plan's keys.
    live : bool
        Take the scan as a live scan (see :func:`calibrate`).

    Returns
    -------
    dict
        ``passed`` (bool), ``reason`` (str), ``record_uid``, ``acquisition_uid``,
        ``scan_rotation_offset`` (deg) and ``overfocus_offset`` (relative) of the
        sharpest setting (NaN: no maximum near the record), ``contrast`` and
        ``blur`` at the record's geometry, ``record_blur`` and ``blur_change``
        (now minus recorded; informative only, it depends on the specimen area
        and dose), and the ``stencil`` of contrast values.
    """
    for name, v in (("rotation_step", rotation_step), ("overfocus_step", overfocus_step),
                    ("rotation_tolerance", rotation_tolerance),
                    ("overfocus_tolerance", overfocus_tolerance)):
        if not (is_real(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not isinstance(record, CalibrationRecord):
        raise ValueError(f"record must be a CalibrationRecord, got {record!r}")
    check_live(live)
    md = check_md(md)
    check_recorder(callback)
    recorder = callback
    _md: dict[str, Any] = {
        **check_request(record.uid, record.params(), rotation_step, overfocus_step),
        "plan_name": "verify_calibration",
        "plan_args": {"detector": repr(detector), "scan": repr(scan), "optics": repr(optics),
                      "record": record.uid, "rotation_step": rotation_step,
                      "overfocus_step": overfocus_step, "rotation_tolerance": rotation_tolerance,
                      "overfocus_tolerance": overfocus_tolerance, "live": live},
    }
    _md.update(md or {})

    def inner() -> MsgGenerator[dict[str, Any]]:
        uid = yield from overfocus_scan(detector, scan, optics, guess=record.params(), md=_md,
                                        live=live)
        status = status_of(recorder, uid)
        yield from wait_status(status, timeout, f"the check of run {uid}")
        m = status.result
        st = m["stencil"]
        rot = sharpness_offset(*st["scan_rotation"], rotation_step)
        of = sharpness_offset(*st["overfocus"], overfocus_step)
        if math.isnan(rot) or math.isnan(of):
            passed, reason = False, "the record's geometry is not at a sharpness maximum"
        elif abs(rot) > rotation_tolerance:
            passed, reason = False, f"sharpest {rot:+.2f} deg from the recorded rotation"
        elif abs(of) > overfocus_tolerance:
            passed, reason = False, f"sharpest {100 * of:+.1f} % from the recorded overfocus"
        else:
            passed, reason = True, "ok"
        return {"passed": passed, "reason": reason, "record_uid": record.uid,
                "acquisition_uid": uid, "scan_rotation_offset": rot, "overfocus_offset": of,
                "contrast": m["contrast"], "blur": m["blur"], "record_blur": record.blur,
                "blur_change": m["blur"] - record.blur, "stencil": st}

    return subscribed(inner(), recorder, bool(subscribe))
