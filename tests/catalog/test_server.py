"""A real ``tiled serve`` process: spool while it is down, sync once it is back; API keys.

The server is started by :mod:`stemcal.catalog.server` on 127.0.0.1 with a free port,
a writer and a reader key from the environment, and stopped (SIGTERM to its
process group, SIGKILL after 10 s) by the fixture's finalizer whatever happens.
Start-up waits poll the port with a bounded timeout.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest

from stemcal.catalog import server as srv
from stemcal.config import server_settings
from stemcal.catalog import spool
from stemcal.catalog import (calibration_history, get_record, open_catalog, record_images,
                             write_record, write_record_or_spool)
from stemcal.record import CalibrationRecord

# tests/catalog/servers.py (this directory is on sys.path under pytest)
from servers import REPO, RETRY_ENV, Server, stemcal  # noqa: E402


@pytest.fixture
def server(tmp_path, monkeypatch):
    import tiled.client.utils as tcu

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STEMCAL_SPOOL", raising=False)
    monkeypatch.delenv("STEMCAL_CATALOG", raising=False)
    monkeypatch.setenv("STEMCAL_KEYS_FILE", str(tmp_path / "no-keys.toml"))
    for k, v in RETRY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tcu, "TILED_RETRY_ATTEMPTS", 1)
    monkeypatch.setattr(tcu, "TILED_RETRY_TIMEOUT", 2.0)
    warnings.simplefilter("ignore")
    s = Server(tmp_path / "cat", srv.ServerKeys(secrets.token_hex(32), secrets.token_hex(32),
                                                 secrets.token_hex(32)),
               tmp_path / "server.log")
    try:
        s.start()
        yield s
    finally:
        s.stop()


def make_record(rotation: float) -> CalibrationRecord:
    return CalibrationRecord(acquisition_uid=None, scan_rotation=rotation, flip_y=False,
                             overfocus=1e-6, cy=40.0, cx=41.0, quality="ok",
                             optics_state={"camera_length": 0.2}, scan_pixel_size=2.5e-10,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.01)


def test_server_stops_mid_run_record_spooled_then_synced_once(server, monkeypatch, tmp_path):
    from stemcal.catalog import resolve_run
    from stemcal.plans import calibrate
    from stemcal.config import SimSettings
    from stemcal.session import make_session

    monkeypatch.setenv("TILED_API_KEY", server.keys.writer)
    sim = SimSettings(nav_shape=(16, 16), sig_shape=(64, 64), dose=50.0)   # as SMALL
    session = make_session(server.uri, sim=sim)
    assert session.data_dir == server.catalog / "raw"  # the data directory the server announces
    stopped = []

    def stop_server_at_acquisition_start(name, doc):  # the catalog dies mid-run
        if name == "start" and not stopped:
            server.stop()
            stopped.append(doc["uid"])

    session.RE.subscribe(stop_server_at_acquisition_start)
    inst = session.instrument
    try:
        res = session.RE(calibrate(inst.detector, inst.scan, inst.optics,
                                   callback=session.recorder,
                                   max_attempts=1))
    finally:
        session.close()
    rec_a = res.plan_result
    assert stopped and rec_a.acquisition_uid == stopped[0]
    assert rec_a.valid and abs(rec_a.scan_rotation - 23.5) < 0.5  # the plan still got its record
    entry = spool.find(rec_a.uid)
    assert entry is not None and entry.location == server.uri and entry.record == rec_a
    assert "ConnectError" in entry.reason
    # The runs are kept too: the acquisition, and the plan's readable result run after it.
    kept = [p.stem for p in session.keeper]
    assert len(kept) == 2 and kept[0] == rec_a.acquisition_uid, kept
    assert "\"calibration_result\"" in list(session.keeper)[1].read_text().splitlines()[1]

    # Still down: the CLI opens nothing, calibrates anyway and keeps run and record.
    cli = stemcal("calibrate", "--catalog", server.uri, "--json", "--nav-shape", 16, 16,
                  "--sig-shape", 64, 64, "--dose", 50, "--max-attempts", 1, key=server.keys.writer)
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout.strip())
    assert out["spooled"] is True and out["valid"] is True
    uid_b = out["uid"]
    line, = cli.stderr.strip().splitlines()  # one line, saying where the record is
    assert line.startswith(f"stemcal: catalog {server.uri} unavailable (ConnectError")
    assert str(spool.find(uid_b).path) in line and out["acquisition_uid"] in line
    down = stemcal("sync", "--json", key=server.keys.writer)
    assert down.returncode == 1
    down_report = json.loads(down.stdout)
    assert {p["uid"] for p in down_report["pending"]} == {rec_a.uid, uid_b}
    acquisitions = {rec_a.acquisition_uid, out["acquisition_uid"]}
    pending_runs = {p["uid"] for p in down_report["runs"]["pending"]}
    assert acquisitions <= pending_runs and len(pending_runs) == 4  # and the 2 result runs

    hist = stemcal("history", "--catalog", server.uri, key=server.keys.writer)
    assert hist.returncode == 2 and hist.stderr.startswith("stemcal: error: cannot read catalog")
    assert "ConnectError" in hist.stderr and len(hist.stderr.strip().splitlines()) == 1

    server.start()  # back again
    up = stemcal("sync", "--json", key=server.keys.writer)
    assert up.returncode == 0, up.stderr
    report = json.loads(up.stdout)
    assert sorted(d["uid"] for d in report["delivered"]) == sorted([rec_a.uid, uid_b])
    delivered_runs = {d["uid"] for d in report["runs"]["delivered"]}
    assert delivered_runs == pending_runs
    assert report["pending"] == [] and spool.spooled() == []
    again = stemcal("sync", "--json", key=server.keys.writer)
    assert again.returncode == 0 and json.loads(again.stdout) == {
        "delivered": [], "already_there": [], "pending": [],
        "runs": {"delivered": [], "pending": []}, "busy": [], "damaged": []}

    key = server.keys.writer
    for proc in (cli, down, up, again):
        assert key not in proc.stdout + proc.stderr
    for p in tmp_path.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert key.encode() not in data and bytes.fromhex(key) not in data, p

    client = open_catalog(server.uri)
    hist = calibration_history(client)
    assert sorted(r.uid for r in hist) == sorted([rec_a.uid, uid_b])  # each exactly once
    assert get_record(client, rec_a.uid) == rec_a
    # The second record's frames were written into the spool (the server was down) and sync
    # moved them into the server's data directory: the record says where they are now
    data_b = get_record(client, uid_b).fit_settings["data"]
    assert data_b["spooled_uri"].startswith((tmp_path / "state").as_uri()), data_b
    from stemcal.runs import resource_path
    moved = resource_path(data_b["uri"])
    assert moved.parent == server.catalog / "raw" and moved.is_file(), data_b
    assert not resource_path(data_b["spooled_uri"]).exists()
    np.testing.assert_allclose(record_images(client, rec_a.uid)["point"],
                               np.nan_to_num(entry.images["point"]))
    # Both acquisitions resolve to complete runs whose frames the server reads. The first was
    # cut off at its start document (the server died): that copy stays, and sync wrote the
    # whole run again under a new uid that names it.
    for acq, cut_off in ((rec_a.acquisition_uid, True), (out["acquisition_uid"], False)):
        run = resolve_run(client, acq)
        assert run.metadata["stop"]["exit_status"] == "success"
        assert (run.metadata["start"]["uid"] != acq) is cut_off
        frames = run["primary"]["merlin_image"]  # 4D frames of 16x16 positions, read lazily
        assert np.prod(frames.shape[:-2]) == 256 and frames.shape[-2:] == (64, 64)
        assert frames[(0,) * (frames.ndim - 2) + (slice(30, 34),)].shape == (4, 64)


def test_reader_key_cannot_write_and_keys_never_stored(server, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TILED_API_KEY", server.keys.writer)
    writer = open_catalog(server.uri)
    first = make_record(5.0)
    write_record(writer, first, {"point": np.eye(8)})

    monkeypatch.setenv("TILED_API_KEY", server.keys.reader)
    reader = open_catalog(server.uri)
    assert [r.uid for r in calibration_history(reader)] == [first.uid]  # it can read
    from tiled.client.utils import ClientError
    with pytest.raises(ClientError, match="401|403"):
        write_record(reader, make_record(6.0))
    assert [r.uid for r in calibration_history(reader)] == [first.uid]  # nothing was written
    uid, spooled, reason = write_record_or_spool(reader, make_record(7.0))  # kept, not lost
    assert spooled and "Not enough permissions" in reason

    import httpx
    url = f"http://127.0.0.1:{server.port}/api/v1/metadata/"
    assert httpx.get(url).status_code == 401  # no anonymous access
    bad = {"Authorization": f"Apikey {secrets.token_hex(32)}"}
    assert httpx.get(url, headers=bad).status_code == 401  # an unknown key
    ok = {"Authorization": f"Apikey {server.keys.reader}"}
    assert httpx.get(url, headers=ok).status_code == 200
    r = httpx.post(f"http://127.0.0.1:{server.port}/api/v1/auth/provider/stemcal/token",
                   data={"username": "admin", "password": "admin"})
    assert r.status_code == 401  # no password login either (KeysOnly)

    nokey = stemcal("history", "--catalog", server.uri, key=None)
    assert nokey.returncode == 2 and "needs an API key" in nokey.stderr, nokey.stderr

    # Listening on the loopback interface only.
    listening = {c.laddr.ip for c in psutil.Process(server.proc.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}

    server.stop()
    files = [p for root in (tmp_path,) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "catalog.db" for p in files) and any(p.name == "auth.db" for p in files)
    assert any(p.suffix == ".npz" for p in files) and server.log.stat().st_size > 0
    logs = caplog.text.encode()
    for key in (server.keys.writer, server.keys.reader):
        for text in (key.encode(), bytes.fromhex(key)):  # as text and as the raw secret
            hits = [p for p in files if text in p.read_bytes()]
            assert hits == [], f"key found in {hits}"
            assert text not in logs
    for p in (server.catalog / "catalog.db", *server.catalog.glob("*")):
        if p.is_file():
            assert stat_mode(p) & 0o002 == 0
    assert stat_mode(srv.state_dir(server.catalog)) == 0o700
    assert stat_mode(srv.state_dir(server.catalog) / "auth.db") == 0o600
    assert stat_mode(srv.state_dir(server.catalog) / "config.json") == 0o600


def stat_mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_keys_come_from_env_or_private_file_only(tmp_path, monkeypatch):
    monkeypatch.delenv(srv.WRITER_ENV, raising=False)
    monkeypatch.delenv(srv.READER_ENV, raising=False)
    monkeypatch.delenv("TILED_API_KEY", raising=False)
    keys_file = tmp_path / "keys.toml"
    monkeypatch.setenv("STEMCAL_KEYS_FILE", str(keys_file))
    with pytest.raises(ValueError, match="no writer key"):
        srv.load_server_keys()
    w, r = secrets.token_hex(32), secrets.token_hex(32)
    keys_file.write_text(f'writer_key = "{w}"\nreader_key = "{r}"\napi_key = "{r}"\n')
    keys_file.chmod(0o644)
    with pytest.raises(PermissionError, match="0644.*chmod 600"):
        srv.load_server_keys()
    with pytest.raises(PermissionError):
        srv.client_api_key()
    keys_file.chmod(0o600)
    keys = srv.load_server_keys()
    assert (keys.writer, keys.reader) == (w, r) and w not in repr(keys)
    assert srv.client_api_key() == r
    monkeypatch.setenv(srv.WRITER_ENV, "short")
    with pytest.raises(ValueError, match="32 lower-case hex") as err:
        srv.load_server_keys()
    assert "short" not in str(err.value)  # a bad key is not echoed

    # The command line takes no key and reports a bad one in one line.
    env = {**os.environ, "PYTHONPATH": str(REPO), srv.WRITER_ENV: "short"}
    proc = subprocess.run([sys.executable, "-m", "stemcal.cli", "serve", str(tmp_path / "c"),
                           "--api-key", w], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --api-key" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "stemcal.cli", "serve", str(tmp_path / "c")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("stemcal: error: the writer key")
    assert "Traceback" not in proc.stderr


def test_server_host_comes_from_configuration():
    assert server_settings({}) == ("127.0.0.1", 8000)
    assert server_settings({"server": {"host": "10.0.0.5", "port": 8123}}) == ("10.0.0.5", 8123)
    with pytest.raises(ValueError, match="keys do not belong"):
        server_settings({"server": {"api_key": "x"}})


def test_catalog_gone_between_opening_and_the_first_run_keeps_the_run(server, monkeypatch,
                                                                      tmp_path):
    """The server dies after the catalog was opened and before the first run (the writer's
    first request is at the run's first document, not when the keeper is made): that run is
    journalled and kept for ``stemcal sync``, not an error; once the server is back the next
    run goes to it."""
    from event_model import compose_run

    from stemcal.catalog import RunKeeper
    from stemcal.catalog.journal import read_journal

    monkeypatch.setenv("TILED_API_KEY", server.keys.writer)
    client = open_catalog(server.uri)
    server.stop()
    keeper = RunKeeper(client, spool=tmp_path / "spool")   # asks the server nothing yet

    def run() -> str:
        bundle = compose_run(metadata={"purpose": "test"})
        keeper("start", bundle.start_doc)
        keeper("stop", bundle.compose_stop(exit_status="success"))
        return bundle.start_doc["uid"]

    first = run()
    kept, = list(keeper)
    assert kept.stem == first
    journal = read_journal(kept)
    assert journal.location == server.uri and "ConnectError" in journal.kept, journal.kept
    server.start()
    second = run()
    assert [p.stem for p in keeper] == [first]   # the second went to the server
    assert second in open_catalog(server.uri) and first not in open_catalog(server.uri)


@pytest.mark.parametrize("status, content_type, body, kept", [
    (200, "text/html", b"<html><body>a web page</body></html>", False),   # not JSON
    (404, "text/html", b"<html>no such page</html>", False),             # no such API here
    (200, "application/json", b'{"garbage": [1, 2, 3]}', False),         # not tiled's JSON
    (500, "text/html", b"<html>internal error</html>", True),            # a failing server
])
def test_a_web_server_that_is_not_tiled_is_bad_input(tmp_path, monkeypatch, status, content_type,
                                                      body, kept):
    """A catalog address that reaches another web server was taken for an outage: the
    calibration was kept for a catalog that can never take it (`sync` failed ever after).
    Now an answer that is not tiled's is a ValueError naming the address (the command's
    status 2, before anything is scanned); a server error (5xx) is still an outage."""
    import threading
    import tiled.client.utils as tcu
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from stemcal.catalog import UnavailableCatalog, open_catalog_or_unavailable

    class Answer(BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args):
            pass

    monkeypatch.setattr(tcu, "TILED_RETRY_ATTEMPTS", 1)
    monkeypatch.setattr(tcu, "TILED_RETRY_TIMEOUT", 1.0)
    monkeypatch.setenv("TILED_API_KEY", "k" * 32)
    web = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{web.server_address[1]}/api"
    try:
        if kept:
            assert isinstance(open_catalog_or_unavailable(uri), UnavailableCatalog)
        else:
            with pytest.raises(ValueError, match=f"{uri} answers, but not as a tiled catalog "
                               r"server \(.*\): check the address"):
                open_catalog_or_unavailable(uri)
    finally:
        web.shutdown()


def test_a_server_that_never_answers_is_an_outage_within_the_timeout(monkeypatch):
    """A port that accepts connections and never answers held a calibration for about
    60 s of tiled's retries before its scan; now the catalog counts as unavailable after
    $STEMCAL_CATALOG_TIMEOUT seconds (20 by default) and what is made is kept for sync. A
    timeout that is not a number of seconds > 0 is refused."""
    import socket
    import time

    from stemcal.catalog import UnavailableCatalog, open_catalog_or_unavailable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)   # connections are accepted by the kernel, never answered
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        monkeypatch.setenv("STEMCAL_CATALOG_TIMEOUT", "1.5")
        t0 = time.monotonic()
        client = open_catalog_or_unavailable(uri)
        took = time.monotonic() - t0
        assert isinstance(client, UnavailableCatalog) and 1.4 < took < 5, took
        assert client.reason.startswith("TimeoutError: no answer within 1.5 s"), client.reason
        for bad in ("0", "-1", "soon", "nan"):
            monkeypatch.setenv("STEMCAL_CATALOG_TIMEOUT", bad)
            with pytest.raises(ValueError, match="STEMCAL_CATALOG_TIMEOUT must be a number"):
                open_catalog_or_unavailable(uri)


def test_reading_commands_give_up_on_a_server_that_never_answers(monkeypatch, capsys):
    """'history', 'show' and 'export' against a port that accepts and never answers took
    about a minute of tiled's retries; now one line naming the catalog and the timeout
    after $STEMCAL_CATALOG_TIMEOUT seconds, exit status 2."""
    import socket
    import time

    from stemcal.cli import main

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        monkeypatch.setenv("STEMCAL_CATALOG_TIMEOUT", "1")
        monkeypatch.setenv("TILED_API_KEY", "k" * 32)
        for argv in (["history"], ["show", "0123abcd"], ["export", "0123abcd"]):
            t0 = time.monotonic()
            rc = main([*argv, "--catalog", uri])
            took = time.monotonic() - t0
            err = capsys.readouterr().err
            assert rc == 2 and took < 4, (argv, rc, took)
            assert f"cannot read catalog {uri}: TimeoutError: no answer within 1 s " \
                   "($STEMCAL_CATALOG_TIMEOUT)" in err, err


def test_a_session_started_while_the_server_is_down_writes_to_it_once_it_is_back(
        server, monkeypatch, tmp_path):
    """A session (the profile's) started while its catalog server was down kept every run
    and record for `stemcal sync` until it was started again. Now it tries the server in
    the background; the first plan after the server is back writes its runs and record
    there, its frames into the server's data directory, and what was kept meanwhile is
    delivered (frames moved with it). Whoever holds the stand-in (the profile's `catalog`)
    then reads the catalog."""
    from stemcal import reconnect
    from stemcal.catalog import UnavailableCatalog, resolve_run
    from stemcal.config import SimSettings
    from stemcal.plans import calibrate
    from stemcal.runs import resource_path
    from stemcal.session import make_session

    monkeypatch.setenv("TILED_API_KEY", server.keys.writer)
    monkeypatch.setattr(reconnect, "INTERVAL", 0.2)
    server.stop()
    sim = SimSettings(nav_shape=(16, 16), sig_shape=(64, 64), dose=50.0)
    session = make_session(server.uri, sim=sim)
    stand_in = session.client
    assert isinstance(stand_in, UnavailableCatalog) and session.reconnector is not None
    spool_raw = session.data_dir
    assert spool_raw != server.catalog / "raw"
    inst = session.instrument

    def one() -> CalibrationRecord:
        return session.RE(calibrate(inst.detector, inst.scan, inst.optics,
                                    callback=session.recorder, max_attempts=1)).plan_result

    try:
        kept = one()   # the server is down: kept
        session.recorder.wait(60)
        assert spool.find(kept.uid) is not None
        assert kept.acquisition_uid in stand_in.kept and kept.uid in stand_in.kept
        assert not session.reconnect()   # still down: said so, nothing switched
        assert "ConnectError" in session.reconnector.reason
        server.start()
        deadline = __import__("time").monotonic() + 30
        while session.reconnector._ready is None and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.1)   # the background attempt finds it
        assert session.reconnector._ready is not None and not session.reconnector.switched
        live = one()   # this plan starts by switching over
        session.recorder.wait(60)
        assert session.reconnector.switched and session.client is not stand_in
        assert session.data_dir == server.catalog / "raw"
        assert session.reconnector.wait(60)
        report = session.reconnector.report
        assert report is not None and not report.stuck, report
        assert kept.uid in {u for u, _ in report.delivered}
        assert kept.acquisition_uid in {u for u, _, _ in report.runs_delivered}
        assert live.uid not in stand_in.kept and spool.find(live.uid) is None
        # down once more after the switch: kept as any run the catalog fails; the first
        # plan after it is back delivers it, and writes its own runs there
        server.stop()
        again = one()
        session.recorder.wait(60)
        assert spool.find(again.uid) is not None
        assert [p.stem for p in session.keeper][0] == again.acquisition_uid
        server.start()
        last = one()
        session.recorder.wait(60)
        assert session.reconnector.wait(60) and not session.reconnector.report.stuck
        assert list(session.keeper) == [] and spool.find(last.uid) is None
    finally:
        session.close()
    assert spool.spooled() == []
    client = open_catalog(server.uri)
    recs = (kept, live, again, last)
    assert sorted(r.uid for r in calibration_history(client)) == sorted(r.uid for r in recs)
    for rec in recs:   # each acquisition complete, its frames where the server reads
        run = resolve_run(client, rec.acquisition_uid)
        assert run.metadata["stop"]["exit_status"] == "success"
        uri = get_record(client, rec.uid).fit_settings["data"]["uri"]
        assert resource_path(uri).parent == server.catalog / "raw", uri
        assert run["primary"]["merlin_image"].shape[-2:] == (64, 64)
    assert not any(spool_raw.glob("*.h5"))
    # the stand-in the profile's `catalog` holds now reads the catalog
    assert len(calibration_history(stand_in)) == 4


def test_a_record_waits_for_its_run_and_a_cut_off_delivery_leaves_no_stale_frames(
        server, tmp_path):
    """Two ways a delivered record named frames the catalog cannot read (an adversarial
    sweep of the session's reconnect found both): (1) a record delivered while its run
    was still kept (another process's, or not asked for) named the spool's copy of the
    frames, which the run's delivery then moved; now it waits for its run. (2) A delivery
    killed after the catalog took the run, before the spool's copy of its frames was
    removed: the run was 'already there' ever after, the copy stayed, and the record was
    delivered naming it; now the copy goes and the record names the data directory."""
    from stemcal.catalog import sync
    from stemcal.catalog.journal import journal_dir
    from stemcal.runs import resource_path

    from servers import SMALL

    key = server.keys.writer
    server.stop()
    made = []
    for _ in range(2):
        cli = stemcal("calibrate", "--catalog", server.uri, "--json", *SMALL, key=key)
        assert cli.returncode == 0, cli.stderr
        made.append(json.loads(cli.stdout.strip()))
    server.start()
    raw = server.catalog / "raw"
    os.environ["TILED_API_KEY"] = key
    try:
        # (1) the record alone, its run still kept: it waits
        first = made[0]
        report = sync(only=[first["uid"]])
        (uid, _, why), = report.pending
        assert uid == first["uid"] and why.startswith(
            f"its acquisition run {first['acquisition_uid']} is not delivered yet ("
            "ConnectError"), report.pending   # and why the run waits (kept while down)
        assert report.delivered == [] and spool.find(first["uid"]) is not None
        # (2) the second run delivered, then its journal and its frames' spool copy put
        # back: what a kill -9 between the catalog taking the run and the cleanup leaves
        second = made[1]
        journal = journal_dir() / f"{second['acquisition_uid']}.jsonl"
        frames = resource_path(spool.find(second["uid"]).record.fit_settings["data"]["uri"])
        saved_journal, saved_frames = journal.read_bytes(), frames.read_bytes()
        report = sync(only=[second["acquisition_uid"]])
        assert [u for u, _, _ in report.runs_delivered] == [second["acquisition_uid"]]
        assert not frames.exists() and (raw / frames.name).is_file()
        journal.write_bytes(saved_journal)
        frames.write_bytes(saved_frames)
        report = sync()
        assert not report.stuck, report
        runs = {u: how for u, _, how in report.runs_delivered}   # and each plan's result run
        assert len(runs) == 4 and runs[first["acquisition_uid"]] == "delivered"
        assert runs[second["acquisition_uid"]] == "already there", runs
        assert sorted(u for u, _ in report.delivered) == sorted(m["uid"] for m in made)
        assert not frames.exists()   # the stale copy is gone
        client = open_catalog(server.uri)
        for m in made:   # each record names frames the server reads
            uri = get_record(client, m["uid"]).fit_settings["data"]["uri"]
            assert resource_path(uri).parent == raw and resource_path(uri).is_file(), uri
        assert spool.spooled() == [] and not any(journal_dir().glob("*.jsonl"))
    finally:
        os.environ.pop("TILED_API_KEY", None)
