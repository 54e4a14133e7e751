"""Faults in the middle of an acquisition, on the simulated instrument, through a RunEngine.

Each test runs :func:`stemcal.plans.calibrate` on a blank specimen: the first
attempt's record is "no features" (not valid), so the plan moves the focus
from 1.0 to 1.2 um and acquires again; the fault hits that second
acquisition after ``ROW`` of its ``NAV`` rows. The moment is exact: the twin's
injected ``sleep`` (one call per scan row) blocks in that row until the
detector's controller is told to stop (``SimBackend.abort_requested``), so
whatever interrupts the RunEngine -- ``RE.request_pause``, ``RE.abort``,
``RE.stop``, a SIGINT -- does so while the trigger status is pending.

In every case the test checks the run's exit status, the partial HDF5 file
(the first ``ROW * NAV`` frames, bit-identical to the twin's, referenced by
the run's ``'incomplete'`` stream and readable through the catalog), that no
calibration record comes from it, that focus and scan settings are back to
what they were, and that the next plan runs clean.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from bluesky.utils import FailedStatus, RunEngineInterrupted
from bluesky_tiled_plugins import TiledWriter
from ophyd.device import Staged

from stemcal.callbacks import CalibrationRecorder, RunNotCalibrated
from stemcal.catalog import calibration_history, open_catalog
from stemcal.devices import ManualClock, MicroscopeTruth, PhysicalSpecimen, make_sim_instrument
from stemcal.plans import calibrate, overfocus_scan

NAV = 12           # scan NAV x NAV

from documents import path_of, runs  # tests/documents.py
SIG = 32           # detector SIG x SIG
ROW = 5            # the fault comes while row ROW (0-based) of the second acquisition is taken
BLANK = PhysicalSpecimen(np.ones((64, 64)), 0.25e-9)
TRUTH = MicroscopeTruth(semiconv=0.3 * SIG * 55e-6 / 0.2)
F0, F1 = 1e-6, 1.2e-6  # focus before the plan; focus of the second attempt


class GatedSleep:
    """The twin's ``sleep``: a manual clock that holds one chosen scan row.

    The ``at``-th call (1-based; one call per row) sets :attr:`reached` and
    then waits until the backend has been asked to abort, or ``hold`` seconds.
    """

    def __init__(self, clock: ManualClock, at: int, hold: float = 20.0) -> None:
        self.clock, self.at, self.hold = clock, at, hold
        self.calls = 0
        self.backend = None
        self.reached = threading.Event()
        self.held_until_abort = False

    def __call__(self, seconds: float) -> None:
        self.clock.sleep(seconds)
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            deadline = time.monotonic() + self.hold
            while time.monotonic() < deadline:
                if self.backend.abort_requested:
                    self.held_until_abort = True
                    return
                time.sleep(0.005)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    return SimpleNamespace(dir=d, client=open_catalog(d / "catalog", readable_storage=[d]))


@pytest.fixture
def setup(catalog, tmp_path, RE, docs):
    """Blank-specimen instrument (gated at the second acquisition), recorder, TiledWriter."""
    clock = ManualClock()
    gate = GatedSleep(clock, at=NAV + ROW + 1)
    raw = catalog.dir / tmp_path.name
    inst = make_sim_instrument(raw, truth=TRUTH, sig_shape=(SIG, SIG), specimen=BLANK,
                               dose=5.0, seed=3, clock=clock.time, sleep=gate)
    gate.backend = inst.detector.backend
    for sig in (inst.scan.shape_y, inst.scan.shape_x):
        sig.set(NAV).wait(timeout=5)
    inst.scan.rotation.set(3.0).wait(timeout=5)
    RE.subscribe(TiledWriter(catalog.client))
    recorder = CalibrationRecorder(catalog.client)
    RE.subscribe(recorder)
    before = (inst.optics.state(), inst.scan.state())
    assert before[0]["overfocus"] == F0
    yield SimpleNamespace(inst=inst, gate=gate, recorder=recorder, before=before,
                          client=catalog.client, RE=RE, docs=docs)
    recorder.close()


def plan(s):
    # result_runs=False: these tests count the acquisition runs (test_feedback covers those)
    return calibrate(s.inst.detector, s.inst.scan, s.inst.optics, callback=s.recorder,
                     focus_step=F1 - F0, max_attempts=3, result_runs=False)


def in_thread(action) -> threading.Thread:
    t = threading.Thread(target=action, daemon=True)
    t.start()
    return t


def when_reached(s, action) -> threading.Thread:
    """Run ``action()`` in a thread as soon as the gated row is reached."""
    def go():
        assert s.gate.reached.wait(30), "the gated row was never reached"
        action()
    return in_thread(go)


def ctrl_c() -> None:
    """SIGINT to the main thread, where the RunEngine waits (as a terminal's Ctrl-C)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def expected_frames(s, overfocus: float, n: int) -> np.ndarray:
    """The frames of the twin's acquisition ``n`` (0-based; its noise seed) at ``overfocus``."""
    mic = s.inst.microscope
    return mic.frames(s.inst.scan.state(), {**s.inst.optics.state(), "overfocus": overfocus},
                      seed=mic.seed + n)


def check_partial(s, run: dict) -> None:
    """The run's incomplete stream references a closed file with the first ROW rows."""
    assert "primary" not in run["streams"]
    (event,) = run["streams"]["incomplete"]
    (resource,) = run["resources"]
    path = path_of(resource)
    assert event["data"]["merlin_data_file"] == str(path)
    want = expected_frames(s, F1, 1)
    with h5py.File(path, "r") as f:
        ds = f[resource["parameters"]["dataset"]]
        assert ds.shape == (1, NAV, NAV, SIG, SIG)
        assert ds.attrs["complete"] == False  # noqa: E712 - numpy bool
        assert ds.attrs["frames_written"] == ROW * NAV
        data = ds[0]
    np.testing.assert_array_equal(data[:ROW], want[:ROW])
    assert not data[ROW:].any()
    assert data[:ROW].sum() > 0
    # The catalog serves the same array from the run's 'incomplete' stream.
    served = s.client[run["start"]["uid"]]["incomplete"]["merlin_image"].read()
    np.testing.assert_array_equal(np.asarray(served)[0], data)


def check_no_record(s, run: dict) -> None:
    uid = run["start"]["uid"]
    status = s.recorder.result_status(uid)
    assert isinstance(status.exception(timeout=10), RunNotCalibrated)
    s.recorder.wait(timeout=30)
    assert uid not in {r.acquisition_uid for r in calibration_history(s.client)}


def check_safe(s) -> None:
    inst = s.inst
    assert (inst.optics.state(), inst.scan.state()) == s.before
    assert inst.detector._staged == Staged.no and not inst.detector.acquiring
    assert not inst.detector.has_uncollected_data()


def check_next_plan_clean(s) -> None:
    n = len(s.docs)
    k = s.inst.microscope.n_acquired
    result = s.RE(overfocus_scan(s.inst.detector, s.inst.scan, s.inst.optics))
    assert result.exit_status == "success"
    (run,) = runs(s.docs[n:])
    assert run["stop"]["exit_status"] == "success" and list(run["streams"]) == ["primary"]
    (resource,) = run["resources"]
    with h5py.File(path_of(resource), "r") as f:
        ds = f[resource["parameters"]["dataset"]]
        assert ds.attrs["complete"] == True  # noqa: E712
        np.testing.assert_array_equal(ds[0], expected_frames(s, F0, k))


def first_attempt_ok(s, run: dict) -> None:
    assert run["stop"]["exit_status"] == "success"
    assert run["start"]["optics"]["overfocus"] == F0
    rec = s.recorder.result_status(run["start"]["uid"]).result
    assert not rec.valid and rec.quality.startswith("no features")


# -- the cases --------------------------------------------------------------------------

def test_abort_mid_scan(setup):
    s = setup
    when_reached(s, s.RE.abort)
    with pytest.raises(RunEngineInterrupted):
        s.RE(plan(s))
    assert s.gate.held_until_abort
    first, second = runs(s.docs)
    first_attempt_ok(s, first)
    assert second["start"]["optics"]["overfocus"] == F1
    assert second["stop"]["exit_status"] == "abort"
    check_partial(s, second)
    check_no_record(s, second)
    check_safe(s)
    check_next_plan_clean(s)


def test_stop_mid_scan(setup):
    """RE.stop() ends the run as 'success' (Bluesky's meaning); it has no primary event."""
    s = setup
    when_reached(s, s.RE.stop)
    with pytest.raises(RunEngineInterrupted):
        s.RE(plan(s))
    first, second = runs(s.docs)
    first_attempt_ok(s, first)
    assert second["stop"]["exit_status"] == "success"
    assert second["stop"]["num_events"] == {"incomplete": 1}
    check_partial(s, second)
    with pytest.raises(RunNotCalibrated, match="0 4D acquisitions"):
        s.recorder.result_status(second["start"]["uid"]).result
    check_no_record(s, second)
    check_safe(s)
    check_next_plan_clean(s)


def test_pause_then_resume_repeats_the_scan(setup):
    s = setup
    when_reached(s, s.RE.request_pause)
    with pytest.raises(RunEngineInterrupted):
        s.RE(plan(s))
    assert s.RE.state == "paused" and s.gate.held_until_abort
    det = s.inst.detector
    assert not det.acquiring and det.has_uncollected_data()
    partial = Path(det.data_file.get())
    with h5py.File(partial, "r") as f:  # closed and readable while paused
        assert f["/entry/data/data"].attrs["frames_written"] == ROW * NAV
    assert s.inst.optics.overfocus.get() == F1  # paused inside attempt 2
    result = s.RE.resume()
    assert result.exit_status == "success"
    assert not partial.exists()  # superseded: the scan was taken again
    all_runs = runs(s.docs)
    assert [r["stop"]["exit_status"] for r in all_runs] == ["success"] * 3
    second = all_runs[1]
    assert list(second["streams"]) == ["primary"]
    (resource,) = second["resources"]
    with h5py.File(path_of(resource), "r") as f:
        ds = f[resource["parameters"]["dataset"]]
        assert ds.attrs["complete"] == True  # noqa: E712
        np.testing.assert_array_equal(ds[0], expected_frames(s, F1, 2))
    # The repeated scan was calibrated like any other (blank: "no features").
    rec = s.recorder.result_status(second["start"]["uid"]).result
    assert rec.acquisition_uid == second["start"]["uid"] and not rec.valid
    assert result.plan_result.acquisition_uid == all_runs[2]["start"]["uid"]
    check_safe(s)
    check_next_plan_clean(s)


def test_pause_then_abort_keeps_the_partial_file(setup):
    s = setup
    when_reached(s, s.RE.request_pause)
    with pytest.raises(RunEngineInterrupted):
        s.RE(plan(s))
    assert s.RE.state == "paused"
    s.RE.abort(reason="operator gave up")
    first, second = runs(s.docs)
    first_attempt_ok(s, first)
    assert second["stop"]["exit_status"] == "abort"
    check_partial(s, second)
    check_no_record(s, second)
    check_safe(s)
    check_next_plan_clean(s)


def test_ctrl_c_twice_pauses_then_abort(setup):
    """Two SIGINTs (Ctrl-C) >= 0.1 s apart: the RunEngine's hard pause; then RE.abort()."""
    s = setup

    def ctrl_c_twice():
        ctrl_c()
        time.sleep(0.3)
        ctrl_c()

    when_reached(s, ctrl_c_twice)
    with pytest.raises(RunEngineInterrupted):
        s.RE(plan(s))
    assert s.RE.state == "paused" and s.gate.held_until_abort
    s.RE.abort()
    first, second = runs(s.docs)
    first_attempt_ok(s, first)
    assert second["stop"]["exit_status"] == "abort"
    check_partial(s, second)
    check_no_record(s, second)
    check_safe(s)
    check_next_plan_clean(s)


def test_ctrl_c_once_pauses_at_the_next_checkpoint(setup):
    """One SIGINT: a deferred pause; the scan under way completes, the next one does not start."""
    s = setup
    s.gate.hold = 1.0  # nothing aborts this acquisition: let it go on after 1 s
    when_reached(s, ctrl_c)
    with pytest.raises(RunEngineInterrupted):
        s.RE(plan(s))
    assert s.RE.state == "paused" and not s.gate.held_until_abort
    s.RE.abort()
    first, second, third = runs(s.docs)
    first_attempt_ok(s, first)
    assert second["stop"]["exit_status"] == "success"  # complete, and calibrated
    assert not s.recorder.result_status(second["start"]["uid"]).result.valid
    assert third["stop"]["exit_status"] == "abort"  # paused at its checkpoint, before a frame
    assert third["resources"] == [] and third["streams"] == {}
    check_no_record(s, third)
    check_safe(s)
    check_next_plan_clean(s)


def test_failure_mid_scan_fails_the_run(setup):
    """The instrument fails during the scan (the twin's clock raises in the gated row)."""
    s = setup
    gate = s.gate

    def failing_sleep(seconds):
        gate.clock.sleep(seconds)
        gate.calls += 1
        if gate.calls == gate.at:
            raise ConnectionError("scan generator lost")

    s.inst.microscope.sleep = failing_sleep
    with pytest.raises(FailedStatus) as info:
        s.RE(plan(s))
    assert isinstance(info.value.args[0].exception(), ConnectionError)
    first, second = runs(s.docs)
    first_attempt_ok(s, first)
    assert second["stop"]["exit_status"] == "fail"
    assert second["stop"]["reason"] == ("merlin: acquisition failed: ConnectionError: "
                                        "scan generator lost")
    check_partial(s, second)
    check_no_record(s, second)
    check_safe(s)
    check_next_plan_clean(s)
