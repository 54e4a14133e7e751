"""The ``stemcal`` entry point: one parser for every command, one way out for every error.

The CLI only parses, wires objects and prints; the work is in the package.
Bad input ends with one line ``stemcal: error: ...`` on stderr and exit
status 2 (3 when the data hold nothing to calibrate on, or ``calibrate``
ends without a trusted record), never a traceback. An error nobody
foresaw is reported the same way, with its type, and status 2; ``-vv``
logs its traceback as well. Ctrl-C ends with ``stemcal: interrupted`` and
status 130.

The console script is :func:`run`: :func:`main`, then the interpreter's orderly
part of leaving (non-daemon threads joined, ``atexit`` handlers run, output
flushed) and an immediate exit, without tearing down every module's objects one
by one (0.3-0.7 s of CPU after a fit or a calibration here: Numba's, LiberTEM's,
bluesky's objects), which the operator would otherwise wait for after the answer.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import acquire, app, offline, records, serve, spare
from .args import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NO_FEATURES, CLIError, Parser, error_line

__all__ = ["build_parser", "main", "run", "leave", "EXIT_INTERRUPTED"]

log = logging.getLogger("stemcal")

#: Exit status when stdout's reader closed the pipe early (128 + SIGPIPE, as a shell's tools).
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``handler(args) -> exit status``."""
    from .. import __version__
    parser = Parser(prog="stemcal", description=(
        "Calibrate scan rotation, flip, overfocus, beam centre and descan of overfocused "
        "4D-STEM data."))
    parser.add_argument("--version", action="version", version=f"stemcal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (offline, acquire, records, serve, app):
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore", "Loading compressed HDF5", RuntimeWarning)  # LiberTEM noise
    from ..errors import NoFeaturesError
    from ..formats import DatasetError
    try:
        return args.handler(args)
    except CLIError as exc:
        print(f"stemcal: error: {exc}", file=sys.stderr)
        return exc.status
    except NoFeaturesError as exc:
        print(f"stemcal: error: nothing to calibrate on: {exc}", file=sys.stderr)
        return EXIT_NO_FEATURES
    except BrokenPipeError:  # the reader went away (`stemcal history | head -1`): not an error
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except (DatasetError, ValueError, OSError) as exc:
        if _interrupted(exc):
            print("stemcal: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        msg = " ".join(str(exc).split())
        print(f"stemcal: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:  # a last resort: absurd sizes are meant to be refused before this
        print("stemcal: error: out of memory (the data or the requested shapes are too large)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("stemcal: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        if _interrupted(exc):
            print("stemcal: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        log.debug("uncaught error", exc_info=True)
        print(f"stemcal: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _interrupted(exc: BaseException) -> bool:
    """Whether a Ctrl-C caused ``exc``: a ``KeyboardInterrupt`` raised inside a compiled
    function (Numba's, in LiberTEM's reader) comes back as ``SystemError: ... returned a
    result with an exception set``, the interrupt as its cause (seen once in `make test`:
    status 2 instead of 130)."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that what is still buffered for a closed pipe is
    dropped at exit instead of raising there again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's redirection): nothing to drop
        pass


def run() -> NoReturn:
    """The ``stemcal`` console script: :func:`main`'s status as the exit status.

    ``calibrate`` and ``fit`` run in a spare command process where one is waiting
    (:mod:`.spare`: its imports done ahead), and leave one for the next such command.

    After a command has returned, what the interpreter's shutdown does that anyone can
    observe is done here, in its order (:func:`leave`).
    """
    argv = sys.argv[1:]
    environ = dict(os.environ)   # as the command starts (it may change its own later)
    if spare.wants_spare(argv):
        status = spare.run_in_spare(argv, environ)
        if status is not None:
            _flush()
            os._exit(status)
    status = main()
    leave(status, lambda: spare.leave_spare(argv, environ))


def leave(status: int, last: Callable[[], None] | None = None) -> NoReturn:
    """Exit with ``status`` after a command: non-daemon threads are joined (with the hooks
    that stop thread pools), ``atexit`` handlers run (logging's flush, temporary
    directories' clean-up, weak-reference finalizers), stdout and stderr are flushed,
    ``last()`` is called; then the process exits at once. Skipped is only the teardown
    of the modules' objects, which writes nothing: every file a command writes is
    closed (and where it matters fsync'd) before the command returns, as it must be to
    survive a ``kill -9``. Where this Python lacks ``threading._shutdown`` (the
    interpreter's own hook), the normal shutdown runs (after ``last()``). On
    ``SystemExit`` (``--help``, argument errors) :func:`main` does not return and the
    normal shutdown runs.
    """
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:
        if last is not None:
            last()
        sys.exit(status)
    _flush()
    shutdown()
    atexit._run_exitfuncs()
    _flush()
    if last is not None:
        last()
    os._exit(status if isinstance(status, int) else 1)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):   # closed, or a broken pipe
            pass
