"""The calibration acquisition: one overfocused 4D-STEM scan as a Bluesky plan."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import FailedStatus, MsgGenerator
from bluesky.utils import short_uid as _short_uid

from ..checks import is_real
from ..runs import (BASELINE_STREAM, INCOMPLETE_STREAM, PRIMARY_STREAM, acquisition_start,
                    check_guess)

__all__ = ["overfocus_scan", "acquire_and_read", "fly_and_collect", "INCOMPLETE_STREAM",
           "BASELINE_STREAM", "AcquisitionFailed"]

logger = logging.getLogger(__name__)


#: Largest raw acquisition an overfocus_scan starts (frames x bytes per pixel): the
#: whole scan is held in memory once. Checked before any device is staged.
MAX_ACQUISITION_BYTES = 8 * 2**30


def _check_acquisition_size(scan: Mapping[str, Any], detector: Mapping[str, Any]) -> None:
    """Refuse a scan whose frames would exceed :data:`MAX_ACQUISITION_BYTES` (before staging)."""
    try:
        ny, nx = int(scan["shape_y"]), int(scan["shape_x"])
        sy, sx = (int(n) for n in detector["sig_shape"])
    except (KeyError, TypeError, ValueError):
        return  # a device without these settings: nothing to check here
    depth = int(detector.get("bit_depth", 16) or 16)
    n_bytes = ny * nx * sy * sx * (1 if depth <= 8 else 2 if depth <= 16 else 4)
    if n_bytes > MAX_ACQUISITION_BYTES:
        raise ValueError(f"a {ny}x{nx} scan of {sy}x{sx} frames is {n_bytes / 2**30:.3g} GiB, "
                         f"over the acquisition limit of {MAX_ACQUISITION_BYTES / 2**30:.3g} GiB; "
                         f"reduce the scan shape")


def check_live(live: Any) -> None:
    """``ValueError`` unless ``live`` is a bool (plan arguments may come from a queue server)."""
    if not isinstance(live, bool):
        raise ValueError(f"live must be true or false, got {live!r}")


def overfocus_scan(detector: Any, scan: Any, optics: Any, *, guess: Mapping[str, Any] | None = None,
                   md: Mapping[str, Any] | None = None, live: bool = False,
                   flush_period: float = 0.25) -> MsgGenerator[str]:
    """Acquire one overfocused 4D-STEM scan for calibration, as one Bluesky run.

    Stages the three devices, opens a run, triggers and reads them together
    into the ``primary`` stream (one event; the detector's 4D frames are
    external ``STREAM:`` data), closes the run and unstages. An acquisition
    that fails or is interrupted midway leaves its partial frames in the
    stream ``'incomplete'`` instead (see :func:`acquire_and_read`); a
    RunEngine pause during the acquisition repeats the acquisition on resume.

    Parameters
    ----------
    detector : MerlinDetector
        A detector that acquires a whole scan per trigger.
    scan : ScanGenerator
        Scan settings (shape, step, dwell, rotation); read into the event.
    optics : MicroscopeOptics
        Optics settings (overfocus, camera length...); read into the event.
    guess : dict, optional
        Initial guess of the calibration parameters (``OverfocusParams``
        field names, e.g. ``scan_rotation`` in degrees, ``overfocus`` in
        metres); an ``OverfocusParams`` is converted with ``to_dict()``.
        Recorded in the start document for the calibration that follows.
    md : dict, optional
        Extra start-document metadata; it wins over the plan's own keys.
    live : bool
        Stream the frames while they arrive (a fly scan,
        :meth:`~stemcal.devices.MerlinDetector.kickoff`): the ``primary``
        stream then holds one frame ``(sy, sx)`` per index (flat scan
        position, row-major; the scan shape is in the start document's
        ``scan``), announced by a StreamDatum every ``flush_period`` seconds,
        so that a callback (:class:`stemcal.callbacks.CalibrationRecorder`)
        processes them during the scan. The scan and optics are read once,
        before the scan, into the stream ``baseline``. The scan is not
        rewound: a pause (Ctrl-C, ``RE.request_pause()``) during it lets the
        detector go on, and on ``RE.resume()`` the plan goes on collecting the
        same scan (an immediate pause) or pauses after it (a deferred one);
        ``RE.abort()``/``RE.stop()`` while paused interrupt it, and its frames
        so far stay in the file and in the stream (not calibrated).
    flush_period : float
        Seconds between StreamDatum documents of a live scan (> 0).

    Returns
    -------
    str
        The run's uid (the plan's return value).

    Notes
    -----
    Start-document keys: Bluesky's ``plan_name='overfocus_scan'``, ``plan_type``,
    ``plan_args`` (devices as ``repr``, ``guess``, ``live``), ``detectors``,
    ``num_points=1``, ``num_intervals=0``, ``hints``, and the contract's
    ``purpose``, ``optics``, ``scan``, ``detector``, ``guess`` and ``live``
    (:func:`stemcal.runs.acquisition_start`; :mod:`stemcal.runs` says what
    each holds). The settings are read when the RunEngine starts the plan, not
    when it is created.
    """
    guess_md = check_guess(guess)
    check_live(live)
    if not (is_real(flush_period) and flush_period > 0):
        raise ValueError(f"flush_period must be a finite number of seconds > 0, got {flush_period!r}")
    _md: dict[str, Any] = {
        "detectors": [detector.name],
        "num_points": 1,
        "num_intervals": 0,
        "plan_name": "overfocus_scan",
        "plan_type": "generator",
        "plan_args": {"detector": repr(detector), "scan": repr(scan), "optics": repr(optics),
                      "guess": guess_md, "live": live},
        "hints": {"dimensions": [(("time",), PRIMARY_STREAM)]},
        **acquisition_start(detector, scan, optics, guess=guess_md, live=live),
    }
    _check_acquisition_size(_md["scan"], _md["detector"])
    _md.update(md or {})
    devices = [detector, scan, optics]

    @bpp.stage_decorator(devices)
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        yield from bps.checkpoint()  # a deferred pause (one Ctrl-C) takes effect here
        if live:
            yield from fly_and_collect(detector, [scan, optics], flush_period=float(flush_period))
        else:
            yield from acquire_and_read(detector, devices)

    return (yield from inner())


def fly_and_collect(detector: Any, others: list[Any], *, flush_period: float = 0.25,
                    name: str = PRIMARY_STREAM) -> MsgGenerator[None]:
    """Read ``others`` into :data:`BASELINE_STREAM`, then fly ``detector`` into stream ``name``.

    The detector is kicked off, and its new frames are announced
    (``collect``) every ``flush_period`` seconds until it completes. That
    part is not rewindable (:func:`bluesky.preprocessors.rewindable_wrapper`):
    a pause resumes where it was, and a deferred pause takes effect at the
    checkpoint after the scan. A failed acquisition raises
    :class:`AcquisitionFailed` after the frames written so far have been
    announced.
    """
    yield from _read_event(others, BASELINE_STREAM)
    yield from bps.declare_stream(detector, name=name, collect=True)
    yield from bpp.rewindable_wrapper(_fly(detector, flush_period, name), False)
    yield from bps.checkpoint()  # a deferred pause requested during the scan stops here


def _fly(detector: Any, flush_period: float, name: str) -> MsgGenerator[None]:
    try:
        yield from bps.kickoff(detector, wait=True)
        # Wait at most flush_period for the end of the acquisition, then announce what
        # came: the last frames are announced as soon as the acquisition ends. The loop
        # follows the acquisition's own status: a pause cancels a wait (its group is gone
        # on resume, and the wait returns at once), and the status is waited on anew.
        group = _short_uid("complete")
        status = yield from bps.complete(detector, group=group)
        while not status.done:
            done = yield from bps.wait(group, timeout=flush_period, error_on_timeout=False)
            if done and not status.done:  # the group went with a pause
                yield from bps.complete(detector, group=group)
            yield from bps.collect(detector, name=name)
        yield from bps.collect(detector, name=name)
        if not status.success:
            raise FailedStatus(status)
    except Exception as exc:  # announce what was written before the fault
        yield from _interrupted(detector, exc, bps.collect(detector, name=name))


class AcquisitionFailed(FailedStatus):
    """A device's trigger status failed; ``str()`` names the device and the cause.

    A :class:`bluesky.utils.FailedStatus` (``args[0]`` is the status), so the
    run's stop document gets a readable ``reason``.
    """

    def __str__(self) -> str:
        status = self.args[0] if self.args else None
        try:
            cause = status.exception(timeout=0)
        except Exception:  # noqa: BLE001 - not an ophyd status
            cause = None
        if cause is None:
            return super().__str__()
        device = getattr(getattr(status, "device", None), "name", "a device")
        return f"{device}: acquisition failed: {type(cause).__name__}: {cause}"


def acquire_and_read(detector: Any, devices: list[Any],
                     name: str = PRIMARY_STREAM) -> MsgGenerator[None]:
    """Trigger ``devices``, wait, and read them into one event of stream ``name``.

    Like :func:`bluesky.plan_stubs.trigger_and_read`, except when the wait is
    interrupted -- the detector's status fails (connection lost, timeout,
    refused command) or the RunEngine throws in an abort, a stop or a pause
    that cannot be resumed: then ``detector`` is stopped, and if it holds
    frames of the interrupted acquisition (``detector.has_uncollected_data()``)
    the devices are read into one event of the stream
    :data:`INCOMPLETE_STREAM`, so that the partial file is referenced by
    the run (its StreamResource/StreamDatum), before the exception goes on
    (a failed status as :class:`AcquisitionFailed`, whose message names the
    cause). Calibration uses only the ``primary`` stream.
    """
    group = _short_uid("trigger")
    try:
        for obj in devices:
            if callable(getattr(obj, "trigger", None)):
                yield from bps.trigger(obj, group=group)
        yield from bps.wait(group=group)
    except Exception as exc:
        def salvage() -> MsgGenerator[None]:
            has_data = getattr(detector, "has_uncollected_data", None)
            if callable(has_data) and has_data():
                yield from _read_event(devices, INCOMPLETE_STREAM)

        yield from _interrupted(detector, exc, salvage())
    yield from _read_event(devices, name)


def _interrupted(detector: Any, exc: Exception, salvage: MsgGenerator[None]) -> MsgGenerator[None]:
    """After ``exc`` cut an acquisition short: stop ``detector``, run ``salvage`` (which
    records what it wrote), then raise ``exc`` -- a failed status as
    :class:`AcquisitionFailed`, whose message names the device and the cause."""
    logger.info("acquisition of %s interrupted: %r", getattr(detector, "name", detector), exc)
    try:
        yield from bps.stop(detector)
        yield from salvage
    except Exception:  # never hide the original error behind the salvage's
        logger.exception("could not record the interrupted acquisition")
    if type(exc) is FailedStatus and exc.args:
        raise AcquisitionFailed(*exc.args) from exc
    raise exc


def _read_event(devices: list[Any], name: str) -> MsgGenerator[None]:
    yield from bps.create(name)
    try:
        for obj in devices:
            yield from bps.read(obj)
    except Exception:
        yield from bps.drop()
        raise
    yield from bps.save()
