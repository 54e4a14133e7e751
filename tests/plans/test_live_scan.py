"""Live scans: frames announced while they arrive, projected by the recorder's live view.

Pieces: :class:`FrameStreamWriter` (SWMR per-frame HDF5 + StreamDatum ranges),
``MerlinDetector.kickoff/complete/collect``, ``overfocus_scan(live=True)``,
:class:`LiveProjection` (checked against a full OverfocusUDF pass), the
:class:`LiveView` callback with its figure, and the recorder calibrating a
live run end to end into a tiled catalog. The simulated microscope runs on
the real clock here (a dwell time per frame), so that the scan takes long
enough for several StreamDatum flushes.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from libertem.api import Context

from stemcal.callbacks import CalibrationRecorder, RunNotCalibrated
from stemcal.callbacks.frame_map import FrameMap
from stemcal.callbacks.live_view import LiveView
from stemcal.runs import projection_params
from stemcal.callbacks.live_figure import LiveFigure, has_display
from stemcal.processing.live_projection import LiveProjection
from stemcal.catalog import open_catalog
from stemcal.devices import make_sim_instrument
from stemcal.devices.writers.frame_stream import FrameStreamWriter
from stemcal.plans import calibrate, overfocus_scan
from stemcal.processing import OverfocusUDF
from stemcal.twin import OverfocusParams, simulate

# The calibration tests' instrument (40x40 scan, 96x96 detector, 5 counts/px).
from twin_setup import NAV, SCAN_PIXEL, SIG, SPECIMEN, TRUTH  # noqa: E402  (tests/plans/)
from documents import path_of  # noqa: E402  (tests/documents.py)

DWELL = 1e-3  # s per frame on the real clock: 1.6 s per 40x40 scan


def instrument(directory: Path, nav: int = NAV, dwell: float = DWELL):
    inst = make_sim_instrument(directory, truth=TRUTH, sig_shape=(SIG, SIG), specimen=SPECIMEN,
                               dose=5.0, seed=2)
    for sig, value in ((inst.scan.shape_y, nav), (inst.scan.shape_x, nav),
                       (inst.scan.pixel_size, SCAN_PIXEL), (inst.scan.dwell_time, dwell)):
        sig.set(value).wait(timeout=5)
    return inst


def only(docs, name):
    found = [d for n, d, *_ in docs if n == name]
    assert len(found) == 1, f"expected one {name}, got {len(found)}"
    return found[0]


def full_pass(path: Path, dataset: str, params: OverfocusParams, nav: tuple[int, int]):
    ctx = Context.make_with("inline")
    try:
        ds = ctx.load("hdf5", path=str(path), ds_path=dataset, nav_shape=nav, sig_shape=(SIG, SIG))
        return {k: np.asarray(v.data) for k, v in ctx.run_udf(ds, OverfocusUDF(params)).items()}
    finally:
        ctx.close()


def assert_images_equal(live: dict, ref: dict) -> None:
    for name in ("point", "selected", "shifted_sum", "coverage", "sum", "shifted_sum_normalised"):
        a, b = np.asarray(live[name]), np.asarray(ref[name])
        assert a.shape == b.shape, name
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-9 * np.abs(b[ok]).max(),
                                   err_msg=name)


# -- LiveProjection -----------------------------------------------------------------------
@pytest.mark.parametrize("flip_y, overfocus, rotation", [(True, 1e-6, 23.0), (False, -0.8e-6, -140.0)])
def test_projection_in_blocks_equals_a_full_pass(flip_y, overfocus, rotation):
    params = OverfocusParams(overfocus=overfocus, scan_pixel_size=0.25e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, semiconv=0.3 * 64 * 55e-6 / 0.2,
                             cy=34.0, cx=30.5, scan_rotation=rotation, flip_y=flip_y,
                             descan=((0.03, -0.01), (0.02, 0.04)))
    nav, sig = (17, 19), (64, 64)
    data = simulate(params, nav, sig, dose=5, seed=1, dtype="uint16")
    ctx = Context.make_with("inline")
    ref = {k: np.asarray(v.data) for k, v in
           ctx.run_udf(ctx.load("memory", data=data, num_partitions=3), OverfocusUDF(params)).items()}
    live = LiveProjection(params, nav, sig, threads=2)
    flat = data.reshape(-1, *sig)
    rng = np.random.default_rng(3)
    i, seen = 0, []
    while i < len(flat):
        k = int(rng.integers(1, 40))
        live.add(i, flat[i:i + k])
        i = min(len(flat), i + k)
        seen.append(live.frames_done)
    assert seen[-1] == live.n_frames == nav[0] * nav[1]
    assert_images_equal(live.images(), ref)


def test_projection_partial_and_bad_blocks():
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.25e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, semiconv=0.3 * 32 * 55e-6 / 0.2,
                             cy=16.0, cx=16.0)
    data = simulate(params, (8, 8), (32, 32), dose=5, seed=2, dtype="uint16").reshape(-1, 32, 32)
    live = LiveProjection(params, (8, 8), (32, 32), threads=1)
    live.add(0, data[:20])
    img = live.images()
    assert np.isfinite(img["point"].flat[:20]).all() and np.isnan(img["point"].flat[20:]).all()
    assert not img["selected"].any()  # the middle frame (36) has not come yet
    with pytest.raises(ValueError, match="already added"):
        live.add(10, data[10:30])
    with pytest.raises(ValueError, match="outside the scan"):
        live.add(60, data[:10])
    with pytest.raises(ValueError, match=r"frames must be \(k, 32, 32\)"):
        live.add(20, data[20:30, :16])
    assert live.frames_done == 20


# -- FrameStreamWriter ------------------------------------------------------------------------
def test_frame_stream_writer_announces_what_a_reader_can_read(tmp_path):
    w = FrameStreamWriter(tmp_path)
    w.open("merlin", "merlin_image")
    frames = np.arange(6 * 5 * 4 * 3, dtype=np.uint16).reshape(30, 4, 3)
    path = w.begin((6, 5, 4, 3), np.uint16)
    docs = list(w.collect_stream_docs())
    assert [n for n, _ in docs] == ["stream_resource"]  # before any frame
    resource = docs[0][1]
    assert resource["parameters"] == {"dataset": "/entry/data/data", "chunk_shape": (1,),
                                      "swmr": True}
    assert path_of(resource) == path
    w.write_frames(0, frames[:5])
    w.write_frames(5, frames[5:12])
    (name, datum), = w.collect_stream_docs()
    assert name == "stream_datum" and datum["indices"] == {"start": 0, "stop": 12}
    with h5py.File(path, "r", swmr=True) as f:  # while the writer holds it open
        np.testing.assert_array_equal(f["/entry/data/data"][0:12], frames[:12])
    w.write_frames(12, frames[12:20])
    (_, datum), = w.collect_stream_docs(index=15)  # capped
    assert datum["indices"] == {"start": 12, "stop": 15}
    (_, datum), = w.collect_stream_docs()
    assert datum["indices"] == {"start": 15, "stop": 20}
    assert list(w.collect_stream_docs()) == []  # nothing new
    with pytest.raises(ValueError, match="scan order"):
        w.write_frames(25, frames[25:30])
    w.write_frames(20, frames[20:30])
    assert w.end(complete=True) == path
    (_, datum), = w.collect_stream_docs()
    assert datum["indices"] == {"start": 20, "stop": 30}
    with h5py.File(path, "r") as f:
        ds = f["/entry/data/data"]
        np.testing.assert_array_equal(ds[()], frames)
        assert bool(ds.attrs["complete"]) and int(ds.attrs["frames_written"]) == 30
        assert list(ds.attrs["nav_shape"]) == [6, 5]


def test_frame_stream_writer_without_frames_leaves_nothing(tmp_path):
    w = FrameStreamWriter(tmp_path)
    w.open("merlin", "merlin_image")
    path = w.begin((2, 2, 4, 4), np.uint16)
    assert w.end(complete=False) is None
    assert not path.exists() and list(w.collect_stream_docs()) == []
    # once its resource was collected, an empty scan keeps its file
    path = w.begin((2, 2, 4, 4), np.uint16)
    (name, _), = w.collect_stream_docs()
    assert name == "stream_resource"
    assert w.end(complete=False) == path and path.exists()
    with h5py.File(path, "r") as f:
        assert int(f["/entry/data/data"].attrs["frames_written"]) == 0
        assert not bool(f["/entry/data/data"].attrs["complete"])


def test_frame_stream_writer_converts_and_leaves_unwritten_frames_zero(tmp_path):
    """Frames land at their byte offset in a contiguous dataset, in the dataset's dtype; a
    scan that stops early keeps zeros (never-written space) after its last frame."""
    w = FrameStreamWriter(tmp_path)
    w.open("merlin", "merlin_image")
    path = w.begin((3, 4, 5, 6), np.dtype("<u2"))
    frames = np.arange(12 * 5 * 6, dtype=np.int64).reshape(12, 5, 6) * 7  # not uint16 memory
    w.write_frames(0, frames[:1])
    w.write_frames(1, np.asfortranarray(frames[1:5]))  # not C-contiguous either
    with pytest.raises(ValueError, match=r"do not fit a scan 3x4 of 5x6"):
        w.write_frames(5, frames[5:7, :4])
    assert w.end(complete=True) == path  # (complete asked for, but 5 of 12 frames came)
    with h5py.File(path, "r") as f:
        ds = f["/entry/data/data"]
        assert ds.dtype == np.dtype("<u2") and ds.chunks is None  # contiguous
        np.testing.assert_array_equal(ds[:5], frames[:5])
        assert not ds[5:].any()
        assert int(ds.attrs["frames_written"]) == 5 and not bool(ds.attrs["complete"])


def test_frame_map_reads_the_writers_frames_and_refuses_what_it_cannot_map(tmp_path):
    """The live view's map of a FrameStreamWriter file gives the frames written (zeros where
    none came yet); a range outside the dataset or a file cut short after opening raises
    instead of reading unmapped pages (SIGBUS); chunked, compressed or short files are
    not mapped (the live view reads them through HDF5)."""
    w = FrameStreamWriter(tmp_path)
    w.open("merlin", "merlin_image")
    path = w.begin((3, 4, 16, 32), np.uint16)
    frames = (np.arange(12 * 16 * 32) % 60000).astype(np.uint16).reshape(12, 16, 32)
    w.write_frames(0, frames[:7])
    with h5py.File(path, "r", swmr=True) as f:
        fm = FrameMap.open(path, f["/entry/data/data"])
        assert fm is not None and fm.shape == (12, 16, 32) and fm.dtype == np.uint16
        np.testing.assert_array_equal(fm.frames(2, 7), frames[2:7])
        assert not fm.frames(7, 12).any()  # not written yet: the sparse file's zeros
        w.write_frames(7, frames[7:])
        np.testing.assert_array_equal(fm.frames(0, 12), frames)  # written after the map
        assert fm.frames(5, 5).shape == (0, 16, 32)
        block = fm.frames(3, 4)
        assert not block.flags.writeable
        for i, j in ((-1, 2), (11, 13), (4, 3)):
            with pytest.raises(ValueError, match="outside the dataset's 12"):
                fm.frames(i, j)
        w.end(complete=True)
        with open(path, "r+b") as raw:  # someone cuts the file while it is mapped
            raw.truncate(f["/entry/data/data"].id.get_offset() + 10 * 16 * 32 * 2 - 1)
        np.testing.assert_array_equal(block[0], frames[3])  # a block mapped before stays
        np.testing.assert_array_equal(fm.frames(0, 9), frames[:9])
        with pytest.raises(ValueError, match="shorter than its frames 9..10: it was cut"):
            fm.frames(9, 10)  # one byte short
        with pytest.raises(ValueError, match="shorter than its frames 0..12: it was cut"):
            fm.frames(0, 12)
        assert FrameMap.open(path, f["/entry/data/data"]) is None  # short from the start
        fm.close()
        fm.close()
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("chunked", data=frames, chunks=(1, 16, 32))
        f.create_dataset("compressed", data=frames, compression="gzip")
        f.create_dataset("contiguous", data=frames)
        f.create_dataset("empty", shape=(0, 16, 32), dtype=np.uint16)
        f.create_dataset("not_frames", data=frames[0])
    with h5py.File(other, "r") as f:
        for name in ("chunked", "compressed", "empty", "not_frames"):
            assert FrameMap.open(other, f[name]) is None, name
        fm = FrameMap.open(other, f["contiguous"])
        np.testing.assert_array_equal(fm.frames(0, 12), frames)
        fm.close()


def test_live_view_reads_mapped_and_through_hdf5_alike(tmp_path):
    """The live view's two ways of reading announced frames give the same images."""
    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.25e-9, camera_length=0.2,
                             detector_pixel_size=55e-6, semiconv=0.3 * 32 * 55e-6 / 0.2,
                             cy=16.5, cx=15.0, scan_rotation=31.0, flip_y=True)
    frames = simulate(params, (6, 7), (32, 32), dose=5, seed=4, dtype="uint16").reshape(-1, 32, 32)
    w = FrameStreamWriter(tmp_path)
    w.open("merlin", "merlin_image")
    path = w.begin((6, 7, 32, 32), np.uint16)
    w.write_frames(0, frames)
    w.end(complete=True)
    images = []
    with h5py.File(path, "r") as f:
        ds = f["/entry/data/data"]
        for mapped in (FrameMap.open(path, ds), None):
            view = LiveView(figure=False)
            view.projection = LiveProjection(params, (6, 7), (32, 32), threads=2)
            view._add_frames(ds, 0, 30, mapped)  # blocks of READ_BLOCK or less
            view._add_frames(ds, 30, 42, mapped)
            assert view.projection.frames_done == 42
            images.append(view.projection.images())
            if mapped is not None:
                mapped.close()
    assert_images_equal(images[0], images[1])


# -- the live plan --------------------------------------------------------------------------
def test_live_scan_announces_its_last_frames_without_waiting_a_flush_period(tmp_path):
    """The plan waits on the acquisition with flush_period as a timeout: a scan of 0.3 s
    with a flush period of 60 s ends when the scan does, every frame announced."""
    inst = instrument(tmp_path / "raw", nav=12, dwell=2e-3)
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    t0 = time.monotonic()
    assert RE(overfocus_scan(inst.detector, inst.scan, inst.optics, live=True,
                             flush_period=60.0)).exit_status == "success"
    assert time.monotonic() - t0 < 30.0
    (datum,) = [d for n, d in docs if n == "stream_datum"]
    assert datum["indices"] == {"start": 0, "stop": 12 * 12}


def test_live_scan_announces_frames_during_the_scan(tmp_path):
    inst = instrument(tmp_path / "raw", nav=24, dwell=2e-3)  # 1.15 s of scanning
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict, float]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc, time.monotonic())))
    result = RE(overfocus_scan(inst.detector, inst.scan, inst.optics, guess={"overfocus": 1e-6},
                               live=True, flush_period=0.1))
    assert result.exit_status == "success"
    names = [n for n, *_ in docs]
    n_datums = names.count("stream_datum")
    assert names == (["start", "descriptor", "event", "descriptor", "stream_resource"]
                     + ["stream_datum"] * n_datums + ["stop"])
    assert n_datums >= 4  # flushed every 0.1 s during a 1.15 s scan
    start = only(docs, "start")
    assert start["live"] is True and start["plan_args"]["live"] is True
    baseline, primary = [d for n, d, *_ in docs if n == "descriptor"]
    assert baseline["name"] == "baseline" and "optics_overfocus" in baseline["data_keys"]
    key = primary["data_keys"]["merlin_image"]
    assert primary["name"] == "primary"
    assert key["shape"] == [SIG, SIG] and key["external"] == "STREAM:"
    assert key["dims"] == ["detector_y", "detector_x"]
    datums = [d for n, d, *_ in docs if n == "stream_datum"]
    bounds = [(d["indices"]["start"], d["indices"]["stop"]) for d in datums]
    assert bounds[0][0] == 0 and bounds[-1][1] == 24 * 24
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous
    assert all(d["descriptor"] == primary["uid"] for d in datums)
    # the first frames were announced well before the scan ended
    t_stop = [t for n, _, t in docs if n == "stop"][0]
    t_first = [t for n, _, t in docs if n == "stream_datum"][0]
    assert t_stop - t_first > 0.5
    # the file holds exactly the frames the microscope took
    resource = only(docs, "stream_resource")
    expected = inst.microscope.frames(start["scan"], start["optics"], seed=inst.microscope.seed)
    with h5py.File(path_of(resource), "r") as f:
        ds = f[resource["parameters"]["dataset"]]
        np.testing.assert_array_equal(ds[()], expected.reshape(-1, SIG, SIG))
        assert bool(ds.attrs["complete"])


@pytest.mark.parametrize("kwargs, match", [({"live": "yes"}, "live must be"),
                                           ({"live": True, "flush_period": 0}, "flush_period"),
                                           ({"live": True, "flush_period": float("nan")},
                                            "flush_period")])
def test_live_arguments_are_checked(tmp_path, kwargs, match):
    inst = instrument(tmp_path / "raw", nav=8)
    RE = RunEngine({})
    with pytest.raises(ValueError, match=match):
        RE(overfocus_scan(inst.detector, inst.scan, inst.optics, **kwargs))
    with pytest.raises(ValueError, match="live must be"):
        calibrate(inst.detector, inst.scan, inst.optics, callback=object(), live=1)


# -- the recorder on a live scan ------------------------------------------------------------
@pytest.fixture(scope="module")
def live_session(tmp_path_factory):
    """One live calibration through RunEngine, TiledWriter and recorder into a catalog."""
    d = tmp_path_factory.mktemp("live")
    client = open_catalog(d / "catalog", readable_storage=[d / "raw"])
    inst = instrument(d / "raw")
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict, float]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc, time.monotonic())))
    RE.subscribe(TiledWriter(client))
    recorder = CalibrationRecorder(client, figure_dir=d / "figures",
                                   live_kwargs={"redraw_period": 0.2, "on_screen": False})
    RE.subscribe(recorder)
    result = RE(calibrate(inst.detector, inst.scan, inst.optics, callback=recorder, live=True))
    yield SimpleNamespace(dir=d, client=client, inst=inst, RE=RE, docs=docs, recorder=recorder,
                          result=result, record=result.plan_result)
    recorder.close()


def test_live_calibration_matches_the_truth(live_session):
    s = live_session
    assert s.result.exit_status == "success"
    rec = s.record
    true = s.inst.microscope.geometry(s.inst.scan.state(), s.inst.optics.state())
    drot = (rec.scan_rotation - true.scan_rotation + 180) % 360 - 180
    assert abs(drot) <= 0.1 and rec.flip_y == true.flip_y and rec.valid
    assert abs(rec.overfocus / true.overfocus - 1) <= 0.005
    assert abs(rec.cy - true.cy) <= 0.5 and abs(rec.cx - true.cx) <= 0.5
    assert rec.fit_settings["data"]["nav_shape"] == [NAV, NAV]


def test_live_view_projected_frames_before_the_scan_ended(live_session):
    s = live_session
    uid = s.record.acquisition_uid
    view = s.recorder.live_view(uid)
    assert view.error is None
    t_stop = [t for n, d, t in s.docs if n == "stop" and d["run_start"] == uid][0]
    early = [k for t, k in view.history if t < t_stop and 0 < k < NAV * NAV]
    assert early, f"no frames projected before the stop document: {view.history}"
    assert view.history[-1][1] == NAV * NAV
    assert view.figure is not None and view.figure.updates >= 2
    assert view.figure.summary.startswith(f"{NAV * NAV}/{NAV * NAV} frames, blur ")
    assert view.figure_path == s.dir / "figures" / f"live_{uid[:8]}.png"
    assert view.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_live_view_images_equal_a_full_pass(live_session):
    s = live_session
    uid = s.record.acquisition_uid
    view = s.recorder.live_view(uid)
    start = [d for n, d, _ in s.docs if n == "start" and d["uid"] == uid][0]
    resource = [d for n, d, _ in s.docs if n == "stream_resource" and d["run_start"] == uid][0]
    params = projection_params(start, (SIG, SIG))
    assert params.overfocus == start["guess"]["overfocus"] and params.scan_rotation == 0.0
    ref = full_pass(path_of(resource), resource["parameters"]["dataset"], params, (NAV, NAV))
    assert_images_equal(view.guess_images, ref)  # (view.images: the fit's, once it is in)
    from stemcal.fit.passes import image_quality
    assert image_quality(view.guess_images)[0] == pytest.approx(image_quality(ref)[0], rel=1e-9)
    assert view.blur == pytest.approx(s.record.blur) and s.record.blur < image_quality(ref)[0]


def test_catalog_serves_the_live_frames(live_session):
    s = live_session
    uid = s.record.acquisition_uid
    resource = [d for n, d, _ in s.docs if n == "stream_resource" and d["run_start"] == uid][0]
    served = s.client[uid]["primary"]["merlin_image"].read()
    assert served.shape == (NAV * NAV, SIG, SIG)
    with h5py.File(path_of(resource), "r") as f:
        np.testing.assert_array_equal(np.asarray(served), f[resource["parameters"]["dataset"]][()])
    assert "baseline" in s.client[uid]


def test_triggered_scan_gets_a_live_view_too(tmp_path):
    inst = instrument(tmp_path / "raw", nav=16, dwell=1e-6)
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    recorder = CalibrationRecorder(None, live_kwargs={"on_screen": False})  # no catalog: check runs
    RE.subscribe(recorder)
    try:
        guess = {"overfocus": 1e-6, "scan_rotation": 20.0, "flip_y": True}
        result = RE(overfocus_scan(inst.detector, inst.scan, inst.optics, guess=guess))
        uid = result.plan_result
        view = recorder.live_view(uid)
        start, resource = only(docs, "start"), only(docs, "stream_resource")
        assert view.history[-1][1] == 16 * 16 and view.error is None
        with h5py.File(path_of(resource), "r") as f:  # (1, ny, nx, sy, sx): one event
            frames = f[resource["parameters"]["dataset"]][0]
        params = projection_params(start, (SIG, SIG))
        assert params.scan_rotation == 20.0 and params.flip_y
        ctx = Context.make_with("inline")
        ref = {k: np.asarray(v.data) for k, v in
               ctx.run_udf(ctx.load("memory", data=frames), OverfocusUDF(params)).items()}
        assert_images_equal(view.images, ref)
    finally:
        recorder.close()


# -- interruptions of a live scan ---------------------------------------------------------
def _live_run_interrupted(tmp_path, action):
    inst = instrument(tmp_path / "raw", nav=32, dwell=3e-3)  # 3 s of scanning
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    recorder = CalibrationRecorder(open_catalog(tmp_path / "cat"),
                                   live_kwargs={"on_screen": False})
    RE.subscribe(recorder)

    def when_scanning():
        deadline = time.monotonic() + 30
        while inst.detector.stream_writer.frames_written < 64 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        action(RE)

    threading.Thread(target=when_scanning, daemon=True).start()
    return inst, RE, docs, recorder


def _announced(docs) -> int:
    return max(d["indices"]["stop"] for n, d in docs if n == "stream_datum")


@pytest.mark.parametrize("defer", [False, True], ids=["immediate", "deferred"])
def test_pause_lets_the_live_scan_go_on_and_resume_calibrates_it(tmp_path, defer):
    """Ctrl-C twice or once: the detector goes on; on resume the same scan is collected
    (immediate) or is already complete (deferred), and it is calibrated."""
    from bluesky.utils import RunEngineInterrupted
    inst, RE, docs, recorder = _live_run_interrupted(
        tmp_path, lambda RE: RE.request_pause(defer=defer))
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(overfocus_scan(inst.detector, inst.scan, inst.optics, live=True, flush_period=0.1))
        assert RE.state == "paused"
        if defer:
            assert _announced(docs) == 32 * 32  # the whole scan before the pause
        else:
            assert _announced(docs) < 32 * 32
        RE.resume()
        assert only(docs, "stop")["exit_status"] == "success"
        assert _announced(docs) == 32 * 32
        assert len([n for n, _ in docs if n == "stream_resource"]) == 1  # one scan, not two
        uid = only(docs, "start")["uid"]
        status = recorder.result_status(uid)
        assert status.exception(timeout=120) is None
        assert status.result.acquisition_uid == uid
        assert status.result.fit_settings["data"]["nav_shape"] == [32, 32]
    finally:
        recorder.close()


def test_pause_then_abort_keeps_the_frames_and_calibrates_nothing(tmp_path):
    from bluesky.utils import RunEngineInterrupted
    inst, RE, docs, recorder = _live_run_interrupted(tmp_path, lambda RE: RE.request_pause())
    try:
        with pytest.raises(RunEngineInterrupted):
            RE(overfocus_scan(inst.detector, inst.scan, inst.optics, live=True, flush_period=0.1))
        assert RE.state == "paused"
        RE.abort()
        assert only(docs, "stop")["exit_status"] == "abort"
        uid = only(docs, "start")["uid"]
        status = recorder.result_status(uid)
        status.exception(timeout=30)  # waits until done
        with pytest.raises(RunNotCalibrated, match="exit_status"):
            status.result
        resource = only(docs, "stream_resource")
        with h5py.File(path_of(resource), "r") as f:
            ds = f[resource["parameters"]["dataset"]]
            assert not bool(ds.attrs["complete"])
            written = int(ds.attrs["frames_written"])
            assert 0 < written < 32 * 32
            assert ds[written - 1].any() and not ds[written:].any()
        assert _announced(docs) <= written
        assert inst.detector._staged.name == "no" and not inst.detector.acquiring
        # the next live scan runs clean
        docs.clear()
        assert RE(overfocus_scan(inst.detector, inst.scan, inst.optics, live=True)).exit_status \
            == "success"
    finally:
        recorder.close()


def test_instrument_error_mid_live_scan_fails_the_run(tmp_path):
    from bluesky.utils import FailedStatus
    inst = instrument(tmp_path / "raw", nav=24, dwell=1e-3)
    mic = inst.microscope
    real_sleep, rows = mic.sleep, []

    def failing_sleep(seconds):
        real_sleep(seconds)
        rows.append(seconds)
        if len(rows) == 10:
            raise ConnectionError("scan generator lost")

    mic.sleep = failing_sleep
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with pytest.raises(FailedStatus) as info:
        RE(overfocus_scan(inst.detector, inst.scan, inst.optics, live=True, flush_period=0.1))
    assert "merlin: acquisition failed: ConnectionError: scan generator lost" in str(info.value)
    stop = only(docs, "stop")
    assert stop["exit_status"] == "fail" and "scan generator lost" in stop["reason"]
    assert _announced(docs) == 9 * 24  # the nine rows written before the fault
    mic.sleep = real_sleep
    docs.clear()
    assert RE(overfocus_scan(inst.detector, inst.scan, inst.optics, live=True)).exit_status \
        == "success"


def test_live_scan_aborted_midway(tmp_path):
    inst, RE, docs, recorder = _live_run_interrupted(tmp_path, lambda RE: RE.abort("test"))
    try:
        from bluesky.utils import RunEngineInterrupted
        with pytest.raises((RunEngineInterrupted, Exception)):
            RE(overfocus_scan(inst.detector, inst.scan, inst.optics, live=True, flush_period=0.1))
        if RE.state == "paused":
            RE.abort()
        assert only(docs, "stop")["exit_status"] == "abort"
        status = recorder.result_status(only(docs, "start")["uid"])
        status.exception(timeout=30)
        with pytest.raises(RunNotCalibrated):
            status.result
        written = inst.detector.stream_writer.frames_written
        announced = max(d["indices"]["stop"] for n, d in docs if n == "stream_datum")
        assert 0 < announced == written < 32 * 32
        assert not inst.detector.acquiring
    finally:
        recorder.close()


def test_live_view_of_a_bad_start_document_stays_out_of_the_way():
    view = LiveView(on_screen=False)
    view("start", {"uid": "u1", "time": 0, "purpose": "calibration_data", "scan": {}})
    view("descriptor", {"uid": "d1", "run_start": "u1", "name": "primary", "time": 0,
                        "data_keys": {"m_image": {"shape": [8, 8], "dtype": "array",
                                                  "source": "x", "external": "STREAM:"}}})
    view("stream_resource", {"uid": "r1", "run_start": "u1", "data_key": "m_image",
                             "uri": "file://localhost/nonexistent.h5", "mimetype": "x",
                             "parameters": {"dataset": "/d"}})
    view("stream_datum", {"uid": "r1/0", "stream_resource": "r1", "descriptor": "d1",
                          "indices": {"start": 0, "stop": 4}, "seq_nums": {"start": 1, "stop": 5}})
    view("stop", {"uid": "s1", "run_start": "u1", "time": 1, "exit_status": "success"})
    assert view.error is not None and "shape_y" in view.error
    assert view.projection is None


def test_live_figure_off_screen(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not has_display()
    fig = LiveFigure("run x")
    assert not fig.on_screen
    img = {"point": np.arange(12.0).reshape(3, 4), "selected": np.ones((5, 5)),
           "shifted_sum_normalised": np.full((5, 5), np.nan), "sum": np.eye(5)}
    fig.update(img, 3, 12, 0.25)
    assert fig.summary == "3/12 frames, blur 0.2500"
    out = fig.save(tmp_path / "live.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*.tmp"))
    np.testing.assert_array_equal(fig._artists["point"].get_array(), img["point"])
