"""Faults during acquisition with the real Merlin protocol: LiberTEM-live's simulator on 127.0.0.1.

The simulator (``libertem-live-mib-sim``, free ports chosen at run time)
replays a 24x24 scan of 64x64 frames of a blank specimen, one frame per 4 ms
(2.3 s per scan). Faults hit while frames stream in: the tests wait until
the detector has written some frames of the scan to its file (not a fixed
delay), then kill the simulator, stop it (SIGSTOP), pause or abort the
RunEngine. For refused commands the same simulator runs with a control server
that answers chosen commands with a Merlin error code
(``refusing_merlin_sim.py``).

Checked every time: the run's exit status; the partial file (the first
``frames_written`` frames bit-identical to the served ones) referenced by
the run's ``'incomplete'`` stream, or no stream resource at all; no
calibration; the optics back at their setting; the next plan runs clean.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np
import pytest
from bluesky.utils import FailedStatus, RunEngineInterrupted
from ophyd.device import Staged

from stemcal.callbacks import CalibrationRecorder, RunNotCalibrated
from stemcal.catalog import calibration_history, open_catalog
from stemcal.devices import MerlinDetector, MicroscopeOptics, ScanGenerator
from stemcal.devices.hardware.merlin import DetectorRefusedError, MerlinHardwareBackend
from stemcal.plans import calibrate, overfocus_scan
from stemcal.twin import OverfocusParams, simulate
from stemcal.twin.simulator import SimulatedSpecimen
from stemcal.formats import write_mib

from documents import path_of, runs  # tests/documents.py
from peers import HOST, MIB_SIM, MibSim  # tests/peers.py

NAV = (24, 24)
N = NAV[0] * NAV[1]
SIG = (64, 64)
DWELL_US = 4000

pytestmark = pytest.mark.skipif(MIB_SIM is None, reason="libertem-live-mib-sim not installed")


# -- the simulator ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A blank specimen (nothing to calibrate on), Poisson noise, as .mib + .hdr."""
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, semiconv=20 * 55e-6 / 0.2,
                             cy=32.0, cx=31.0)
    blank = SimulatedSpecimen(np.ones((8, 8)), (0.0, 0.0), 1.0)
    data = simulate(params, NAV, SIG, specimen=blank, dose=20.0, seed=4, dtype="uint16")
    hdr = write_mib(tmp_path_factory.mktemp("mib") / "blank.mib", data)
    return hdr, data


@pytest.fixture(scope="module")
def slow_sim(served, tmp_path_factory):
    """A simulator sending one frame per 4 ms, shared by the tests that leave it running."""
    server = MibSim(served[0], tmp_path_factory.mktemp("simlog") / "slow.log",
                    "--dwelltime", str(DWELL_US))
    yield server
    server.stop()


# -- devices ------------------------------------------------------------------------------
@pytest.fixture
def devices(tmp_path):
    scan = ScanGenerator(name="scan")
    scan.shape_y.set(NAV[0]).wait(timeout=5)
    scan.shape_x.set(NAV[1]).wait(timeout=5)
    optics = MicroscopeOptics(name="optics")
    made = []

    def detector(server: MibSim, **kw) -> MerlinDetector:
        kw.setdefault("timeout", 3.0)
        backend = MerlinHardwareBackend(scan, api_host=HOST, api_port=server.control_port,
                                    data_host=HOST, data_port=server.data_port, sig_shape=SIG,
                                    **kw)
        made.append(backend)
        return MerlinDetector("merlin", backend=backend, write_dir=tmp_path / "raw")

    yield scan, optics, detector
    for backend in made:
        backend.close()


@pytest.fixture
def recorder(RE):
    rec = CalibrationRecorder(None)  # no catalog: a record would fail loudly; none may come
    RE.subscribe(rec)
    yield rec
    rec.close()


def read_file(resource: dict):
    with h5py.File(path_of(resource), "r") as f:
        ds = f[resource["parameters"]["dataset"]]
        return ds[0], dict(ds.attrs)


def when_streaming(det: MerlinDetector, action, *, after_runs=None, docs=None) -> threading.Thread:
    """Run ``action()`` in a thread once ``det`` has written frames of a running acquisition.

    With ``after_runs``, only in an acquisition after ``after_runs`` runs have stopped.
    """
    def go():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = after_runs is None or sum(n == "stop" for n, _ in docs) >= after_runs
            # (frames_written is the last acquisition's until the next one begins: N, whole)
            if done and det.acquiring and 0 < det.writer.frames_written < N:
                action()
                return
            time.sleep(0.01)
        raise AssertionError("the acquisition never streamed")

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def check_partial(run: dict, data: np.ndarray) -> int:
    """The run's 'incomplete' stream references a closed file with the first k served frames."""
    assert "primary" not in run["streams"]
    (event,) = run["streams"]["incomplete"]
    (resource,) = run["resources"]
    assert event["data"]["merlin_data_file"] == urlparse(resource["uri"]).path
    frames, attrs = read_file(resource)
    k = int(attrs["frames_written"])
    assert 0 < k < N and not attrs["complete"] and attrs["frames_expected"] == N
    flat = frames.reshape(N, *SIG)
    np.testing.assert_array_equal(flat[:k], data.reshape(N, *SIG)[:k])
    assert not flat[k:].any()
    return k


def check_not_calibrated(recorder, run: dict) -> None:
    status = recorder.result_status(run["start"]["uid"])
    assert isinstance(status.exception(timeout=10), RunNotCalibrated)


def check_clean_run(RE, docs, det, scan, optics, data) -> None:
    n = len(docs)
    assert RE(overfocus_scan(det, scan, optics)).exit_status == "success"
    (run,) = runs(docs[n:])
    assert list(run["streams"]) == ["primary"]
    (resource,) = run["resources"]
    frames, attrs = read_file(resource)
    assert attrs["complete"] and attrs["frames_written"] == N
    np.testing.assert_array_equal(frames, data)


# -- the cases ----------------------------------------------------------------------------
def test_simulator_killed_mid_scan_then_restarted(RE, docs, served, devices, tmp_path):
    """calibrate: attempt 1 (blank: no features) moves the focus; attempt 2 loses the detector."""
    _, data = served
    scan, optics, detector = devices
    sim = MibSim(served[0], tmp_path / "sim.log", "--dwelltime", str(DWELL_US))
    try:
        det = detector(sim, timeout=5.0)
        f0 = optics.overfocus.get()
        before = (optics.state(), scan.state())
        killed = []
        when_streaming(det, lambda: (sim.proc.kill(), killed.append(time.monotonic())),
                       after_runs=1, docs=docs)
        client = open_catalog(tmp_path / "catalog")
        with CalibrationRecorder(client) as rec:
            token = RE.subscribe(rec)
            with pytest.raises(FailedStatus) as info:
                RE(calibrate(det, scan, optics, callback=rec, focus_step=0.2 * f0,
                             result_runs=False))  # the runs counted are acquisitions
            error = info.value.args[0].exception()
            assert isinstance(error, ConnectionError) and "connection lost" in str(error)
            assert time.monotonic() - killed[0] < det.backend.timeout + 5
            first, second = runs(docs)
            assert first["stop"]["exit_status"] == "success"
            assert rec.result_status(first["start"]["uid"]).result.quality.startswith(
                "no features")
            assert second["start"]["optics"]["overfocus"] == pytest.approx(1.2 * f0)
            assert second["stop"]["exit_status"] == "fail"
            assert second["stop"]["reason"].startswith(
                "merlin: acquisition failed: ConnectionError: Merlin data")
            check_partial(second, data)
            check_not_calibrated(rec, second)
            rec.wait(30)
            assert [r.acquisition_uid for r in calibration_history(client)] == [
                first["start"]["uid"]]
            RE.unsubscribe(token)
        assert (optics.state(), scan.state()) == before  # focus restored
        assert det._staged == Staged.no and not det.backend.is_connected
        # The simulator comes back on the same ports; the same detector carries on.
        sim.proc.wait(10)
        sim.start()
        check_clean_run(RE, docs, det, scan, optics, data)
    finally:
        sim.stop()


def test_frames_stop_arriving_times_out(RE, docs, served, slow_sim, devices, recorder):
    _, data = served
    scan, optics, detector = devices
    det = detector(slow_sim, timeout=3.0)
    when_streaming(det, lambda: slow_sim.proc.send_signal(signal.SIGSTOP))
    try:
        with pytest.raises(FailedStatus) as info:
            RE(overfocus_scan(det, scan, optics))
    finally:
        slow_sim.proc.send_signal(signal.SIGCONT)
    error = info.value.args[0].exception()
    assert isinstance(error, TimeoutError) and "no frames for 3 s" in str(error)
    (run,) = runs(docs)
    assert run["stop"]["exit_status"] == "fail"
    check_partial(run, data)
    check_not_calibrated(recorder, run)
    check_clean_run(RE, docs, det, scan, optics, data)


def test_pause_mid_scan_then_resume(RE, docs, served, slow_sim, devices, recorder):
    _, data = served
    scan, optics, detector = devices
    det = detector(slow_sim)
    when_streaming(det, RE.request_pause)
    with pytest.raises(RunEngineInterrupted):
        RE(overfocus_scan(det, scan, optics))
    assert RE.state == "paused" and not det.acquiring and det.has_uncollected_data()
    partial = Path(det.data_file.get())
    with h5py.File(partial, "r") as f:
        k = f["/entry/data/data"].attrs["frames_written"]
    assert 0 < k < N
    assert RE.resume().exit_status == "success"
    assert not partial.exists()  # the paused scan's frames gave way to the repeated scan
    (run,) = runs(docs)
    assert run["stop"]["exit_status"] == "success" and list(run["streams"]) == ["primary"]
    (resource,) = run["resources"]
    frames, attrs = read_file(resource)
    assert attrs["complete"]
    np.testing.assert_array_equal(frames, data)
    check_clean_run(RE, docs, det, scan, optics, data)


def test_abort_mid_scan(RE, docs, served, slow_sim, devices, recorder):
    _, data = served
    scan, optics, detector = devices
    det = detector(slow_sim)
    when_streaming(det, RE.abort)
    t0 = time.monotonic()
    with pytest.raises(RunEngineInterrupted):
        RE(overfocus_scan(det, scan, optics))
    assert time.monotonic() - t0 < N * DWELL_US * 1e-6  # sooner than the scan would end
    (run,) = runs(docs)
    assert run["stop"]["exit_status"] == "abort"
    check_partial(run, data)
    check_not_calibrated(recorder, run)
    assert det._staged == Staged.no and not det.acquiring
    check_clean_run(RE, docs, det, scan, optics, data)


def test_refused_command_fails_the_run(RE, docs, served, devices, recorder, tmp_path):
    """The detector answers 'busy' once to SET NUMFRAMESTOACQUIRE; TRIGGERSTART always refused."""
    _, data = served
    scan, optics, detector = devices
    sim = MibSim(served[0], tmp_path / "refusing.log", "--cached", "MEM",
                 refuse="SET,NUMFRAMESTOACQUIRE,1,1;SET,TRIGGERSTART,3,-1")
    try:
        det = detector(sim)
        with pytest.raises(FailedStatus) as info:
            RE(overfocus_scan(det, scan, optics))
        error = info.value.args[0].exception()
        assert isinstance(error, DetectorRefusedError) and error.code == 1
        assert str(error) == (f"Merlin at {HOST}:{sim.control_port} refused "
                              f"'SET,NUMFRAMESTOACQUIRE,{N}': detector busy (error code 1)")
        (run,) = runs(docs)
        assert run["stop"]["exit_status"] == "fail"
        assert run["stop"]["reason"] == f"merlin: acquisition failed: DetectorRefusedError: {error}"
        assert run["resources"] == [] and run["streams"] == {}  # no frame, no file
        assert list((tmp_path / "raw").iterdir()) == []
        check_not_calibrated(recorder, run)
        assert det._staged == Staged.no
        check_clean_run(RE, docs, det, scan, optics, data)  # the detector is no longer busy
        # A setting refused at stage: no run starts at all.
        bad = detector(sim, settings={"TRIGGERSTART": 9})
        n = len(docs)
        with pytest.raises(DetectorRefusedError, match="'SET,TRIGGERSTART,9': parameter out "
                                                       "of range"):
            RE(overfocus_scan(bad, scan, optics))
        assert docs[n:] == [] and bad._staged == Staged.no
    finally:
        sim.stop()
