"""ArinaDetector + DectrisHardwareBackend against LiberTEM-live's DECTRIS simulator.

``libertem-live-dectris-sim`` replays a dump of DECTRIS stream messages
(SIMPLON REST on one port, the zmq stream on another, both on 127.0.0.1 and
chosen by the simulator: ``--port 0 --zmqport 0``, read back from its log).
The dump here holds a simulated overfocused scan at ARINA's 192 x 192 pixels,
bitshuffle-LZ4 encoded as ARINA streams it (plain LZ4 for the slow
simulator of the failure tests); the frames that reach the HDF5 files through a RunEngine must be
bit-identical to it.
"""
from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky.utils import FailedStatus
from ophyd.device import Staged

from stemcal.devices import (ARINA_PIXEL_SIZE, ARINA_SIG_SHAPE, ArinaDetector, DectrisHardwareBackend,
                             SimBackend, make_sim_instrument)
from stemcal.plans import overfocus_scan
from stemcal.twin import OverfocusParams, simulate

from peers import DECTRIS_SIM as SIM  # tests/peers.py

from documents import of, path_of  # tests/documents.py
from peers import DectrisSim, write_dectris_dump

pytest.importorskip("lz4.block")
pytest.importorskip("flask")  # the simulator's REST server

NAV = (6, 8)           # non-square: a swapped axis would show
SIG = ARINA_SIG_SHAPE  # 192 x 192
HOST = "127.0.0.1"

pytestmark = pytest.mark.skipif(SIM is None, reason="libertem-live-dectris-sim not installed")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """A 6x8 scan of ARINA frames (disk radius 40 px, Poisson noise)."""
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=1e-9, camera_length=0.2,
                             detector_pixel_size=ARINA_PIXEL_SIZE,
                             semiconv=40 * ARINA_PIXEL_SIZE / 0.2, cy=95.0, cx=98.5,
                             scan_rotation=-20.0)
    data = simulate(params, NAV, SIG, dose=400.0, background=3.0, seed=11, dtype="uint16")
    assert data.max() > 255  # both bytes matter
    return data


@pytest.fixture(scope="module")
def served(frames, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The scan as a dump, bitshuffle-LZ4 encoded (ARINA's default)."""
    return write_dectris_dump(tmp_path_factory.mktemp("dump") / "arina.dump", frames), frames


@pytest.fixture(scope="module")
def served_lz4(frames, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The scan as a dump, plain-LZ4 encoded."""
    path = tmp_path_factory.mktemp("dump") / "arina_lz4.dump"
    return write_dectris_dump(path, frames, encoding="lz4"), frames


@pytest.fixture(scope="module")
def sim(served, tmp_path_factory):
    server = DectrisSim(served[0], tmp_path_factory.mktemp("simlog") / "sim.log")
    yield server
    server.stop()


@pytest.fixture
def slow_sim(served_lz4, tmp_path):
    """The LZ4 dump, one frame per 40 ms (about 2 s per scan): time to break it mid-scan."""
    server = DectrisSim(served_lz4[0], tmp_path / "slow.log", "--dwelltime", "40000")
    yield server
    server.stop()


@pytest.fixture
def make_detector(scan, tmp_path):
    made: list[DectrisHardwareBackend] = []

    def make(server: DectrisSim, **kw) -> ArinaDetector:
        kw.setdefault("timeout", 5.0)
        backend = DectrisHardwareBackend(scan, api_host=HOST, api_port=server.api_port,
                                     data_host=HOST, data_port=server.data_port, **kw)
        made.append(backend)
        return ArinaDetector("arina", backend=backend, write_dir=tmp_path / "raw")

    yield make
    for backend in made:
        backend.close()


def when_logged(server: DectrisSim, needle: str, action, delay: float) -> None:
    def watch() -> None:
        deadline = time.monotonic() + 30
        while needle not in server.text() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        action()

    threading.Thread(target=watch, daemon=True).start()


# -- tests ----------------------------------------------------------------------------------
def test_live_scan_through_simplon_and_zmq(RE, docs, sim, served, make_detector, scan, optics):
    """A live (fly) scan of the real DECTRIS protocol: contiguous StreamDatum ranges and a
    per-frame file identical to the served frames."""
    _, data = served
    det = make_detector(sim)
    assert RE(overfocus_scan(det, scan, optics, live=True, flush_period=0.1)).exit_status \
        == "success"
    primary = [d for d in of(docs, "descriptor") if d["name"] == "primary"][0]
    assert primary["data_keys"]["arina_image"]["shape"] == list(SIG)
    bounds = [(d["indices"]["start"], d["indices"]["stop"]) for d in of(docs, "stream_datum")]
    assert bounds[0][0] == 0 and bounds[-1][1] == NAV[0] * NAV[1]
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    (resource,) = of(docs, "stream_resource")
    with h5py.File(path_of(resource), "r") as f:
        written = f[resource["parameters"]["dataset"]][()]
    np.testing.assert_array_equal(written, data.reshape(-1, *SIG))


def test_overfocus_scan_writes_the_served_frames(RE, docs, sim, served, make_detector, scan,
                                                 optics):
    from libertem.api import Context

    _, data = served
    det = make_detector(sim)
    assert RE(overfocus_scan(det, scan, optics)).exit_status == "success"
    assert [n for n, _ in docs] == ["start", "descriptor", "stream_resource", "stream_datum",
                                    "event", "stop"]
    assert of(docs, "start")[0]["detector"] == {"pixel_size": 100e-6, "sig_shape": [192, 192],
                                                "bit_depth": 16}
    key = of(docs, "descriptor")[0]["data_keys"]["arina_image"]
    assert key["shape"] == [*NAV, *SIG] and key["dtype_numpy"] == "<u2"
    assert key["external"] == "STREAM:"
    assert key["source"] == f"dectris://{HOST}:{sim.api_port}"
    resource = of(docs, "stream_resource")[0]
    assert resource["mimetype"] == "application/x-hdf5" and resource["data_key"] == "arina_image"
    assert of(docs, "stream_datum")[0]["stream_resource"] == resource["uid"]
    path = path_of(resource)
    with h5py.File(path, "r") as f:
        written = f[resource["parameters"]["dataset"]][()]
    assert written.dtype == np.uint16 and written.shape == (1, *NAV, *SIG)
    np.testing.assert_array_equal(written[0], data)
    # LiberTEM reads the file with the scan's shape
    ctx = Context.make_with("inline")
    ds = ctx.load("hdf5", path=str(path), ds_path=resource["parameters"]["dataset"], nav_shape=NAV)
    assert tuple(ds.shape) == (*NAV, *SIG)
    frame = ctx.run(ctx.create_pick_analysis(ds, y=NAV[0] - 1, x=2))
    np.testing.assert_array_equal(frame["intensity"].raw_data, data[NAV[0] - 1, 2])
    assert det._staged == Staged.no
    config = det.read_configuration()
    assert config["arina_pixel_size"]["value"] == ARINA_PIXEL_SIZE
    assert config["arina_sig_shape"]["value"] == [192, 192]
    assert config["arina_bit_depth"]["value"] == 16


def test_count_twice_reuses_the_receiver(RE, docs, sim, served, make_detector):
    _, data = served
    det = make_detector(sim)
    assert RE(bp.count([det], num=2)).exit_status == "success"
    resources = of(docs, "stream_resource")
    assert len(resources) == 2 and len({r["uri"] for r in resources}) == 2
    for resource in resources:
        with h5py.File(path_of(resource), "r") as f:
            np.testing.assert_array_equal(f["/entry/data/data"][0], data)
    pid = det.backend._proc.pid
    det.stage()
    try:
        np.testing.assert_array_equal(det.backend.acquire(), data)  # kept whole
        blocks = []  # (a block is valid during the call only: copied)
        kept = det.backend.acquire(on_frames=lambda start, f: blocks.append((start, f.copy())))
    finally:
        det.unstage()
    assert det.backend._proc.pid == pid  # one receiver process for all acquisitions
    assert kept is None  # handed over, not kept
    # streamed blocks: consecutive, in scan order, the same frames
    assert [s for s, _ in blocks] == list(np.cumsum([0] + [len(b) for _, b in blocks[:-1]]))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]),
                                  data.reshape(-1, *SIG))


def test_unreachable_detector_is_reported_quickly(scan, sim):
    import socket

    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind((HOST, 0))
    api, data = (s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    backend = DectrisHardwareBackend(scan, api_port=api, data_port=data)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"SIMPLON API at {HOST}:{api}"):
        backend.prepare()
    assert time.monotonic() - t0 < 2.0
    # REST up, zmq stream down
    backend = DectrisHardwareBackend(scan, api_port=sim.api_port, data_port=data)
    with pytest.raises(ConnectionError, match=f"data stream at {HOST}:{data}"):
        backend.prepare()
    assert not backend.is_connected


def test_wrong_detector_shape_fails_loudly(scan, sim):
    backend = DectrisHardwareBackend(scan, api_port=sim.api_port, data_port=sim.data_port,
                                 sig_shape=(96, 96))
    with pytest.raises(RuntimeError, match=r"\(192, 192\) at bit depth 16.*\(96, 96\)"):
        backend.prepare()
    assert not backend.is_connected


def test_simulator_killed_mid_scan_fails_the_run(RE, docs, slow_sim, frames, make_detector,
                                                 scan, optics):
    det = make_detector(slow_sim, timeout=20.0, frame_stack_size=4, frames_per_partition=8)
    killed: list[float] = []

    def kill() -> None:
        slow_sim.kill_stream()
        killed.append(time.monotonic())

    when_logged(slow_sim, "sending all frames", kill, 1.0)
    with pytest.raises(FailedStatus) as info:
        RE(overfocus_scan(det, scan, optics))
    elapsed = time.monotonic() - killed[0]
    assert elapsed < 5.0, elapsed  # the probe, not the 20 s timeout, noticed it
    error = info.value.args[0].exception()
    assert isinstance(error, ConnectionError) and "connection lost" in str(error), error
    done = int(re.search(r"(\d+)/48 frames received", str(error)).group(1))
    assert 0 < done < 48  # frames came before the kill, not all of them
    assert of(docs, "stop")[0]["exit_status"] == "fail"
    # nothing received is lost: the frames so far are in a closed file marked incomplete
    with h5py.File(det.data_file.get(), "r") as f:
        ds = f["/entry/data/data"]
        assert int(ds.attrs["frames_written"]) == done and not ds.attrs["complete"]
        np.testing.assert_array_equal(ds[0].reshape(48, *SIG)[:done],
                                      frames.reshape(48, *SIG)[:done])
    assert det._staged == Staged.no and not det.backend.is_connected


def test_stalled_simulator_times_out(slow_sim, make_detector):
    backend = make_detector(slow_sim, timeout=3.0).backend
    backend.prepare()
    stopped: list[float] = []

    def pause() -> None:
        slow_sim.proc.send_signal(signal.SIGSTOP)
        stopped.append(time.monotonic())

    when_logged(slow_sim, "sending all frames", pause, 0.3)
    with pytest.raises(TimeoutError, match=r"no frames for 3 s \(\d+/48 frames received\)"):
        backend.acquire()
    elapsed = time.monotonic() - stopped[0]
    # the 3 s count from the last frames (or the request), both before the pause
    assert 0.5 < elapsed < 3.0 + 3.0, elapsed
    assert not backend.is_connected  # the receiver was killed


def test_disarm_aborts_a_running_acquisition(slow_sim, make_detector):
    backend = make_detector(slow_sim, timeout=20.0).backend
    backend.prepare()
    disarmed: list[float] = []

    def disarm() -> None:
        disarmed.append(time.monotonic())
        backend.disarm()

    when_logged(slow_sim, "sending all frames", disarm, 0.3)
    with pytest.raises(RuntimeError, match=r"aborted by disarm\(\) \((\d|[1-3]\d|4[0-7])/48"):
        backend.acquire()
    assert time.monotonic() - disarmed[0] < 1.0  # not the rest of the 48 x 40 ms scan
    assert not backend.is_connected
    with pytest.raises(RuntimeError, match="before prepare"):
        backend.acquire()


@pytest.mark.parametrize("kw, match", [
    ({"api_port": 0}, "api_port"),
    ({"data_host": ""}, "data_host"),
    ({"sig_shape": (192,)}, "sig_shape"),
    ({"bit_depth": 12}, "bit_depth"),
    ({"trigger_mode": "soft"}, "trigger_mode"),
    ({"compression": "zstd"}, "compression"),
    ({"timeout": -1}, "timeout"),
    ({"frames_per_partition": 0}, "frames_per_partition"),
    ({"frame_stack_size": "4"}, "frame_stack_size"),
])
def test_invalid_configuration(scan, kw, match):
    with pytest.raises(ValueError, match=match):
        DectrisHardwareBackend(scan, **kw)


def test_configuration_without_io(scan):
    backend = DectrisHardwareBackend(scan, api_port=1, data_port=2)
    assert backend.sig_shape == (192, 192) and backend.pixel_size == 100e-6
    assert backend.bit_depth == 16 and backend.dtype == np.uint16
    assert backend.frame_shape() == (*NAV, 192, 192)
    det = ArinaDetector(backend=backend, write_dir="unused")
    assert det.name == "arina"
    assert det.state() == {"pixel_size": 100e-6, "sig_shape": [192, 192], "bit_depth": 16}


def test_simulated_arina(RE, docs, tmp_path):
    inst = make_sim_instrument(tmp_path, detector="arina", sleep=lambda s: None)
    det = inst.detector
    assert isinstance(det, ArinaDetector) and isinstance(det.backend, SimBackend)
    assert det.name == "arina"
    assert det.state() == {"pixel_size": 100e-6, "sig_shape": [192, 192], "bit_depth": 16}
    inst.scan.shape_y.set(4).wait(timeout=5)
    inst.scan.shape_x.set(5).wait(timeout=5)
    assert RE(bp.count([det])).exit_status == "success"
    key = of(docs, "descriptor")[0]["data_keys"]["arina_image"]
    assert key["shape"] == [4, 5, 192, 192]
    with h5py.File(path_of(of(docs, "stream_resource")[0]), "r") as f:
        frames = f["/entry/data/data"][0]
    np.testing.assert_array_equal(
        frames, inst.microscope.frames(inst.scan.state(), inst.optics.state(), seed=0))
    with pytest.raises(ValueError, match="detector must be one of"):
        make_sim_instrument(tmp_path, detector="eiger")
