"""The catalog courier: a process of its own delivers what the acquiring process keeps.

Real processes and a real embedded catalog: a :class:`DeferredCatalog` starts
``python -m stemcal.catalog.courier``; runs go through a :class:`RunKeeper`,
records through ``write_record_or_spool``, exactly as in ``stemcal calibrate``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import event_model
import numpy as np
import pytest

from servers import REPO, SMALL, cli_env  # tests/catalog/servers.py

from stemcal.catalog import (RunKeeper, calibration_history, open_catalog, record_images,
                             run_state, spool, write_record_or_spool)
from stemcal.catalog.courier import COURIER_REASON, DeferredCatalog
from stemcal.catalog.delivery import sync
from stemcal.catalog.journal import journal_dir, read_journal
from stemcal.record import CalibrationRecord


def make_record(rotation: float = 12.5, acquisition_uid: str | None = None) -> CalibrationRecord:
    return CalibrationRecord(acquisition_uid=acquisition_uid, scan_rotation=rotation, flip_y=True,
                             overfocus=1.05e-6, cy=51.3, cx=45.3, quality="ok",
                             optics_state={"camera_length": 0.2}, scan_pixel_size=3.75e-10,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.0158)


IMAGES = {"point": np.arange(64, dtype=np.float32).reshape(8, 8)}


def a_run(keeper: RunKeeper, x: float = 1.0) -> str:
    run = event_model.compose_run(metadata={"purpose": "test"})
    desc = run.compose_descriptor(name="primary", data_keys={
        "x": {"source": "test", "dtype": "number", "shape": []}})
    for name, doc in (("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                      ("event", desc.compose_event(data={"x": x}, timestamps={"x": 0.0})),
                      ("stop", run.compose_stop())):
        keeper(name, doc)
    return run.start_doc["uid"]


@pytest.fixture(autouse=True)
def spool_dir(tmp_path, monkeypatch):
    """The spool of this test, for the test process and the couriers it starts."""
    d = tmp_path / "spool"
    monkeypatch.setenv("STEMCAL_SPOOL", str(d))
    warnings.simplefilter("ignore")
    return d


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    d = tmp_path_factory.mktemp("template") / "cat"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_catalog(d).context.close()
    return d


@pytest.fixture
def catalog(template, tmp_path):
    return Path(shutil.copytree(template, tmp_path / "cat"))


def test_runs_and_records_handed_over_are_delivered_in_order(catalog, spool_dir):
    other = spool.spool_record(make_record(rotation=1.0), None, catalog, "kept earlier",
                               directory=spool_dir)
    stand_in = DeferredCatalog(catalog)
    keeper = RunKeeper(stand_in)
    run_uid = a_run(keeper, x=3.0)
    record = make_record(acquisition_uid=run_uid)
    uid, spooled, reason = write_record_or_spool(stand_in, record, IMAGES)
    assert (uid, spooled, reason) == (record.uid, True, COURIER_REASON)  # kept until delivered
    keeper.close()
    answers = stand_in.finish()
    assert [answers[u]["delivered"] for u in (run_uid, record.uid)] == [True, True]
    assert list(keeper) == [] and spool.find(record.uid, spool_dir) is None
    client = open_catalog(catalog, create=False)
    assert run_state(client, run_uid) == "complete"
    assert client[run_uid]["primary"].read()["x"].values.tolist() == [3.0]
    assert [r.uid for r in calibration_history(client)] == [record.uid]
    assert np.array_equal(record_images(client, record.uid)["point"], IMAGES["point"])
    # only what this session handed over: an older kept record is left for `stemcal sync`
    assert other.exists()
    assert stand_in.finish() is answers  # idempotent


def test_a_catalog_that_cannot_be_opened_keeps_both_with_its_reason(tmp_path, spool_dir):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the catalog should be")
    stand_in = DeferredCatalog(blocker)
    keeper = RunKeeper(stand_in)
    run_uid = a_run(keeper)
    record = make_record(acquisition_uid=run_uid)
    write_record_or_spool(stand_in, record, IMAGES)
    answers = stand_in.finish()
    assert not answers[run_uid]["delivered"] and not answers[record.uid]["delivered"]
    entry = spool.find(record.uid, spool_dir)
    journal = read_journal(journal_dir(spool_dir) / f"{run_uid}.jsonl")
    for reason in (entry.reason, journal.kept, answers[record.uid]["reason"]):
        assert reason != COURIER_REASON and "Error" in reason, reason  # the courier's, not ours
    assert [p.name for p in keeper] == [f"{run_uid}.jsonl"]
    # a catalog there later: sync delivers both, once
    blocker.unlink()
    report = sync(directory=spool_dir)
    assert report.delivered == [(record.uid, str(blocker))]
    assert [r[0] for r in report.runs_delivered] == [run_uid]


def test_a_killed_courier_leaves_everything_kept_and_says_so(catalog, spool_dir):
    stand_in = DeferredCatalog(catalog)
    os.kill(stand_in._proc.pid, signal.SIGKILL)
    stand_in._proc.wait()
    keeper = RunKeeper(stand_in)
    run_uid = a_run(keeper)  # handing over to a dead courier raises nothing
    record = make_record(acquisition_uid=run_uid)
    write_record_or_spool(stand_in, record)
    stand_in.finish()
    reason = "the catalog courier was killed (SIGKILL) before delivering it"
    assert spool.find(record.uid, spool_dir).reason == reason
    assert read_journal(journal_dir(spool_dir) / f"{run_uid}.jsonl").kept == reason
    report = sync(directory=spool_dir)
    assert report.delivered == [(record.uid, str(catalog))] and not report.stuck


def test_the_courier_goes_on_when_its_parent_dies(catalog, spool_dir):
    """The acquiring process killed after handing over: the courier delivers, then exits."""
    record = make_record()
    spool.spool_record(record, IMAGES, catalog, COURIER_REASON, directory=spool_dir)
    code = ("import os, signal, sys\n"
            "from stemcal.catalog.courier import DeferredCatalog\n"
            f"c = DeferredCatalog({str(catalog)!r})\n"
            f"c.keep({record.uid!r})\n"
            "print(c._proc.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(STEMCAL_SPOOL=str(spool_dir)),
                          capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pid = int(proc.stdout.split()[0])
    end = time.monotonic() + 120
    while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
        time.sleep(0.1)
    assert spool.find(record.uid, spool_dir) is None
    client = open_catalog(catalog, create=False)
    assert [r.uid for r in calibration_history(client)] == [record.uid]


def test_calibrate_leaves_tiled_to_the_courier(tmp_path, spool_dir):
    """`stemcal calibrate` into an embedded catalog: the record and its acquisition are in
    the catalog when it returns, and the calibrating process never imported tiled's
    server side (the courier did, while it scanned). Without a display and without
    ``--figures`` no one sees the live view's figure: matplotlib is not imported either
    (it cost 0.3 s of the scan's time, tests/cli/test_cli_calibrate.py checks the
    figure where ``--figures`` asks for it)."""
    code = ("import json, sys\n"
            "from stemcal.cli.main import main\n"
            f"rc = main(['calibrate', '--catalog', {str(tmp_path / 'cat')!r}, '--json', "
            f"*{[str(a) for a in SMALL]!r}])\n"
            "print(json.dumps({'rc': rc, 'tiled': sorted(m for m in sys.modules "
            "if m.startswith(('tiled.catalog', 'tiled.server', 'matplotlib')))}))\n")
    env = cli_env(STEMCAL_SPOOL=str(spool_dir))
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record_line, state_line = proc.stdout.strip().splitlines()[-2:]
    out, state = json.loads(record_line), json.loads(state_line)
    assert state == {"rc": 0, "tiled": []}
    assert out["spooled"] is False and out["valid"] is True
    client = open_catalog(tmp_path / "cat", create=False)
    assert [r.uid for r in calibration_history(client)] == [out["uid"]]
    assert run_state(client, out["acquisition_uid"]) == "complete"
    assert spool.spooled(spool_dir) == []


def test_without_a_writable_spool_the_catalog_is_opened_in_process(catalog, tmp_path, monkeypatch):
    """A courier delivers only what the spool keeps: where the spool cannot be written,
    the session writes to the catalog itself (whose RunKeeper writes runs without a
    journal)."""
    from stemcal.config import SimSettings
    from stemcal.session import make_session

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the spool directory should be")
    monkeypatch.setenv("STEMCAL_SPOOL", str(blocker / "spool"))
    session = make_session(catalog, sim=SimSettings(nav_shape=(8, 8), sig_shape=(32, 32)),
                           courier=True)
    try:
        assert not isinstance(session.client, DeferredCatalog)
        run_uid = a_run(session.keeper, x=2.0)
        assert run_state(session.client, run_uid) == "complete"
    finally:
        session.close()
    monkeypatch.setenv("STEMCAL_SPOOL", str(tmp_path / "spool"))
    session = make_session(catalog, sim=SimSettings(nav_shape=(8, 8), sig_shape=(32, 32)),
                           courier=True)
    try:
        assert isinstance(session.client, DeferredCatalog)
    finally:
        session.close()


def test_a_stemcal_folder_where_the_command_starts_does_not_stand_in(catalog, spool_dir,
                                                                      tmp_path, monkeypatch):
    """The courier runs the installed stemcal, not a ``stemcal`` folder in the working
    directory (``python -m`` alone would put that first on ``sys.path``)."""
    shadow = tmp_path / "elsewhere" / "stemcal"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('a stemcal folder, not the package')")
    monkeypatch.chdir(shadow.parent)
    stand_in = DeferredCatalog(catalog)
    record = make_record()
    write_record_or_spool(stand_in, record, IMAGES)
    assert stand_in.finish()[record.uid]["delivered"]
    assert spool.find(record.uid, spool_dir) is None


def test_no_process_for_a_courier_opens_the_catalog_in_process(catalog, spool_dir, monkeypatch):
    """Where no process can be started (memory, a process limit), the command still runs:
    its session opens the catalog itself."""
    from stemcal.catalog import courier
    from stemcal.config import SimSettings
    from stemcal.session import make_session

    def no_process(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(courier.subprocess, "Popen", no_process)
    session = make_session(catalog, sim=SimSettings(nav_shape=(8, 8), sig_shape=(32, 32)),
                           courier=True)
    try:
        assert not isinstance(session.client, DeferredCatalog)
        assert run_state(session.client, a_run(session.keeper)) == "complete"
    finally:
        session.close()


def test_the_courier_imports_ahead_what_writing_a_record_imports(tmp_path):
    """The courier imports zarr and tiled's array adapters while the scan runs
    (courier.warm_up): without that, a record's first array node imported them after the
    fit (0.25 s). In a fresh interpreter: after warm_up, writing a record with images
    imports none of zarr or tiled's adapters."""
    code = ("import json, sys, warnings\n"
            "warnings.simplefilter('ignore')\n"
            "import numpy as np\n"
            "from stemcal.catalog import open_catalog, write_record\n"
            "from stemcal.catalog.courier import warm_up\n"
            "sys.path.insert(0, 'tests/catalog')\n"
            "from test_courier import make_record\n"
            f"client = open_catalog({str(tmp_path / 'cat')!r})\n"
            "warm_up()\n"
            "before = set(sys.modules)\n"
            "write_record(client, make_record(), {'point': np.ones((8, 8)), 'sum': np.ones((6, 6))})\n"
            "print(json.dumps(sorted(m for m in set(sys.modules) - before\n"
            "                        if m.startswith(('zarr', 'tiled.adapters')))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
