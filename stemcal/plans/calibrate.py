"""Calibration plans: calibrate, verify a stored calibration, recalibrate when stale.

Data flow (one way): the plan acquires with :func:`~stemcal.plans.overfocus_scan`;
the RunEngine emits the run's documents; a calibration callback
(:class:`stemcal.callbacks.CalibrationRecorder`) collects them, fits in a
worker thread and writes a :class:`~stemcal.record.CalibrationRecord` to the
catalog. The callback completes an ophyd ``Status`` per run; the plan only
*waits* on that status (``Msg('wait_for', ...)``) and reads its result. The
plan never hands data to the callback, and the callback never moves a device.

The plans depend on the callback only by duck typing
(``result_status(run_uid)``, see :class:`stemcal.callbacks.CalibrationRecorder`):
the caller builds it (:func:`stemcal.session.make_recorder`) and either
subscribes it to the RunEngine or lets the plan subscribe it for its duration
(``subscribe=True``). The run-document keys the plans write are those of
:mod:`stemcal.runs`.

Arguments are checked when a plan is made (``ValueError``); device settings
are read when the RunEngine runs it.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from ..catalog import calibration_history, latest_calibration, staleness
from ..checks import is_real
from ..record import CalibrationRecord
from ..runs import check_request, optics_state, plain
from .scan import check_live, overfocus_scan

__all__ = ["calibrate", "verify_calibration", "recalibrate_if_stale", "focus_schedule",
           "sharpness_offset"]

#: Most acquisitions one :func:`calibrate` may make.
MAX_ATTEMPTS = 100


def _check_calibrate_args(max_attempts: Any, focus_limits: Any, focus_step: Any,
                          timeout: Any) -> None:
    """The checks of :func:`calibrate`'s arguments that need no device (``ValueError``)."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) \
            or not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise ValueError(f"max_attempts must be an int in 1..{MAX_ATTEMPTS}, got {max_attempts!r}")
    if focus_limits is not None:
        if isinstance(focus_limits, (str, bytes)) or not (
                hasattr(focus_limits, "__len__") and len(focus_limits) == 2
                and all(map(is_real, focus_limits))):
            raise ValueError(f"focus_limits must be two finite numbers (min, max) in metres, "
                             f"got {focus_limits!r}")
        lo, hi = focus_limits
        if not lo < hi or lo <= 0 <= hi:
            raise ValueError(f"focus_limits must have min < max, both of one sign "
                             f"(not spanning 0), got {focus_limits!r}")
    if focus_step is not None and not (is_real(focus_step) and focus_step > 0):
        raise ValueError(f"focus_step must be a finite number > 0, got {focus_step!r}")
    if timeout is not None and not (is_real(timeout) and timeout > 0):
        raise ValueError(f"timeout must be None or a finite number > 0, got {timeout!r}")


def focus_schedule(start: float, step: float, limits: tuple[float, float],
                   max_attempts: int) -> list[float]:
    """Overfocus settings to try: ``start``, ``start + step``, ``start - step``, ``start + 2 step``...

    Settings outside ``limits`` (inclusive) are skipped; at most ``max_attempts``
    are returned. All values are metres.

    Raises
    ------
    ValueError
        ``limits`` not finite, not increasing, or spanning 0 (overfocus 0 is
        impossible and a sign change inverts the shadow image); ``start`` outside
        ``limits``; ``step`` not finite and > 0; ``max_attempts`` not in
        ``1..MAX_ATTEMPTS``.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) \
            or not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise ValueError(f"max_attempts must be an int in 1..{MAX_ATTEMPTS}, got {max_attempts!r}")
    try:
        lo, hi = (float(v) for v in limits)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"focus_limits must be (min, max) in metres, got {limits!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or lo <= 0 <= hi:
        raise ValueError(f"focus_limits must be finite, min < max, both of one sign "
                         f"(not spanning 0), got {limits!r}")
    if not (is_real(step) and step > 0):
        raise ValueError(f"focus_step must be finite and > 0, got {step!r}")
    if not is_real(start):
        raise ValueError(f"the optics overfocus must be a finite number, got {start!r}")
    if not lo <= start <= hi:
        raise ValueError(f"the optics overfocus {start!r} m is outside focus_limits {limits!r}")
    out = [float(start)]
    k = 1
    while len(out) < max_attempts and k * step <= hi - lo:
        for f in (start + k * step, start - k * step):
            if lo <= f <= hi and len(out) < max_attempts:
                out.append(float(f))
        k += 1
    return out


def _wait_status(status: Any, timeout: float | None, what: str) -> MsgGenerator[None]:
    """Wait (through the RunEngine, not blocking its loop) for an ophyd status to finish."""

    def future() -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def finish() -> None:
            if not fut.done():
                fut.set_result(None)

        status.add_callback(lambda _st: loop.call_soon_threadsafe(finish))
        return fut

    try:
        yield from bps.wait_for([future], timeout=timeout)
    except TimeoutError:  # the RunEngine's WaitForTimeoutError
        raise TimeoutError(f"{what} did not finish within {timeout} s") from None


def _check_recorder(callback: Any) -> None:
    """``ValueError`` unless ``callback`` can report a run's result (``result_status``)."""
    if callback is None:
        raise ValueError("give callback: a calibration recorder "
                         "(stemcal.session.make_recorder(catalog_client))")
    if not callable(getattr(callback, "result_status", None)):
        raise ValueError(f"callback must have result_status(run_uid) (a "
                         f"stemcal.callbacks.CalibrationRecorder), got {callback!r}")


def _status_of(recorder: Any, uid: str) -> Any:
    try:
        return recorder.result_status(uid)
    except KeyError:
        raise RuntimeError(
            f"the calibration callback did not receive run {uid}: subscribe it to the "
            f"RunEngine (RE.subscribe(recorder)) or pass subscribe=True") from None


def _subscribed(plan: MsgGenerator[Any], recorder: Any, own: bool) -> MsgGenerator[Any]:
    """Run ``plan`` with ``recorder`` subscribed (and closed afterwards) if ``own``."""
    if not own:
        return (yield from plan)
    token = yield from bps.subscribe("all", recorder)

    def cleanup() -> MsgGenerator[None]:
        yield from bps.unsubscribe(token)
        recorder.close()

    return (yield from bpp.finalize_wrapper(plan, cleanup))


def calibrate(detector: Any, scan: Any, optics: Any, *, callback: Any = None,
              subscribe: bool = False, max_attempts: int = 3,
              focus_limits: tuple[float, float] | None = None, focus_step: float | None = None,
              timeout: float | None = 600.0, md: Mapping[str, Any] | None = None,
              live: bool = False) -> MsgGenerator[CalibrationRecord]:
    """Acquire and calibrate; on an untrusted result change the focus and try again.

    Each attempt is one :func:`~stemcal.plans.overfocus_scan` run, calibrated
    by the callback (cold start, see :class:`stemcal.callbacks.CalibrationRecorder`),
    which writes a :class:`~stemcal.record.CalibrationRecord` to the catalog
    -- also for untrusted results (``quality`` says why). The plan waits for
    that record; if it is not valid (no specimen features, uncertain fit), the
    optics overfocus is moved to the next setting of :func:`focus_schedule`
    and the scan repeated, up to ``max_attempts`` runs.

    Parameters
    ----------
    detector, scan, optics : devices
        As :func:`~stemcal.plans.overfocus_scan`.
    callback : CalibrationRecorder
        The recorder that calibrates the runs and stores the records
        (:func:`stemcal.session.make_recorder`); required.
    subscribe : bool
        Subscribe ``callback`` to the RunEngine for the plan's duration and
        close it afterwards. False (default): the caller has subscribed it.
    max_attempts : int
        Most acquisitions to make (``1..MAX_ATTEMPTS``). The arguments are
        checked when the plan is made (``ValueError``), before any device moves.
    focus_limits : (float, float), optional
        Overfocus settings allowed, metres, one sign; default ``(f0 / 2, 2 f0)``
        around the current setting ``f0`` (sorted).
    focus_step : float, optional
        Overfocus change between attempts, metres; default ``0.2 |f0|``.
    timeout : float or None
        Seconds to wait for each fit.
    md : dict, optional
        Start-document metadata of every acquisition; it wins over the plan's keys.
    live : bool
        Take each scan as a live (fly) scan whose frames are announced while
        they arrive (``overfocus_scan(live=True)``): the recorder's live view
        shows them during the scan. A pause then lets the scan go on, and
        resuming collects the same scan.

    Returns
    -------
    CalibrationRecord
        The first valid record, else the last attempt's (``valid`` False).

    Notes
    -----
    Focus: after a valid record the optics stay at the setting the record
    holds for (its ``optics_state``). Otherwise -- no valid record, or the plan
    fails or is aborted midway -- :func:`bluesky.preprocessors.finalize_wrapper`
    moves the overfocus back to ``f0``. Acquisition runs get ``plan_name='calibrate'``,
    ``plan_args`` of this plan, ``calibration_attempt`` (1-based) and
    ``max_attempts`` in their start documents. Errors of the fit itself (not
    "no features") fail the plan. With ``subscribe=True`` no other recorder
    should be subscribed to the RunEngine, or each run is calibrated twice.
    """
    _check_calibrate_args(max_attempts, focus_limits, focus_step, timeout)
    check_live(live)
    _check_recorder(callback)
    recorder = callback

    def attempts() -> MsgGenerator[CalibrationRecord]:
        f0 = float(optics.overfocus.get())
        lim = focus_limits if focus_limits is not None else tuple(sorted((f0 / 2, 2 * f0)))
        step = float(focus_step) if focus_step is not None else 0.2 * abs(f0)
        schedule = focus_schedule(f0, step, lim, max_attempts)
        _md: dict[str, Any] = {
            "plan_name": "calibrate",
            "plan_args": {"detector": repr(detector), "scan": repr(scan), "optics": repr(optics),
                          "max_attempts": max_attempts, "focus_limits": list(lim),
                          "focus_step": step, "callback": repr(callback), "live": live},
            "max_attempts": len(schedule),
        }
        keep = {"focus": False}

        def restore() -> MsgGenerator[None]:
            if not keep["focus"] and float(optics.overfocus.get()) != f0:
                yield from bps.mv(optics.overfocus, f0)

        def inner() -> MsgGenerator[CalibrationRecord]:
            record = None
            for k, focus in enumerate(schedule, 1):
                if float(optics.overfocus.get()) != focus:
                    yield from bps.mv(optics.overfocus, focus)
                uid = yield from overfocus_scan(detector, scan, optics, guess={"overfocus": focus},
                                                md={**_md, "calibration_attempt": k, **(md or {})},
                                                live=live)
                status = _status_of(recorder, uid)
                yield from _wait_status(status, timeout, f"the calibration of run {uid}")
                record = status.result
                if record.valid:
                    keep["focus"] = True
                    break
            return record

        return (yield from bpp.finalize_wrapper(inner(), restore))

    return _subscribed(attempts(), recorder, bool(subscribe))


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
    _check_recorder(callback)
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
        status = _status_of(recorder, uid)
        yield from _wait_status(status, timeout, f"the check of run {uid}")
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

    return _subscribed(inner(), recorder, bool(subscribe))


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
    if not isinstance(tolerances, Mapping) or any(
            not is_real(v) or v < 0
            for v in tolerances.values()):
        raise ValueError(f"tolerances must map state keys to finite numbers >= 0, got {tolerances!r}")
    unknown = set(calibrate_kwargs) - {"max_attempts", "focus_limits", "focus_step", "timeout",
                                       "live"}
    if unknown:
        raise ValueError(f"unknown calibrate argument(s): {sorted(unknown)}")
    _check_calibrate_args(calibrate_kwargs.get("max_attempts", 3),
                          calibrate_kwargs.get("focus_limits"), calibrate_kwargs.get("focus_step"),
                          calibrate_kwargs.get("timeout", 600.0))
    check_live(calibrate_kwargs.get("live", False))
    _check_recorder(callback)

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
