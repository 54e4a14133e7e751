"""The calibration acquisition: one overfocused 4D-STEM scan as a Bluesky plan."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import MsgGenerator

__all__ = ["overfocus_scan"]


def _plain(value: Any) -> Any:
    """``value`` as plain JSON-able Python (NumPy scalars/arrays, tuples -> lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _guess_dict(guess: Any) -> dict[str, Any]:
    if guess is None:
        return {}
    if hasattr(guess, "to_dict"):  # an OverfocusParams
        guess = guess.to_dict()
    if not isinstance(guess, Mapping):
        raise ValueError(f"guess must be a dict of calibration parameters or None, got {guess!r}")
    out = _plain(guess)
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"guess[{key!r}] must be finite, got {value!r}")
    return out


def _settings(device: Any) -> dict[str, Any]:
    """``device.state()`` if it has one, else its configuration values by data key."""
    state = getattr(device, "state", None)
    if callable(state):
        return _plain(state())
    return {k: _plain(v["value"]) for k, v in device.read_configuration().items()}


def overfocus_scan(detector: Any, scan: Any, optics: Any, *, guess: Mapping[str, Any] | None = None,
                   md: Mapping[str, Any] | None = None) -> MsgGenerator[str]:
    """Acquire one overfocused 4D-STEM scan for calibration, as one Bluesky run.

    Stages the three devices, opens a run, triggers and reads them together
    into the ``primary`` stream (one event; the detector's 4D frames are
    external ``STREAM:`` data), closes the run and unstages.

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

    Returns
    -------
    str
        The run's uid (the plan's return value).

    Notes
    -----
    Start-document keys: ``plan_name='overfocus_scan'``, ``plan_type``,
    ``plan_args`` (devices as ``repr``, ``guess``), ``detectors``,
    ``num_points=1``, ``num_intervals=0``, ``hints``,
    ``purpose='calibration_data'``, ``optics`` (``optics.state()``), ``scan``
    (``scan.state()``), ``detector`` (``detector.state()``) and ``guess``.
    The settings are read when the RunEngine starts the plan, not when it is
    created.
    """
    guess_md = _guess_dict(guess)
    _md: dict[str, Any] = {
        "detectors": [detector.name],
        "num_points": 1,
        "num_intervals": 0,
        "plan_name": "overfocus_scan",
        "plan_type": "generator",
        "plan_args": {"detector": repr(detector), "scan": repr(scan), "optics": repr(optics),
                      "guess": guess_md},
        "hints": {"dimensions": [(("time",), "primary")]},
        "purpose": "calibration_data",
        "optics": _settings(optics),
        "scan": _settings(scan),
        "detector": _settings(detector),
        "guess": guess_md,
    }
    _md.update(md or {})
    devices = [detector, scan, optics]

    @bpp.stage_decorator(devices)
    @bpp.run_decorator(md=_md)
    def inner() -> MsgGenerator[None]:
        yield from bps.trigger_and_read(devices)

    return (yield from inner())
