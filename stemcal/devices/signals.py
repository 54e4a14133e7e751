"""Soft ophyd signals with units and validation at the device boundary.

:class:`SettingSignal` is a settable soft :class:`ophyd.Signal` whose value is
checked by a validator *before* anything changes: ``put`` and ``set`` raise
``ValueError`` synchronously (``Signal.set`` would otherwise report the error
only through its status, from a worker thread). :class:`ReadbackSignal` is a
soft signal the owning device updates with ``put(..., internal=True)``; anyone
else gets :class:`ophyd.signal.InternalSignalError`.

Both add ``units`` to their data key in ``describe()``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ophyd import Signal
from ophyd.signal import InternalSignal

from ..checks import finite, integer, nonzero, positive

__all__ = ["SettingSignal", "ReadbackSignal", "finite", "positive", "nonzero", "positive_int"]

Validator = Callable[[str, Any], None]


def positive_int(name: str, value: Any) -> None:
    """Accept an integer >= 1 (Python or NumPy integer, not bool)."""
    integer(name, value, minimum=1)


class _UnitsMixin:
    """Adds ``units`` (a string, or None for none) to the signal's data key."""

    units: str | None

    def describe(self):  # noqa: D102 - ophyd's docstring applies
        desc = super().describe()
        if self.units is not None:
            desc[self.name]["units"] = self.units
        return desc


class SettingSignal(_UnitsMixin, Signal):
    """A settable soft signal whose new values pass ``validator`` first.

    Parameters
    ----------
    validator : callable ``(name, value) -> None``
        Raises ``ValueError`` for a value the setting must not take.
    units : str, optional
        Units written into the data key (``'m'``, ``'s'``, ``'deg'``, ``'V'``).
    **kwargs
        Passed to :class:`ophyd.Signal` (``value``, ``name``, ``parent``, ``kind``...).
    """

    def __init__(self, *, validator: Validator = finite, units: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._validator = validator
        self.units = units

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
    **kwargs
        Passed to :class:`ophyd.signal.InternalSignal`.
    """

    def __init__(self, *, units: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
