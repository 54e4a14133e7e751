"""How the commands print: strict JSON, and one way to print a calibration's values."""
from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["to_json", "angle_difference", "when", "geometry_lines", "RECORD_SUMMARY",
           "record_summary"]

#: Keys of the short record summary (``calibrate --json``, ``history --json``).
RECORD_SUMMARY = ("uid", "acquisition_uid", "time", "scan_rotation", "flip_y", "overfocus",
                  "cy", "cx", "quality", "valid")


def to_json(obj: Any) -> str:
    """Strict JSON: non-finite floats become null, NumPy scalars plain numbers."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            return clean(v.item())
        return v
    return json.dumps(clean(obj), allow_nan=False)


def angle_difference(a: float, b: float) -> float:
    """``a - b`` in degrees, wrapped into [-180, 180)."""
    return (a - b + 180) % 360 - 180


def when(t: float) -> str:
    """A time (seconds since the epoch) as local ISO date and time."""
    return datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def geometry_lines(values: Mapping[str, Any],
                   uncertainty: Mapping[str, Any] | None = None) -> list[str]:
    """The calibration's values, one per line, with 1-sigma uncertainties and their units
    (``23.445 +- 0.029 deg``).

    ``values``: ``scan_rotation`` (deg), ``flip_y``, ``overfocus`` (m), ``cy``,
    ``cx`` (px) and ``descan`` (2x2, px per scan px); ``uncertainty`` may hold
    ``scan_rotation`` and ``overfocus``.
    """
    unc = uncertainty or {}

    def pm(key: str) -> str:
        v = unc.get(key)
        return f" +- {v:.2g}" if v is not None and math.isfinite(v) else ""

    m = values["descan"]
    return [f"scan_rotation  {values['scan_rotation']:.3f}{pm('scan_rotation')} deg",
            f"flip_y         {values['flip_y']}",
            f"overfocus      {values['overfocus']:.6g}{pm('overfocus')} m",
            f"centre (y, x)  {values['cy']:.2f}, {values['cx']:.2f} px",
            f"descan         [[{m[0][0]:+.4f}, {m[0][1]:+.4f}], [{m[1][0]:+.4f}, "
            f"{m[1][1]:+.4f}]] px/scan px"]


def record_summary(record: Any) -> dict[str, Any]:
    """The short JSON summary of a calibration record (:data:`RECORD_SUMMARY`)."""
    d = record.to_dict()
    d["valid"] = record.valid
    return {k: d[k] for k in RECORD_SUMMARY}


def state_line(state: Mapping[str, Any]) -> str:
    """An optics state as ``key=value`` pairs."""
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in state.items())
