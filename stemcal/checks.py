"""Checks of numbers at the package's boundaries: one spelling of each.

Plain standard library and NumPy types, no heavy imports, so that the CLI,
the configuration and the devices can all use them. Each converter returns
the value in its plain Python type or raises ``ValueError`` naming the
value (``name``) and what was expected; internals trust what passed.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["is_real", "is_integer", "finite", "positive", "nonnegative", "nonzero", "integer",
           "port"]


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite real number.

    Python or NumPy integers and floats count (``numbers.Real``); ``bool``
    (also NumPy's), strings, NaN, infinities and integers beyond the float
    range do not.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_" \
            or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy integer (not ``bool``)."""
    return (not isinstance(value, bool) and type(value).__name__ != "bool_"
            and isinstance(value, numbers.Integral))


def finite(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite real number (:func:`is_real`)."""
    if not is_real(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0."""
    if not (is_real(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonnegative(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number >= 0."""
    if not (is_real(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def nonzero(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number other than 0."""
    v = finite(name, value)
    if v == 0:
        raise ValueError(f"{name} must not be 0, got {value!r}")
    return v


def integer(name: str, value: Any, *, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """``value`` as an int if it is an integer within ``minimum..maximum`` (inclusive)."""
    ok = is_integer(value)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        span = (f" in {minimum}..{maximum}" if minimum is not None and maximum is not None
                else f" >= {minimum}" if minimum is not None
                else f" <= {maximum}" if maximum is not None else "")
        raise ValueError(f"{name} must be an integer{span}, got {value!r}")
    return int(value)


def port(name: str, value: Any) -> int:
    """``value`` as a TCP port number (an integer in 1..65535)."""
    if not (is_integer(value) and 0 < value < 65536):
        raise ValueError(f"{name} must be an integer port in 1..65535, got {value!r}")
    return int(value)
