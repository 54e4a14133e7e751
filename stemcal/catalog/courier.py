"""The courier: a process of its own that opens an embedded catalog and delivers a session's runs.

Opening an embedded catalog imports tiled's server side and builds its
application: 2.5-3 s on 2 cores, most of it imports (tiled.catalog pulls in
dask.dataframe), all of it before the first document could be written. A
command that acquires and calibrates (``stemcal calibrate``) need not wait for
it: :class:`DeferredCatalog` stands in for the catalog in the acquiring
process and starts the courier at once, which opens the catalog while the
microscope scans. Or rather claims one: each command whose courier is done leaves
a spare courier with its imports done (:mod:`.spare`), which the next command
with the same code and environment takes over as its own.

What keeps the runs and records safe is what keeps them when a catalog is
unavailable (:mod:`.journal`, :mod:`.spool`): every run is journalled and every
record spooled, fsync'd, before anything is sent. The stand-in hands each kept
run (at its stop document) and record (once spooled) to the courier, which
delivers it with :func:`~stemcal.catalog.delivery.sync` restricted to that uid
(exactly once; a run before the record that points to it, as they are handed
over in that order) and removes the journal or spool file once the catalog
has it. :meth:`DeferredCatalog.finish` waits for the courier and writes the
reason into whatever stayed kept (the catalog failed, or the courier died),
for ``stemcal sync``.

So a ``kill -9`` of either process loses nothing: the acquiring process dying
leaves the courier to deliver what it was handed and exit at the end of its
input; the courier dying leaves the journal or spool file, and a write it cut
off is a cut-off copy that ``sync`` writes again as a new run.

Protocol: the courier reads one uid per line on stdin and answers one JSON
line per uid on stdout: ``{"uid", "delivered": bool, "reason": str | null,
"busy": bool}``. It ignores SIGINT (a Ctrl-C at the terminal reaches the
whole process group): it finishes what it was handed and exits at EOF.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..locations import spool_dir
from ..spares import spare_arguments
from .delivery import UnavailableCatalog
from .journal import journal_dir, note_kept, try_lock
from .spare import SPARE_WAIT_S, ClaimedCourier, claim, spare_alive, start_spare
from .spool import failure_reason, find, spool_record

log = logging.getLogger(__name__)

__all__ = ["DeferredCatalog", "courier_argv", "courier_args", "COURIER_REASON",
           "COURIER_TIMEOUT_S", "main", "warm_up", "WARM_MODULES"]

#: The reason a run or record is kept while the courier has it.
COURIER_REASON = "handed to the catalog courier (a process of its own) for delivery"
#: How long :meth:`DeferredCatalog.finish` waits for the courier (s); then it is stopped and
#: what it had not delivered stays kept for ``stemcal sync``. Longer than a write lock held
#: by another writer is waited for (:data:`stemcal.catalog.writelock.LOCK_TIMEOUT_S`).
COURIER_TIMEOUT_S = 300.0


#: The courier's module; ``python -P -m`` runs it (``-P``: the working directory is not
#: put on ``sys.path``, so a ``stemcal`` folder where the command was started cannot
#: stand in for the installed package).
MODULE = "stemcal.catalog.courier"


def courier_args(location: str, spool: Path, readable: Sequence[str | os.PathLike]) -> list[str]:
    """The arguments of :func:`main` for a courier of the embedded catalog at ``location``."""
    args = [str(location), "--spool", str(spool)]
    for r in readable:
        args += ["--readable", str(r)]
    return args


def courier_argv(location: str, spool: Path, readable: Sequence[str | os.PathLike]) -> list[str]:
    """The command line of a courier for the embedded catalog at ``location``."""
    return [sys.executable, "-P", "-m", MODULE, *courier_args(location, spool, readable)]


class DeferredCatalog(UnavailableCatalog):
    """Stands in for the embedded catalog at ``location`` while a courier process opens it
    and delivers each run and record kept for it (module docstring).

    Parameters
    ----------
    location : path
        The embedded catalog's directory (created by the courier if needed).
    readable : sequence of path
        Further directories whose files the catalog may serve (``readable_storage``).

    The spool is :func:`stemcal.locations.spool_dir`, the one the journals and
    ``write_record_or_spool`` use.
    """

    expected = True

    def __init__(self, location: str | os.PathLike, *,
                 readable: Sequence[str | os.PathLike] = ()) -> None:
        super().__init__(Path(location).resolve(), COURIER_REASON)
        self.spool = spool_dir()
        self.handed: list[str] = []
        self.answers: dict[str, dict[str, Any]] = {}
        self._done = False
        # its stderr to a file: a pipe read only at the end could fill and block it
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="stemcal-courier-")
        # the environment now: the command may change its own later (thread settings),
        # and the spare it leaves must be one the next command can claim
        self._env = os.environ.copy()
        self._readable = list(readable)
        self._popen: Any = None
        self._failed: BaseException | None = None
        self._claimer: threading.Thread | None = None
        # uids kept before the courier is had, handed over in order once it is
        self._lock = threading.Lock()
        self._queued: list[str] = []
        self._ready = False
        try:
            if spare_alive(self._env):
                # a spare courier (.spare), claimed beside the command: it may still be
                # importing (the command before left it a moment ago)
                self._claimer = threading.Thread(target=self._obtain, daemon=True,
                                                 name="stemcal-courier-claim")
                self._claimer.start()
            else:
                self._popen = self._start()
                self._ready = True
        except BaseException:
            self._stderr.close()
            raise

    def _start(self) -> subprocess.Popen:
        """A courier process of this command's own."""
        return subprocess.Popen(courier_argv(self._stemcal_location, self.spool, self._readable),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self._stderr, text=True, env=self._env)

    def _obtain(self) -> None:
        try:
            args = courier_args(self._stemcal_location, self.spool, self._readable)
            self._popen = (claim(args, self._stderr, environ=self._env, wait=SPARE_WAIT_S)
                           or self._start())
        except BaseException as exc:  # noqa: BLE001 - kept, with the reason, at finish
            log.warning("no catalog courier: %s", exc)
            self._failed = exc
        with self._lock:
            for uid in self._queued:
                self._hand(uid)
            self._queued.clear()
            self._ready = True

    @property
    def _proc(self) -> Any:
        """The courier (a :class:`subprocess.Popen`, or a :class:`ClaimedCourier`); None
        where none could be had."""
        if self._claimer is not None:
            self._claimer.join()
        return self._popen

    def keep(self, uid: str) -> None:
        """Hand the kept run or record ``uid`` to the courier (without waiting for a
        spare being claimed: then once it is)."""
        self.handed.append(uid)
        with self._lock:
            if not self._ready:
                self._queued.append(uid)
                return
        self._hand(uid)

    def _hand(self, uid: str) -> None:
        proc = self._popen
        if proc is None:   # none could be had: it stays kept
            return
        try:
            proc.stdin.write(uid + "\n")
            proc.stdin.flush()
        except (OSError, ValueError) as exc:  # the courier is gone: it stays kept
            log.debug("courier: cannot hand over %s (%s)", uid, exc)

    def finish(self, timeout: float = COURIER_TIMEOUT_S) -> dict[str, dict[str, Any]]:
        """Wait until the courier has delivered what it was handed (at most ``timeout`` s),
        then note in each run journal or spool file still there why it stayed.

        Returns the courier's answer per uid handed (``delivered``, ``reason``).
        Idempotent.
        """
        if self._done:
            return self.answers
        self._done = True
        proc = self._proc
        if proc is None:
            out, ended = "", f"could not be started ({self._failed})"
        else:
            try:
                out, _ = proc.communicate(timeout=timeout)
                ended = (proc.ended if isinstance(proc, ClaimedCourier)
                         else _ended(proc.returncode))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                ended = f"did not finish within {timeout:g} s and was stopped"
        start_spare(MODULE, self._env)   # for the next command; it runs on after this one
        self._stderr.seek(0)
        err = self._stderr.read()
        self._stderr.close()
        for line in out.splitlines():
            try:
                answer = json.loads(line)
                self.answers[str(answer["uid"])] = answer
            except (ValueError, KeyError, TypeError):
                continue
        if err.strip():
            log.debug("courier stderr: %s", err.strip()[-2000:])
        for uid in self.handed:
            answer = self.answers.get(uid) or {}
            if answer.get("delivered") or answer.get("busy"):
                continue
            reason = answer.get("reason") or f"the catalog courier {ended} before delivering it"
            _note(self.spool, uid, self._stemcal_location, reason)
        return self.answers


def _ended(rc: int | None) -> str:
    if rc is not None and rc < 0:
        try:
            return f"was killed ({signal.Signals(-rc).name})"
        except ValueError:
            return f"was killed (signal {-rc})"
    return f"ended (exit status {rc})"


def _note(spool: Path, uid: str, location: str | None, reason: str) -> None:
    """Write ``reason`` into the journal or spool file of ``uid``, if still there and not
    being delivered by another process right now."""
    run = journal_dir(spool) / f"{uid}.jsonl"
    if run.exists():
        note_kept(run, reason)
        return
    entry = find(uid, spool)
    if entry is None:
        return
    fd = try_lock(entry.path)
    if fd is None:
        return
    try:
        if entry.path.exists():
            spool_record(entry.record, entry.images, entry.location or location, reason,
                         directory=spool)
    finally:
        os.close(fd)


def _deliver(uid: str, spool: Path, catalogs: Any) -> dict[str, Any]:
    from .delivery import sync

    try:
        report = sync(directory=spool, only={uid}, catalogs=catalogs)
    except Exception as exc:  # noqa: BLE001 - whatever stops it, the entry stays kept
        return {"uid": uid, "delivered": False, "reason": failure_reason(exc), "busy": False}
    pending = report.pending + report.runs_pending + [(p, None, r) for p, r in report.damaged]
    done = bool(report.delivered or report.already_there or report.runs_delivered)
    return {"uid": uid, "delivered": done and not pending,
            "reason": pending[0][2] if pending else None, "busy": bool(report.busy)}


#: What an embedded catalog imports on its first write of an array node (a record's
#: images): zarr and tiled's zarr adapter, 0.24-0.26 s to import alone on 2 cores.
#: Nothing of an acquisition run (a table and external files) needs them, so without
#: :func:`warm_up` they were imported while delivering the record, after the fit, which
#: the command waits for last: the record's delivery took 0.69-0.85 s, 0.61-0.76 s with
#: them imported ahead (three `stemcal calibrate` each, alternating).
WARM_MODULES = ("zarr", "tiled.adapters.zarr", "tiled.adapters.array", "tiled.adapters.sql")


def warm_up() -> None:
    """Import what writing a record will need (:data:`WARM_MODULES`), while nothing has
    been handed over yet. A module that will not import is left for the write to fail on."""
    import importlib

    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the write reports it where it matters
            log.debug("courier: could not import %s ahead (%s)", name, exc)


def main(argv: Sequence[str] | None = None) -> int:
    """The courier process: open the catalog, then deliver each uid read on stdin.

    ``--spare KEY [--lock-fd N]`` (alone): a spare courier (:mod:`.spare`) that imports ahead and
    waits to be claimed, then runs as the claiming command's courier."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if (spare := spare_arguments(argv)) is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from .spare import serve

        claimed = serve(spare[0], warm_up, spare[1])
        if claimed is None:   # not claimed within its idle time
            os._exit(0)
        argv = claimed
    ap = argparse.ArgumentParser(prog="python -m stemcal.catalog.courier",
                                 description="Deliver a session's kept runs and records.")
    ap.add_argument("location")
    ap.add_argument("--spool", required=True)
    ap.add_argument("--readable", action="append", default=[])
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    from .delivery import Catalogs
    from .store import open_catalog

    catalogs = Catalogs(lambda loc: open_catalog(loc, readable_storage=args.readable))
    catalogs.get(args.location)  # now, while the acquiring process scans; a failure is kept
    warm_up()
    listening = True  # the acquiring process reads the answers, unless it died
    for line in sys.stdin:
        uid = line.strip()
        if not uid:
            continue
        answer = _deliver(uid, Path(args.spool), catalogs)
        if listening:
            try:
                print(json.dumps(answer), flush=True)
            except OSError:  # it was killed: go on delivering what it handed over
                listening = False
    # Everything handed over is delivered (each write committed) or kept. Leave without
    # the interpreter's shutdown, which waits ~1 s for the in-process tiled app's threads.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
