"""Every run carries the calibration in force: the attach_calibration preprocessor.

Real RunEngine, ophyd devices and tiled catalog (embedded, in a temporary
directory); records are written with ``catalog.write_record`` (the calibrate
plan itself is exercised through the profile in test_profile.py).
"""
from __future__ import annotations

import json
import re
import socket

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import pytest
from bluesky import RunEngine
from ophyd.device import Staged

from stemcal import cli
from stemcal.attach import (CalibrationRequiredError, attach_calibration,
                            attach_calibration_decorator, attach_calibration_wrapper,
                            calibration_summary)
from stemcal.catalog import open_catalog, write_record
from stemcal.devices import MicroscopeOptics, ScanGenerator
from stemcal.runs import DEFAULT_TOLERANCES, optics_state
from stemcal.record import CalibrationRecord

#: Optics and scan state of freshly made devices (their defaults).
STATE = optics_state(MicroscopeOptics(name="o").state(), ScanGenerator(name="s").state())


def make_record(time: float, rotation: float, quality: str = "ok") -> CalibrationRecord:
    return CalibrationRecord(time=time, scan_rotation=rotation, flip_y=True, overfocus=1.05e-6,
                             cy=51.3, cx=45.3, descan=[[0.01, -0.02], [0.03, 0.0]],
                             quality=quality, optics_state=STATE, scan_pixel_size=0.5e-9,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.012)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Catalog with a valid record and a newer untrusted one, both at STATE."""
    directory = tmp_path_factory.mktemp("catalog")
    client = open_catalog(directory)
    recs = {"good": make_record(2000.0, 23.4),
            "bad": make_record(3000.0, 99.0, quality="no features")}
    for rec in recs.values():
        write_record(client, rec)
    return directory, client, recs


@pytest.fixture
def devices():
    return MicroscopeOptics(name="optics"), ScanGenerator(name="scan")


def starts_of(RE):
    seen: list[dict] = []
    RE.subscribe(lambda name, doc: seen.append(doc) if name == "start" else None)
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_count_carries_the_calibration(RE, store, devices):
    _, client, recs = store
    optics, scan = devices
    RE.preprocessors.append(attach_calibration(client, optics, scan))
    starts = starts_of(RE)
    commands: list[str] = []
    RE.msg_hook = lambda msg: commands.append(msg.command)
    RE(bp.count([optics], num=3))
    start = starts[0]
    good = recs["good"]
    cal = start["calibration"]
    assert cal["uid"] == good.uid
    assert cal["scan_rotation"] == 23.4 and cal["flip_y"] is True
    assert (cal["overfocus"], cal["cy"], cal["cx"]) == (1.05e-6, 51.3, 45.3)
    assert cal["descan"] == [[0.01, -0.02], [0.03, 0.0]]
    assert cal["time"] == 2000.0 and cal["optics_state"] == STATE
    assert cal == calibration_summary(good)
    st = start["calibration_status"]
    assert st["status"] == "ok" and st["newest"] == good.uid and st["changed"] == []
    assert st["optics_state"] == STATE
    json.dumps(start, allow_nan=False)  # the start document stays plain JSON
    # two reads (optics, scan) before open_run, none added elsewhere: 3 for the counts
    assert commands.count("read") == 5
    assert commands.index("open_run") == commands.index("read") + 2


def test_cut_off_and_failed_record_runs_are_never_attached(RE, store, devices):
    """Newer valid records whose runs have no stop document, or a failed one, are skipped."""
    import event_model
    from bluesky_tiled_plugins import TiledWriter

    _, client, recs = store
    writer = TiledWriter(client)
    for time, exit_status in ((4000.0, None), (5000.0, "fail")):
        rec = make_record(time, 11.0)
        run = event_model.compose_run(uid=rec.uid, time=rec.time, metadata={
            "purpose": "calibration", "calibration": rec.to_dict()})
        writer("start", run.start_doc)
        if exit_status:
            writer("stop", run.compose_stop(exit_status=exit_status))
    optics, scan = devices
    RE.preprocessors.append(attach_calibration(client, optics, scan))
    starts = starts_of(RE)
    RE(bp.count([optics]))
    assert starts[0]["calibration"]["uid"] == recs["good"].uid
    assert starts[0]["calibration_status"]["newest"] == recs["good"].uid


@pytest.mark.parametrize("change, key", [("overfocus", "overfocus_setting"),
                                         ("camera_length", "camera_length"),
                                         ("scan_rotation", "scan_rotation_setting")])
def test_an_optics_change_makes_it_stale(RE, store, devices, change, key):
    _, client, recs = store
    optics, scan = devices
    RE.preprocessors.append(attach_calibration(client, optics, scan))
    starts = starts_of(RE)
    sig, value = {"overfocus": (optics.overfocus, 1.3e-6),
                  "camera_length": (optics.camera_length, 0.25),
                  "scan_rotation": (scan.rotation, 5.0)}[change]
    sig.set(value).wait(timeout=5)
    result = RE(bp.count([optics]))
    assert result.exit_status == "success"  # a stale calibration does not stop the run
    start = starts[0]
    assert start["calibration"] is None
    st = start["calibration_status"]
    assert st["status"] == "stale"
    assert st["changed"] == [key]
    assert st["newest"] == recs["good"].uid
    assert key in st["reason"] and st["optics_state"][key] == value


def test_require_refuses_to_start_and_names_the_plan(RE, store, devices):
    _, client, recs = store
    optics, scan = devices
    attach = attach_calibration(client, optics, scan, require=True)
    RE.preprocessors.append(attach)
    starts = starts_of(RE)
    assert RE(bp.count([optics])).exit_status == "success"  # valid: the run starts
    assert starts[-1]["calibration"]["uid"] == recs["good"].uid
    optics.overfocus.set(1.3e-6).wait(timeout=5)
    with pytest.raises(CalibrationRequiredError, match=r"run the plan `calibrate`") as info:
        RE(bp.count([optics]))
    assert "overfocus_setting" in str(info.value) and "stale" in str(info.value)
    assert len(starts) == 1  # no run was opened
    assert optics._staged == Staged.no  # the plan's own cleanup ran
    attach.require = False
    RE(bp.count([optics]))
    assert len(starts) == 2 and starts[-1]["calibration_status"]["status"] == "stale"


def test_wrapper_and_decorator_with_any_plan(RE, store, devices):
    _, client, recs = store
    optics, scan = devices
    starts = starts_of(RE)

    def two_runs():
        yield from bp.count([scan])
        yield from bps.mv(optics.high_tension, 300e3)
        yield from bp.count([optics], md={"sample": "gold"})
        yield from bp.count([optics], md={"calibration": {"uid": "given by hand"}})

    RE(attach_calibration_wrapper(two_runs(), client, optics, scan))
    assert [s["calibration"] and s["calibration"]["uid"] for s in starts] == [
        recs["good"].uid, None, "given by hand"]
    assert starts[1]["calibration_status"]["changed"] == ["high_tension"]
    assert starts[1]["sample"] == "gold"
    assert "calibration_status" not in starts[2]  # the plan's own calibration is kept

    @attach_calibration_decorator(client, optics, scan, tolerances={"high_tension": 200e3})
    def decorated():
        return (yield from bp.count([optics]))

    RE(decorated())
    assert starts[-1]["calibration"]["uid"] == recs["good"].uid  # within the wider tolerance
    assert starts[-1]["calibration_status"]["tolerances"] == {"high_tension": 200e3}


def test_interleaved_runs_with_run_keys(RE, store, devices, docs):
    """The inserted reads belong to no open run: run a's event holds only what a read."""
    _, client, recs = store
    optics, scan = devices
    RE.preprocessors.append(attach_calibration(client, optics, scan))

    def keyed(plan, key):
        return bpp.set_run_key_wrapper(plan, key)

    def interleaved():  # run a has the default key (None), run b the key "b"
        yield from bps.open_run(md={"which": "a"})
        yield from bps.create("primary")
        yield from bps.read(scan.rotation)
        yield from keyed(bps.open_run(md={"which": "b"}), "b")  # while a bundles an event
        yield from bps.save()
        yield from keyed(bps.close_run(), "b")
        yield from bps.close_run()

    RE(interleaved())
    starts = [d for n, d in docs if n == "start"]
    assert [s["which"] for s in starts] == ["a", "b"]
    assert [s["calibration"]["uid"] for s in starts] == [recs["good"].uid] * 2
    events = [d for n, d in docs if n == "event"]
    assert len(events) == 1 and set(events[0]["data"]) == {"scan_rotation"}


def test_catalog_unavailable_does_not_stop_the_run(devices):
    optics, scan = devices
    RE = RunEngine({})
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # tiled retries for ~25 s; the run waits at most `timeout` s for the catalog
    RE.preprocessors.append(attach_calibration(url, optics, scan, timeout=1.0))
    starts = starts_of(RE)
    RE(bp.count([optics]))
    st = starts[0]["calibration_status"]
    assert starts[0]["calibration"] is None
    assert st["status"] == "catalog unavailable"
    assert re.search(r"ConnectError|no answer within 1 s", st["reason"]), st["reason"]
    assert st["optics_state"] == STATE
    RE.preprocessors[0].require = True
    with pytest.raises(CalibrationRequiredError, match="catalog unavailable"):
        RE(bp.count([optics]))
    assert len(starts) == 1


def test_a_session_started_without_its_catalog_says_why_and_reads_it_once_back(
        store, devices, monkeypatch):
    """A session started while its catalog server was down holds a stand-in for the
    catalog (UnavailableCatalog): every run said 'AttributeError: 'UnavailableCatalog'
    object has no attribute 'search''. Now each run tries the catalog again; while it
    stays away the run carries why, and what to do (the catalog's queries say the same);
    once it is back, the run carries the calibration in force."""
    import tiled.client.utils as tcu

    from stemcal.catalog import UnavailableCatalog, latest_calibration
    from stemcal.catalog.delivery import CatalogUnavailableError

    monkeypatch.setattr(tcu, "TILED_RETRY_ATTEMPTS", 1)
    monkeypatch.setattr(tcu, "TILED_RETRY_TIMEOUT", 1.0)
    optics, scan = devices
    down = f"http://127.0.0.1:{free_port()}/api"   # nothing listens there
    stand_in = UnavailableCatalog(down, "ConnectError: refused")
    RE = RunEngine({})
    RE.preprocessors.append(attach_calibration(stand_in, optics, scan, timeout=30.0))
    starts = starts_of(RE)
    RE(bp.count([optics]))
    st = starts[0]["calibration_status"]
    assert st["status"] == "catalog unavailable" and starts[0]["calibration"] is None
    assert st["reason"].startswith(f"CatalogUnavailableError: catalog {down} could not be "
                                   "opened (ConnectError: refused)"), st["reason"]
    assert "writes to it once it is back (session.reconnect() tries at once)" in st["reason"]
    with pytest.raises(CatalogUnavailableError, match="could not be opened"):
        latest_calibration(stand_in, STATE, {"camera_length": 1e-3})
    assert getattr(stand_in, "finish", None) is None   # getattr's default still works

    directory, _, recs = store   # a catalog that is there (now)
    RE.preprocessors[0] = attach_calibration(UnavailableCatalog(directory, "was locked"),
                                             optics, scan)
    RE(bp.count([optics]))
    assert starts[1]["calibration"]["uid"] == recs["good"].uid
    assert starts[1]["calibration_status"]["status"] == "ok"


def test_unreadable_optics_do_not_stop_the_run(RE, store, devices):
    _, client, _ = store
    optics, scan = devices
    attach = attach_calibration(client, optics, scan)
    RE.preprocessors.append(attach)
    starts = starts_of(RE)
    optics.destroy()  # its signals now raise DisconnectedError on read
    assert RE(bp.count([scan])).exit_status == "success"
    st = starts[0]["calibration_status"]
    assert starts[0]["calibration"] is None and st["status"] == "optics unavailable"
    assert "DisconnectedError" in st["reason"] and "optics_overfocus" in st["reason"]
    attach.require = True
    with pytest.raises(CalibrationRequiredError, match="optics unavailable"):
        RE(bp.count([scan]))


def test_empty_catalog_opened_from_its_location(RE, tmp_path, devices):
    optics, scan = devices
    # opening (creating) the catalog at the first run takes seconds: a generous timeout
    RE.preprocessors.append(attach_calibration(tmp_path / "empty", optics, None, timeout=120))
    starts = starts_of(RE)
    RE(bp.count([optics]))
    st = starts[0]["calibration_status"]
    assert starts[0]["calibration"] is None and st["status"] == "none"
    assert (tmp_path / "empty" / "catalog.db").is_file()
    # without a scan device only the optics keys are compared
    assert set(st["tolerances"]) == {k for k in DEFAULT_TOLERANCES if not k.startswith("scan_")}


def test_bad_arguments_are_refused(store, devices):
    _, client, _ = store
    optics, scan = devices
    with pytest.raises(ValueError, match="tolerances"):
        attach_calibration(client, optics, scan, tolerances={"overfocus_setting": -1.0})
    with pytest.raises(ValueError, match="optics"):
        attach_calibration(client, None, scan)
    with pytest.raises(ValueError, match="timeout"):
        attach_calibration(client, optics, scan, timeout=0)


def test_show_run_prints_what_a_run_carried(store, devices, capsys):
    from bluesky_tiled_plugins import TiledWriter

    directory, client, recs = store
    optics, scan = devices
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(TiledWriter(client))
    RE.preprocessors.append(attach_calibration(client, optics, scan))
    fresh = RE(bp.count([optics])).run_start_uids[0]
    optics.overfocus.set(1.3e-6).wait(timeout=5)
    stale = RE(bp.count([optics])).run_start_uids[0]
    capsys.readouterr()

    assert cli.main(["show", "--run", fresh[:8], "--catalog", str(directory), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["run"] == fresh and res["plan_name"] == "count" and res["attached"] is True
    assert res["calibration"]["uid"] == recs["good"].uid
    assert res["calibration"]["scan_rotation"] == 23.4
    assert res["calibration_status"]["status"] == "ok"

    assert cli.main(["show", "--run", stale, "--catalog", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "stale" in out and "overfocus_setting 1e-06 -> 1.3e-06" in out
    assert "calibration    none" in out

    assert cli.main(["show", "--run", "0123abcd", "--catalog", str(directory)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stemcal: error: no run with uid '0123abcd' in this catalog"]
    assert cli.main(["show", "--catalog", str(directory)]) == 2
    assert "--run" in capsys.readouterr().err
