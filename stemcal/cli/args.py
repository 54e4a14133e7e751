"""What every command's arguments share: the parser, number types, common options.

A number option's type names the option in its error (``--overfocus must not
be 0``); the checks are those of :mod:`stemcal.checks`. Sizes have a
plausible range (:data:`RANGES`), checked before any arithmetic, so that an
absurd value is refused with its name instead of ending in an overflow.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from .. import checks

__all__ = ["EXIT_BAD_INPUT", "EXIT_NO_FEATURES", "EXIT_INTERRUPTED", "CLIError", "error_line",
           "Parser", "HelpFormatter", "RANGES", "number", "integer", "shape", "add_geometry",
           "add_catalog"]

#: Exit status of bad input (files, arguments, configuration).
EXIT_BAD_INPUT = 2
#: Exit status when the data hold nothing to calibrate on, or no trusted record was made.
EXIT_NO_FEATURES = 3
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

#: What argparse must read as a (negative) number, not as an option: its own pattern
#: (``-5``, ``-.5``, ``-0.5``) plus exponents (``-1e-6``, ``-2.5E+3``) and ``-inf``/``-nan``,
#: which the number types then refuse by name.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$",
                             re.IGNORECASE)


def error_line(exc: BaseException, said: str = "") -> str:
    """An unforeseen error in one line: its type and message (and ``said``, what the
    command adds), with the hint that ``-vv`` shows the traceback."""
    msg = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {msg}{said} (run with -vv for the traceback)"


class CLIError(Exception):
    """An error to report as one line with an exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's default, where it has one worth showing.

    argparse's own adds ``(default: None)`` and a flag's ``(default: False)``
    too, and repeats a default the help already names.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or action.nargs == 0
                or "default" in text or not action.option_strings):  # nargs 0: flags
            return text
        if isinstance(default, (tuple, list)):
            return f"{text} (default: {' '.join(map(str, default))})"
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``stemcal: error: ...``, status 2), negative numbers
    with exponents read as values (``--overfocus -1e-6``), and defaults in the help.

    Subcommand parsers are of this class too (argparse makes them of the parent's class).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # argparse (3.11) reads '-1e-6' as an option unless it matches this pattern
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"stemcal: error: {' '.join(message.split())}\n")


#: The checks a number option may ask for, by name.
_NUMBER_CHECKS: dict[str, Callable[[str, float], float]] = {
    "finite": checks.finite, "positive": checks.positive, "nonzero": checks.nonzero,
    "nonnegative": checks.nonnegative}

#: Plausible magnitudes of the CLI's physical quantities, (least, most) of ``|value|``
#: in the option's unit. Beyond them a value is a typo (``1e300``, ``1e-300``); they are
#: refused before the value meets any arithmetic.
RANGES: dict[str, tuple[float, float, str]] = {
    "scan_pixel_size": (1e-12, 1e-5, "m"),      # 1 pm .. 10 um scan step
    "camera_length": (1e-3, 1e3, "m"),
    "detector_pixel_size": (1e-7, 1e-2, "m"),   # 0.1 um .. 1 cm pixels
    "semiconv": (1e-6, 0.5, "rad"),
    "overfocus": (1e-10, 1.0, "m"),             # 0.1 nm .. 1 m, either sign
    "dose": (1e-6, 1e6, "counts/px"),
    "background": (0.0, 1e6, "counts/px"),
    "centre": (0.0, 1e6, "px"),
    "descan": (0.0, 10.0, "px/scan px"),
}


def number(name: str, kind: str = "finite", span: str | None = None) -> Callable[[str], float]:
    """An argparse type: text to a float that passes ``kind`` (a :mod:`stemcal.checks` name)
    and, with ``span`` (a key of :data:`RANGES`), whose magnitude lies in that range.

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
            v = check(name, v)
        except ValueError as exc:
            if kind == "nonzero":
                raise argparse.ArgumentTypeError(
                    f"{name} must not be 0 (negative means underfocus)") from None
            raise argparse.ArgumentTypeError(f"{exc.args[0].split(', got')[0]}, got {text!r}") from None
        if span is not None:
            lo, hi, unit = RANGES[span]
            if not lo <= abs(v) <= hi:
                what = f"between {lo:g} and {hi:g} {unit}" if lo else f"at most {hi:g} {unit}"
                sign = " in magnitude" if kind in ("finite", "nonzero") else ""
                raise argparse.ArgumentTypeError(f"{name} must be {what}{sign}, got {text!r}")
        return v
    conv.__name__ = "number"  # argparse names the type in some errors
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
    conv.__name__ = "integer"
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


def _span_help(key: str) -> str:
    lo, hi, unit = RANGES[key]
    return f"{lo:g}..{hi:g} {unit}"


def add_geometry(p: argparse.ArgumentParser, *, defaults: bool, required: bool | None = None) -> None:
    """The sizes and the overfocus (required for ``fit``, with defaults for ``simulate``;
    ``required=False``: optional without defaults, for a command that checks them itself)."""
    d = (lambda v: v) if defaults else (lambda v: None)
    req = (not defaults) if required is None else required
    p.add_argument("--scan-pixel-size", type=number("--scan-pixel-size", "positive",
                                                    "scan_pixel_size"),
                   required=req, default=d(0.5e-9), metavar="M",
                   help=f"scan step, metres ({_span_help('scan_pixel_size')})")
    p.add_argument("--camera-length", type=number("--camera-length", "positive", "camera_length"),
                   required=req, default=d(0.2), metavar="M",
                   help=f"specimen to detector distance, metres "
                        f"({_span_help('camera_length')})")
    p.add_argument("--detector-pixel-size", type=number("--detector-pixel-size", "positive",
                                                        "detector_pixel_size"),
                   required=req, default=d(55e-6), metavar="M",
                   help=f"detector pixel pitch, metres ({_span_help('detector_pixel_size')})")
    p.add_argument("--overfocus", type=number("--overfocus", "nonzero", "overfocus"),
                   required=req, default=d(1e-6), metavar="M",
                   help=f"overfocus, metres; negative: underfocus (|value| "
                        f"{_span_help('overfocus')})")
    p.add_argument("--semiconv", type=number("--semiconv", "positive", "semiconv"),
                   default=d(10e-3), metavar="RAD",
                   help=f"convergence semi-angle, radians ({_span_help('semiconv')})"
                        + ("" if defaults else "; default: measured from the disk radius"))


def add_catalog(p: argparse.ArgumentParser) -> None:
    """``--catalog DIR_OR_URI``."""
    p.add_argument("--catalog", metavar="DIR_OR_URI",
                   help="catalog directory or tiled http(s):// URI (default: $STEMCAL_CATALOG, "
                        "else $XDG_DATA_HOME/stemcal/catalog, by default "
                        "~/.local/share/stemcal/catalog)")
