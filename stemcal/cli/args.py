"""What every command's arguments share: the parser, number types, common options.

A number option's type names the option in its error (``--overfocus must not
be 0``); the checks are those of :mod:`stemcal.checks`.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .. import checks

__all__ = ["EXIT_BAD_INPUT", "EXIT_NO_FEATURES", "CLIError", "Parser", "number", "integer",
           "shape", "add_geometry", "add_catalog"]

#: Exit status of bad input (files, arguments, configuration).
EXIT_BAD_INPUT = 2
#: Exit status when the data hold nothing to calibrate on, or no trusted record was made.
EXIT_NO_FEATURES = 3


class CLIError(Exception):
    """An error to report as one line with an exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``stemcal: error: ...``), status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"stemcal: error: {' '.join(message.split())}\n")


#: The checks a number option may ask for, by name.
_NUMBER_CHECKS: dict[str, Callable[[str, float], float]] = {
    "finite": checks.finite, "positive": checks.positive, "nonzero": checks.nonzero,
    "nonnegative": checks.nonnegative}


def number(name: str, kind: str = "finite") -> Callable[[str], float]:
    """An argparse type: text to a float that passes ``kind`` (a :mod:`stemcal.checks` name).

    ``nonzero`` says why (a negative overfocus is an underfocus).
    """
    check = _NUMBER_CHECKS[kind]

    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        try:
            return check(name, v)
        except ValueError as exc:
            if kind == "nonzero":
                raise argparse.ArgumentTypeError(
                    f"{name} must not be 0 (negative means underfocus)") from None
            raise argparse.ArgumentTypeError(f"{exc.args[0].split(', got')[0]}, got {text!r}") from None
    return conv


def integer(name: str, minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: text to an int in ``minimum..maximum``."""
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"{name} must be <= {maximum}, got {v}")
        return v
    return conv


#: Largest scan or detector side an option takes, pixels.
MAX_SIDE = 65536


def shape(text: str) -> int:
    """An argparse type: one side of a scan or detector shape, 1..:data:`MAX_SIDE` px."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes must be positive integers, got {text!r}") from None
    if v < 1 or v > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"shape {v} out of range 1..{MAX_SIDE}")
    return v


def add_geometry(p: argparse.ArgumentParser, *, defaults: bool, required: bool | None = None) -> None:
    """The sizes and the overfocus (required for ``fit``, with defaults for ``simulate``;
    ``required=False``: optional without defaults, for a command that checks them itself)."""
    d = (lambda v: v) if defaults else (lambda v: None)
    req = (not defaults) if required is None else required
    p.add_argument("--scan-pixel-size", type=number("--scan-pixel-size", "positive"),
                   required=req, default=d(0.5e-9), metavar="M", help="scan step, metres")
    p.add_argument("--camera-length", type=number("--camera-length", "positive"), required=req,
                   default=d(0.2), metavar="M", help="specimen to detector distance, metres")
    p.add_argument("--detector-pixel-size", type=number("--detector-pixel-size", "positive"),
                   required=req, default=d(55e-6), metavar="M", help="detector pixel pitch, metres")
    p.add_argument("--overfocus", type=number("--overfocus", "nonzero"), required=req,
                   default=d(1e-6), metavar="M", help="overfocus, metres (negative: underfocus)")
    p.add_argument("--semiconv", type=number("--semiconv", "positive"),
                   default=d(10e-3) if defaults else None, metavar="RAD",
                   help="convergence semi-angle, radians")


def add_catalog(p: argparse.ArgumentParser) -> None:
    """``--catalog DIR_OR_URI``."""
    p.add_argument("--catalog", metavar="DIR_OR_URI",
                   help="catalog directory or tiled http(s):// URI (default $STEMCAL_CATALOG, "
                        "else ~/.local/share/stemcal/catalog)")
