"""The calibrate plan: acquire and calibrate, at other focus settings until the record is trusted.

Data flow (one way): the plan acquires with :func:`~stemcal.plans.overfocus_scan`;
the RunEngine emits the run's documents; a calibration callback
(:class:`stemcal.callbacks.CalibrationRecorder`) collects them, fits in a
worker thread and writes a :class:`~stemcal.record.CalibrationRecord` to the
catalog. The callback completes an ophyd ``Status`` per run; the plan only
*waits* on that status (in a wait group of its own, so that ``RE.waiting_hook``
shows its progress, see :func:`~stemcal.plans.recorder_wait.wait_status`)
and reads its result. The plan never hands data to the callback, and the
callback never moves a device. After each attempt the plan reads the fitted
values into a short run of their own (``purpose='calibration_result'``,
:class:`~stemcal.devices.CalibrationReadout`), a row in BestEffortCallback's
table.

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

import math
from collections.abc import Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from ..checks import is_real
from ..record import CalibrationRecord
from ..runs import RESULT_PURPOSE, PRIMARY_STREAM, check_md
from .recorder_wait import check_recorder, status_of, subscribed, wait_status
from .scan import check_live, overfocus_scan

__all__ = ["calibrate", "focus_schedule", "check_calibrate_args", "read_result", "MAX_ATTEMPTS"]


#: Most acquisitions one :func:`calibrate` may make.
MAX_ATTEMPTS = 100


def check_calibrate_args(max_attempts: Any, focus_limits: Any, focus_step: Any,
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


def calibrate(detector: Any, scan: Any, optics: Any, *, callback: Any = None,
              subscribe: bool = False, max_attempts: int = 3,
              focus_limits: tuple[float, float] | None = None, focus_step: float | None = None,
              timeout: float | None = 600.0, md: Mapping[str, Any] | None = None,
              live: bool = False, result_runs: bool = True) -> MsgGenerator[CalibrationRecord]:
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
    result_runs : bool
        After each attempt, read its fitted values into a short run of their
        own (:func:`read_result`): one readable row per attempt in a
        BestEffortCallback's table. False: no such runs.

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
    check_calibrate_args(max_attempts, focus_limits, focus_step, timeout)
    check_live(live)
    md = check_md(md)
    if not isinstance(result_runs, bool):
        raise ValueError(f"result_runs must be true or false, got {result_runs!r}")
    check_recorder(callback)
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
                if uid is None:  # no RunEngine (summarize_plan, a simulator): no run, no fit
                    return None
                status = status_of(recorder, uid)
                yield from _waited(status, recorder, uid, timeout)
                record = status.result
                if result_runs:
                    yield from read_result(record, md={"calibration_attempt": k,
                                                       "max_attempts": len(schedule), **(md or {})})
                if record.valid:
                    keep["focus"] = True
                    break
            return record

        return (yield from bpp.finalize_wrapper(inner(), restore))

    return subscribed(attempts(), recorder, bool(subscribe))


def _waited(status: Any, recorder: Any, uid: str, timeout: float | None) -> MsgGenerator[None]:
    """Wait for run ``uid``'s calibration; past ``timeout``, tell the recorder that nobody
    waits for it (:meth:`~stemcal.callbacks.CalibrationRecorder.abandon`: its record is then
    written as abandoned, not valid) and raise ``TimeoutError`` saying so."""
    try:
        yield from wait_status(status, timeout, f"calibration of run {uid[:8]}")
    except TimeoutError as exc:
        abandon = getattr(recorder, "abandon", None)
        if abandon is not None and abandon(uid, str(exc)):
            raise TimeoutError(f"{exc}; its fit goes on, and its record will be written as "
                               "abandoned (not valid, never attached to later runs)") from None
        if status.done:
            raise TimeoutError(f"{exc}; its calibration ended meanwhile, and what it "
                               "recorded stands") from None
        raise


def read_result(record: CalibrationRecord, *, name: str = "fit",
                md: Mapping[str, Any] | None = None) -> MsgGenerator[str]:
    """Read a record's fitted values into a run of their own: one event, one table row.

    The run's start has ``purpose`` :data:`~stemcal.runs.RESULT_PURPOSE`,
    ``plan_name='calibrate'``, ``record_uid``, ``acquisition_uid`` and
    ``quality``; its ``primary`` stream one reading of a
    :class:`~stemcal.devices.CalibrationReadout` named ``name`` (hinted:
    rotation in deg, flip, overfocus in nm, centre in px, blur, valid).
    Returns the run's uid.
    """
    from ..devices import CalibrationReadout

    readout = CalibrationReadout(name=name)
    readout.show(record.to_dict())
    _md = {"purpose": RESULT_PURPOSE, "plan_name": "calibrate", "plan_type": "generator",
           "record_uid": record.uid, "acquisition_uid": record.acquisition_uid,
           "quality": record.quality, "detectors": [name], "num_points": 1,
           "num_intervals": 0, "hints": {"dimensions": [(("time",), PRIMARY_STREAM)]},
           **(md or {})}

    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        yield from bps.create(PRIMARY_STREAM)
        yield from bps.read(readout)
        yield from bps.save()

    return (yield from inner())
