"""A calibration's fitted values as something a plan reads: one row of a table.

:class:`CalibrationReadout` holds the values of one calibration (given as a
plain mapping, e.g. :meth:`stemcal.record.CalibrationRecord.to_dict`) in
hinted read-only signals with units and display precision, so that
bluesky's BestEffortCallback prints them as a readable row (overfocus in
nm, not 0.000 m). :func:`stemcal.plans.calibrate` reads it into a short run
after each attempt.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device

from .signals import ReadbackSignal

__all__ = ["CalibrationReadout"]


class CalibrationReadout(Device):
    """The fitted values of one calibration, read-only, for tables.

    Components (all hinted)
    -----------------------
    scan_rotation : float
        Degrees.
    flip_y : bool
    overfocus_nm : float
        Fitted overfocus, nm.
    cy, cx : float
        Beam centre, detector px.
    blur : float
        Crete blur of the shifted sum (0 sharp .. 1 blurred); NaN if not measured.
    valid : bool
        Whether the record is trusted (quality ``"ok"``).
    """

    scan_rotation = Cpt(ReadbackSignal, value=math.nan, units="deg", precision=3, kind="hinted")
    flip_y = Cpt(ReadbackSignal, value=False, kind="hinted")
    overfocus_nm = Cpt(ReadbackSignal, value=math.nan, units="nm", precision=2, kind="hinted")
    cy = Cpt(ReadbackSignal, value=math.nan, units="px", precision=2, kind="hinted")
    cx = Cpt(ReadbackSignal, value=math.nan, units="px", precision=2, kind="hinted")
    blur = Cpt(ReadbackSignal, value=math.nan, precision=4, kind="hinted")
    valid = Cpt(ReadbackSignal, value=False, kind="hinted")

    def show(self, values: Mapping[str, Any]) -> None:
        """Hold ``values``: ``scan_rotation`` (deg), ``flip_y``, ``overfocus`` (m), ``cy``,
        ``cx`` (px), ``blur`` (None: NaN) and ``quality`` (valid when ``"ok"``)."""
        def num(key: str) -> float:
            v = values.get(key)
            return math.nan if v is None else float(v)

        for sig, value in ((self.scan_rotation, num("scan_rotation")),
                           (self.flip_y, bool(values.get("flip_y"))),
                           (self.overfocus_nm, num("overfocus") * 1e9),
                           (self.cy, num("cy")), (self.cx, num("cx")), (self.blur, num("blur")),
                           (self.valid, values.get("quality") == "ok")):
            sig.put(value, internal=True)
