"""Calibration plans and the calibration recorder: RunEngine + simulated instrument + catalog.

The simulated data are sized like the CLI tests: a 40x40 scan on a 96x96
detector at 5 counts/px, the disk radius 0.3 of the detector, the scan step
scaled by 96/128, the specimen sampled at half a scan pixel with 0.8 scan px
features. (A 32x32 scan gave rotation errors up to 0.13 degree; 40x40 stayed
within 0.025 degree over ten specimen/noise seeds.)
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import event_model
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from bluesky_tiled_plugins import TiledWriter

from stemcal.callbacks import (CalibrationRecorder, CalibrationRun, DocumentOrderError,
                               RunNotCalibrated)
from stemcal.catalog import calibration_history, get_record, open_catalog, record_images
from stemcal.devices import ManualClock, MicroscopeTruth, make_sim_instrument
from stemcal.plans import (calibrate, focus_schedule, overfocus_scan, recalibrate_if_stale,
                           sharpness_offset, verify_calibration)
from stemcal.runs import RESULT_PURPOSE, optics_state
from stemcal.session import make_recorder

from twin_setup import (BLANK, CAMERA_LENGTH, DET_PIXEL, NAV, SCAN_PIXEL, SEMICONV,  # noqa: E402
                        SIG, SPECIMEN, TRUTH)

TOLERANCES = {"overfocus_setting": 20e-9, "camera_length": 1e-3}


def instrument(directory, truth=TRUTH, specimen=SPECIMEN, seed=2):
    clock = ManualClock()
    inst = make_sim_instrument(directory, truth=truth, sig_shape=(SIG, SIG), specimen=specimen,
                               dose=5.0, seed=seed, clock=clock.time, sleep=clock.sleep)
    for sig, value in ((inst.scan.shape_y, NAV), (inst.scan.shape_x, NAV),
                       (inst.scan.pixel_size, SCAN_PIXEL)):
        sig.set(value).wait(timeout=5)
    return inst


def check_truth(record, inst, rot_tol=0.1, of_tol=0.005):
    true = inst.microscope.geometry(inst.scan.state(), inst.optics.state())
    drot = (record.scan_rotation - true.scan_rotation + 180) % 360 - 180
    assert abs(drot) <= rot_tol, f"rotation off by {drot:.3f} deg"
    assert record.flip_y == true.flip_y
    assert abs(record.overfocus / true.overfocus - 1) <= of_tol, record.overfocus / true.overfocus
    assert abs(record.cy - true.cy) <= 0.5 and abs(record.cx - true.cx) <= 0.5


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Catalog, instrument, RunEngine (TiledWriter + recorder subscribed), one calibration."""
    d = tmp_path_factory.mktemp("calibrate")
    client = open_catalog(d / "catalog", readable_storage=[d / "raw"])
    inst = instrument(d / "raw")
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(TiledWriter(client))
    recorder = CalibrationRecorder(client, figure_dir=d / "figures")
    RE.subscribe(recorder)
    result = RE(calibrate(inst.detector, inst.scan, inst.optics, callback=recorder,
                          md={"sample": "test specimen"}))
    yield SimpleNamespace(dir=d, client=client, inst=inst, RE=RE, docs=docs, recorder=recorder,
                          record=result.plan_result)
    recorder.close()


def starts(docs):
    """The start documents of acquisitions (not of the result runs that show the fits)."""
    return [d for n, d in docs if n == "start" and d.get("purpose") != RESULT_PURPOSE]


# -- calibrate ------------------------------------------------------------------------

def test_calibrate_finds_the_true_geometry(session):
    rec = session.record
    assert rec.valid, rec.quality
    check_truth(rec, session.inst)
    assert rec.optics_state == optics_state(session.inst.optics.state(), session.inst.scan.state())
    assert rec.optics_state["overfocus_setting"] == 1e-6
    assert rec.camera_length == CAMERA_LENGTH and rec.scan_pixel_size == SCAN_PIXEL
    assert set(rec.versions) >= {"stemcal", "libertem", "bluesky"}
    assert rec.fit_settings["method"] == "cold_start"
    assert rec.fit_settings["data"]["nav_shape"] == [NAV, NAV]
    assert 0 < rec.uncertainty["scan_rotation"] < 0.5


def test_record_and_acquisition_are_in_the_catalog(session):
    rec, client = session.record, session.client
    (acq,) = starts(session.docs)  # one attempt was enough
    assert rec.acquisition_uid == acq["uid"]
    assert acq["purpose"] == "calibration_data"
    assert acq["plan_name"] == "calibrate" and acq["calibration_attempt"] == 1
    assert acq["plan_args"]["max_attempts"] == 3
    assert acq["sample"] == "test specimen"  # md passes through
    assert [r.uid for r in calibration_history(session.client)] == [rec.uid]
    assert get_record(client, rec.uid) == rec
    images = record_images(client, rec.uid)
    assert set(images) == {"point", "selected", "shifted_sum_normalised", "sum"}
    assert images["point"].shape == (NAV, NAV)
    # The acquisition run itself went in through the TiledWriter.
    run = client[rec.acquisition_uid]
    assert run.metadata["start"]["purpose"] == "calibration_data"
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run["primary"]["merlin_image"].shape == (1, NAV, NAV, SIG, SIG)
    # The catalog reads the file while another reader (as the recorder's LiberTEM
    # load) holds it open without SWMR: both work (files are not SWMR).
    import h5py
    (res,) = [d for n, d in session.docs if n == "stream_resource" and d["run_start"] == acq["uid"]]
    path = res["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r") as held:
        frame = run["primary"]["merlin_image"][0, 1, 2]
        np.testing.assert_array_equal(frame, held["/entry/data/data"][0, 1, 2])
    assert (session.dir / "figures" / f"calibration_{rec.uid[:8]}.png").stat().st_size > 0
    assert session.recorder.result_status(acq["uid"]).result == rec


# -- verify ---------------------------------------------------------------------------

def test_verify_passes_fresh_and_fails_rotated_record(session):
    inst, rec = session.inst, session.record
    n = len(calibration_history(session.client))
    good = session.RE(verify_calibration(inst.detector, inst.scan, inst.optics, rec,
                                         callback=session.recorder)).plan_result
    assert good["passed"], good
    assert good["record_uid"] == rec.uid
    assert abs(good["scan_rotation_offset"]) < 0.3 and abs(good["overfocus_offset"]) < 0.01
    assert good["record_blur"] == rec.blur and abs(good["blur_change"]) < 0.02
    bad = session.RE(verify_calibration(inst.detector, inst.scan, inst.optics,
                                        rec.correct(scan_rotation=rec.scan_rotation + 5.0),
                                        callback=session.recorder)).plan_result
    assert not bad["passed"]
    rot = bad["scan_rotation_offset"]
    assert math.isnan(rot) or rot < -1.0, bad  # the sharp image is at lower rotation
    assert bad["contrast"] < good["contrast"] and bad["blur"] > good["blur"]
    check = starts(session.docs)[-1]
    assert check["purpose"] == "calibration_check" and check["plan_name"] == "verify_calibration"
    assert len(calibration_history(session.client)) == n  # a check writes no record


# -- recalibrate_if_stale -------------------------------------------------------------

def test_recalibrate_only_when_stale(session):
    inst, RE, client = session.inst, session.RE, session.client

    def run():
        n = len(starts(session.docs))
        rec = RE(recalibrate_if_stale(inst.detector, inst.scan, inst.optics, catalog_client=client,
                                      tolerances=TOLERANCES, callback=session.recorder)).plan_result
        return rec, len(starts(session.docs)) - n

    rec, runs = run()
    assert rec == session.record and runs == 0  # nothing changed: no acquisition
    try:
        inst.optics.camera_length.set(0.21).wait(timeout=5)
        rec_l, runs = run()
        assert runs == 1 and rec_l.uid != session.record.uid and rec_l.valid
        assert rec_l.camera_length == 0.21 and rec_l.optics_state["camera_length"] == 0.21
        check_truth(rec_l, inst, rot_tol=0.2, of_tol=0.01)
        acq = starts(session.docs)[-1]
        assert acq["plan_name"] == "recalibrate_if_stale"
        assert acq["recalibration_reason"]["changed"] == ["camera_length"]
        inst.optics.camera_length.set(0.2005).wait(timeout=5)  # within tolerance of 0.2
        inst.optics.overfocus.set(1.1e-6).wait(timeout=5)  # beyond the focus tolerance
        rec_f, runs = run()
        assert runs == 1 and rec_f.optics_state["overfocus_setting"] == 1.1e-6 and rec_f.valid
        assert run() == (rec_f, 0)
    finally:
        inst.optics.camera_length.set(0.2).wait(timeout=5)
        inst.optics.overfocus.set(1e-6).wait(timeout=5)
    assert run() == (session.record, 0)  # back where the first calibration holds


# -- no features, failures ------------------------------------------------------------

def test_blank_specimen_retries_then_records_invalid(session, tmp_path):
    inst = instrument(tmp_path / "raw", truth=MicroscopeTruth(
        detector_pixel_size=DET_PIXEL, semiconv=SEMICONV), specimen=BLANK)
    RE = RunEngine({}, call_returns_result=True)
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    # The plan subscribes a recorder of its own for its duration (and closes it).
    rec = RE(calibrate(inst.detector, inst.scan, inst.optics,
                       callback=make_recorder(session.client), subscribe=True,
                       max_attempts=3, focus_step=0.2e-6)).plan_result
    assert not rec.valid and rec.quality.startswith("no features")
    assert inst.optics.overfocus.get() == 1e-6  # restored
    acqs = starts(docs)
    assert [a["optics"]["overfocus"] for a in acqs] == pytest.approx([1e-6, 1.2e-6, 0.8e-6])
    assert [a["calibration_attempt"] for a in acqs] == [1, 2, 3]
    mine = [r for r in calibration_history(session.client)
            if r.acquisition_uid in {a["uid"] for a in acqs}]
    assert len(mine) == 3 and not any(r.valid for r in mine)
    assert rec.acquisition_uid == acqs[-1]["uid"] and rec in mine
    # The plan's own recorder is unsubscribed afterwards: a further scan is not calibrated.
    n = len(calibration_history(session.client))
    RE(overfocus_scan(inst.detector, inst.scan, inst.optics))
    assert len(calibration_history(session.client)) == n


def test_focus_restored_when_an_attempt_fails(session, tmp_path):
    # True overfocus = setting - 0.8 um: the third attempt (0.8 um) is impossible.
    inst = instrument(tmp_path / "raw", truth=MicroscopeTruth(
        detector_pixel_size=DET_PIXEL, semiconv=SEMICONV, overfocus_offset=-0.8e-6),
        specimen=BLANK)
    RE = RunEngine({}, call_returns_result=True)
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with CalibrationRecorder(session.client) as recorder:
        RE.subscribe(recorder)
        with pytest.raises(FailedStatus):
            RE(calibrate(inst.detector, inst.scan, inst.optics, callback=recorder,
                         focus_limits=(0.5e-6, 2e-6), focus_step=0.2e-6))
        assert inst.optics.overfocus.get() == 1e-6
        acqs = starts(docs)
        stops = [d["exit_status"] for n, d in docs
                 if n == "stop" and d["run_start"] in {a["uid"] for a in acqs}]
        assert stops == ["success", "success", "fail"]
        failed = recorder.result_status(acqs[-1]["uid"])
        assert isinstance(failed.exception(timeout=5), RunNotCalibrated)
        with pytest.raises(RunNotCalibrated, match="exit_status 'fail'"):
            failed.result
    uids = {r.acquisition_uid for r in calibration_history(session.client)}
    assert acqs[0]["uid"] in uids and acqs[1]["uid"] in uids and acqs[2]["uid"] not in uids


def test_a_calibration_the_plan_stopped_waiting_for_is_recorded_abandoned(session, tmp_path):
    """``timeout`` ends the plan with TimeoutError while the fit goes on; the record it
    ends in is written, but as abandoned: not valid, so not the calibration that later
    runs are given (the newest valid record stays the one before)."""
    from stemcal.catalog import latest_calibration

    inst = instrument(tmp_path / "raw")
    RE = RunEngine({}, call_returns_result=True)
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with CalibrationRecorder(session.client) as recorder:
        RE.subscribe(recorder)
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.001 s; its fit goes on, "
                           r"and its record will be written as abandoned"):
            RE(calibrate(inst.detector, inst.scan, inst.optics, callback=recorder,
                         timeout=1e-3))
        acq, = starts(docs)
        status = recorder.result_status(acq["uid"])
        assert status.exception(timeout=120) is None   # the fit went on to its end
        record = status.result
        assert not recorder.abandon(acq["uid"], "too late")   # written: it stands as it is
    assert record.quality.startswith("abandoned: calibration of run") and not record.valid
    assert get_record(session.client, record.uid) == record
    assert abs(record.scan_rotation - session.record.scan_rotation) < 0.2   # fitted all the same
    state = optics_state(acq["optics"], acq["scan"])
    latest = latest_calibration(session.client, state, TOLERANCES)
    assert latest is not None and latest.uid != record.uid and latest.valid


# -- the recorder's document handling -------------------------------------------------

def _run_docs(purpose="calibration_data", exit_status="success"):
    run = event_model.compose_run(metadata={"purpose": purpose})
    desc = run.compose_descriptor(name="primary", data_keys={
        "x": {"source": "sim", "dtype": "number", "shape": []}})
    event = desc.compose_event(data={"x": 1.0}, timestamps={"x": 0.0})
    return run, desc, event, run.compose_stop(exit_status=exit_status)


def test_out_of_order_documents_raise():
    run, desc, event, stop = _run_docs()
    with CalibrationRecorder(None) as recorder:
        with pytest.raises(DocumentOrderError, match="descriptor"):
            recorder("descriptor", desc.descriptor_doc)  # before its start
        recorder("start", run.start_doc)
        with pytest.raises(DocumentOrderError, match="event"):
            recorder("event", event)  # before its descriptor
    cb = CalibrationRun(lambda *a: None)
    with pytest.raises(DocumentOrderError, match="before the run's 'start'"):
        cb("event", event)
    cb("start", run.start_doc)
    with pytest.raises(DocumentOrderError, match="before its descriptor"):
        cb("event", event)
    with pytest.raises(DocumentOrderError, match="second 'start'"):
        cb("start", run.start_doc)
    cb("descriptor", desc.descriptor_doc)
    cb("event", event)
    cb("stop", stop)
    with pytest.raises(DocumentOrderError, match="after the run's 'stop'"):
        cb("event", event)


@pytest.mark.parametrize("exit_status, match", [("abort", "exit_status 'abort'"),
                                                ("success", "0 4D acquisitions")])
def test_runs_without_usable_data_get_no_record(exit_status, match):
    run, desc, event, stop = _run_docs(exit_status=exit_status)
    with CalibrationRecorder(None) as recorder:
        for name, doc in (("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                          ("event", event), ("stop", stop)):
            recorder(name, doc)
        status = recorder.result_status(run.start_doc["uid"])
        assert status.done and not status.success
        with pytest.raises(RunNotCalibrated, match=match):
            status.result


def test_other_runs_are_ignored():
    run, desc, event, stop = _run_docs(purpose="alignment")
    with CalibrationRecorder(None) as recorder:
        for name, doc in (("start", run.start_doc), ("descriptor", desc.descriptor_doc),
                          ("event", event), ("stop", stop)):
            recorder(name, doc)
        assert not recorder.handles(run.start_doc["uid"])
        with pytest.raises(KeyError):
            recorder.result_status(run.start_doc["uid"])


# -- helpers and validation -----------------------------------------------------------

def test_focus_schedule():
    assert focus_schedule(1e-6, 0.2e-6, (0.5e-6, 2e-6), 3) == pytest.approx([1e-6, 1.2e-6, 0.8e-6])
    assert focus_schedule(1e-6, 0.4e-6, (0.9e-6, 2e-6), 4) == pytest.approx(
        [1e-6, 1.4e-6, 1.8e-6])
    assert focus_schedule(-1e-6, 0.2e-6, (-2e-6, -0.5e-6), 2) == pytest.approx([-1e-6, -0.8e-6])
    assert focus_schedule(1e-6, 0.2e-6, (0.5e-6, 2e-6), 1) == [1e-6]
    for args in [(1e-6, 0.2e-6, (-1e-6, 2e-6), 3), (3e-6, 0.2e-6, (0.5e-6, 2e-6), 3),
                 (1e-6, 0.0, (0.5e-6, 2e-6), 3), (1e-6, 0.2e-6, (0.5e-6, 2e-6), 0),
                 (1e-6, 0.2e-6, (2e-6, 0.5e-6), 3)]:
        with pytest.raises(ValueError):
            focus_schedule(*args)


def test_sharpness_offset():
    c = [1 - (u - 0.3) ** 2 for u in (-1, 0, 1)]
    assert sharpness_offset(*c, 2.0) == pytest.approx(0.6)
    assert math.isnan(sharpness_offset(1.0, 0.5, 1.0, 1.0))  # a minimum, not a maximum
    assert math.isnan(sharpness_offset(1.0, 1.0, 1.0, 1.0))


def test_plan_arguments_are_validated(session):
    inst = session.inst
    with pytest.raises(ValueError, match="give callback"):
        calibrate(inst.detector, inst.scan, inst.optics)
    with pytest.raises(ValueError, match="result_status"):
        calibrate(inst.detector, inst.scan, inst.optics, callback=lambda n, d: None)
    with pytest.raises(ValueError, match="rotation_step"):
        verify_calibration(inst.detector, inst.scan, inst.optics, session.record,
                           callback=session.recorder, rotation_step=0)
    # md may not take the keys the recorder reads: with another purpose the run would not
    # be calibrated and the plan would say 'subscribe the recorder'
    with pytest.raises(ValueError, match="md must not set 'purpose': the plan sets it"):
        calibrate(inst.detector, inst.scan, inst.optics, callback=session.recorder,
                  md={"purpose": "something_else"})
    with pytest.raises(ValueError, match="md must not set 'calibration_check'"):
        verify_calibration(inst.detector, inst.scan, inst.optics, session.record,
                           callback=session.recorder, md={"calibration_check": {}})
    with pytest.raises(ValueError, match="md must not set 'optics', 'guess'"):
        recalibrate_if_stale(inst.detector, inst.scan, inst.optics, catalog_client=session.client,
                             tolerances={"camera_length": 1e-3}, callback=session.recorder,
                             md={"optics": {}, "guess": {}, "sample": "fine"})
    for tolerances, match in (({"camera_length": -1.0}, "tolerances must be finite"),
                              ({"bogus": 1}, r"tolerances: unknown key\(s\) 'bogus'"),
                              ({}, "tolerances compare nothing")):
        with pytest.raises(ValueError, match=match):   # when the plan is made, before a scan
            recalibrate_if_stale(inst.detector, inst.scan, inst.optics,
                                 catalog_client=session.client, tolerances=tolerances,
                                 callback=session.recorder)
    with pytest.raises(ValueError, match="focus_limits"):
        session.RE(calibrate(inst.detector, inst.scan, inst.optics, callback=session.recorder,
                             focus_limits=(-1e-6, 2e-6)))
    assert inst.optics.overfocus.get() == 1e-6


def test_reserved_md_covers_every_key_the_plans_set_for_the_recorder(tmp_path):
    """runs.RESERVED_MD is written beside acquisition_start and check_request (which need
    devices and a record to build their keys): every key they set, and the attempt
    counters of calibrate, must be refused in a plan's md, or a user's md would take a
    run away from the recorder."""
    from stemcal.runs import RESERVED_MD, acquisition_start, check_md, check_request

    inst = instrument(tmp_path / "raw")
    contract = set(acquisition_start(inst.detector, inst.scan, inst.optics, guess={}, live=False))
    params = inst.microscope.geometry(inst.scan.state(), inst.optics.state())
    contract |= set(check_request("0" * 32, params, 0.3, 0.005))
    contract |= {"calibration_attempt", "max_attempts"}
    assert contract <= set(RESERVED_MD), contract - set(RESERVED_MD)
    for key in contract:
        with pytest.raises(ValueError, match=f"md must not set '{key}'"):
            check_md({key: 1})
