"""The spare command process itself (``python -m stemcal.cli.spare_process --spare KEY``).

Started by a command of :data:`~.spare.COMMANDS` as it ends (:func:`.spare.leave_spare`);
what it is for and how the pair of client and spare behaves is in :mod:`.spare`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from ..spares import serve_claim, spare_arguments
from .main import leave, main
from .spare import COMMAND, IMPORTS, leave_spare

__all__: list[str] = []

log = logging.getLogger(__name__)


def _serve(key: str, lock_fd: int | None = None) -> NoReturn:
    """The spare: import ahead, wait to be claimed, run the claiming command, report
    its status, leave."""
    from ..executors import command_line_process

    # started as ``sh -c 'CMD &'``, it came with SIGINT and SIGQUIT ignored (a shell's
    # background job) and so without Python's KeyboardInterrupt: a command has both
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    command_line_process()   # before LiberTEM and Numba are imported, as the commands do
    got = serve_claim(COMMAND, key, IMPORTS, _warm_up, lock_fd=lock_fd)
    if got is None:
        os._exit(0)
    argv, conn = got
    environ = dict(os.environ)   # the client's, as it was when the command started
    sys.argv = ["stemcal", *argv]
    sys.stdout.reconfigure(line_buffering=os.isatty(1))   # now the client's streams
    done = threading.Event()
    threading.Thread(target=_watch, args=(conn, done), name="stemcal-client-watch",
                     daemon=True).start()
    try:
        status = main(argv)
    except SystemExit as exc:   # --help, an argument error: argparse's way out
        code = exc.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
        status = code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:   # before main's own handler could see it
        print("stemcal: interrupted", file=sys.stderr)
        status = 130

    def report() -> None:
        leave_spare(argv, environ)
        done.set()
        try:
            conn.sendall(json.dumps({"status": status}).encode() + b"\n")
        except OSError:
            pass
    leave(status, report)


def _warm_up() -> None:
    """What a command's first fit pays beyond the imports, paid ahead: a cold start on a
    small simulated scan (16x16 frames of 64x64 uint16 counts, as a detector's) loads
    the fit's Numba kernels from Numba's cache (or compiles them) and starts its thread
    pools. Nothing of it is kept. Where it fails, the command pays as without it.

    It takes the spare about 1 s more before it listens (2.5 s after the command before
    ended, against 1.5 s); in five alternating pairs of ``stemcal calibrate`` (both spares
    waiting) the command ended 0.1-1.6 s earlier with it (medians 4.13 against 4.75 s;
    its fit, stop document to record, 2.07 against 2.28 s)."""
    try:
        from ..fit.coarse import cold_start
        from ..twin import OverfocusParams
        from ..twin.simulator import simulate

        sig = (64, 64)   # a disk of 0.3 x the detector, as benchmarks/run.py's geometry
        truth = OverfocusParams(overfocus=1e-6, scan_pixel_size=2.5e-10, camera_length=0.2,
                                detector_pixel_size=55e-6, semiconv=0.3 * sig[0] * 55e-6 / 0.2,
                                cy=35.0, cx=30.0, scan_rotation=23.0, flip_y=True)
        data = simulate(truth, (16, 16), sig, dose=20, dtype="uint16")
        cold_start(data, scan_pixel_size=truth.scan_pixel_size,
                   camera_length=truth.camera_length,
                   detector_pixel_size=truth.detector_pixel_size, overfocus=truth.overfocus)
    except Exception as exc:  # noqa: BLE001 - only what it loads matters, not its result
        log.debug("spare command process: the warm-up fit failed (%s)", exc)


def _watch(conn: socket.socket, done: threading.Event) -> None:
    """Kill this process when the client has gone (its end of the connection closed)
    before the command ended: as a ``kill -9`` of the command would."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGKILL)


def _main(argv: Sequence[str]) -> None:
    if (spare := spare_arguments(argv)) is not None:
        _serve(*spare)
    print("usage: python -m stemcal.cli.spare_process --spare KEY [--lock-fd N] (started by "
          "stemcal itself)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    _main(sys.argv[1:])
