"""Calibration records and the tiled catalog (real tiled, served in-process, tmp directories)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from stemcal import runs
from stemcal.catalog import (calibration_history, get_record,
                             latest_calibration, open_catalog, record_images, staleness,
                             write_record)
from stemcal.fit.result import FitResult
from stemcal.locations import catalog_location, default_catalog_dir
from stemcal.record import CalibrationRecord, software_versions
from stemcal.twin import OverfocusParams

PARAMS = OverfocusParams(overfocus=1.2e-3, scan_pixel_size=2e-9, camera_length=0.1,
                         detector_pixel_size=55e-6, semiconv=0.012, cy=31.5, cx=30.25,
                         scan_rotation=-87.5, flip_y=True, descan=((0.01, -0.02), (0.03, 0.0)))
OPTICS = {"overfocus_setting": 1.2e-3, "camera_length": 0.1, "high_tension": 300e3,
          "magnification": 1e6}


def make_record(time: float, quality: str = "ok", **optics: float) -> CalibrationRecord:
    fit = FitResult(params=PARAMS, start=PARAMS, loss=-1.0, blur=0.31, contrast=1.0, nfev=10,
                    passes=2, seconds=1.0, success=True, message="", metric="contrast",
                    extra={"uncertainty": {"scan_rotation": np.float64(0.05), "overfocus": 2e-6}},
                    quality=quality)
    rec = CalibrationRecord.from_fit(fit, acquisition_uid="acq-" + str(time),
                                     optics_state={**OPTICS, **optics},
                                     fit_settings={"metric": "contrast", "bounds": (1.0, 2.0)})
    return rec.correct(time=time, supersedes=None)


# -- the record ---------------------------------------------------------------

def test_record_round_trip_and_fields():
    rec = make_record(1000.0)
    d = rec.to_dict()
    json.dumps(d, allow_nan=False)  # plain JSON, no NaN
    assert CalibrationRecord.from_dict(d) == rec
    assert rec.params() == PARAMS and rec.valid
    assert rec.descan == [[0.01, -0.02], [0.03, 0.0]]
    assert rec.uncertainty == {"scan_rotation": 0.05, "overfocus": 2e-6}
    assert rec.fit_settings["bounds"] == [1.0, 2.0]
    assert set(rec.versions) == {"stemcal", "libertem", "numba", "bluesky", "numpy"}
    assert rec.versions == software_versions() and rec.versions["numpy"] == np.__version__
    nan_blur = CalibrationRecord.from_dict({**d, "blur": math.nan})
    assert nan_blur.to_dict()["blur"] is None
    assert math.isnan(CalibrationRecord.from_dict(nan_blur.to_dict()).blur)
    assert not rec.correct(quality="wrong dataset").valid


def test_record_rejects_bad_dicts():
    d = make_record(1000.0).to_dict()
    with pytest.raises(ValueError, match="unknown.*colour"):
        CalibrationRecord.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="lacks.*overfocus"):
        CalibrationRecord.from_dict({k: v for k, v in d.items() if k != "overfocus"})
    with pytest.raises(ValueError, match="camera_length"):
        CalibrationRecord.from_dict({**d, "camera_length": -1.0})


def test_record_refuses_uids_and_times_a_page_or_a_history_cannot_show(tmp_path, caplog):
    """An adversarial sweep of the app: a uid with markup ran script in the History tab,
    and a record from the year 33658 (time 1e12) broke every page's history and `stemcal
    history` (ValueError: year is out of range) and would have been the newest calibration
    for ever. Both are refused; one already in a catalog is skipped, with a warning."""
    d = make_record(1000.0).to_dict()
    for key, bad, words in (("uid", "<img src=x onerror=alert(1)>", "uid must be 1-128"),
                            ("uid", "a" * 129, "uid must be 1-128"),
                            ("acquisition_uid", "run 1", "acquisition_uid must be"),
                            ("supersedes", "../x", "supersedes must be"),
                            ("time", 1e12, "before the year 3000"),
                            ("time", -1.0, "before the year 3000"),
                            ("time", math.inf, "before the year 3000")):
        with pytest.raises(ValueError, match=words):
            CalibrationRecord.from_dict({**d, key: bad})
    assert CalibrationRecord.from_dict({**d, "acquisition_uid": "acq-1.5_x"}).acquisition_uid
    client = open_catalog(tmp_path / "catalog")
    good = make_record(2000.0)
    write_record(client, good)
    ahead = make_record(3000.0)
    object.__setattr__(ahead, "time", 1e12)   # as written before records were checked
    write_record(client, ahead)
    with caplog.at_level("WARNING"):
        assert [r.uid for r in calibration_history(client)] == [good.uid]
    assert "skipping unreadable calibration run" in caplog.text
    from stemcal.cli import main
    assert main(["history", "--catalog", str(tmp_path / "catalog"), "--json"]) == 0


def test_correction_supersedes():
    rec = make_record(1000.0)
    fix = rec.correct(cy=32.0)
    assert fix.supersedes == rec.uid and fix.uid != rec.uid and fix.cy == 32.0
    assert fix.time > rec.time


# -- the catalog --------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    """A catalog with five records; yields (location, client, records by name).

    ``sqlite``: the embedded catalog in a directory. ``postgresql``: ``stemcal serve``
    with its catalog and tables in a private PostgreSQL server (tests/catalog/pg.py),
    opened through its URI with the writer key.
    """
    directory = tmp_path_factory.mktemp("catalog")
    server = None
    if request.param == "sqlite":
        location = directory
    else:
        from servers import Server, new_keys  # tests/catalog/servers.py
        pg = request.getfixturevalue("postgres")
        database = pg.create_database(f"stemcal_{directory.name}".lower())
        server = Server(directory, new_keys(), directory.parent / "server.log",
                        database=database)
        server.start()
        location = server.uri
    saved = os.environ.pop("TILED_API_KEY", None)
    if server is not None:
        os.environ["TILED_API_KEY"] = server.keys.writer
    try:
        client = open_catalog(location)
    finally:
        os.environ.pop("TILED_API_KEY", None)
        if saved is not None:
            os.environ["TILED_API_KEY"] = saved
    recs = {"old": make_record(1000.0),
            "mid": make_record(2000.0, camera_length=0.2),
            "new": make_record(3000.0, quality="optimum at the search bound", camera_length=0.1005),
            "a": make_record(100.0, camera_length=0.5)}
    recs["a_fix"] = recs["a"].correct(time=200.0, quality="retracted: wrong dataset")
    image = np.arange(48, dtype=np.float32).reshape(6, 8)
    image[2, 3] = np.nan
    images = {"point": image * 0 + 1, "selected": image * 0, "shifted_sum_normalised": image,
              "sum": image * 2}
    for name, rec in recs.items():
        assert write_record(client, rec, images if name == "old" else None) == rec.uid
    yield location, client, recs
    client.context.close()
    if server is not None:
        server.stop()


def test_history_newest_first(store):
    _, client, recs = store
    order = [recs[k].uid for k in ("new", "mid", "old", "a_fix", "a")]
    assert [r.uid for r in calibration_history(client)] == order
    assert calibration_history(client)[2] == recs["old"]
    assert [r.uid for r in calibration_history(client, limit=2)] == order[:2]
    assert [r.uid for r in calibration_history(client, valid_only=True)] == [
        recs[k].uid for k in ("mid", "old", "a")]
    with pytest.raises(ValueError, match="limit"):
        calibration_history(client, limit=-1)


def test_get_record(store):
    _, client, recs = store
    uid = recs["mid"].uid
    assert get_record(client, uid) == recs["mid"]
    assert get_record(client, uid[:8]) == recs["mid"]
    assert get_record(client, uid[:8].upper()) == recs["mid"]
    with pytest.raises(KeyError, match="no calibration record"):
        get_record(client, "00000000-0000-4000-8000-000000000000")
    with pytest.raises(ValueError, match=">= 8"):
        get_record(client, uid[:7])
    with pytest.raises(ValueError, match=">= 8"):
        get_record(client, "abcdefg%")


def test_images_come_back(store):
    _, client, recs = store
    uid = recs["old"].uid
    raw = client[uid]["primary"]["shifted_sum_normalised"].read()
    assert raw.shape == (1, 6, 8) and raw.dtype == np.float32
    expected = np.arange(48, dtype=np.float32).reshape(6, 8)
    expected[2, 3] = 0  # NaN stored as 0
    np.testing.assert_array_equal(raw[0], expected)
    images = record_images(client, uid)
    assert set(images) == {"point", "selected", "shifted_sum_normalised", "sum"}
    np.testing.assert_array_equal(images["sum"], 2 * expected)
    assert client[uid]["primary"]["overfocus"].read()[0] == pytest.approx(PARAMS.overfocus)
    assert record_images(client, recs["mid"].uid) == {}
    with pytest.raises(ValueError, match="2D"):
        write_record(client, make_record(5.0), {"sum": np.zeros((2, 3, 4))})


def test_latest_calibration_tolerance_validity_supersession(store):
    _, client, recs = store
    now = {**OPTICS, "camera_length": 0.1003}
    # "new" (0.1005) is closer in time but invalid; "old" (0.1) is within 1 mm.
    assert latest_calibration(client, now, {"camera_length": 1e-3}) == recs["old"]
    assert latest_calibration(client, now, {"camera_length": 1e-4}) is None
    at_mid = {**OPTICS, "camera_length": 0.2}
    assert latest_calibration(client, at_mid, {"camera_length": 1e-3}) == recs["mid"]
    tols = {"camera_length": 1e-3, "high_tension": 10.0}
    assert latest_calibration(client, now, tols) == recs["old"]
    now_np = {k: np.float64(v) for k, v in now.items()}
    assert latest_calibration(client, now_np, tols) == recs["old"]
    assert latest_calibration(client, {**now, "high_tension": 200e3}, tols) is None
    assert latest_calibration(client, {"camera_length": 0.1}, tols) is None  # high_tension unknown
    # "a" is valid but retracted by the (invalid) correction "a_fix".
    assert latest_calibration(client, {"camera_length": 0.5}, {"camera_length": 1e-3}) is None
    with pytest.raises(ValueError, match="tolerances"):
        latest_calibration(client, now, {"camera_length": -1.0})


def test_cut_off_and_failed_runs_never_count(store):
    """Newer, valid records whose runs have no stop document or a failed one (SQLite and
    PostgreSQL: the same stop.exit_status query)."""
    import event_model
    from bluesky_tiled_plugins import TiledWriter

    from stemcal.catalog import history_entries, record_state

    _, client, recs = store
    writer = TiledWriter(client)
    cut, failed = make_record(4000.0, camera_length=0.2), make_record(5000.0, camera_length=0.2)
    for rec, exit_status in ((cut, None), (failed, "abort")):
        run = event_model.compose_run(uid=rec.uid, time=rec.time, metadata={
            "purpose": "calibration", "calibration": rec.to_dict()})
        writer("start", run.start_doc)
        if exit_status:
            writer("stop", run.compose_stop(exit_status=exit_status))
    assert record_state(client, cut.uid) == "incomplete"
    assert record_state(client, failed.uid) == "failed"
    assert {cut.uid, failed.uid}.isdisjoint(r.uid for r in calibration_history(client))
    at_mid = {**OPTICS, "camera_length": 0.2}
    assert latest_calibration(client, at_mid, {"camera_length": 1e-3}) == recs["mid"]
    states = {e.record.uid: e.state for e in history_entries(client)}
    assert (states[cut.uid], states[failed.uid], states[recs["mid"].uid]) == (
        "incomplete", "failed", "complete")
    assert get_record(client, cut.uid[:8]) == cut  # shown, with its state, never used


def test_direct_read_gives_what_tiled_gives(store, monkeypatch):
    """The direct read of an embedded catalog.db (stemcal.catalog.snapshot; the queries and
    the reading commands use it) lists the same records, states and order as tiled does,
    cut-off and failed copies included (runs after test_cut_off_and_failed_runs_never_count,
    which adds them)."""
    import subprocess
    import sys

    from stemcal.catalog import history_entries, record_state
    from stemcal.catalog.queries import entries_from_metadata, find_entry
    from stemcal.catalog.snapshot import record_run_metadata

    location, client, recs = store
    if str(location).startswith("http"):
        assert record_run_metadata(location) is None  # no catalog.db there: tiled's way
        return
    runs = record_run_metadata(location)
    direct = history_entries(client)  # an embedded client: the direct way
    assert entries_from_metadata(runs) == direct
    now = {**OPTICS, "camera_length": 0.2}
    latest_direct = latest_calibration(client, now, {"camera_length": 1e-3})
    history_direct = calibration_history(client, valid_only=True)
    monkeypatch.delattr(client, "_stemcal_location")  # the client no longer says where: tiled
    tiled = history_entries(client)
    assert latest_calibration(client, now, {"camera_length": 1e-3}) == latest_direct
    assert calibration_history(client, valid_only=True) == history_direct
    assert [(e.record, e.state) for e in direct] == [(e.record, e.state) for e in tiled]
    assert {e.state for e in direct} == {"complete", "incomplete", "failed"}
    assert entries_from_metadata(runs, limit=2) == direct[:2]
    for e in tiled:
        entry, state = find_entry(runs, e.record.uid[:8])
        assert entry.record == get_record(client, e.record.uid)
        assert state == record_state(client, e.record.uid)
    with pytest.raises(KeyError, match="no calibration record"):
        find_entry(runs, "00000000-0000-4000-8000-000000000000")
    with pytest.raises(ValueError, match=">= 8"):
        find_entry(runs, "abc")
    # The CLI's history takes the direct way, and never imports tiled's server side or
    # the fit engine to do it.
    code = ("import sys; from stemcal.cli import main; rc = main(['history', '--json', "
            f"'--catalog', {str(location)!r}]); "
            "heavy = sorted(m for m in ('tiled.catalog', 'tiled.server.app', 'stemcal.fit', "
            "'numba', 'libertem.api') if m in sys.modules); "
            "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr, out.stderr
    listed = json.loads(out.stdout)
    assert [(r["uid"], r["state"]) for r in listed] == [(e.record.uid, e.state) for e in tiled]
    # A reader that goes away (`stemcal history | head -1`) is not an error: nothing on
    # stderr, the shell's status for a closed pipe.
    r, w = os.pipe()
    os.close(r)
    try:
        out = subprocess.run([sys.executable, "-m", "stemcal.cli", "history", "--catalog",
                              str(location)], stdout=w, stderr=subprocess.PIPE, text=True,
                             timeout=120)
    finally:
        os.close(w)
    assert (out.returncode, out.stderr) == (141, ""), out.stderr
    # Damaged: the direct read gives up and tiled's way reports it (one line, exit 2).
    broken = Path(location).parent / "broken-catalog"
    broken.mkdir()
    (broken / "catalog.db").write_bytes(b"not a database" * 100)
    assert record_run_metadata(broken) is None
    out = subprocess.run([sys.executable, "-m", "stemcal.cli", "history", "--catalog",
                          str(broken)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("stemcal: error:"), out.stderr


def test_staleness_names_changed_keys():
    rec = make_record(1000.0)
    tols = {"camera_length": 1e-3, "high_tension": 10.0, "magnification": 0.0}
    assert staleness(rec, OPTICS, tols) == []
    assert staleness(rec, {**OPTICS, "high_tension": 200e3, "overfocus_setting": 5.0}, tols) == [
        "high_tension"]  # overfocus_setting is not compared
    assert staleness(rec, {"camera_length": 0.1, "high_tension": 300e3}, tols) == ["magnification"]
    # a key no optics state has (a typing error) would make every record stale, and no key
    # would let every record hold for every state: both refused, naming what can be compared
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'camera_lenght'; a calibration's "
                       r"optics state has overfocus_setting, camera_length"):
        staleness(rec, OPTICS, {"camera_lenght": 0.01})
    with pytest.raises(ValueError, match="tolerances compare nothing"):
        latest_calibration(None, OPTICS, {})


def test_reopen_sees_records_via_env(store, tmp_path, monkeypatch):
    location, client, recs = store
    monkeypatch.setenv("STEMCAL_CATALOG", str(location))
    if isinstance(location, str):  # the server: its URI, with the key of the client
        monkeypatch.setenv("TILED_API_KEY", client.context.api_key)
    assert catalog_location() == location
    again = open_catalog(None)
    assert [r.uid for r in calibration_history(again)][:1] == [recs["new"].uid]
    again.context.close()
    monkeypatch.delenv("STEMCAL_CATALOG")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_catalog_dir() == tmp_path / "xdg" / "stemcal" / "catalog"
    if isinstance(location, Path):  # an embedded catalog found through the default directory
        default_catalog_dir().parent.mkdir(parents=True)
        default_catalog_dir().symlink_to(location)
        again = open_catalog(None)
        assert len(calibration_history(again)) == len(recs)
        again.context.close()
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_catalog_dir() == tmp_path / "home" / ".local" / "share" / "stemcal" / "catalog"


def test_new_catalog_is_quiet(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("STEMCAL_CATALOG", str(tmp_path / "fresh"))
    client = open_catalog()
    out, err = capfd.readouterr()
    assert out == "" and "Tiled version" not in err and "httpx" not in err
    assert (tmp_path / "fresh" / "catalog.db").exists()
    assert calibration_history(client) == []
    assert latest_calibration(client, OPTICS, {"camera_length": 1.0}) is None
    client.context.close()


def test_server_uri_uses_env_api_key(monkeypatch):
    seen = {}

    class FakeClient:
        specs = [type("Spec", (), {"name": "CatalogOfBlueskyRuns"})()]

    def fake_from_uri(uri, api_key=None):
        seen.update(uri=uri, api_key=api_key)
        return FakeClient()

    import tiled.client
    monkeypatch.setattr(tiled.client, "from_uri", fake_from_uri)
    monkeypatch.setenv("TILED_API_KEY", "secret")
    assert isinstance(open_catalog("http://tiled.example:8000/api"), FakeClient)
    assert seen == {"uri": "http://tiled.example:8000/api", "api_key": "secret"}
    FakeClient.specs = []
    with pytest.raises(ValueError, match="CatalogOfBlueskyRuns"):
        open_catalog("https://tiled.example")
    assert runs.RECORD_PURPOSE == "calibration"
    assert isinstance(default_catalog_dir(), Path)


def test_old_duckdb_tables_are_moved_into_sqlite_once(tmp_path):
    """A catalog of the old layout (event tables in tables.duckdb, one process at a time)."""
    from tiled.catalog import from_uri
    from tiled.client import from_context
    from tiled.client.context import Context
    from tiled.server.app import build_app

    from stemcal.catalog.embedded import RUNS_SPEC, init_database

    d = tmp_path / "old"
    (d / "data").mkdir(parents=True)
    init_database(f"sqlite:///{d / 'catalog.db'}")
    adapter = from_uri(f"sqlite:///{d / 'catalog.db'}", specs=[RUNS_SPEC],
                       writable_storage=[str(d / "data"), f"duckdb:///{d / 'tables.duckdb'}"],
                       readable_storage=[str(d / "data")])
    old = from_context(Context.from_app(build_app(adapter)))
    recs = [make_record(1000.0), make_record(2000.0, camera_length=0.2)]
    for rec in recs:
        write_record(old, rec)
    old.context.close()
    del old, adapter

    client = open_catalog(d)  # moves the tables, once
    assert not (d / "tables.duckdb").exists() and (d / "tables.duckdb.migrated").is_file()
    assert [r.uid for r in calibration_history(client)] == [recs[1].uid, recs[0].uid]
    for rec in recs:
        scalars = client[rec.uid]["primary"].read()
        assert float(scalars["scan_rotation"][0]) == rec.scan_rotation
        assert float(scalars["overfocus"][0]) == pytest.approx(rec.overfocus)
    new = make_record(3000.0)
    write_record(client, new)  # new tables go to tables.sqlite, next to the moved ones
    assert float(client[new.uid]["primary"].read()["cy"][0]) == new.cy
    client.context.close()
    again = open_catalog(d)
    assert len(calibration_history(again)) == 3
    again.context.close()


def test_a_record_write_asks_before_it_writes_only_once(tmp_path, monkeypatch):
    """Writing a record: one search for its copies (which also says whether a run of its
    uid exists), and the writer's data-sources client made once per client: no
    ``run_state`` lookup of the uid and no refresh of the root node at the second write."""
    import httpx

    client = open_catalog(tmp_path / "cat")
    write_record(client, make_record(1.0), {"point": np.ones((4, 4), np.float32)})
    sent = []
    send = httpx.Client.send

    def counting(self, request, *args, **kwargs):
        sent.append((request.method, request.url.path))
        return send(self, request, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", counting)
    rec = make_record(2.0)
    write_record(client, rec, {"point": np.ones((4, 4), np.float32)})
    gets = [path for method, path in sent if method == "GET"]
    assert len(gets) == 1 and gets[0].endswith("/search/"), gets
    assert ("POST", "/api/v1/metadata/") in sent        # the run, under the record's uid
    assert rec.uid in client and rec.uid in [r.uid for r in calibration_history(client)]
