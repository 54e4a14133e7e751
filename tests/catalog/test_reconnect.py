"""stemcal.reconnect: a session's stand-in replaced by its catalog, between plans only.

The whole round against a real server (kept, back, switched, delivered; down and back
again) is tests/catalog/test_server.py; here the embedded catalog and the cases where
no switch may happen.
"""
from __future__ import annotations

import logging
import time

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine

from stemcal.catalog import UnavailableCatalog, open_catalog
from stemcal.reconnect import Reconnector


@pytest.fixture(autouse=True)
def own_spool(tmp_path, monkeypatch):
    """Each test its own spool (what a switch delivers is what the spool keeps)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STEMCAL_SPOOL", raising=False)


def test_no_switch_until_the_catalog_opens_and_its_data_directory_can_be_used(tmp_path, caplog):
    directory = tmp_path / "catalog"
    stand_in = UnavailableCatalog(directory, "database is locked")
    usable = {"data": False}
    switched = []

    def data_dir_for(client):
        if not usable["data"]:
            raise ValueError(f"the data directory {tmp_path / 'raw'} is not writable here")
        return tmp_path / "raw"

    rec = Reconnector(stand_in, lambda: open_catalog(directory, create=False), data_dir_for,
                      on_switch=lambda client, data: switched.append(data), interval=None)
    assert not rec.reconnect() and rec.reason.startswith("FileNotFoundError: no catalog at")
    open_catalog(directory)   # now there is one, but its data directory cannot be written
    with caplog.at_level(logging.WARNING, logger="stemcal.reconnect"):
        assert not rec.reconnect()
    assert "cannot be written from here" in caplog.text and "not writable here" in rec.reason
    assert stand_in.replaced_by is None and switched == []
    usable["data"] = True
    assert rec.reconnect() and rec.switched and switched == [tmp_path / "raw"]
    assert stand_in.replaced_by is not None
    assert len(stand_in) == 0   # the stand-in reads the catalog now (empty)
    assert rec.wait(30) and rec.report is None   # nothing kept, nothing to deliver


def test_the_switch_waits_for_the_next_plan_and_the_thread_keeps_trying(tmp_path):
    """Found by the background attempts while a plan runs, the catalog is switched to only
    at the start of the next plan: a run's documents and frames never go to two places."""
    directory = tmp_path / "catalog"
    open_catalog(tmp_path / "restored")
    stand_in = UnavailableCatalog(directory, "database is locked")
    rec = Reconnector(stand_in, lambda: open_catalog(directory, create=False),
                      lambda client: tmp_path / "raw", interval=0.05)
    RE = RunEngine({})
    RE.preprocessors.append(rec)
    seen = []

    def plan():
        (tmp_path / "restored").rename(directory)   # the catalog comes back during the plan
        deadline = time.monotonic() + 30
        while rec._ready is None and time.monotonic() < deadline:
            yield from bps.sleep(0.05)
        seen.append((rec._ready is not None, rec.switched, stand_in.replaced_by))
        yield from bps.null()

    try:
        RE(plan())
        assert seen == [(True, False, None)]   # found, not switched inside the plan
        RE(bps.null())
        assert rec.switched and stand_in.replaced_by is not None
    finally:
        rec.close()


def test_the_session_refuses_to_reconnect_inside_a_plan(tmp_path, monkeypatch):
    from stemcal.config import SimSettings
    from stemcal.session import make_session

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    directory = tmp_path / "catalog"
    directory.mkdir()
    (directory / "catalog.db").write_bytes(b"not a database")   # cannot be opened
    session = make_session(directory, sim=SimSettings(nav_shape=(8, 8), sig_shape=(32, 32)))
    try:
        assert isinstance(session.client, UnavailableCatalog) and session.reconnector
        errors = []

        def plan():
            try:
                session.reconnect()
            except RuntimeError as exc:
                errors.append(str(exc))
            yield from bps.null()

        session.RE(plan())
        assert errors and "between plans" in errors[0]
        assert not session.reconnect(timeout=30)   # still damaged: said why
        assert session.reconnector.reason
    finally:
        session.close()
    with pytest.raises(Exception):
        open_catalog(directory, create=False)


def test_the_stand_in_says_why_for_what_a_person_does_with_a_catalog():
    from stemcal.catalog.delivery import CatalogUnavailableError

    stand_in = UnavailableCatalog("http://127.0.0.1:9/api", "ConnectError: refused")
    for use in (lambda c: c[-1], len, list, lambda c: "abc" in c, lambda c: c.search({})):
        with pytest.raises(CatalogUnavailableError, match=r"could not be opened \(ConnectError"):
            use(stand_in)
    assert bool(stand_in) and getattr(stand_in, "finish", None) is None


def test_no_switch_while_fits_of_earlier_runs_still_run(tmp_path):
    """A record of a run made before the switch must be kept with that run (its frames are
    in the spool and move with it): while the recorder's fits still run, no switch."""
    directory = tmp_path / "catalog"
    open_catalog(directory)
    stand_in = UnavailableCatalog(directory, "database is locked")
    busy = {"fits": 1}

    def settle():
        if busy["fits"]:
            raise TimeoutError("1 fit still running")

    rec = Reconnector(stand_in, lambda: open_catalog(directory, create=False),
                      lambda client: tmp_path / "raw", settle=settle, interval=None)
    assert not rec.reconnect() and stand_in.replaced_by is None
    assert rec.reason == "the catalog answers, but fits of earlier runs still run"
    busy["fits"] = 0
    assert rec.reconnect() and stand_in.replaced_by is not None


def test_runs_read_the_catalog_from_the_switch_on_as_they_write_to_it(tmp_path):
    """Where a session watches its stand-in, the attach step does not open the catalog
    itself (each run used to, a tiled client left retrying a server that is down in a
    thread per run): runs say why there is no catalog at once, and read the catalog
    from the switch on."""
    import socket

    import bluesky.plans as bp

    from stemcal.attach import attach_calibration
    from stemcal.devices import MicroscopeOptics, ScanGenerator

    optics, scan = MicroscopeOptics(name="optics"), ScanGenerator(name="scan")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/api"   # nothing listens there
    directory = tmp_path / "catalog"
    open_catalog(directory)
    for location in (down, directory):
        stand_in = UnavailableCatalog(location, "ConnectError: refused")
        rec = Reconnector(stand_in, lambda: open_catalog(directory, create=False),
                          lambda client: tmp_path / "raw", interval=None)
        attach = attach_calibration(stand_in, optics, scan)
        RE = RunEngine({})
        RE.preprocessors.append(rec)
        RE.preprocessors.append(attach)
        starts = []
        RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
        RE(bp.count([optics]))
        assert attach.client() is stand_in
        if location == down:   # said at once, without trying the server
            status = starts[0]["calibration_status"]
            assert status["status"] == "catalog unavailable", status
            assert status["reason"].startswith("CatalogUnavailableError"), status
        assert rec.reconnect()
        RE(bp.count([optics]))
        assert attach.client() is stand_in.replaced_by is not None
        assert starts[-1]["calibration_status"]["status"] == "none", starts[-1]


def test_after_the_switch_each_plan_delivers_what_is_kept_for_this_catalog_only(tmp_path):
    """A record kept after the switch with no run kept beside it (the catalog failed
    during an asynchronous fit) waited for `stemcal sync`; now the next plan delivers it.
    What the spool keeps for another catalog is left alone, and not tried again."""
    from stemcal.catalog import calibration_history, spool, write_record_or_spool
    from stemcal.record import CalibrationRecord

    def record(rotation):
        return CalibrationRecord(acquisition_uid=None, scan_rotation=rotation, flip_y=False,
                                 overfocus=1e-6, cy=40.0, cx=41.0, quality="ok",
                                 optics_state={"camera_length": 0.2}, scan_pixel_size=2.5e-10,
                                 camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.01)

    directory = tmp_path / "catalog"
    open_catalog(directory)
    stand_in = UnavailableCatalog(directory, "database is locked")
    rec = Reconnector(stand_in, lambda: open_catalog(directory, create=False),
                      lambda client: tmp_path / "raw", interval=None)
    RE = RunEngine({})
    RE.preprocessors.append(rec)
    assert rec.reconnect()
    mine, other = record(1.0), record(2.0)
    write_record_or_spool(UnavailableCatalog(directory, "failed during the fit"), mine)
    write_record_or_spool(UnavailableCatalog(tmp_path / "elsewhere", "down"), other)
    RE(bps.null())
    assert rec.wait(60)
    assert [r.uid for r in calibration_history(stand_in)] == [mine.uid]
    assert [e.uid for e in spool.spooled()] == [other.uid]   # another catalog's: left
    assert other.uid in rec._not_ours
    last = rec._delivery
    RE(bps.null())
    assert rec.wait(60) and rec._delivery is last   # nothing of ours kept: no new delivery
    assert [e.uid for e in spool.spooled()] == [other.uid]


def test_the_replaced_stand_in_serves_run_lookups_and_the_app(tmp_path):
    """Lookups that go around a client's own [] (resolve_run, run_state) and the app's
    history took the stand-in for the catalog after the switch: AttributeError _queries,
    'catalog ... unavailable'. Now they reach the catalog that replaced it."""
    from stemcal.app.application import StemcalApp
    from stemcal.catalog import resolve_run, run_state

    directory = tmp_path / "catalog"
    open_catalog(directory)
    stand_in = UnavailableCatalog(directory, "database is locked")
    app = StemcalApp(catalog=stand_in)
    with pytest.raises(OSError, match="unavailable: database is locked"):
        app.history()
    rec = Reconnector(stand_in, lambda: open_catalog(directory, create=False),
                      lambda client: tmp_path / "raw", interval=None)
    assert rec.reconnect()
    assert run_state(stand_in, "0" * 32) is None
    with pytest.raises(KeyError):
        resolve_run(stand_in, "0" * 32)
    assert app.history() == []


def test_reconnect_now_is_bounded_by_the_catalog_timeout(tmp_path, monkeypatch):
    """Against a port that accepts and never answers, session.reconnect() took a minute of
    tiled's retries; now $STEMCAL_CATALOG_TIMEOUT (the attempt goes on in the background)."""
    import socket

    monkeypatch.setenv("TILED_API_KEY", "k" * 32)
    monkeypatch.setenv("STEMCAL_CATALOG_TIMEOUT", "1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        rec = Reconnector(UnavailableCatalog(uri, "no answer"), lambda: open_catalog(uri),
                          lambda client: tmp_path / "raw", interval=None)
        t0 = time.monotonic()
        assert not rec.reconnect()
        assert time.monotonic() - t0 < 4
        assert rec.reason.startswith("TimeoutError: no answer within 1 s"), rec.reason
