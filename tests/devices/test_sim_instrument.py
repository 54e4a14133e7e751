"""The simulated microscope and its ophyd devices (no RunEngine here; see test_plans.py)."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from ophyd.device import Staged
from ophyd.signal import ReadOnlyError
from ophyd.utils import UnknownStatusFailure
from scipy import ndimage
from skimage.filters import window
from skimage.registration import phase_cross_correlation

from stemcal.devices import (HDF5StreamWriter, ManualClock, MerlinDetector, MicroscopeOptics,
                             MicroscopeTruth, PhysicalSpecimen, ScanGenerator, SimBackend,
                             SimulatedMicroscope, make_sim_instrument)

NAV = (24, 24)
SIG = (64, 64)
# Disk radius semiconv * L / p_det = 21.8 detector px on the 64x64 detector.
TRUTH = MicroscopeTruth(scan_rotation=20.0, flip_y=False, overfocus_offset=0.1e-6,
                        semiconv=6e-3, detector_pixel_size=55e-6)
SPECIMEN = PhysicalSpecimen.generate((256, 256), pixel_size=0.25e-9, seed=3)


@pytest.fixture
def clock():
    return ManualClock(100.0)


@pytest.fixture
def inst(tmp_path, clock):
    """Noise-free twin (dose None) with a 24x24 scan and a 64x64 detector."""
    inst = make_sim_instrument(tmp_path / "raw", truth=TRUTH, sig_shape=SIG, specimen=SPECIMEN,
                               seed=7, clock=clock.time, sleep=clock.sleep)
    inst.scan.shape_y.set(NAV[0]).wait()
    inst.scan.shape_x.set(NAV[1]).wait()
    yield inst
    inst.detector.unstage()


def acquire(inst) -> np.ndarray:
    """Frames of the current settings straight from the twin (noise seed of acquisition 0)."""
    return inst.microscope.frames(inst.scan.state(), inst.optics.state())


# -- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, 0.0, float("nan"), float("inf"), -float("inf"), "1e-6",
                                 None, True])
def test_overfocus_rejects_invalid(bad):
    optics = MicroscopeOptics(name="optics")
    with pytest.raises(ValueError, match="optics_overfocus"):
        optics.overfocus.set(bad)
    with pytest.raises(ValueError):
        optics.overfocus.put(bad)
    assert optics.overfocus.get() == 1e-6  # unchanged


def test_overfocus_accepts_under_and_overfocus():
    optics = MicroscopeOptics(name="optics")
    optics.overfocus.set(-2e-6).wait(timeout=5)
    assert optics.state()["overfocus"] == -2e-6
    optics.overfocus.set(np.float32(3e-6)).wait(timeout=5)
    assert optics.state()["overfocus"] == pytest.approx(3e-6)


@pytest.mark.parametrize("attr, bad", [("camera_length", 0.0), ("camera_length", -0.1),
                                       ("high_tension", float("nan")), ("magnification", 0)])
def test_other_optics_settings_validate(attr, bad):
    optics = MicroscopeOptics(name="optics")
    with pytest.raises(ValueError):
        getattr(optics, attr).set(bad)


@pytest.mark.parametrize("attr, bad", [("shape_y", 0), ("shape_x", 2.5), ("shape_y", True),
                                       ("pixel_size", -1e-9), ("dwell_time", 0.0),
                                       ("rotation", float("nan"))])
def test_scan_settings_validate(attr, bad):
    scan = ScanGenerator(name="scan")
    with pytest.raises(ValueError):
        getattr(scan, attr).set(bad)


def test_state_dicts_are_plain():
    scan, optics = ScanGenerator(name="scan"), MicroscopeOptics(name="optics")
    scan.shape_y.set(np.int64(12)).wait(timeout=5)
    scan.rotation.set(-7.5).wait(timeout=5)
    assert scan.state() == {"shape_y": 12, "shape_x": 32, "pixel_size": 0.5e-9,
                            "dwell_time": 1e-3, "rotation": -7.5}
    assert type(scan.state()["shape_y"]) is int
    assert scan.nav_shape == (12, 32)
    assert optics.state() == {"overfocus": 1e-6, "camera_length": 0.2, "high_tension": 200e3,
                              "magnification": 1e6}
    desc = {**scan.describe(), **optics.describe()}
    assert desc["scan_pixel_size"]["units"] == "m"
    assert desc["scan_rotation"]["units"] == "deg"
    assert desc["optics_overfocus"]["units"] == "m"
    assert desc["optics_high_tension"]["units"] == "V"


# -- the twin -------------------------------------------------------------------------------

def test_truth_validates():
    with pytest.raises(ValueError):
        MicroscopeTruth(semiconv=-1e-3)
    with pytest.raises(ValueError):
        MicroscopeTruth(overfocus_offset=float("nan"))
    with pytest.raises(ValueError):
        MicroscopeTruth(descan=((1.0, 0.0),))
    with pytest.raises(ValueError):
        SimulatedMicroscope(TRUTH, sig_shape=(64,), specimen=SPECIMEN)


def test_geometry_follows_settings(inst):
    mic, scan, optics = inst.microscope, inst.scan, inst.optics
    optics.overfocus.set(2e-6).wait(timeout=5)
    optics.camera_length.set(0.25).wait(timeout=5)
    scan.rotation.set(175.0).wait(timeout=5)
    scan.pixel_size.set(0.4e-9).wait(timeout=5)
    p = mic.geometry(scan.state(), optics.state())
    assert p.overfocus == pytest.approx(2.1e-6)  # setting + true offset
    assert p.camera_length == pytest.approx(0.25)
    assert p.scan_rotation == pytest.approx(-165.0)  # 20 + 175, wrapped to [-180, 180)
    assert p.scan_pixel_size == 0.4e-9
    assert (p.cy, p.cx) == (32.0, 32.0)
    assert p.semiconv == TRUTH.semiconv and p.flip_y is False


def _centre_crop(frame: np.ndarray, half: int = 14) -> np.ndarray:
    c = SIG[0] // 2
    return frame[c - half:c + half, c - half:c + half].astype(float)


def test_overfocus_setting_changes_shadow_magnification(inst):
    """Doubling the overfocus doubles the shadow magnification: the central frame at 2x
    overfocus is the 1x frame zoomed out by the ratio of the model's k."""
    mic, scan, optics = inst.microscope, inst.scan, inst.optics
    optics.overfocus.set(0.9e-6).wait(timeout=5)  # true 1.0 um
    k1 = mic.geometry(scan.state(), optics.state()).magnification_ratio
    f1 = acquire(inst)
    optics.overfocus.set(1.9e-6).wait(timeout=5)  # true 2.0 um
    k2 = mic.geometry(scan.state(), optics.state()).magnification_ratio
    f2 = acquire(inst)
    assert k2 / k1 == pytest.approx(2.0, rel=1e-5)
    assert not np.array_equal(f1, f2)
    centre = np.array([32.0, 32.0])
    yy, xx = np.mgrid[0:SIG[0], 0:SIG[1]]
    p = np.stack([yy, xx], axis=-1).astype(float)
    inner = np.hypot(*(p - centre).transpose(2, 0, 1)) < 8  # well inside both disks
    mid = (NAV[0] // 2, NAV[1] // 2)
    a, b = f1[mid].astype(float), f2[mid].astype(float)
    zoomed = ndimage.map_coordinates(a, (centre + (k2 / k1) * (p - centre)).transpose(2, 0, 1),
                                     order=1)
    r_zoom = np.corrcoef(zoomed[inner], b[inner])[0, 1]
    r_plain = np.corrcoef(a[inner], b[inner])[0, 1]
    assert r_zoom > 0.97
    assert r_plain < r_zoom - 0.2


def test_camera_length_setting_changes_disk_size(inst):
    mic, scan, optics = inst.microscope, inst.scan, inst.optics
    for cl in (0.2, 0.25):
        optics.camera_length.set(cl).wait(timeout=5)
        expected = mic.geometry(scan.state(), optics.state()).disk_radius_px
        frame = acquire(inst)[NAV[0] // 2, NAV[1] // 2]
        # The simulated disk edge is anti-aliased over r in (radius - 0.5, radius + 0.5).
        measured = math.sqrt(np.count_nonzero(frame) / math.pi) - 0.5
        assert measured == pytest.approx(expected, abs=0.3)


def _shift_direction_deg(frames: np.ndarray, d: int = 1) -> float:
    """Direction (deg, atan2(y, x)) in which the shadow moves on the detector for a scan step
    of 2d along x at the scan middle."""
    y, x = NAV[0] // 2, NAV[1] // 2
    w = window("hann", (28, 28))
    f1, f2 = _centre_crop(frames[y, x - d]), _centre_crop(frames[y, x + d])
    shift, _, _ = phase_cross_correlation((f1 - f1.mean()) * w, (f2 - f2.mean()) * w,
                                          upsample_factor=20, normalization=None)
    return math.degrees(math.atan2(shift[0], shift[1]))


def test_scan_rotation_setting_adds_to_true_rotation(inst):
    mic, scan, optics = inst.microscope, inst.scan, inst.optics
    f0 = acquire(inst)
    a0 = _shift_direction_deg(f0)
    scan.rotation.set(90.0).wait(timeout=5)
    assert mic.geometry(scan.state(), optics.state()).scan_rotation == pytest.approx(110.0)
    f90 = acquire(inst)
    mid = (NAV[0] // 2, NAV[1] // 2)
    # Detector and specimen stay put: the middle frame sees the same patch, the rest move.
    assert np.abs(f0[mid].astype(int) - f90[mid].astype(int)).max() <= 1
    assert np.abs(f0.astype(int) - f90.astype(int)).max() > 20
    # The shadow moves along a direction turned by the added rotation.
    turn = (_shift_direction_deg(f90) - a0 + 180.0) % 360.0 - 180.0
    assert turn == pytest.approx(-90.0, abs=6.0)
    scan.rotation.set(30.0).wait(timeout=5)
    turn = (_shift_direction_deg(acquire(inst)) - a0 + 180.0) % 360.0 - 180.0
    assert turn == pytest.approx(-30.0, abs=6.0)


def test_dose_gives_reproducible_shot_noise():
    def twin(seed):
        return SimulatedMicroscope(TRUTH, sig_shape=SIG, specimen=SPECIMEN, dose=50.0, seed=seed,
                                   sleep=lambda s: None)
    scan, optics = ScanGenerator(name="scan"), MicroscopeOptics(name="optics")
    scan.shape_y.set(8).wait(timeout=5)
    scan.shape_x.set(8).wait(timeout=5)
    m1, m2 = twin(1).attach(scan=scan, optics=optics), twin(1).attach(scan=scan, optics=optics)
    a, b = m1.acquire(), m1.acquire()
    assert a.dtype == np.uint16 and a.shape == (8, 8) + SIG
    assert not np.array_equal(a, b)  # new noise each acquisition
    np.testing.assert_array_equal(m2.acquire(), a)  # same seed, same session
    assert m1.n_acquired == 2


def test_microscope_needs_attached_devices():
    mic = SimulatedMicroscope(TRUTH, sig_shape=SIG, specimen=SPECIMEN)
    with pytest.raises(RuntimeError, match="attach"):
        mic.acquire()
    with pytest.raises(ValueError):
        mic.attach(scan=object(), optics=MicroscopeOptics(name="optics"))
    backend = SimBackend(mic)
    with pytest.raises(RuntimeError):
        backend.prepare()


# -- the detector ---------------------------------------------------------------------------

def test_read_configuration(inst):
    det = inst.detector
    conf = det.read_configuration()
    assert conf["merlin_pixel_size"]["value"] == 55e-6
    assert conf["merlin_sig_shape"]["value"] == list(SIG)
    assert conf["merlin_bit_depth"]["value"] == 16
    dconf = det.describe_configuration()
    assert set(dconf) == set(conf)
    assert dconf["merlin_pixel_size"]["units"] == "m"
    assert dconf["merlin_sig_shape"]["shape"] == [2]
    assert det.state() == {"pixel_size": 55e-6, "sig_shape": list(SIG), "bit_depth": 16}
    with pytest.raises(ReadOnlyError):  # the hardware decides these
        det.pixel_size.put(1e-6)


def test_describe_has_external_stream_key(inst):
    desc = inst.detector.describe()
    key = desc["merlin_image"]
    assert key["external"] == "STREAM:"
    assert key["shape"] == [*NAV, *SIG]
    assert key["dims"] == ["scan_y", "scan_x", "detector_y", "detector_x"]
    assert key["dtype"] == "array" and key["dtype_numpy"] == "<u2"
    assert desc["merlin_data_file"]["dtype"] == "string"
    assert set(inst.detector.read()) == {"merlin_data_file"}  # the image is external


def test_stage_unstage_idempotent_and_trigger_needs_stage(inst):
    det = inst.detector
    with pytest.raises(RuntimeError, match=r"trigger\(\) before stage"):
        det.trigger()
    with pytest.raises(RuntimeError, match=r"kickoff\(\) before stage"):
        det.kickoff()
    det.stage()
    assert det.stage() == [det]  # a second stage neither raises nor re-stages
    assert det._staged == Staged.yes
    det.unstage()
    det.unstage()
    assert det._staged == Staged.no
    with pytest.raises(RuntimeError, match="stage"):
        det.trigger()
    det.stage()
    det.trigger().wait(timeout=30)
    det.unstage()
    assert list(det.collect_asset_docs()) == []  # unstage drops what was not collected


def test_trigger_writes_hdf5_and_stream_docs(inst, clock):
    det, mic = inst.detector, inst.microscope
    expected = mic.frames(inst.scan.state(), inst.optics.state(), seed=mic.seed)
    det.stage()
    t0 = clock.time()
    det.trigger().wait(timeout=30)
    assert clock.time() - t0 == pytest.approx(NAV[0] * NAV[1] * 1e-3)  # dwell x positions
    path = det.data_file.get()
    docs = list(det.collect_asset_docs())
    assert [name for name, _ in docs] == ["stream_resource", "stream_datum"]
    resource, datum = docs[0][1], docs[1][1]
    assert resource["uri"] == "file://localhost" + path
    assert resource["data_key"] == "merlin_image"
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": (1,), "swmr": False}
    assert datum["stream_resource"] == resource["uid"]
    assert datum["indices"] == {"start": 0, "stop": 1}
    assert list(det.collect_asset_docs()) == []  # each document once
    with h5py.File(path, "r") as f:
        ds = f[resource["parameters"]["dataset"]]
        assert ds.shape == (1, *NAV, *SIG) and ds.dtype == np.uint16
        np.testing.assert_array_equal(ds[0], expected)
    # A second trigger: a new file, a new resource.
    det.trigger().wait(timeout=30)
    assert det.data_file.get() != path
    (_, r2), _ = list(det.collect_asset_docs())
    assert r2["uid"] != resource["uid"]


def test_failed_acquisition_fails_the_status(tmp_path):
    truth = MicroscopeTruth(semiconv=6e-3, overfocus_offset=-1e-6)
    mic, scan, optics, det = make_sim_instrument(tmp_path, truth=truth, sig_shape=SIG,
                                                 specimen=SPECIMEN, sleep=lambda s: None)
    det.stage()
    status = det.trigger()  # true overfocus = 1e-6 - 1e-6 = 0
    with pytest.raises((ValueError, UnknownStatusFailure)):
        status.wait(timeout=30)
    assert isinstance(status.exception(), ValueError)
    optics.overfocus.set(2e-6).wait(timeout=5)
    det.trigger().wait(timeout=30)  # the detector is usable again
    det.unstage()


def test_writer_boundaries(tmp_path):
    w = HDF5StreamWriter(tmp_path)
    with pytest.raises(RuntimeError):
        w.write(np.zeros((2, 2, 4, 4), np.uint16))
    w.open("det", "det_image")
    with pytest.raises(ValueError):
        w.write(np.zeros((4, 4, 4), np.uint16))
    with pytest.raises(ValueError):
        HDF5StreamWriter(tmp_path, compression="gzip")
    with pytest.raises(ValueError):
        MerlinDetector("det", backend=SimBackend(SimulatedMicroscope(TRUTH, specimen=SPECIMEN)))
