"""Soft ophyd signals with units and validation at the device boundary.

:class:`SettingSignal` is a settable soft :class:`ophyd.Signal` whose value is
checked by a validator *before* anything changes: ``put`` and ``set`` raise
``ValueError`` synchronously (``Signal.set`` would otherwise report the error
only through its status, from a worker thread). :class:`ReadbackSignal` is a
soft signal the owning device updates with ``put(..., internal=True)``; anyone
else gets :class:`ophyd.signal.InternalSignalError`.

Both add ``units`` (and ``precision``, the digits after the point a table
shows) to their data key in ``describe()``. :class:`ScaledReadback` shows
another signal in a readable unit (overfocus in nm): bluesky's tables print
numbers in fixed point, where 1e-6 m is 0.000.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ophyd import Signal
from ophyd.signal import DerivedSignal, InternalSignal

from ..checks import finite, integer, nonzero, positive

__all__ = ["SettingSignal", "ReadbackSignal", "ScaledReadback", "finite", "positive", "nonzero", "positive_int"]

Validator = Callable[[str, Any], None]


def positive_int(name: str, value: Any) -> None:
    """Accept an integer >= 1 (Python or NumPy integer, not bool)."""
    integer(name, value, minimum=1)


class _UnitsMixin:
    """Adds ``units`` (a string, or None for none) and ``precision`` (digits after the
    decimal point in a table, or None) to the signal's data key; a ``bool`` value is
    described as ``dtype`` ``boolean`` (ophyd says ``integer``, which tables cannot print)."""

    units: str | None
    precision: int | None = None

    def describe(self):  # noqa: D102 - ophyd's docstring applies
        desc = super().describe()
        if isinstance(self.get(), bool):
            desc[self.name]["dtype"] = "boolean"
        if self.units is not None:
            desc[self.name]["units"] = self.units
        if self.precision is not None:
            desc[self.name]["precision"] = int(self.precision)
        return desc


class SettingSignal(_UnitsMixin, Signal):
    """A settable soft signal whose new values pass ``validator`` first.

    Parameters
    ----------
    validator : callable ``(name, value) -> None``
        Raises ``ValueError`` for a value the setting must not take.
    units : str, optional
        Units written into the data key (``'m'``, ``'s'``, ``'deg'``, ``'V'``).
    precision : int, optional
        Digits after the decimal point a table shows (the data key's ``precision``).
    **kwargs
        Passed to :class:`ophyd.Signal` (``value``, ``name``, ``parent``, ``kind``...).
    """

    def __init__(self, *, validator: Validator = finite, units: str | None = None,
                 precision: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._validator = validator
        self.units = units
        self.precision = precision

    def check_value(self, value: Any) -> None:
        """Raise ``ValueError`` if ``value`` is not an allowed setting."""
        super().check_value(value)
        self._validator(self.name, value)

    def set(self, value: Any, **kwargs: Any):
        """Validate ``value`` (raising ``ValueError`` here), then set it; returns a Status."""
        self.check_value(value)
        return super().set(value, **kwargs)


class ReadbackSignal(_UnitsMixin, InternalSignal):
    """A soft signal only its device writes (``put(value, internal=True)``).

    Parameters
    ----------
    units : str, optional
        Units written into the data key.
    precision : int, optional
        Digits after the decimal point a table shows.
    **kwargs
        Passed to :class:`ophyd.signal.InternalSignal`.
    """

    def __init__(self, *, units: str | None = None, precision: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.precision = precision


class ScaledReadback(_UnitsMixin, DerivedSignal):
    """A read-only view of a sibling signal times ``scale``, in ``units`` with ``precision``.

    For a table a person reads: ``ScaledReadback("overfocus", scale=1e9, units="nm",
    precision=1)`` shows 1.05e-6 m as 1050.0 nm. Writing goes to the original signal.

    Parameters
    ----------
    derived_from : str or Signal
        The signal shown (a sibling component's attribute name).
    scale : float
        Factor from the original's unit to ``units``.
    units : str
        Units of this view.
    precision : int
        Digits after the decimal point a table shows.
    **kwargs
        Passed to :class:`ophyd.signal.DerivedSignal` (``name``, ``parent``, ``kind``...).
    """

    def __init__(self, derived_from: Any, *, scale: float, units: str, precision: int,
                 **kwargs: Any) -> None:
        super().__init__(derived_from, write_access=False, **kwargs)
        self.scale = float(scale)
        self.units = units
        self.precision = precision

    def inverse(self, value: Any) -> Any:
        """Original value -> this view (times ``scale``)."""
        return value * self.scale

    def forward(self, value: Any) -> Any:
        """This view -> original value (read-only here; for completeness)."""
        return value / self.scale
