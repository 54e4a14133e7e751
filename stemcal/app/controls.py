"""The geometry's sliders and fields, as Bokeh models.

Each adjustable number has a slider and a numeric field; each follows the
other through the server (a link in the browser would send a slider's drag to
the server as a typed value too). The app is told of every change: a slider
being dragged (``value``) asks for a preview, a slider released
(``value_throttled``) or a field typed in asks for the final images. Model names (for tests and
scripts): ``{name}`` for the slider, ``{name}_field`` for the field, with
``name`` from :data:`PARAMETERS`; the handedness is the checkbox ``flip_y``.

Units on the page: degrees, nanometres (overfocus), detector pixels, and
detector pixels per scan pixel (descan).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from bokeh.layouts import column, row
from bokeh.models import Checkbox, Div, NumericInput, Slider

from ..twin.params import OverfocusParams

__all__ = ["ParameterSpec", "PARAMETERS", "GeometryControls"]


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """An adjustable number: its model name, label, unit on the page (``scale`` page units
    per unit of :class:`OverfocusParams`), step and number format, and its range around
    a value (``span``: half-width; relative to the value when ``relative``)."""

    name: str
    label: str
    unit: str
    step: float
    format: str
    span: float
    scale: float = 1.0
    relative: bool = False
    bounds: tuple[float, float] | None = None

    def get(self, p: OverfocusParams) -> float:
        if self.name.startswith("descan_"):
            i, j = ("yx".index(c) for c in self.name[-2:])
            return float(p.descan[i][j]) * self.scale
        return float(getattr(p, self.name)) * self.scale

    def range_around(self, value: float) -> tuple[float, float]:
        if self.bounds is not None:
            return self.bounds
        half = abs(value) * self.span if self.relative else self.span
        return value - half, value + half


#: The adjustable numbers; the handedness (flip) is a checkbox.
PARAMETERS = (
    ParameterSpec("scan_rotation", "rotation", "deg", 0.01, "0.00", 180.0, bounds=(-180.0, 180.0)),
    ParameterSpec("overfocus", "overfocus", "nm", 0.1, "0.0", 0.5, scale=1e9, relative=True),
    ParameterSpec("cy", "centre y", "px", 0.01, "0.00", 10.0),
    ParameterSpec("cx", "centre x", "px", 0.01, "0.00", 10.0),
    ParameterSpec("descan_yy", "descan yy", "px/scan px", 0.0005, "0.0000", 0.1),
    ParameterSpec("descan_yx", "descan yx", "px/scan px", 0.0005, "0.0000", 0.1),
    ParameterSpec("descan_xy", "descan xy", "px/scan px", 0.0005, "0.0000", 0.1),
    ParameterSpec("descan_xx", "descan xx", "px/scan px", 0.0005, "0.0000", 0.1),
)


def params_with(base: OverfocusParams, values: dict[str, float], flip_y: bool) -> OverfocusParams:
    """``base`` with the page values of :data:`PARAMETERS` (page units) and the flip.

    Raises
    ------
    ValueError
        A value is not finite or its field is empty (``None``), or the geometry is invalid
        (e.g. overfocus 0).

    The rotation is taken modulo 360 degrees, into [-180, 180).
    """
    specs = {s.name: s for s in PARAMETERS}
    plain = {}
    for name, v in values.items():
        if v is None or not math.isfinite(float(v)):
            raise ValueError(f"{specs[name].label} must be a number")
        plain[name] = float(v) / specs[name].scale
    if "scan_rotation" in plain:
        plain["scan_rotation"] = (plain["scan_rotation"] + 180.0) % 360.0 - 180.0
    descan = [[plain.pop(f"descan_{a}{b}") for b in "yx"] for a in "yx"]
    return base.replace(**plain, descan=descan, flip_y=bool(flip_y))


class GeometryControls:
    """Sliders, fields and the flip checkbox for a geometry.

    Parameters
    ----------
    on_change : callable
        ``on_change(preview: bool)``: a value changed on the page; ``preview`` while
        a slider is being dragged.
    """

    def __init__(self, on_change: Callable[[bool], None], *, width: int = 330) -> None:
        self._on_change = on_change
        self._quiet = False
        self._ranged: set[str] = set()  # sliders whose range was set around a value
        self.values: dict[str, float | None] = {}
        self.sliders: dict[str, Slider] = {}
        self.fields: dict[str, NumericInput] = {}
        rows = []
        for spec in PARAMETERS:
            slider = Slider(name=spec.name, title=f"{spec.label} ({spec.unit})", start=-1, end=1,
                            value=0, step=spec.step, format=spec.format, width=width)
            field = NumericInput(name=f"{spec.name}_field", value=0, mode="float",
                                 format=spec.format, width=110)
            slider.on_change("value", self._changed(spec.name, field, True))
            slider.on_change("value_throttled", self._changed(spec.name, field, False))
            field.on_change("value", self._changed(spec.name, slider, False))
            self.sliders[spec.name], self.fields[spec.name] = slider, field
            rows.append(row(slider, field))
        self.flip = Checkbox(name="flip_y", label="flip y (handedness)", active=False)
        self.flip.on_change("active", lambda attr, old, new: self._notify(False))
        self.layout = column(Div(text="<b>geometry</b>"), *rows, self.flip)

    def _changed(self, name: str, other: Slider | NumericInput, preview: bool):
        """A callback: a slider or field of ``name`` changed; the ``other`` one follows."""
        def callback(attr, old, new) -> None:
            if self._quiet:
                return
            if new is None:   # a field emptied: no geometry until it holds a number again
                self.values[name] = None
                self._on_change(False)
                return
            self.values[name] = float(new)
            self._quiet = True  # the other's own callback must not ask again
            try:
                other.value = float(new)
            finally:
                self._quiet = False
            self._on_change(preview)
        return callback

    def _notify(self, preview: bool) -> None:
        if not self._quiet:
            self._on_change(preview)

    def params(self, base: OverfocusParams) -> OverfocusParams:
        """The geometry on the page (``base`` gives what the page does not hold)."""
        return params_with(base, dict(self.values), self.flip.active)

    def set(self, p: OverfocusParams) -> None:
        """Show ``p`` (without asking for images); ranges move to hold the values."""
        self._quiet = True
        try:
            for spec in PARAMETERS:
                value = spec.get(p)
                if spec.name == "scan_rotation":
                    value = (value + 180.0) % 360.0 - 180.0
                slider = self.sliders[spec.name]
                lo, hi = slider.start, slider.end
                if (spec.name not in self._ranged or not lo <= value <= hi
                        or (spec.relative and value * lo <= 0)):
                    lo, hi = spec.range_around(value)
                    slider.update(start=min(lo, hi), end=max(lo, hi))
                    self._ranged.add(spec.name)
                slider.value = value
                self.fields[spec.name].value = value
                self.values[spec.name] = value
            self.flip.active = bool(p.flip_y)
        finally:
            self._quiet = False

    def enable(self, on: bool) -> None:
        """Let the operator change the values (not while a job runs)."""
        for widget in (*self.sliders.values(), *self.fields.values(), self.flip):
            widget.disabled = not on
