"""No record lost: catalog writes that fail put the record into the durable spool.

Real failures, no mocks: a catalog path under a regular file (not creatable), a
read-only catalog (mode 0555/0444) written by a child process (permission
denied; as root the child runs without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so
the mode bits bind it too), and a file-size limit (``RLIMIT_FSIZE``,
EFBIG) standing in for a full disk, since no small filesystem can be mounted
here without privileges. ``sync`` then delivers each record exactly once.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from stemcal.catalog import spool
from stemcal.catalog.delivery import sync
from stemcal.catalog import (RecordExistsError, UnavailableCatalog, calibration_history,
                             get_record, open_catalog, open_catalog_or_unavailable,
                             record_images, write_record, write_record_or_spool)
from stemcal.record import CalibrationRecord

from servers import REPO, drop_dac_override  # tests/catalog/servers.py


def make_record(rotation: float = 12.5, **kw) -> CalibrationRecord:
    return CalibrationRecord(acquisition_uid=None, scan_rotation=rotation, flip_y=True,
                             overfocus=1.05e-6, cy=51.3, cx=45.3, quality="ok",
                             optics_state={"camera_length": 0.2}, scan_pixel_size=3.75e-10,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.0158, **kw)


IMAGES = {"point": np.arange(64, dtype=np.float32).reshape(8, 8),
          "sum": np.full((8, 8), 7, dtype=np.uint16)}


@pytest.fixture(autouse=True)
def spool_env(tmp_path, monkeypatch):
    d = tmp_path / "state" / "stemcal" / "spool"
    monkeypatch.delenv("STEMCAL_SPOOL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    warnings.simplefilter("ignore")
    return d


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """An empty catalog made once (initialising one costs a `tiled catalog init` subprocess)."""
    d = tmp_path_factory.mktemp("template") / "cat"
    quiet_open(d).context.close()
    return d


@pytest.fixture
def catalog(template, tmp_path):
    """A fresh copy of the empty catalog."""
    return Path(shutil.copytree(template, tmp_path / "cat"))


def quiet_open(location):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_catalog(location)


def test_spool_dir_follows_xdg(tmp_path, monkeypatch, spool_env):
    assert spool.spool_dir() == spool_env
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert spool.spool_dir() == tmp_path / "home" / ".local" / "state" / "stemcal" / "spool"
    monkeypatch.setenv("STEMCAL_SPOOL", str(tmp_path / "elsewhere"))
    assert spool.spool_dir() == tmp_path / "elsewhere"


def test_spool_file_round_trip_without_credentials(spool_env):
    rec = make_record()
    uri = "http://alice:pw123@127.0.0.1:8000/api?api_key=deadbeef99&x=1"
    path = spool.spool_record(rec, IMAGES, uri, f"ClientError: 401 for {uri}")
    assert path == spool_env / f"{rec.uid}.npz"
    assert [p.name for p in spool_env.iterdir() if p.name != ".lock"] == [path.name]  # no temp left
    assert stat.S_IMODE(spool_env.stat().st_mode) == 0o700
    entry = spool.find(rec.uid)
    assert entry.record == rec
    assert entry.location == "http://127.0.0.1:8000/api?x=1"
    assert set(entry.images) == set(IMAGES)
    for k, v in IMAGES.items():
        np.testing.assert_array_equal(entry.images[k], v)
        assert entry.images[k].dtype == v.dtype
    raw = path.read_bytes()
    assert b"deadbeef99" not in raw and b"pw123" not in raw and b"deadbeef99" not in \
        entry.reason.encode()


def test_path_not_creatable_spools_then_syncs_once(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the catalog's parent directory should be")
    location = blocker / "catalog"
    client = open_catalog_or_unavailable(location)
    assert isinstance(client, UnavailableCatalog) and "NotADirectoryError" in client.reason
    rec = make_record()
    uid, spooled, reason = write_record_or_spool(client, rec, IMAGES)
    assert (uid, spooled) == (rec.uid, True) and "NotADirectoryError" in reason

    report = sync()  # still not creatable: stays spooled, with the reason
    assert report.delivered == [] and [p[0] for p in report.pending] == [rec.uid]
    assert "NotADirectoryError" in report.pending[0][2]
    assert spool.find(rec.uid) is not None

    blocker.unlink()  # the path becomes creatable
    report = sync()
    assert report.delivered == [(rec.uid, str(location))] and report.pending == []
    assert spool.spooled() == []
    cat = quiet_open(location)
    assert [r.uid for r in calibration_history(cat)] == [rec.uid]
    assert get_record(cat, rec.uid) == rec
    np.testing.assert_array_equal(record_images(cat, rec.uid)["point"], IMAGES["point"])
    again = sync()
    assert (again.delivered, again.already_there, again.pending) == ([], [], [])
    assert len(calibration_history(cat)) == 1


@pytest.mark.parametrize("damage", ["cut", "empty", "garbage"])
def test_a_damaged_spool_file_does_not_stop_the_others(catalog, spool_env, damage):
    """One spool file cut in half, emptied or overwritten: ``stemcal sync`` delivers the
    others, names the damaged one and leaves it where it is, and exits 1 (something stays
    kept); a damaged run journal the same."""
    good = [make_record(rotation=r) for r in (1.0, 2.0, 3.0)]
    bad = make_record(rotation=4.0)
    for rec in good + [bad]:
        spool.spool_record(rec, IMAGES, str(catalog), "catalog was down")
    path = spool_env / f"{bad.uid}.npz"
    size = path.stat().st_size
    {"cut": lambda: os.truncate(path, size // 2), "empty": lambda: os.truncate(path, 0),
     "garbage": lambda: path.write_bytes(b"not a spool file" * 100)}[damage]()
    journal = spool_env / "runs" / "0123456789abcdef.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(b"\x00\x01 not json")
    env = {**os.environ, "XDG_STATE_HOME": str(spool_env.parents[1])}
    proc = subprocess.run([sys.executable, "-m", "stemcal.cli", "sync"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "error:" not in out, out
    for rec in good:
        assert f"delivered      {rec.uid}" in proc.stdout, out
    assert f"damaged        {path}" in proc.stdout and str(journal) in proc.stdout, out
    assert path.exists() and journal.exists()          # left in place, not deleted
    cat = quiet_open(catalog)
    assert sorted(r.uid for r in calibration_history(cat)) == sorted(r.uid for r in good)
    report = sync()                                    # the damage stays reported
    assert [p for p, _ in report.damaged] == [str(journal), str(path)] and report.stuck


def test_record_already_in_catalog_is_not_written_twice(catalog):
    """A crash after the catalog write but before the spool entry was removed."""
    cat = quiet_open(catalog)
    rec = make_record()
    write_record(cat, rec, IMAGES)
    spool.spool_record(rec, IMAGES, str(catalog.resolve()), "simulated crash")
    report = sync()
    assert report.already_there == [(rec.uid, str(catalog.resolve()))]
    assert report.delivered == [] and spool.spooled() == []
    assert [r.uid for r in calibration_history(cat)] == [rec.uid]


def test_run_cut_off_mid_write_is_delivered_again_and_never_counts(catalog):
    """The catalog died after the record run's start document: that copy stays (append-only)
    as an incomplete run that never counts; sync writes the spooled record as a new run, once."""
    import event_model
    from bluesky_tiled_plugins import TiledWriter

    from stemcal.catalog import history_entries, latest_calibration, record_state, run_state

    cat = quiet_open(catalog)
    rec = make_record()
    run = event_model.compose_run(uid=rec.uid, time=rec.time,
                                  metadata={"purpose": "calibration", "calibration": rec.to_dict()})
    TiledWriter(cat)("start", run.start_doc)
    assert run_state(cat, rec.uid) == "incomplete" and record_state(cat, rec.uid) == "incomplete"
    assert calibration_history(cat) == []  # never a calibration
    assert latest_calibration(cat, rec.optics_state, {"camera_length": 0.01}) is None
    assert [(e.record.uid, e.state) for e in history_entries(cat)] == [(rec.uid, "incomplete")]
    spool.spool_record(rec, IMAGES, str(catalog.resolve()), "cut off")
    report = sync()
    assert report.delivered == [(rec.uid, str(catalog.resolve()))] and report.pending == []
    assert spool.find(rec.uid) is None and not report.stuck
    assert len(cat) == 2  # the cut-off copy and the complete one, under a new run uid
    assert record_state(cat, rec.uid) == "complete"
    assert [r.uid for r in calibration_history(cat)] == [rec.uid]
    assert [(e.record.uid, e.state) for e in history_entries(cat)] == [(rec.uid, "complete")]
    assert latest_calibration(cat, rec.optics_state, {"camera_length": 0.01}) == rec
    np.testing.assert_array_equal(record_images(cat, rec.uid)["point"], IMAGES["point"])
    again = sync()
    assert (again.delivered, again.already_there, again.pending) == ([], [], [])
    assert len(cat) == 2


def test_failed_record_run_never_counts(catalog):
    """A record run whose stop document says fail is listed as failed and never used."""
    import event_model
    from bluesky_tiled_plugins import TiledWriter

    from stemcal.catalog import history_entries, latest_calibration

    cat = quiet_open(catalog)
    rec = make_record()
    run = event_model.compose_run(uid=rec.uid, time=rec.time,
                                  metadata={"purpose": "calibration", "calibration": rec.to_dict()})
    writer = TiledWriter(cat)
    writer("start", run.start_doc)
    writer("stop", run.compose_stop(exit_status="fail"))
    assert calibration_history(cat) == [] and calibration_history(cat, valid_only=True) == []
    assert latest_calibration(cat, rec.optics_state, {"camera_length": 0.01}) is None
    assert [(e.record.uid, e.state) for e in history_entries(cat)] == [(rec.uid, "failed")]


def test_records_are_append_only(catalog):
    cat = quiet_open(catalog)
    old = make_record(rotation=10.0)
    write_record(cat, old, IMAGES)
    with pytest.raises(RecordExistsError, match="append-only"):
        write_record(cat, old.correct(uid=old.uid, scan_rotation=99.0))  # same uid: refused
    with pytest.raises(RecordExistsError):
        write_record_or_spool(cat, old)  # refused, and not left in the spool
    assert spool.spooled() == []
    new = old.correct(scan_rotation=11.0, quality="ok")
    write_record(cat, new)
    hist = calibration_history(cat)
    assert [r.uid for r in hist] == [new.uid, old.uid]
    assert hist[0].supersedes == old.uid and hist[0].scan_rotation == 11.0
    assert get_record(cat, old.uid).scan_rotation == 10.0  # the old one is unchanged
    for module in (REPO / "stemcal" / "catalog").glob("*.py"):
        src = module.read_text()
        for call in (".delete(", "update_metadata(", ".replace_metadata(", "delete_contents("):
            assert call not in src, module  # the package has no way to change or remove a run


CHILD = r"""
import json, os, resource, signal, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from stemcal.catalog import open_catalog_or_unavailable, write_record_or_spool
from stemcal.record import CalibrationRecord
mode, catalog, record_json = sys.argv[1:4]
record = CalibrationRecord.from_dict(json.loads(open(record_json).read()))
images = {"point": np.arange(64, dtype=np.float32).reshape(8, 8)}
if mode == "fsize":  # every file write past 16 KiB fails with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
client = open_catalog_or_unavailable(catalog)
uid, spooled, reason = write_record_or_spool(client, record, images)
print(json.dumps({"uid": uid, "spooled": spooled, "reason": reason}))
"""


def child(mode: str, catalog: Path, record: CalibrationRecord, tmp_path: Path, spool_env: Path):
    rj = tmp_path / f"{record.uid}.json"
    rj.write_text(json.dumps(record.to_dict()))
    rj.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEMCAL_SPOOL": str(spool_env),
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(catalog), str(rj)], env=env,
                          capture_output=True, text=True, timeout=180, cwd="/",
                          preexec_fn=drop_dac_override if mode == "unprivileged" else None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tree(path: Path, mode_dir: int, mode_file: int) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(mode_dir if p.is_dir() else mode_file)


def test_permission_denied_spools_then_syncs(tmp_path, spool_env, catalog):
    first = make_record(rotation=1.0)
    write_record(quiet_open(catalog), first)
    _tree(catalog, 0o555, 0o444)  # read-only catalog
    rec = make_record(rotation=2.0)
    try:
        out = child("unprivileged", catalog, rec, tmp_path, spool_env)
    finally:
        _tree(catalog, 0o755, 0o644)
    assert out["spooled"] is True and out["uid"] == rec.uid, out
    assert "readonly" in out["reason"].lower() or "permission" in out["reason"].lower(), out
    assert spool.find(rec.uid).location == str(catalog.resolve())
    report = sync()
    assert report.delivered == [(rec.uid, str(catalog.resolve()))], report
    hist = calibration_history(quiet_open(catalog))
    assert sorted(r.uid for r in hist) == sorted([first.uid, rec.uid])
    assert sync().delivered == [] and len(calibration_history(quiet_open(catalog))) == 2


def test_disk_full_spools_then_syncs(tmp_path, spool_env, catalog):
    first = make_record(rotation=1.0)
    write_record(quiet_open(catalog), first, IMAGES)
    rec = make_record(rotation=3.0)
    out = child("fsize", catalog, rec, tmp_path, spool_env)
    assert out["spooled"] is True, out
    assert "disk I/O error" in out["reason"] or "too large" in out["reason"], out
    assert "[SQL" not in out["reason"]
    entry = spool.find(rec.uid)
    assert entry.path.stat().st_size < 16384 and entry.record == rec
    report = sync()  # no limit here: delivered
    assert report.delivered == [(rec.uid, str(catalog.resolve()))], report
    cat = quiet_open(catalog)
    assert sorted(r.uid for r in calibration_history(cat)) == sorted([first.uid, rec.uid])
    np.testing.assert_array_equal(record_images(cat, rec.uid)["point"], entry.images["point"])
    assert sync().delivered == [] and len(calibration_history(quiet_open(catalog))) == 2


def test_run_keeper_without_a_writable_spool_still_writes_the_run(catalog, tmp_path):
    """A journal that cannot be written is given up with a warning; the run goes on."""
    import event_model

    from stemcal.catalog import RunKeeper, run_state

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the spool directory should be")
    cat = quiet_open(catalog)
    keeper = RunKeeper(cat, spool=blocker)
    run = event_model.compose_run(metadata={"purpose": "test"})
    desc = run.compose_descriptor(name="primary", data_keys={
        "x": {"source": "test", "dtype": "number", "shape": []}})
    for name, doc in (("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                      ("event", desc.compose_event(data={"x": 1.0}, timestamps={"x": 0.0})),
                      ("stop", run.compose_stop())):
        keeper(name, doc)
    assert run_state(cat, run.start_doc["uid"]) == "complete" and list(keeper) == []
    assert cat[run.start_doc["uid"]]["primary"].read()["x"].values.tolist() == [1.0]
