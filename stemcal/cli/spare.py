"""A spare command process: ``stemcal calibrate`` and ``stemcal fit`` without their imports.

A ``stemcal calibrate`` spends about 1.2 s importing (ophyd, bluesky, LiberTEM,
Numba, the devices and the fit) before its scan starts, and more on the way;
``stemcal fit`` about 0.8 s, and a process's first fit loads its Numba kernels. So
when such a command ends it leaves a spare behind (:mod:`stemcal.spares`, kind
:data:`COMMAND`): ``python -m stemcal.cli.spare_process --spare KEY``, which does those
imports and a small fit at once and waits, for at most
:data:`~stemcal.spares.IDLE_S` (or ``STEMCAL_COMMAND_SPARE`` seconds; ``0`` turns
spares off), for the next such command. That command's process (the *client*)
claims it: it hands over its arguments, working directory, umask, environment
and its three standard streams, and the spare runs the command there, with the
client's terminal, exactly as :func:`stemcal.cli.main.run` would (the same
:func:`~stemcal.cli.main.main`, the same way out). The client waits and exits
with the command's status. Where there is no spare (the first command, after the
idle time, another environment or version of the code: the key of
:func:`stemcal.spares.spare_key`), the client runs the command itself, as before.

The pair behaves as one process:

* signals sent to the client (Ctrl-C's SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1,
  SIGUSR2, SIGWINCH) are passed on to the spare: Ctrl-C ends the command with
  ``stemcal: interrupted`` and status 130, as without a spare;
* when the client goes (``kill -9`` included), the spare kills itself with
  SIGKILL at once: what a ``kill -9`` of the command would have left (journals
  for the next command's courier to deliver) is what is left;
* when the spare dies without reporting a status, the client says so on stderr
  and exits with :data:`EXIT_LOST` (or, where it had passed on SIGTERM, SIGHUP or
  SIGQUIT, it ends by that signal itself).

What differs: the command runs in another process (its pid is the spare's, not
the client's), job control (Ctrl-Z) stops the client only, and resource limits
and the scheduling priority are those the spare was started with (by the
command before, through ``sh``), not the client's.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from ..spares import Kind, connect, read_line, start_spare
from .args import EXIT_INTERRUPTED

log = logging.getLogger(__name__)

__all__ = ["ENV", "COMMAND", "MODULE", "COMMANDS", "IMPORTS", "SPARE_WAIT_S", "EXIT_LOST",
           "wants_spare", "run_in_spare", "leave_spare"]

#: The environment variable: ``0`` turns spare command processes off, a number sets
#: their idle time (s).
ENV = "STEMCAL_COMMAND_SPARE"
COMMAND = Kind("command", ENV, "spare command process")
#: What is started as a spare (``python -P -m MODULE --spare KEY``).
MODULE = "stemcal.cli.spare_process"
#: The commands a spare runs: those that import the acquisition and fitting machinery
#: (the reading commands start in 0.2 s without one).
COMMANDS = frozenset({"calibrate", "fit"})
#: How long a client waits for a spare that is still getting ready (s; it listens about
#: 2.5 s after the command before ended: its imports, then a small fit) before it runs
#: the command itself.
SPARE_WAIT_S = 4.0
#: What a spare imports ahead: what ``stemcal calibrate`` and ``stemcal fit`` import
#: (``python -X importtime``), and the Numba modules its first kernel loads.
IMPORTS = ("stemcal.cli.acquire", "stemcal.cli.offline", "stemcal.formats", "stemcal.plans",
           "stemcal.session", "stemcal.devices", "stemcal.catalog.spool",
           "stemcal.catalog.courier", "stemcal.callbacks.live_view", "stemcal.fit.passes",
           "stemcal.fit.coarse", "stemcal.fit", "libertem.executor.inline",
           "numba.cpython.charseq", "numba.core.inline_closurecall", "numba.np.arraymath",
           "numba.np.random.generator_methods", "numba.np.random.legacy",
           "numba.np.npdatetime", "numba.core.typing.cffi_utils")
#: Signals the client passes on to the spare.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)
#: Signals the client ends by itself where the spare ended without a status after them.
FATAL = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: The client's exit status where the spare ended without reporting one.
EXIT_LOST = 1


def wants_spare(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (without the program name) is a command a spare runs: its first
    word that is not an option is one of :data:`COMMANDS`."""
    for word in argv:
        if word in ("--version", "-h", "--help"):
            return False
        if not word.startswith("-"):
            return word in COMMANDS
    return False


def run_in_spare(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """Run ``stemcal ARGV`` in a spare command process and return its exit status;
    None where there is no spare to claim (the caller runs the command itself)."""
    try:
        got = connect(COMMAND, list(argv), [0, 1, 2], environ=environ, wait=SPARE_WAIT_S)
    except OSError as exc:   # a standard stream closed, say: no spare then
        log.debug("no spare command process: %s", exc)
        return None
    except KeyboardInterrupt:   # Ctrl-C while waiting for a spare to get ready
        print("stemcal: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if got is None:
        return None
    conn, pid = got
    passed: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        passed.append(signum)
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    before = {sig: signal.signal(sig, pass_on) for sig in FORWARDED}
    try:
        line = read_line(conn)
    except OSError:   # reset: it died
        line = ""
    finally:
        conn.close()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    try:
        return int(json.loads(line)["status"])
    except (ValueError, KeyError, TypeError):
        pass
    fatal = [sig for sig in passed if sig in FATAL]
    if fatal:   # it ended by the signal passed on: so does this process
        signal.signal(fatal[-1], signal.SIG_DFL)
        os.kill(os.getpid(), fatal[-1])
    print(f"stemcal: error: the spare command process (pid {pid}) that ran this command "
          "ended without its exit status (killed?)", file=sys.stderr)
    return EXIT_LOST


def leave_spare(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """After a command of :data:`COMMANDS`: start a spare for the next one (where spares
    are on and none is alive for this key)."""
    if wants_spare(argv):
        start_spare(COMMAND, MODULE, environ)
