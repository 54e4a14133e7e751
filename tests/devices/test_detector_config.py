"""The ``[detector]`` configuration table, the MIB-keeping writer and the profile's names.

The live case runs a session made from a TOML file against LiberTEM-live's
Merlin simulator on 127.0.0.1 (the helpers of ``test_live_detectors``): its
frames must reach the catalog bit-identical to the served MIB file, and the
kept ``.mib`` copy must read back identical in LiberTEM.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
import pytest

from stemcal.config import DetectorSettings, load_config
from stemcal.devices import (ArinaDetector, DectrisHardwareBackend, MerlinDetector, MerlinHardwareBackend,
                             MIBKeepingWriter, SimBackend, make_sim_instrument)
from stemcal.session import session_from_config
from stemcal.twin import OverfocusParams, simulate
from stemcal.formats import write_mib

from peers import DECTRIS_SIM, MIB_SIM, DectrisSim, MibSim, write_dectris_dump  # tests/peers.py

PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "profile_stemcal"

from documents import of, path_of  # tests/documents.py
NAV, SIG = (12, 10), (48, 48)


def load_mib(hdr: Path) -> np.ndarray:
    """Every frame of a MIB file as LiberTEM reads it, in its native dtype."""
    from libertem.api import Context
    from libertem.udf.base import UDF

    class Frames(UDF):
        def get_result_buffers(self):
            return {"frames": self.buffer(kind="nav", dtype=self.meta.input_dtype,
                                          extra_shape=tuple(self.meta.dataset_shape.sig))}

        def get_preferred_input_dtype(self):
            return self.USE_NATIVE_DTYPE

        def process_frame(self, frame):
            self.results.frames[:] = frame

    ctx = Context.make_with("inline")
    ds = ctx.load("mib", path=str(hdr))
    return np.asarray(ctx.run_udf(dataset=ds, udf=Frames())["frames"].data)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, np.ndarray]:
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, semiconv=15 * 55e-6 / 0.2,
                             cy=24.0, cx=23.0, scan_rotation=35.0)
    data = simulate(params, NAV, SIG, dose=300.0, background=2.0, seed=3, dtype="uint16")
    assert data.max() > 255
    return write_mib(tmp_path_factory.mktemp("mib") / "served.mib", data), data


def write_config(path: Path, catalog: Path, detector: str, simulation: str = "") -> Path:
    path.write_text(f'[catalog]\nlocation = "{catalog}"\n'
                    f'[simulation]\nnav_shape = [{NAV[0]}, {NAV[1]}]\nsig_shape = [32, 32]\n'
                    f'{simulation}[detector]\n{detector}')
    return path


# -- the live Merlin through a configured session -------------------------------------------
@pytest.mark.skipif(MIB_SIM is None, reason="libertem-live-mib-sim not installed")
def test_config_selects_the_live_merlin(tmp_path, served):
    hdr, data = served
    server = MibSim(hdr, tmp_path / "sim.log", "--cached", "MEM")
    try:
        cfg = load_config(write_config(
            tmp_path / "config.toml", tmp_path / "catalog",
            f'kind = "merlin"\nbackend = "hardware"\napi_port = {server.control_port}\n'
            f'data_port = {server.data_port}\nsig_shape = [{SIG[0]}, {SIG[1]}]\n'
            'timeout = 5.0\nkeep_mib = true\n'))
        session = session_from_config(cfg)
        try:
            det = session.instrument.detector
            assert type(det) is MerlinDetector and det.name == "merlin"
            assert isinstance(det.backend, MerlinHardwareBackend)
            assert (det.backend.api_port, det.backend.data_port) == (server.control_port,
                                                                     server.data_port)
            assert isinstance(det.writer, MIBKeepingWriter)
            assert type(det.stream_writer).__name__ == "MIBKeepingFrameWriter"
            docs: list = []
            session.RE.subscribe(lambda name, doc: docs.append((name, doc)))
            # bp.count, not overfocus_scan: the session's calibration recorder would
            # open the file in a worker thread meanwhile, which makes the catalog's
            # (SWMR) open below fail at random ("SWMR read access flag not the same").
            uid = session.RE(bp.count([det])).plan_result
            # the catalog serves the real frames
            image = session.client[uid]["primary"]["merlin_image"].read()
            assert image.shape == (1, *NAV, *SIG)
            np.testing.assert_array_equal(np.asarray(image)[0], data)
            # and the MIB copy is kept, referenced from the descriptor and the HDF5 file
            assert of(docs, "descriptor")[0]["data_keys"]["merlin_image"]["raw_format"] == "MIB"
            path = path_of(of(docs, "stream_resource")[0])
            with h5py.File(path, "r") as f:
                attrs = dict(f["/entry/data/data"].attrs)
            assert attrs["raw_format"] == "MIB" and bool(attrs["complete"])
            kept = Path(attrs["raw_file"])
            assert kept == path.with_suffix(".hdr") and kept.with_suffix(".mib").exists()
            np.testing.assert_array_equal(load_mib(kept), data)
        finally:
            session.close()
        assert not det.backend.is_connected
    finally:
        server.stop()


def test_config_selects_the_live_arina(tmp_path):
    """``kind = "arina"``, ``backend = "hardware"`` against ``libertem-live-dectris-sim``."""
    pytest.importorskip("lz4.block")
    pytest.importorskip("flask")  # the simulator's REST server
    if DECTRIS_SIM is None:
        pytest.skip("libertem-live-dectris-sim not installed")
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=1e-9, camera_length=0.2,
                             detector_pixel_size=100e-6, semiconv=30 * 100e-6 / 0.2,
                             cy=90.0, cx=100.0, scan_rotation=60.0)
    data = simulate(params, NAV, (192, 192), dose=200.0, seed=5, dtype="uint16")
    server = DectrisSim(write_dectris_dump(tmp_path / "a.dump", data),
                              tmp_path / "sim.log")
    try:
        cfg = load_config(write_config(
            tmp_path / "config.toml", tmp_path / "catalog",
            f'kind = "arina"\nbackend = "hardware"\napi_port = {server.api_port}\n'
            f'data_port = {server.data_port}\ntimeout = 5.0\n'))
        session = session_from_config(cfg)
        try:
            det = session.instrument.detector
            assert isinstance(det, ArinaDetector) and det.name == "arina"
            assert isinstance(det.backend, DectrisHardwareBackend)
            assert det.state() == {"pixel_size": 100e-6, "sig_shape": [192, 192],
                                   "bit_depth": 16}
            uid = session.RE(bp.count([det])).plan_result  # see the Merlin test
            image = session.client[uid]["primary"]["arina_image"].read()
            np.testing.assert_array_equal(np.asarray(image)[0], data)
        finally:
            session.close()
        assert not det.backend.is_connected  # the receiver process was stopped
    finally:
        server.stop()


def test_mib_keeping_writer_with_the_simulated_merlin(RE, docs, tmp_path):
    inst = make_sim_instrument(tmp_path / "x", sig_shape=(24, 32), sleep=lambda s: None)
    det = MerlinDetector("merlin", backend=SimBackend(inst.microscope),
                         writer=MIBKeepingWriter(tmp_path / "raw"))
    inst.scan.shape_y.set(3).wait(timeout=5)
    inst.scan.shape_x.set(4).wait(timeout=5)
    assert RE(bp.count([det], num=2)).exit_status == "success"
    resources = of(docs, "stream_resource")
    assert [r["mimetype"] for r in resources] == ["application/x-hdf5"] * 2  # what tiled serves
    for resource in resources:
        path = path_of(resource)
        with h5py.File(path, "r") as f:
            frames = f["/entry/data/data"][0]
            assert f["/entry/data/data"].attrs["raw_file"] == str(path.with_suffix(".hdr"))
        assert frames.shape == (3, 4, 24, 32) and frames.max() > 0
        np.testing.assert_array_equal(load_mib(path.with_suffix(".hdr")), frames)
    assert det.writer.last_raw_file == path_of(resources[-1]).with_suffix(".hdr")


def test_mib_keeping_frame_writer_in_a_live_scan(RE, docs, tmp_path):
    from stemcal.devices.writers.mib_copy import MIBKeepingFrameWriter
    from stemcal.plans import overfocus_scan
    inst = make_sim_instrument(tmp_path / "x", sig_shape=(24, 32), sleep=lambda s: None)
    det = MerlinDetector("merlin", backend=SimBackend(inst.microscope), write_dir=tmp_path / "raw",
                         stream_writer=MIBKeepingFrameWriter(tmp_path / "raw"))
    inst.scan.shape_y.set(3).wait(timeout=5)
    inst.scan.shape_x.set(4).wait(timeout=5)
    assert RE(overfocus_scan(det, inst.scan, inst.optics, live=True)).exit_status == "success"
    (resource,) = of(docs, "stream_resource")
    primary = [d for d in of(docs, "descriptor") if d["name"] == "primary"][0]
    assert primary["data_keys"]["merlin_image"]["raw_format"] == "MIB"
    path = path_of(resource)
    with h5py.File(path, "r") as f:
        ds = f["/entry/data/data"]
        frames = ds[()]
        assert ds.attrs["raw_file"].rstrip(b"\0").decode() == str(path.with_suffix(".hdr"))
        assert ds.attrs["raw_format"] == "MIB"
    assert frames.shape == (12, 24, 32) and frames.max() > 0
    np.testing.assert_array_equal(load_mib(path.with_suffix(".hdr")), frames.reshape(3, 4, 24, 32))
    assert det.stream_writer.last_raw_file == path.with_suffix(".hdr")


# -- the simulated ARINA, bad tables, the profile -------------------------------------------
def test_config_selects_the_simulated_arina(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.toml", tmp_path / "catalog", 'kind = "arina"\n'))
    session = session_from_config(cfg)
    try:
        det = session.instrument.detector
        assert isinstance(det, ArinaDetector) and isinstance(det.backend, SimBackend)
        assert det.name == "arina"
        assert det.state() == {"pixel_size": 100e-6, "sig_shape": [32, 32], "bit_depth": 16}
        uid = session.RE(bp.count([det])).plan_result
        image = session.client[uid]["primary"]["arina_image"].read()
        assert image.shape == (1, *NAV, 32, 32) and np.asarray(image).max() > 0
    finally:
        session.close()


def test_default_detector_is_the_simulated_merlin():
    d = DetectorSettings()
    assert (d.kind, d.backend, d.is_hardware) == ("merlin", "sim", False)
    assert DetectorSettings(kind="arina", backend="hardware").resolved() == {
        "api_host": "127.0.0.1", "data_host": "127.0.0.1", "api_port": 80, "data_port": 9999,
        "sig_shape": (192, 192), "bit_depth": 16, "pixel_size": 100e-6}
    assert DetectorSettings(backend="hardware", data_port=7000).resolved()["data_port"] == 7000
    assert DetectorSettings(backend="live").backend == "hardware"  # the older spelling


@pytest.mark.parametrize("table, match", [
    ('kind = "eiger"', r"\[detector\] kind must be one of \['merlin', 'arina'\]"),
    ('backend = "tcp"', r"\[detector\] backend must be one of"),
    ('api_port = 0', r"\[detector\] api_port must be an integer port"),
    ('data_port = "6342"', r"\[detector\] data_port must be an integer port"),
    ('api_host = ""', r"\[detector\] api_host must be a non-empty host"),
    ('sig_shape = [192]', r"\[detector\] sig_shape must be two integers"),
    ('kind = "arina"\nbit_depth = 12', r"bit_depth must be one of \[8, 16, 32\] for arina"),
    ('timeout = -1.0', r"\[detector\] timeout must be a finite number > 0"),
    ('kind = "arina"\nkeep_mib = true', r"keep_mib is for kind = 'merlin'"),
    ('port = 80', r"unknown \[detector\] setting\(s\): \['port'\]"),
])
def test_bad_detector_table_is_refused(tmp_path, table, match):
    path = tmp_path / "bad.toml"
    path.write_text(f"[detector]\n{table}\n")
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_profile_exposes_the_configured_detector(tmp_path):
    config = write_config(tmp_path / "config.toml", tmp_path / "catalog", 'kind = "arina"\n')
    script = ('import json; print("RESULT " + json.dumps({"arina": detector is arina, '
              '"merlin": "merlin" in globals(), "name": detector.name, '
              '"calibrate_here": callable(calibrate_here)}))')
    env = dict(os.environ, STEMCAL_CONFIG=str(config), MPLBACKEND="Agg",
               IPYTHONDIR=str(tmp_path / "ipython"))
    proc = subprocess.run([sys.executable, "-m", "IPython", "--profile-dir", str(PROFILE),
                           "--no-banner", "--HistoryManager.enabled=False", "-c", script],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(line[0][len("RESULT "):]) == {"arina": True, "merlin": False,
                                                    "name": "arina", "calibrate_here": True}
