"""``kill -9`` at eleven points of a calibration: nothing half-written counts, nothing is lost.

Eleven ``stemcal calibrate`` processes (16x16 scan, 64x64 detector, one acquisition;
two at a time) write into one embedded catalog and one spool through their
catalog couriers (:mod:`stemcal.catalog.courier`), and each is killed with
SIGKILL at its own point (:mod:`killpoint`): the calibrating process mid-scan,
at the fit, and just after handing the spooled record to its courier (which
lives on and delivers it); the courier just before each of eight writing
requests of the record's write (the run's start, its stream, the first image
node and its data, the event table and its rows, the stop document, the first
close of a stream), while the calibrating process goes on. Then:

* a calibrating process whose courier was killed exits 0 and says that its
  record is kept (``spooled``), with why;
* no record whose run has no stop document is a calibration
  (``calibration_history``, ``latest_calibration``), and ``history`` shows it
  as incomplete;
* every record that was fitted (the nine killed after the fit) is in the spool
  or, handed to a courier that lived on, in the catalog; ``stemcal sync`` exits 0
  and afterwards each is in the catalog exactly once, complete, and its
  ``acquisition_uid`` resolves to a complete run; a second sync does nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from servers import REPO, SMALL, cli_env, stemcal  # tests/catalog/servers.py

from stemcal.catalog import (calibration_history, get_record, history_entries,
                             latest_calibration, open_catalog, record_state, resolve_run, spool)
from stemcal.catalog.queries import record_runs
from stemcal.catalog.journal import journals
from stemcal.runs import DEFAULT_TOLERANCES

HERE = Path(__file__).resolve().parent
#: Points where the courier is killed (the calibrating process goes on).
COURIER = ["record1", "record2", "record3", "record4", "record11", "record12", "record13",
           "record14"]
POINTS = ["scan", "fit", "handed", *COURIER]


def killed_calibration(point: str, catalog: Path, spool_dir: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(HERE / "killpoint.py"), point, "--", "calibrate", "--catalog",
            str(catalog), "--json", *map(str, SMALL)]
    return subprocess.run(argv, env=cli_env(STEMCAL_SPOOL=str(spool_dir)), capture_output=True,
                          text=True, timeout=400, cwd=REPO)


def _couriers(spool_dir: Path) -> list[int]:
    """Pids of the couriers of ``spool_dir`` still running (orphans of killed calibrations)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(spool_dir).encode() in argv and any(b"courier" in a for a in argv):
            pids.append(int(proc.name))
    return pids


def _wait_for_couriers(spool_dir: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while _couriers(spool_dir):
        assert time.monotonic() < end, f"couriers {_couriers(spool_dir)} still running"
        time.sleep(0.1)


def test_kill_9_at_eleven_points_nothing_half_written_counts_nothing_lost(tmp_path):
    catalog, spool_dir = tmp_path / "cat", tmp_path / "spool"
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(POINTS, pool.map(lambda p: killed_calibration(p, catalog, spool_dir),
                                          POINTS)))
    _wait_for_couriers(spool_dir)  # an orphaned courier delivers what it was handed, then exits
    for point, proc in procs.items():
        if point in COURIER:  # the calibration itself ends, its record kept with the reason
            assert proc.returncode == 0, (point, proc.returncode, proc.stderr[-2000:])
            assert json.loads(proc.stdout)["spooled"] is True
            assert "catalog courier was killed (SIGKILL)" in proc.stderr, proc.stderr
        else:
            assert proc.returncode == -signal.SIGKILL, (point, proc.returncode,
                                                        proc.stderr[-2000:])

    entries = {e.record.uid: e for e in spool.spooled(spool_dir)}
    # every record of a killed courier was spooled before its write, and kept
    assert len(entries) == len(COURIER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = open_catalog(catalog, create=False)
    # Before sync: the cut-off records are listed as incomplete and never count.
    states = {e.record.uid: e.state for e in history_entries(client)}
    handed = set(states) - set(entries)  # the record its courier delivered after the kill
    assert len(handed) == 1 and all(states[uid] == "complete" for uid in handed)
    complete = {uid for uid, state in states.items() if state == "complete"}
    incomplete = {uid for uid, state in states.items() if state == "incomplete"}
    assert incomplete and complete | incomplete == set(states)
    assert {r.uid for r in calibration_history(client)} == complete
    assert {r.uid for r in calibration_history(client, valid_only=True)} <= complete
    state_now = next(iter(entries.values())).record.optics_state
    latest = latest_calibration(client, state_now, DEFAULT_TOLERANCES)
    assert latest is None or latest.uid in complete
    hist = stemcal("history", "--catalog", catalog, "--json")
    assert hist.returncode == 0, hist.stderr
    shown = {r["uid"]: r["state"] for r in json.loads(hist.stdout)}
    assert shown == states

    synced = stemcal("sync", "--json", STEMCAL_SPOOL=str(spool_dir))
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert report["pending"] == [] and report["runs"]["pending"] == [] and report["busy"] == []
    assert sorted(d["uid"] for d in report["delivered"] + report["already_there"]) == sorted(
        entries)
    fitted = set(entries) | handed
    assert spool.spooled(spool_dir) == [] and journals(spool_dir) == []

    client = open_catalog(catalog, create=False)
    for uid in fitted:
        assert record_state(client, uid) == "complete"
        copies = [r.metadata.get("stop", {}).get("exit_status") for r in
                  record_runs(client, uid).values()]
        assert copies.count("success") == 1, (uid, copies)  # in the catalog exactly once
        acquisition = resolve_run(client, get_record(client, uid).acquisition_uid)
        assert acquisition.metadata["stop"]["exit_status"] == "success"
    assert {r.uid for r in calibration_history(client)} == fitted
    latest = latest_calibration(client, state_now, DEFAULT_TOLERANCES)
    assert latest is not None and latest.uid in fitted
    again = stemcal("sync", "--json", STEMCAL_SPOOL=str(spool_dir))
    assert again.returncode == 0 and json.loads(again.stdout)["delivered"] == []
    assert not any(os.scandir(spool_dir / "runs"))
