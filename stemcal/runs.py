"""The run-document contract: what stemcal's Bluesky runs say, and how to read it.

Plans write these documents (:func:`stemcal.plans.overfocus_scan`,
:func:`~stemcal.plans.calibrate`, :func:`~stemcal.plans.verify_calibration`);
the calibration recorder, the live view, :mod:`stemcal.attach` and the
catalog read them. Every key, purpose and default lives here, so that a new
key is added in one place.

Acquisition runs (``purpose`` :data:`CALIBRATION_PURPOSE` or :data:`CHECK_PURPOSE`)
---------------------------------------------------------------------------------
Start document (:func:`acquisition_start`):

``purpose``
    :data:`CALIBRATION_PURPOSE` (calibrate the data) or :data:`CHECK_PURPOSE`
    (check a stored calibration, with ``calibration_check``).
``optics``, ``scan``, ``detector``
    The devices' settings when the run started (``state()``): ``optics``
    ``overfocus`` (m, the setting), ``camera_length`` (m), ``high_tension``
    (V), ``magnification``; ``scan`` ``shape_y``, ``shape_x`` (px),
    ``pixel_size`` (m), ``dwell_time`` (s), ``rotation`` (deg);
    ``detector`` ``pixel_size`` (m), ``sig_shape`` (px), ``bit_depth``.
``guess``
    Starting values of the calibration, :class:`~stemcal.twin.OverfocusParams`
    field names and units (:func:`check_guess`); may be empty.
``live``
    Whether the frames are streamed (a live scan, see below).
``calibration_check``
    Check runs only: ``record_uid``, ``params`` (an ``OverfocusParams`` dict),
    ``rotation_step`` (deg) and ``overfocus_step`` (relative).
``calibration_attempt``, ``max_attempts``
    Added by :func:`~stemcal.plans.calibrate` (1-based attempt, attempts planned).

Streams: the frames are in :data:`PRIMARY_STREAM`, either one 4D event
``(ny, nx, sy, sx)`` (a triggered scan) or one frame ``(sy, sx)`` per index,
in scan order, announced while they arrive (a *live* scan; the scan shape is
then the start document's ``scan``). :func:`frame_layout` reads both.
The settings of a live scan are read once into :data:`BASELINE_STREAM`; an
acquisition cut short leaves its partial frames in :data:`INCOMPLETE_STREAM`,
which is never calibrated. External data are HDF5 files named by
``file://localhost/...`` URIs (:func:`resource_path`).

Any run
-------
:mod:`stemcal.attach` adds :data:`CALIBRATION_KEY` (the calibration in force)
and :data:`STATUS_KEY` (why it is or is not there) to every run's start.

Result runs (``purpose`` :data:`RESULT_PURPOSE`)
------------------------------------------------
One event in ``primary``: an attempt's fitted values, read from a
:class:`~stemcal.devices.CalibrationReadout`; start ``record_uid``,
``acquisition_uid``, ``calibration_attempt``. Nothing reads them back: they
are there for tables (BestEffortCallback) and the eye.

Record runs (``purpose`` :data:`RECORD_PURPOSE`)
-----------------------------------------------
A calibration record is a run of its own (:mod:`stemcal.catalog`): start
``purpose``, ``plan_name`` :data:`RECORD_PLAN_NAME`, ``acquisition_uid`` and
``calibration`` (the record's fields).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from .checks import is_real
from .twin.params import OverfocusParams, semiconv_for_disk

__all__ = ["CALIBRATION_PURPOSE", "CHECK_PURPOSE", "RECORD_PURPOSE", "RESULT_PURPOSE",
           "RECORD_PLAN_NAME",
           "CALIBRATION_KEY", "STATUS_KEY", "PRIMARY_STREAM", "BASELINE_STREAM",
           "INCOMPLETE_STREAM", "DEFAULT_TOLERANCES", "OPTICS_STATE_KEYS", "RESERVED_MD",
           "check_md", "GUESS_KEYS", "plain", "check_guess",
           "device_settings", "acquisition_start", "check_request", "read_check", "optics_state", "fit_inputs",
           "starting_geometry", "projection_params", "frame_layout", "resource_path"]

#: ``purpose`` of an acquisition run to calibrate.
CALIBRATION_PURPOSE = "calibration_data"
#: ``purpose`` of an acquisition run that checks a stored calibration.
CHECK_PURPOSE = "calibration_check"
#: ``purpose`` of a calibration record's own run.
RECORD_PURPOSE = "calibration"
#: ``purpose`` of the short run in which :func:`stemcal.plans.calibrate` reads an attempt's
#: fitted values (:class:`stemcal.devices.CalibrationReadout`) for tables.
RESULT_PURPOSE = "calibration_result"
#: ``plan_name`` of a calibration record's own run.
RECORD_PLAN_NAME = "stemcal_record"
#: Start-document key of the calibration attached to a run (or None).
CALIBRATION_KEY = "calibration"
#: Start-document key of why the calibration is (not) attached.
STATUS_KEY = "calibration_status"

#: Stream of the frames that are calibrated.
PRIMARY_STREAM = "primary"
#: Stream of the settings read once before a live scan (Bluesky's name for such readings).
BASELINE_STREAM = "baseline"
#: Stream of an acquisition that did not end normally.
INCOMPLETE_STREAM = "incomplete"

#: Example tolerances of :func:`optics_state` keys (absolute, in each key's unit), as used
#: by :func:`stemcal.plans.recalibrate_if_stale` and :mod:`stemcal.attach`.
#: The keys of :func:`optics_state` (a calibration's ``optics_state``), each from
#: (device state, its key).
_STATE_SOURCES = {"overfocus_setting": ("optics", "overfocus"),
                  "camera_length": ("optics", "camera_length"),
                  "high_tension": ("optics", "high_tension"),
                  "magnification": ("optics", "magnification"),
                  "scan_rotation_setting": ("scan", "rotation"),
                  "scan_pixel_size": ("scan", "pixel_size")}
#: What a record's optics state can hold, so all that tolerances can compare.
OPTICS_STATE_KEYS = tuple(_STATE_SOURCES)

DEFAULT_TOLERANCES: dict[str, float] = {
    "overfocus_setting": 20e-9,     # m
    "camera_length": 1e-3,          # m
    "high_tension": 100.0,          # V
    "scan_rotation_setting": 0.01,  # deg
    "scan_pixel_size": 1e-13,       # m
}

#: Guess keys (``OverfocusParams`` fields) that must be finite numbers > 0.
_GUESS_POSITIVE = ("scan_pixel_size", "camera_length", "detector_pixel_size", "semiconv")
#: Guess keys that must be finite numbers.
_GUESS_FINITE = ("overfocus", "cy", "cx", "scan_rotation") + _GUESS_POSITIVE
#: Every key a guess may hold.
GUESS_KEYS = frozenset(_GUESS_FINITE + ("flip_y", "descan"))


def plain(value: Any) -> Any:
    """``value`` as plain JSON-able Python (NumPy scalars/arrays, tuples -> lists)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_guess(guess: Any) -> dict[str, Any]:
    """A start document's ``guess``: plain JSON, each value checked against its field.

    ``guess`` is None, a mapping of :data:`GUESS_KEYS`, or an
    :class:`~stemcal.twin.OverfocusParams` (its ``to_dict()``).

    Raises
    ------
    ValueError
        An unknown key or a value its field does not take (naming both).
    """
    if guess is None:
        return {}
    if hasattr(guess, "to_dict"):  # an OverfocusParams
        guess = guess.to_dict()
    if not isinstance(guess, Mapping):
        raise ValueError(f"guess must be a dict of calibration parameters or None, got {guess!r}")
    out = plain(guess)
    unknown = set(out) - GUESS_KEYS
    if unknown:
        raise ValueError(f"guess has unknown key(s) {sorted(unknown)}; use OverfocusParams "
                         f"fields {sorted(GUESS_KEYS)}")
    for key, value in out.items():
        if key in _GUESS_FINITE and not is_real(value):
            raise ValueError(f"guess[{key!r}] must be a finite number, got {value!r}")
        if key in _GUESS_POSITIVE and value <= 0:
            raise ValueError(f"guess[{key!r}] must be > 0, got {value!r}")
        if key == "overfocus" and value == 0:
            raise ValueError("guess['overfocus'] must not be 0 (negative means underfocus)")
        if key == "flip_y" and not isinstance(value, bool):
            raise ValueError(f"guess['flip_y'] must be true or false, got {value!r}")
        if key == "descan" and not (isinstance(value, list) and len(value) == 2 and all(
                isinstance(r, list) and len(r) == 2 and all(map(is_real, r)) for r in value)):
            raise ValueError(f"guess['descan'] must be a 2x2 matrix of finite numbers, "
                             f"got {value!r}")
    return out


def device_settings(device: Any) -> dict[str, Any]:
    """``device.state()`` if it has one, else its configuration values by data key."""
    state = getattr(device, "state", None)
    if callable(state):
        return plain(state())
    return {k: plain(v["value"]) for k, v in device.read_configuration().items()}


#: Start-document keys the plans set for the recorder (the contract above, and the
#: attempt counters of :func:`stemcal.plans.calibrate`): a plan's ``md`` may not set them.
RESERVED_MD = ("purpose", "optics", "scan", "detector", "guess", "live", "calibration_check",
               "calibration_attempt", "max_attempts")


def check_md(md: Any) -> dict[str, Any]:
    """``md`` of a calibration plan as a dict; ``ValueError`` unless it is a mapping with
    string keys and none of :data:`RESERVED_MD` (with ``purpose`` changed, for example, the
    recorder would not know the run as one to calibrate, and the plan would wait in vain)."""
    if md is None:
        return {}
    if not isinstance(md, Mapping) or not all(isinstance(k, str) for k in md):
        raise ValueError(f"md must map strings to values, got {md!r}")
    taken = [k for k in md if k in RESERVED_MD]
    if taken:
        raise ValueError(f"md must not set {', '.join(map(repr, taken))}: the plan sets it for "
                         "the calibration recorder")
    return dict(md)


def acquisition_start(detector: Any, scan: Any, optics: Any, *, guess: Mapping[str, Any],
                      live: bool) -> dict[str, Any]:
    """The contract's keys of an acquisition run's start document (module docstring).

    ``guess`` must have passed :func:`check_guess`. Reads the devices' settings now.
    """
    return {"purpose": CALIBRATION_PURPOSE, "optics": device_settings(optics),
            "scan": device_settings(scan), "detector": device_settings(detector),
            "guess": dict(guess), "live": bool(live)}


def check_request(record_uid: str, params: OverfocusParams, rotation_step: float,
                  overfocus_step: float) -> dict[str, Any]:
    """The contract's keys of a check run's start document: ``purpose`` and
    ``calibration_check`` (``rotation_step`` in degrees, ``overfocus_step`` relative)."""
    return {"purpose": CHECK_PURPOSE,
            "calibration_check": {"record_uid": record_uid, "params": params.to_dict(),
                                  "rotation_step": float(rotation_step),
                                  "overfocus_step": float(overfocus_step)}}


def read_check(start: Mapping[str, Any]) -> tuple[OverfocusParams, float, float, str | None]:
    """``(params, rotation_step, overfocus_step, record_uid)`` of a check run's start document.

    Raises
    ------
    ValueError
        It holds no valid ``calibration_check``.
    """
    try:
        spec = start["calibration_check"]
        params = OverfocusParams.from_dict(dict(spec["params"]))
        return (params, float(spec["rotation_step"]), float(spec["overfocus_step"]),
                spec.get("record_uid"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"start document {start.get('uid')} lacks a valid 'calibration_check' "
                         f"({exc!r})") from exc


def optics_state(optics: Mapping[str, Any], scan: Mapping[str, Any]) -> dict[str, Any]:
    """The microscope state a calibration holds for, from device settings.

    Parameters
    ----------
    optics : mapping
        :meth:`stemcal.devices.MicroscopeOptics.state` (or a start document's
        ``optics``): ``overfocus`` (m), ``camera_length`` (m), ``high_tension`` (V),
        ``magnification``.
    scan : mapping
        :meth:`stemcal.devices.ScanGenerator.state` (or a start document's ``scan``):
        ``rotation`` (deg), ``pixel_size`` (m).

    Returns
    -------
    dict
        ``overfocus_setting`` (m; the optics *setting*, not the fitted overfocus),
        ``camera_length`` (m), ``high_tension`` (V), ``magnification``,
        ``scan_rotation_setting`` (deg), ``scan_pixel_size`` (m); keys missing
        from the inputs are left out. These are the keys
        :func:`stemcal.catalog.staleness` tolerances refer to.
    """
    out: dict[str, Any] = {}
    sources = {"optics": optics, "scan": scan}
    for key, (device, name) in _STATE_SOURCES.items():
        src = sources[device]
        if src.get(name) is not None:
            out[key] = plain(src[name])
    return out


def fit_inputs(start: Mapping[str, Any]) -> dict[str, Any]:
    """The sizes and overfocus a calibration starts from, from a start document.

    Each is the run's ``guess`` where it gives one, else the device setting.

    Returns
    -------
    dict
        ``scan_pixel_size``, ``camera_length``, ``detector_pixel_size`` (m),
        ``overfocus`` (m) and ``semiconv`` (rad) where the guess gives it: the
        size arguments of :func:`stemcal.fit.coarse.cold_start`.

    Raises
    ------
    ValueError
        The start document lacks the settings (naming what is missing).
    """
    try:
        optics, scan, det = start["optics"], start["scan"], start["detector"]
        guess = dict(start.get("guess") or {})
        out = {"scan_pixel_size": float(guess.get("scan_pixel_size", scan["pixel_size"])),
               "camera_length": float(guess.get("camera_length", optics["camera_length"])),
               "detector_pixel_size": float(guess.get("detector_pixel_size", det["pixel_size"])),
               "overfocus": float(guess.get("overfocus", optics["overfocus"]))}
        if guess.get("semiconv") is not None:
            out["semiconv"] = float(guess["semiconv"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"start document {start.get('uid')} lacks the optics/scan/detector "
                         f"settings calibration needs ({exc!r})") from exc
    return out


def starting_geometry(start: Mapping[str, Any], sig_shape: tuple[int, int]) -> OverfocusParams:
    """The geometry an acquisition run starts from: its ``guess`` over its settings.

    The sizes are :func:`fit_inputs`. Where the guess says nothing else the
    values are neutral: rotation 0, no flip, the beam centre at the detector
    middle ``(sy / 2, sx / 2)`` and ``semiconv`` giving a disk radius of a
    quarter of the smaller detector side. This is what a live view projects
    with, and what a record that measured nothing (no features) reports.

    Raises
    ------
    ValueError
        The start document lacks the settings (naming what is missing).
    """
    values = fit_inputs(start)
    guess = dict(start.get("guess") or {})
    sy, sx = (int(n) for n in sig_shape)
    if "semiconv" not in values:
        values["semiconv"] = semiconv_for_disk(
            min(sy, sx) / 4, detector_pixel_size=values["detector_pixel_size"],
            overfocus=values["overfocus"], camera_length=values["camera_length"])
    try:
        values.update(cy=float(guess.get("cy", sy / 2)), cx=float(guess.get("cx", sx / 2)),
                      scan_rotation=float(guess.get("scan_rotation", 0.0)),
                      flip_y=bool(guess.get("flip_y", False)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"start document {start.get('uid')} has an invalid guess ({exc!r})") from exc
    if guess.get("descan") is not None:
        values["descan"] = guess["descan"]
    return OverfocusParams(**values)


def projection_params(start: Mapping[str, Any], sig_shape: tuple[int, int]) -> OverfocusParams:
    """The geometry a run's frames are shown with while they arrive.

    A check run's ``calibration_check.params`` (the stored calibration);
    else :func:`starting_geometry`.
    """
    check = start.get("calibration_check")
    if isinstance(check, Mapping) and isinstance(check.get("params"), Mapping):
        return OverfocusParams.from_dict(dict(check["params"]))
    return starting_geometry(start, sig_shape)


def frame_layout(shape: Any, start: Mapping[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(nav_shape, sig_shape)`` of a frames data key of :data:`PRIMARY_STREAM`.

    ``shape`` is the data key's shape: ``(ny, nx, sy, sx)`` (a triggered scan)
    or ``(sy, sx)`` (a live scan, whose scan shape is the start document's
    ``scan``).

    Raises
    ------
    ValueError
        ``shape`` is neither, or a live scan's start document gives no scan shape.
    """
    dims = [int(n) for n in shape]
    if len(dims) == 4:
        return (dims[0], dims[1]), (dims[2], dims[3])
    if len(dims) != 2:
        raise ValueError(f"frames must be (ny, nx, sy, sx) or (sy, sx) per index, got {dims}")
    try:
        scan = start["scan"]
        nav = (int(scan["shape_y"]), int(scan["shape_x"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"run {start.get('uid')}: frames per index, but the start document "
                         "gives no scan shape (scan.shape_y, scan.shape_x)") from None
    return nav, (dims[0], dims[1])


def resource_path(uri: str) -> Path:
    """The local path of a stream resource's ``file://localhost/...`` (or ``file:///...``) URI.

    Raises
    ------
    ValueError
        Any other URI.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError(f"cannot read {uri!r}: only file://localhost/... URIs are supported")
    return Path(unquote(parsed.path))
