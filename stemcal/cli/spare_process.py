"""The spare command process itself (``python -m stemcal.cli.spare_process --spare KEY``).

Started by a command of :data:`~.spare.COMMANDS` as it ends (:func:`.spare.leave_spare`);
what it is for and how the pair of client and spare behaves is in :mod:`.spare`.
"""
from __future__ import annotations

import json
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


def _serve(key: str, lock_fd: int | None = None) -> NoReturn:
    """The spare: import ahead, wait to be claimed, run the claiming command, report
    its status, leave."""
    from ..executors import command_line_process

    # started as ``sh -c 'CMD &'``, it came with SIGINT and SIGQUIT ignored (a shell's
    # background job) and so without Python's KeyboardInterrupt: a command has both
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    command_line_process()   # before LiberTEM and Numba are imported, as the commands do
    got = serve_claim(COMMAND, key, IMPORTS, lock_fd=lock_fd)
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
