"""Spare couriers: a courier process left by one command, its imports done, claimed by the next.

Real processes, real sockets and a real embedded catalog, as in ``stemcal calibrate``:
each :class:`DeferredCatalog` claims the spare its predecessor left (or starts a
courier of its own) and leaves one behind when it finishes. Spares live in a directory
of this test (``$TMPDIR``) and are killed at its end.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from stemcal.catalog import (RunKeeper, calibration_history, open_catalog, run_state, spool,
                             write_record_or_spool)
from stemcal.catalog.courier import DeferredCatalog
from stemcal.catalog.journal import journal_dir, read_journal
from stemcal.catalog.spare import ClaimedCourier, spare_dir, spare_key

from spare_procs import living_spares as _spares  # tests/spare_procs.py
from spare_procs import remove_spares, wait_for as _wait
from test_courier import IMAGES, a_run, make_record  # tests/catalog/test_courier.py


@pytest.fixture
def spares(tmp_path, monkeypatch):
    """Spares on, in a short private $TMPDIR (Unix socket paths are short); every spare
    of it killed at the end."""
    base = Path(tempfile.mkdtemp(prefix="sp", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.setenv("STEMCAL_COURIER_SPARE", "120")
    monkeypatch.setenv("STEMCAL_SPOOL", str(tmp_path / "spool"))
    warnings.simplefilter("ignore")
    yield base
    remove_spares(base)


@pytest.fixture
def catalog(tmp_path):
    d = tmp_path / "cat"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_catalog(d).context.close()
    return d


def _waiting(base: Path) -> Path:
    """The socket of this environment's spare, once it listens."""
    sock = spare_dir() / f"courier-{spare_key()}.sock"
    _wait(sock.exists, what="a spare courier to listen")
    assert spare_dir() == base / f"stemcal-{os.getuid()}"
    return sock


def _deliver(stand_in: DeferredCatalog, catalog: Path, x: float) -> tuple[str, str]:
    keeper = RunKeeper(stand_in)
    run_uid = a_run(keeper, x=x)
    record = make_record(acquisition_uid=run_uid)
    write_record_or_spool(stand_in, record, IMAGES)
    keeper.close()
    answers = stand_in.finish()
    assert answers[run_uid]["delivered"] and answers[record.uid]["delivered"], answers
    return run_uid, record.uid


def test_the_next_command_claims_the_spare_and_delivers_through_it(spares, catalog, tmp_path,
                                                                   monkeypatch):
    first = DeferredCatalog(catalog)
    assert not isinstance(first._proc, ClaimedCourier)   # none yet: one of its own
    _deliver(first, catalog, x=1.0)
    sock = _waiting(spares)
    (spare_pid,) = _spares(spares)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    second = DeferredCatalog(catalog)
    proc = second._proc
    assert isinstance(proc, ClaimedCourier) and proc.pid == spare_pid
    assert not sock.exists()   # claimed: no one else can have it
    assert Path(f"/proc/{spare_pid}/cwd").resolve() == work.resolve()   # the claimer's
    run_uid, record_uid = _deliver(second, catalog, x=2.0)
    _wait(lambda: spare_pid not in _spares(spares), 30, "the claimed courier to exit")
    client = open_catalog(catalog, create=False)
    assert run_state(client, run_uid) == "complete"
    assert client[run_uid]["primary"].read()["x"].values.tolist() == [2.0]
    assert record_uid in [r.uid for r in calibration_history(client)]
    assert spool.spooled(tmp_path / "spool") == []
    # it left a spare of its own behind: one, a new process
    _waiting(spares)
    assert len(_spares(spares)) == 1 and spare_pid not in _spares(spares)


def test_two_commands_at_once_one_claims_the_spare_the_other_starts_its_own(spares, catalog):
    _deliver(DeferredCatalog(catalog), catalog, x=1.0)
    _waiting(spares)
    (spare_pid,) = _spares(spares)
    a, b = DeferredCatalog(catalog), DeferredCatalog(catalog)   # both claim, beside each other
    kinds = sorted(type(s._proc).__name__ for s in (a, b))
    assert kinds == ["ClaimedCourier", "Popen"], kinds
    assert spare_pid in (a._proc.pid, b._proc.pid)
    uids = [_deliver(s, catalog, x=x) for s, x in ((a, 2.0), (b, 3.0))]
    client = open_catalog(catalog, create=False)
    history = [r.uid for r in calibration_history(client)]
    for run_uid, record_uid in uids:
        assert run_state(client, run_uid) == "complete" and record_uid in history


def test_a_spare_serves_only_its_own_environment_and_leaves_for_another(spares, catalog,
                                                                         monkeypatch):
    _deliver(DeferredCatalog(catalog), catalog, x=1.0)
    _waiting(spares)
    (old,) = _spares(spares)
    monkeypatch.setenv("STEMCAL_SOMETHING_ELSE", "1")   # another environment: another key
    stand_in = DeferredCatalog(catalog)
    assert not isinstance(stand_in._proc, ClaimedCourier)
    _deliver(stand_in, catalog, x=2.0)
    # its own spare started, and the other one was told to leave: one spare a user
    _wait(lambda: old not in _spares(spares), 30, "the other key's spare to leave")
    _waiting(spares)
    assert list(_spares(spares).values()) == [spare_key()]


def test_a_killed_spare_leaves_a_socket_the_next_command_passes_over(spares, catalog):
    _deliver(DeferredCatalog(catalog), catalog, x=1.0)
    sock = _waiting(spares)
    (pid,) = _spares(spares)
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: pid not in _spares(spares), 10, "the spare to die")
    assert sock.exists()   # kill -9: nothing cleaned up
    stand_in = DeferredCatalog(catalog)
    assert not isinstance(stand_in._proc, ClaimedCourier)
    run_uid, record_uid = _deliver(stand_in, catalog, x=2.0)
    client = open_catalog(catalog, create=False)
    assert run_state(client, run_uid) == "complete"
    assert record_uid in [r.uid for r in calibration_history(client)]
    _waiting(spares)   # a new spare listens on that path again
    assert len(_spares(spares)) == 1


def test_a_claimed_spare_killed_leaves_everything_kept_and_says_so(spares, catalog):
    _deliver(DeferredCatalog(catalog), catalog, x=1.0)
    _waiting(spares)
    stand_in = DeferredCatalog(catalog)
    proc = stand_in._proc
    assert isinstance(proc, ClaimedCourier)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    keeper = RunKeeper(stand_in)
    run_uid = a_run(keeper)
    record = make_record(acquisition_uid=run_uid)
    write_record_or_spool(stand_in, record)
    stand_in.finish()
    reason = (f"the catalog courier ended (a spare courier, pid {proc.pid}; its exit status "
              "is not known) before delivering it")
    spool_dir = Path(os.environ["STEMCAL_SPOOL"])
    assert spool.find(record.uid, spool_dir).reason == reason
    assert read_journal(journal_dir(spool_dir) / f"{run_uid}.jsonl").kept == reason


def test_an_unclaimed_spare_leaves_after_its_idle_time(spares, catalog, monkeypatch):
    monkeypatch.setenv("STEMCAL_COURIER_SPARE", "1")
    _deliver(DeferredCatalog(catalog), catalog, x=1.0)
    sock = _waiting(spares)
    _wait(lambda: not _spares(spares), 30, "the idle spare to leave")
    assert not sock.exists()


def test_spares_off_leave_none(spares, catalog, monkeypatch):
    monkeypatch.setenv("STEMCAL_COURIER_SPARE", "0")
    stand_in = DeferredCatalog(catalog)
    _deliver(stand_in, catalog, x=1.0)
    time.sleep(1.0)
    assert _spares(spares) == {}
    assert not (spares / f"stemcal-{os.getuid()}").exists()


def test_the_setting_is_read_as_seconds_and_a_bad_one_turns_spares_off_with_one_warning(caplog):
    from stemcal.catalog.spare import IDLE_S, idle_seconds

    seen = {v: idle_seconds({"STEMCAL_COURIER_SPARE": v})
            for v in ("", "0", "12.5", "-3", "soon", "nan", "inf")}
    assert seen == {"": IDLE_S, "0": 0.0, "12.5": 12.5, "-3": 0.0, "soon": 0.0, "nan": 0.0,
                    "inf": 0.0}
    caplog.clear()
    for _ in range(3):
        assert idle_seconds({"STEMCAL_COURIER_SPARE": "later"}) == 0.0
    assert [r.getMessage() for r in caplog.records] == [
        "STEMCAL_COURIER_SPARE='later' is not a number of seconds: no spare courier"]
