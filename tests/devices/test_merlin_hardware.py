"""MerlinHardwareBackend against LiberTEM-live's Merlin simulator (``libertem-live-mib-sim``).

Every server here listens on 127.0.0.1 on free ports chosen at run time. The
simulator replays a MIB file written by :func:`stemcal.formats.mib.write_mib`;
the frames that reach the HDF5 files through a bluesky RunEngine must be
bit-identical to the written data.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky.utils import FailedStatus
from ophyd.device import Staged

from stemcal.devices import MerlinDetector
from stemcal.devices.hardware.merlin import MerlinHardwareBackend
from stemcal.plans import overfocus_scan
from stemcal.twin import OverfocusParams, simulate
from stemcal.formats import write_mib

from documents import of, path_of  # tests/documents.py
from peers import HOST, MIB_SIM, MibSim, free_ports  # tests/peers.py

NAV = (16, 16)
SIG = (64, 64)

pytestmark = pytest.mark.skipif(MIB_SIM is None, reason="libertem-live-mib-sim not installed")


# -- the simulator ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 16x16 scan of 64x64 frames (disk radius 20 px, Poisson noise) as .mib + .hdr."""
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, semiconv=20 * 55e-6 / 0.2,
                             cy=32.0, cx=31.0, scan_rotation=10.0)
    assert abs(params.disk_radius_px - 20) < 0.5
    data = simulate(params, NAV, SIG, dose=300.0, background=2.0, seed=7, dtype="uint16")
    assert data.max() > 255  # both bytes matter
    hdr = write_mib(tmp_path_factory.mktemp("mib") / "scan.mib", data)
    return hdr, data


@pytest.fixture(scope="module")
def sim(served, tmp_path_factory):
    """The simulator with the file cached in memory, waiting for a soft trigger."""
    server = MibSim(served[0], tmp_path_factory.mktemp("simlog") / "sim.log", "--cached", "MEM")
    yield server
    server.stop()


@pytest.fixture
def slow_sim(served, tmp_path):
    """A simulator sending one frame per 10 ms (2.6 s per scan): time to break it mid-scan."""
    server = MibSim(served[0], tmp_path / "slow.log", "--dwelltime", "10000")
    yield server
    server.stop()


# -- devices --------------------------------------------------------------------------------
@pytest.fixture
def make_detector(scan, tmp_path):
    made: list[MerlinHardwareBackend] = []

    def make(server: MibSim, **kw) -> MerlinDetector:
        kw.setdefault("timeout", 3.0)
        backend = MerlinHardwareBackend(scan, api_host=HOST, api_port=server.control_port,
                                    data_host=HOST, data_port=server.data_port, sig_shape=SIG,
                                    **kw)
        made.append(backend)
        return MerlinDetector("merlin", backend=backend, write_dir=tmp_path / "raw")

    yield make
    for backend in made:
        backend.close()


def read_resource(resource: dict) -> np.ndarray:
    with h5py.File(path_of(resource), "r") as f:
        return f[resource["parameters"]["dataset"]][()]


def when_logged(server: MibSim, needle: str, action, delay: float) -> threading.Thread:
    """Run ``action()`` ``delay`` s after ``needle`` first appears in the simulator log."""
    def watch() -> None:
        deadline = time.monotonic() + 30
        while needle not in server.text() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        action()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


# -- tests ----------------------------------------------------------------------------------
def test_overfocus_scan_writes_the_served_frames(RE, docs, sim, served, make_detector, scan,
                                                 optics):
    _, data = served
    det = make_detector(sim)
    result = RE(overfocus_scan(det, scan, optics))
    assert result.exit_status == "success"
    assert [n for n, _ in docs] == ["start", "descriptor", "stream_resource", "stream_datum",
                                    "event", "stop"]
    assert of(docs, "start")[0]["detector"] == {"pixel_size": 55e-6, "sig_shape": list(SIG),
                                                "bit_depth": 12}
    key = of(docs, "descriptor")[0]["data_keys"]["merlin_image"]
    assert key["shape"] == [*NAV, *SIG] and key["dtype_numpy"] == "<u2"
    assert key["source"] == f"merlin://{HOST}:{sim.control_port}"
    written = read_resource(of(docs, "stream_resource")[0])
    assert written.dtype == np.uint16 and written.shape == (1, *NAV, *SIG)
    np.testing.assert_array_equal(written[0], data)
    assert det._staged == Staged.no


def test_live_scan_streams_the_served_frames(RE, docs, slow_sim, served, make_detector, scan,
                                             optics):
    """A live (fly) scan through the real Merlin protocol: contiguous StreamDatum ranges
    and a per-frame file bit-identical to the served frames.

    How early frames are announced is the backend's: it hands them over as LiberTEM-live's
    ``run_udf_iter`` yields them, which against this simulator (one frame per 10 ms) was
    sometimes a part mid-scan and sometimes everything at the end; so no timing is asserted
    here (the simulated instrument's test in test_live.py does)."""
    _, data = served
    det = make_detector(slow_sim, timeout=10.0)
    result = RE(overfocus_scan(det, scan, optics, live=True, flush_period=0.2))
    assert result.exit_status == "success"
    datums = of(docs, "stream_datum")
    bounds = [(d["indices"]["start"], d["indices"]["stop"]) for d in datums]
    assert bounds[0][0] == 0 and bounds[-1][1] == NAV[0] * NAV[1]
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    key = [d for d in of(docs, "descriptor") if d["name"] == "primary"][0]["data_keys"]
    assert key["merlin_image"]["shape"] == list(SIG)
    written = read_resource(of(docs, "stream_resource")[0])
    assert written.shape == (NAV[0] * NAV[1], *SIG)
    np.testing.assert_array_equal(written, data.reshape(-1, *SIG))
    assert det._staged == Staged.no


def test_three_runs_in_a_row(RE, docs, sim, served, make_detector, scan, optics):
    """Each run stages and unstages; the data connection stays open between them."""
    _, data = served
    det = make_detector(sim)
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        assert RE(overfocus_scan(det, scan, optics)).exit_status == "success"
        times.append(time.monotonic() - t0)
    resources = of(docs, "stream_resource")
    assert len(resources) == 3 and len({r["uri"] for r in resources}) == 3
    for resource in resources:
        np.testing.assert_array_equal(read_resource(resource)[0], data)
    assert max(times[1:]) < 3.0, times  # no reconnect or settling after the first run
    # A second backend on the same simulator, after the first one let go:
    det.backend.close()
    det2 = make_detector(sim)
    det2.stage()
    try:
        np.testing.assert_array_equal(det2.backend.acquire(), data)
    finally:
        det2.unstage()


def test_backend_acquires_directly(sim, served, make_detector):
    _, data = served
    backend = make_detector(sim).backend
    with pytest.raises(RuntimeError, match="before prepare"):
        backend.acquire()
    backend.prepare()
    assert backend.frame_shape() == (*NAV, *SIG)
    for _ in range(2):
        frames = backend.acquire()
        assert frames.dtype == np.dtype("<u2")
        np.testing.assert_array_equal(frames, data)
    # handed on tile by tile, in scan order, nothing kept (a tile is valid during the call)
    blocks: list[tuple[int, np.ndarray]] = []
    assert backend.acquire(on_frames=lambda start, f: blocks.append((start, f.copy()))) is None
    assert [s for s, _ in blocks] == list(np.cumsum([0] + [len(b) for _, b in blocks[:-1]]))
    assert len(blocks) > 1
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), data.reshape(-1, *SIG))
    backend.disarm()
    backend.disarm()  # idempotent
    with pytest.raises(RuntimeError, match="before prepare"):
        backend.acquire()


def test_wrong_detector_shape_or_frame_count_fails_loudly(sim, make_detector, scan):
    det = make_detector(sim)
    wrong = MerlinHardwareBackend(scan, api_port=sim.control_port, data_port=sim.data_port,
                              sig_shape=(32, 32))
    with pytest.raises(RuntimeError, match=r"\(64, 64\).*\(32, 32\)"):
        wrong.prepare()
    wrong.close()
    scan.shape_x.set(8).wait(timeout=5)  # the simulator serves 16x16
    det.backend.prepare()
    with pytest.raises(RuntimeError, match="announced 256 frames"):
        det.backend.acquire()


def test_connection_refused_is_reported_quickly(scan, sim):
    control, data = free_ports(2)  # nothing listens there
    backend = MerlinHardwareBackend(scan, api_port=control, data_port=data, sig_shape=SIG)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"control server at {HOST}:{control}"):
        backend.prepare()
    assert time.monotonic() - t0 < 2.0
    # control port up, data port down
    backend = MerlinHardwareBackend(scan, api_port=sim.control_port, data_port=data, sig_shape=SIG)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"data server at {HOST}:{data}"):
        backend.prepare()
    assert time.monotonic() - t0 < 2.0


def test_simulator_killed_mid_scan_fails_the_run(RE, docs, slow_sim, make_detector, scan,
                                                 optics):
    det = make_detector(slow_sim, timeout=5.0)
    killed: list[float] = []

    def kill() -> None:
        slow_sim.proc.kill()
        killed.append(time.monotonic())

    when_logged(slow_sim, "yielding from single scan", kill, 0.5)
    with pytest.raises(FailedStatus) as info:
        RE(overfocus_scan(det, scan, optics))
    elapsed = time.monotonic() - killed[0]
    assert elapsed < det.backend.timeout, elapsed
    error = info.value.args[0].exception()
    assert isinstance(error, ConnectionError) and "connection lost" in str(error)
    assert of(docs, "stop")[0]["exit_status"] == "fail"
    assert of(docs, "stream_resource") == []
    assert det._staged == Staged.no and not det.backend.is_connected


def test_stalled_simulator_times_out_and_recovers(RE, docs, slow_sim, served, make_detector,
                                                  scan, optics):
    """Frames stop arriving (simulator paused): TimeoutError after ``timeout``; then resume.

    LiberTEM-live hands frames over in stacks of about 2 MiB -- this whole
    2.2 MB scan -- so the timeout must exceed the 2.6 s the scan takes.
    """
    _, data = served
    det = make_detector(slow_sim, timeout=4.0)
    paused: list[float] = []

    def pause() -> None:
        slow_sim.proc.send_signal(signal.SIGSTOP)
        paused.append(time.monotonic())

    when_logged(slow_sim, "yielding from single scan", pause, 0.5)
    with pytest.raises(FailedStatus) as info:
        RE(overfocus_scan(det, scan, optics))
    elapsed = time.monotonic() - paused[0]
    error = info.value.args[0].exception()
    assert isinstance(error, TimeoutError) and "no frames for 4 s" in str(error), error
    # the trigger came ~0.5 s before the pause; the error ~timeout after the trigger
    assert 2.5 < elapsed < det.backend.timeout + 3.0, elapsed
    assert of(docs, "stop")[0]["exit_status"] == "fail"
    # The simulator resumes; the next run reconnects and gets the whole scan.
    slow_sim.proc.send_signal(signal.SIGCONT)
    assert RE(overfocus_scan(det, scan, optics)).exit_status == "success"
    np.testing.assert_array_equal(read_resource(of(docs, "stream_resource")[-1])[0], data)


@pytest.mark.parametrize("kw, match", [
    ({"api_port": 0}, "api_port"),
    ({"data_port": 70000}, "data_port"),
    ({"data_host": ""}, "data_host"),
    ({"sig_shape": (64,)}, "sig_shape"),
    ({"counter_depth": 16}, "counter_depth"),
    ({"timeout": 0}, "timeout"),
    ({"settle_time": -1}, "settle_time"),
    ({"frames_per_partition": 0}, "frames_per_partition"),
    ({"settings": [("TRIGGERSTART", 5)]}, "settings"),
])
def test_invalid_configuration(scan, kw, match):
    with pytest.raises(ValueError, match=match):
        MerlinHardwareBackend(scan, **kw)


def test_configuration_without_io(scan):
    backend = MerlinHardwareBackend(scan, api_port=1, data_port=2, counter_depth=6, pixel_size=75e-6,
                                sig_shape=(128, 256))
    assert backend.dtype == np.uint8 and backend.bit_depth == 6
    assert backend.sig_shape == (128, 256) and backend.pixel_size == 75e-6
    assert backend.frame_shape() == (*NAV, 128, 256)
    assert not backend.is_connected
    with pytest.raises(ValueError, match="nav_shape"):
        MerlinHardwareBackend(object())
    det = MerlinDetector("m", backend=backend, write_dir="unused")
    assert det.state() == {"pixel_size": 75e-6, "sig_shape": [128, 256], "bit_depth": 6}


def test_disarm_aborts_a_running_acquisition(slow_sim, make_detector):
    backend = make_detector(slow_sim).backend
    backend.prepare()
    when_logged(slow_sim, "yielding from single scan", backend.disarm, 0.3)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="aborted by disarm"):
        backend.acquire()
    assert time.monotonic() - t0 < 2.5  # the scan itself would take 2.6 s
    assert not backend.is_connected
