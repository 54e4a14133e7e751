"""The overfocus_scan plan through a real bluesky RunEngine and the simulated instrument."""
from __future__ import annotations


import bluesky.plan_stubs as bps
import h5py
import numpy as np
import pytest
from bluesky.utils import FailedStatus
from ophyd.device import Staged

from stemcal.devices import ManualClock, MicroscopeTruth, PhysicalSpecimen, make_sim_instrument
from stemcal.plans import overfocus_scan
from stemcal.twin import OverfocusParams

NAV = (24, 24)

from documents import path_of  # tests/documents.py
SIG = (64, 64)
TRUTH = MicroscopeTruth(scan_rotation=-12.0, flip_y=True, overfocus_offset=0.1e-6,
                        semiconv=6e-3)
SPECIMEN = PhysicalSpecimen.generate((256, 256), pixel_size=0.25e-9, seed=5)
GUESS = {"scan_rotation": -10.0, "flip_y": True, "overfocus": 1.0e-6}


@pytest.fixture
def inst(tmp_path):
    clock = ManualClock()
    inst = make_sim_instrument(tmp_path / "raw", truth=TRUTH, sig_shape=SIG, specimen=SPECIMEN,
                               seed=11, clock=clock.time, sleep=clock.sleep)
    inst.scan.shape_y.set(NAV[0]).wait(timeout=5)
    inst.scan.shape_x.set(NAV[1]).wait(timeout=5)
    return inst


def only(docs, name):
    found = [d for n, d in docs if n == name]
    assert len(found) == 1, f"expected one {name}, got {len(found)}"
    return found[0]


def test_run_documents(RE, docs, inst):
    mic, scan, optics, det = inst
    result = RE(overfocus_scan(det, scan, optics, guess=GUESS))
    assert result.exit_status == "success"
    start = only(docs, "start")
    assert result.plan_result == start["uid"] == result.run_start_uids[0]
    assert [n for n, _ in docs] == ["start", "descriptor", "stream_resource", "stream_datum",
                                    "event", "stop"]
    assert start["plan_name"] == "overfocus_scan"
    assert start["purpose"] == "calibration_data"
    assert start["detectors"] == ["merlin"]
    assert start["num_points"] == 1
    assert start["plan_args"]["detector"] == repr(det)
    assert start["plan_args"]["scan"] == repr(scan)
    assert start["plan_args"]["optics"] == repr(optics)
    assert start["plan_args"]["guess"] == GUESS
    assert start["guess"] == GUESS
    assert start["optics"] == optics.state()
    assert start["scan"] == scan.state()
    assert start["detector"] == {"pixel_size": 55e-6, "sig_shape": list(SIG), "bit_depth": 16}
    assert "hints" in start
    event = only(docs, "event")
    assert event["data"]["optics_overfocus"] == optics.state()["overfocus"]
    assert event["data"]["scan_rotation"] == 0.0
    assert event["data"]["merlin_data_file"] == det.data_file.get()
    assert "merlin_image" not in event["data"]  # external, via StreamDatum
    descriptor = only(docs, "descriptor")
    assert descriptor["configuration"]["merlin"]["data"]["merlin_pixel_size"] == 55e-6
    stop = only(docs, "stop")
    assert stop["exit_status"] == "success" and stop["num_events"] == {"primary": 1}
    for dev in (det, scan, optics):
        assert dev._staged == Staged.no


def test_stream_documents_point_at_the_frames(RE, docs, inst):
    mic, scan, optics, det = inst
    expected = mic.frames(scan.state(), optics.state(), seed=mic.seed)  # first acquisition
    RE(overfocus_scan(det, scan, optics))
    start, descriptor = only(docs, "start"), only(docs, "descriptor")
    resource, datum = only(docs, "stream_resource"), only(docs, "stream_datum")
    key = descriptor["data_keys"][resource["data_key"]]
    assert key["external"] == "STREAM:"
    assert key["shape"] == [*NAV, *SIG]
    assert key["dims"] == ["scan_y", "scan_x", "detector_y", "detector_x"]
    assert resource["run_start"] == start["uid"]
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["parameters"]["chunk_shape"] == (1,)
    assert datum["stream_resource"] == resource["uid"]
    assert datum["descriptor"] == descriptor["uid"]
    assert datum["indices"] == {"start": 0, "stop": 1}
    assert datum["seq_nums"] == {"start": 1, "stop": 2}
    path = path_of(resource)
    assert str(path) == det.data_file.get()
    with h5py.File(path, "r") as f:
        ds = f[resource["parameters"]["dataset"]]
        assert ds.shape == (1, *NAV, *SIG)  # leading event axis: files join along axis 0
        assert ds.dtype == np.uint16
        np.testing.assert_array_equal(ds[0], expected)
        assert ds[0, NAV[0] // 2, NAV[1] // 2].max() > 0  # the disk is on the detector


def frames_of(docs) -> np.ndarray:
    (resource,) = [d for n, d in docs if n == "stream_resource"]
    with h5py.File(path_of(resource), "r") as f:
        return f[resource["parameters"]["dataset"]][0]


def test_frames_follow_optics_and_scan_settings(RE, inst):
    mic, scan, optics, det = inst
    runs = {}
    for label, plan in [("base", None),
                        ("overfocus", bps.mv(optics.overfocus, 2.5e-6)),
                        ("rotation", bps.mv(scan.rotation, 45.0))]:
        if plan is not None:
            RE(plan)
        collected: list = []
        token = RE.subscribe(lambda n, d: collected.append((n, d)))
        RE(overfocus_scan(det, scan, optics))
        RE.unsubscribe(token)
        runs[label] = (only(collected, "start"), frames_of(collected))
    assert runs["base"][0]["optics"]["overfocus"] == 1e-6
    assert runs["overfocus"][0]["optics"]["overfocus"] == 2.5e-6
    assert runs["rotation"][0]["scan"]["rotation"] == 45.0
    base, over, rot = (runs[k][1].astype(int) for k in ("base", "overfocus", "rotation"))
    assert np.abs(base - over).max() > 20
    assert np.abs(over - rot).max() > 20
    # The run recorded the settings the twin used.
    p = mic.geometry(runs["rotation"][0]["scan"], runs["rotation"][0]["optics"])
    assert p.overfocus == pytest.approx(2.6e-6) and p.scan_rotation == pytest.approx(33.0)


def test_invalid_overfocus_set_raises_in_a_plan(RE, inst):
    mic, scan, optics, det = inst
    with pytest.raises(ValueError, match="overfocus"):
        RE(bps.mv(optics.overfocus, 0.0))
    with pytest.raises(ValueError):
        RE(bps.mv(optics.overfocus, float("nan")))
    assert optics.overfocus.get() == 1e-6


def test_settings_are_read_when_the_plan_runs(RE, docs, inst):
    mic, scan, optics, det = inst
    plan = overfocus_scan(det, scan, optics)
    optics.overfocus.set(3e-6).wait(timeout=5)
    RE(plan)
    assert only(docs, "start")["optics"]["overfocus"] == 3e-6


def test_caller_md_wins(RE, docs, inst):
    mic, scan, optics, det = inst
    RE(overfocus_scan(det, scan, optics, guess=GUESS,
                      md={"purpose": "test", "sample": "Au on C", "guess": {"x": 1}}))
    start = only(docs, "start")
    assert start["purpose"] == "test"
    assert start["sample"] == "Au on C"
    assert start["guess"] == {"x": 1}
    assert start["plan_name"] == "overfocus_scan"


def test_guess_forms(RE, docs, inst):
    mic, scan, optics, det = inst
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, semiconv=6e-3, cy=32.0, cx=32.0,
                             scan_rotation=np.float64(-11.0), flip_y=True)
    RE(overfocus_scan(det, scan, optics, guess=params))
    start = only(docs, "start")
    assert start["guess"] == params.to_dict()
    assert type(start["guess"]["scan_rotation"]) is float
    RE(overfocus_scan(det, scan, optics))
    assert [d for n, d in docs if n == "start"][-1]["guess"] == {}
    with pytest.raises(ValueError, match="guess"):
        RE(overfocus_scan(det, scan, optics, guess=[1.0, 2.0]))


def test_failed_acquisition_closes_the_run_and_unstages(RE, docs, inst):
    mic, scan, optics, det = inst
    optics.overfocus.set(-0.1e-6).wait(timeout=5)  # true overfocus 0: the twin refuses
    with pytest.raises(FailedStatus):
        RE(overfocus_scan(det, scan, optics))
    assert only(docs, "stop")["exit_status"] == "fail"
    assert det._staged == Staged.no
    optics.overfocus.set(1e-6).wait(timeout=5)
    docs.clear()
    assert RE(overfocus_scan(det, scan, optics)).exit_status == "success"


def test_each_run_gets_its_own_file(RE, docs, inst):
    mic, scan, optics, det = inst
    RE(overfocus_scan(det, scan, optics))
    RE(overfocus_scan(det, scan, optics))
    resources = [d for n, d in docs if n == "stream_resource"]
    assert len(resources) == 2
    paths = [path_of(r) for r in resources]
    assert paths[0] != paths[1] and all(p.exists() for p in paths)
    assert resources[0]["run_start"] != resources[1]["run_start"]
