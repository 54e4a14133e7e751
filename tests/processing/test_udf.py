"""OverfocusUDF: buffers, equality with a direct kernel call under any tiling/executor,
and reproduction of the specimen from a simulated noise-free dataset."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from libertem.api import Context
from scipy import ndimage

from stemcal.fit import contrast_loss, crete_blur
from stemcal.processing import OverfocusUDF, ProjectionGeometry
from stemcal.processing.geometry import nav_coordinates
from stemcal.processing.kernels import splat_frames, splat_frames_numpy
from stemcal.twin import OverfocusParams, default_specimen, scan_middle, simulate

NAV = (16, 16)
SIG = (48, 48)
RESULT_NAMES = ("point", "selected", "shifted_sum", "sum", "coverage", "shifted_sum_normalised")

PARAMS = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                         detector_pixel_size=55e-6, semiconv=6e-3, cy=23.0, cx=25.0,
                         scan_rotation=25.0, flip_y=True)
# Integer descan: beam centres move, but stay on whole detector pixels.
DESCAN = PARAMS.replace(descan=((0.0, 1.0), (-1.0, 0.0)))


@pytest.fixture(scope="module")
def ctx():
    c = Context.make_with("inline")
    yield c
    c.close()


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return simulate(PARAMS, NAV, SIG, dose=50, seed=1)  # uint16 with Poisson noise


@pytest.fixture(scope="module")
def data_descan() -> np.ndarray:
    return simulate(DESCAN, NAV, SIG, dose=50, seed=2).astype(np.float64)


def direct(data: np.ndarray, params: OverfocusParams, upsample: float = 1.0) -> dict[str, np.ndarray]:
    """Reference: splat all frames in one kernel call, geometry from ProjectionGeometry."""
    nav, sig = data.shape[:2], data.shape[2:]
    geo = ProjectionGeometry(params, nav, sig, upsample=upsample)
    frames = data.reshape((-1,) + sig)
    scan_yx = nav_coordinates(np.arange(len(frames)), nav)
    centres = geo.centres(scan_yx)
    offsets = geo.offsets(scan_yx, centres)
    out, cov = np.zeros(geo.shape), np.zeros(geo.shape)
    splat_frames(frames, 0, 0, 1.0, 0.0, centres, offsets, np.ascontiguousarray(geo.A),
                 geo.r_in, geo.r_out, out, cov)
    mid = scan_middle(nav)
    i = int(np.ravel_multi_index(mid.astype(int), nav))
    sel, scratch = np.zeros(geo.shape), np.zeros(geo.shape)
    splat_frames(frames[i:i + 1], 0, 0, 1.0, 0.0, centres[i:i + 1], offsets[i:i + 1],
                 np.ascontiguousarray(geo.A), geo.r_in, geo.r_out, sel, scratch)
    return {"shifted_sum": out, "coverage": cov, "selected": sel, "geometry": geo,
            "centres": centres, "offsets": offsets}


def run(ctx, data, params, udf_cls=OverfocusUDF, **load_kw) -> dict[str, np.ndarray]:
    ds = ctx.load("memory", data=data, **load_kw)
    res = ctx.run_udf(dataset=ds, udf=udf_cls(params))
    return {k: np.asarray(v.data) for k, v in res.items()}


# -- (a) buffers -----------------------------------------------------------------------------

def test_result_buffers_and_shapes(ctx, data):
    res = run(ctx, data, PARAMS, num_partitions=4)
    geo = ProjectionGeometry(PARAMS, NAV, SIG)
    assert set(RESULT_NAMES) <= set(res)
    assert "frame_sum" not in res  # private buffer
    assert res["point"].shape == NAV
    for name in RESULT_NAMES[1:]:
        assert res[name].shape == geo.shape, name
        assert res[name].dtype == np.float64
    assert np.isfinite(res["shifted_sum"]).all() and res["coverage"].min() >= 0
    norm = res["shifted_sum_normalised"]
    ok = res["coverage"] >= 0.05 * res["coverage"].max()
    assert np.isnan(norm[~ok]).all() and np.isfinite(norm[ok]).all()
    np.testing.assert_allclose(norm[ok], res["shifted_sum"][ok] / res["coverage"][ok])


def test_sum_is_frame_sum_projected_at_scan_middle(ctx, data):
    res = run(ctx, data, PARAMS, num_partitions=3)
    geo = ProjectionGeometry(PARAMS, NAV, SIG)
    frame_sum = data.reshape((-1,) + SIG).sum(axis=0, dtype=np.float64)[None]
    mid = scan_middle(NAV)[None]
    c0 = np.array([[PARAMS.cy, PARAMS.cx]])
    ref, cov = np.zeros(geo.shape), np.zeros(geo.shape)
    splat_frames_numpy(frame_sum, 0, 0, 1.0, 0.0, c0, geo.offsets(mid, c0), geo.A,
                       geo.r_in, geo.r_out, ref, cov)
    np.testing.assert_allclose(res["sum"], ref, rtol=1e-10)


# -- (b) equality with a direct kernel call, independent of tiling -----------------------------

_SPLITS: list[tuple[tuple[int, int], tuple[int, int]]] = []


class SmallTilesUDF(OverfocusUDF):
    """Asks for tiny tiles (forces sig-split tiles) and records the tile slices it sees."""

    def get_tiling_preferences(self):
        return {"depth": 1, "total_size": 1024}

    def process_tile(self, tile):
        sig = self.meta.sig_slice
        _SPLITS.append((tuple(int(v) for v in sig.origin), tuple(int(v) for v in sig.shape)))
        super().process_tile(tile)


def _check_equal(res, ref, rtol=1e-10):
    for name in ("shifted_sum", "coverage", "selected"):
        np.testing.assert_allclose(res[name], ref[name], rtol=rtol, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("num_partitions", [1, 4, 16, 256])
def test_shifted_sum_equals_direct_kernel(ctx, data, num_partitions):
    res = run(ctx, data, PARAMS, num_partitions=num_partitions)
    _check_equal(res, direct(data, PARAMS))


def test_direct_reference_matches_numpy_twin(data):
    """The reference itself against the NumPy oracle (a few frames)."""
    ref = direct(data[:2], PARAMS)
    geo = ref["geometry"]
    frames = data[:2].reshape((-1,) + SIG)
    out, cov = np.zeros(geo.shape), np.zeros(geo.shape)
    splat_frames_numpy(frames, 0, 0, 1.0, 0.0, ref["centres"], ref["offsets"], geo.A,
                       geo.r_in, geo.r_out, out, cov)
    np.testing.assert_allclose(ref["shifted_sum"], out, rtol=1e-10)
    np.testing.assert_allclose(ref["coverage"], cov, rtol=1e-10)


def test_sig_split_tiles_by_tiling_preferences(ctx, data_descan):
    """A UDF asking for small tiles gets sig-split tiles (float64 data: LiberTEM's minimum
    sig size is 16 KiB) and still gives the direct result."""
    _SPLITS.clear()
    res = run(ctx, data_descan, DESCAN, udf_cls=SmallTilesUDF, num_partitions=4,
              base_shape=(1, 8, 8))
    shapes = {s for _, s in _SPLITS}
    assert shapes and all(s != SIG for s in shapes), f"tiles were not sig-split: {shapes}"
    _check_equal(res, direct(data_descan, DESCAN))
    np.testing.assert_allclose(res["point"], run(ctx, data_descan, DESCAN, num_partitions=1)["point"],
                               rtol=1e-12)


def test_sig_split_tiles_at_odd_origins(ctx, data_descan):
    """Tile shape forced by the dataset: 13 x 7 tiles start at odd detector rows/columns."""
    _SPLITS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # LiberTEM warns about the forced tileshape
        res = run(ctx, data_descan, DESCAN, udf_cls=SmallTilesUDF, num_partitions=3,
                  tileshape=(5, 13, 7))
    origins = {o for o, _ in _SPLITS}
    assert any(o[0] % 2 and o[1] % 2 for o in origins), origins
    ref = direct(data_descan, DESCAN)
    _check_equal(res, ref)
    whole = run(ctx, data_descan, DESCAN, num_partitions=1)
    np.testing.assert_allclose(res["point"], whole["point"], rtol=1e-12)
    np.testing.assert_allclose(res["sum"], whole["sum"], rtol=1e-10)


# -- (c) point -------------------------------------------------------------------------------

def test_point_is_frame_value_at_integer_beam_centre(ctx, data_descan):
    res = run(ctx, data_descan, DESCAN, num_partitions=4)
    geo = ProjectionGeometry(DESCAN, NAV, SIG)
    scan_yx = nav_coordinates(np.arange(np.prod(NAV)), NAV)
    centres = geo.centres(scan_yx)
    assert np.array_equal(centres, np.rint(centres))
    assert len(np.unique(centres, axis=0)) > 100  # the descan really moves the beam
    frames = data_descan.reshape((-1,) + SIG)
    iy, ix = centres.astype(int).T
    expected = frames[np.arange(len(frames)), iy, ix].reshape(NAV)
    np.testing.assert_array_equal(res["point"], expected)


def test_point_is_bilinear_at_fractional_centre(ctx, data):
    params = PARAMS.replace(cy=23.3, cx=24.6)
    res = run(ctx, data, params, num_partitions=2)
    frames = data.reshape((-1,) + SIG).astype(float)
    expected = np.array([ndimage.map_coordinates(f, [[23.3], [24.6]], order=1)[0] for f in frames])
    np.testing.assert_allclose(res["point"].ravel(), expected, rtol=1e-12)


# -- (d) reproduction of the specimen --------------------------------------------------------

@pytest.fixture(scope="module")
def noise_free():
    nav, sig = (24, 24), (64, 64)
    params = PARAMS.replace(semiconv=10e-3, cy=30.0, cx=33.0)
    spec = default_specimen(params, nav, sig, seed=3)
    return params, spec, simulate(params, nav, sig, specimen=spec, dtype="float64")


def specimen_on_target(spec, geo: ProjectionGeometry) -> np.ndarray:
    """The specimen image resampled onto the target grid of ``geo``."""
    H, W = geo.shape
    jj, ii = np.mgrid[0:H, 0:W].astype(float)
    pos = geo.origin[:, None, None] + np.stack([jj, ii]) / geo.upsample  # scan px
    idx = (pos - np.asarray(spec.origin)[:, None, None]) * spec.pixels_per_scan_px
    return ndimage.map_coordinates(spec.image, idx, order=1, mode="nearest")


def scanned_crop(img: np.ndarray, geo: ProjectionGeometry) -> np.ndarray:
    """The part of the target image inside the scanned area (always fully covered)."""
    ny, nx = geo.nav_shape
    a = np.ceil(geo.specimen_to_target([0, 0])).astype(int)
    b = np.floor(geo.specimen_to_target([ny - 1, nx - 1])).astype(int)
    return img[a[0]:b[0] + 1, a[1]:b[1] + 1]


@pytest.mark.parametrize("upsample", [1.0, 2.0])
def test_reproduces_specimen_and_is_sharpest_at_truth(ctx, noise_free, upsample):
    params, spec, data = noise_free
    nav, sig = data.shape[:2], data.shape[2:]
    ds = ctx.load("memory", data=data, num_partitions=4)
    out = {}
    for drot in (0.0, 5.0):
        p = params.replace(scan_rotation=params.scan_rotation + drot)
        res = ctx.run_udf(dataset=ds, udf=OverfocusUDF(p, upsample=upsample))
        geo = ProjectionGeometry(p, nav, sig, upsample=upsample)
        img = np.asarray(res["shifted_sum_normalised"].data)
        ok = np.isfinite(img)
        corr = np.corrcoef(img[ok], specimen_on_target(spec, geo)[ok])[0, 1]
        crop = scanned_crop(img, geo)
        assert np.isfinite(crop).all() and min(crop.shape) >= 20
        out[drot] = dict(corr=corr, blur=crete_blur(crop),
                         contrast=contrast_loss(np.asarray(res["shifted_sum"].data),
                                                np.asarray(res["coverage"].data)))
    assert out[0.0]["corr"] > 0.95, out
    assert out[0.0]["corr"] > out[5.0]["corr"] + 0.03, out
    assert out[0.0]["blur"] < out[5.0]["blur"], out
    assert out[0.0]["contrast"] < out[5.0]["contrast"], out


# -- (e) executors ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inline_reference(ctx, data_descan):
    return run(ctx, data_descan, DESCAN, num_partitions=4)


def _assert_identical(res, ref):
    for name in RESULT_NAMES:
        np.testing.assert_allclose(res[name], ref[name], rtol=1e-10, atol=0, equal_nan=True,
                                   err_msg=name)


@pytest.fixture(scope="module")
def dask_ctx():
    """``Context.make_with('dask', cpus=2)``: the default local dask executor, limited to 2 CPUs."""
    c = Context.make_with("dask", cpus=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def cluster_ctx():
    """An executor connected to a running ``dask.distributed.LocalCluster`` (worker processes)."""
    from dask.distributed import LocalCluster
    from libertem.executor.dask import DaskJobExecutor
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    try:
        c = Context(executor=DaskJobExecutor.connect(cluster.scheduler_address))
        yield c
        c.close()
    finally:
        cluster.close()


def test_local_dask_executor(dask_ctx, data_descan, inline_reference):
    from libertem.executor.dask import DaskJobExecutor
    assert isinstance(dask_ctx.executor, DaskJobExecutor)
    _assert_identical(run(dask_ctx, data_descan, DESCAN, num_partitions=4), inline_reference)


def test_connected_local_cluster(cluster_ctx, data_descan, inline_reference):
    from libertem.executor.dask import DaskJobExecutor
    assert isinstance(cluster_ctx.executor, DaskJobExecutor)
    _assert_identical(run(cluster_ctx, data_descan, DESCAN, num_partitions=4), inline_reference)
    # a second job on the same cluster (workers now warm) gives the same again
    _assert_identical(run(cluster_ctx, data_descan, DESCAN, num_partitions=7), inline_reference)


# -- (f) binning on the fly and threads ----------------------------------------------------

def test_choose_bin_from_projected_pitch():
    from stemcal.processing.window import choose_bin
    rot = np.array([[np.cos(0.4), np.sin(0.4)], [-np.sin(0.4), np.cos(0.4)]])
    assert choose_bin(0.55 * rot, (128, 128), 0.6) == 1
    assert choose_bin(0.275 * rot, (256, 256), 0.6) == 2
    assert choose_bin(0.1375 * rot, (512, 512), 0.6) == 4
    assert choose_bin(0.1375 * rot, (512, 512), 0.0) == 1  # disabled
    assert choose_bin(0.09 * rot, (96, 96), 0.6) == 6      # divides 96
    assert choose_bin(0.09 * rot, (97, 97), 0.6) == 6      # no divisor close: the bound
    assert choose_bin(0.1 * rot, (96, 96), 0.6) == 4       # bound 5 does not divide 96


# Detector finer than the shadow image: a detector pixel is 0.1375 scan px, so bins of 4.
FINE = OverfocusParams(overfocus=1e-6, scan_pixel_size=2e-9, camera_length=0.2,
                       detector_pixel_size=55e-6, semiconv=8e-3, cy=33.4, cx=30.2,
                       scan_rotation=-40.0, flip_y=False, descan=((0.3, 0.1), (-0.2, 0.25)))


@pytest.mark.parametrize("scan_pixel_size, expected_bin", [(2e-9, 4), (1e-9, 2), (0.75e-9, 1)])
def test_binned_pass_equals_numpy_twin_on_binned_frames(ctx, scan_pixel_size, expected_bin):
    nav, sig = (9, 11), (64, 64)
    params = FINE.replace(scan_pixel_size=scan_pixel_size)
    data = simulate(params, nav, sig, dose=40, seed=5)
    geo = ProjectionGeometry(params, nav, sig)
    from stemcal.processing.window import choose_bin
    b = choose_bin(geo.A, sig, 0.6)
    assert b == expected_bin
    frames = data.reshape((-1,) + sig).astype(float)
    binned = frames.reshape(len(frames), sig[0] // b, b, sig[1] // b, b).sum(axis=(2, 4))
    scan_yx = nav_coordinates(np.arange(len(frames)), nav)
    centres = geo.centres(scan_yx)
    offsets = geo.offsets(scan_yx, centres)
    out, cov = np.zeros(geo.shape), np.zeros(geo.shape)
    splat_frames_numpy(binned, 0, 0, b, (b - 1) / 2, centres, offsets, geo.A, geo.r_in,
                       geo.r_out, out, cov)
    mid = scan_middle(nav)[None]
    c0 = np.array([[params.cy, params.cx]])
    total, tcov = np.zeros(geo.shape), np.zeros(geo.shape)
    splat_frames_numpy(binned.sum(axis=0)[None], 0, 0, b, (b - 1) / 2, c0, geo.offsets(mid, c0),
                       geo.A, geo.r_in, geo.r_out, total, tcov)
    for kw in ({"num_partitions": 3}, {"num_partitions": 2, "tileshape": (3, 13, 7)}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = run(ctx, data, params, **kw)
        np.testing.assert_allclose(res["shifted_sum"], out, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(res["coverage"], cov, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res["sum"], total, rtol=1e-10, atol=1e-9)
    # bin_pitch=0: every detector pixel on its own, as the direct kernel
    ds = ctx.load("memory", data=data, num_partitions=3)
    raw = ctx.run_udf(dataset=ds, udf=OverfocusUDF(params, bin_pitch=0))
    np.testing.assert_allclose(raw["shifted_sum"].data, direct(data, params)["shifted_sum"],
                               rtol=1e-10, atol=1e-9)


def test_one_or_two_threads_give_the_same_images(data_descan, inline_reference):
    from libertem.executor.inline import InlineJobExecutor
    one = Context(executor=InlineJobExecutor(inline_threads=1))
    try:
        res = run(one, data_descan, DESCAN, num_partitions=4)
    finally:
        one.close()
    _assert_identical(res, inline_reference)


class _TileFlagsUDF(OverfocusUDF):
    """Records whether each tile it sees is writeable (copied before the deferred kernel)."""

    seen: list[bool] = []

    def get_tiling_preferences(self):
        return {"depth": 8, "total_size": 8 * 24 * 48 * 2}  # many tiles, sig-split for uint16

    def process_tile(self, tile):
        _TileFlagsUDF.seen.append(bool(np.asarray(tile).flags.writeable))
        super().process_tile(tile)


@pytest.fixture(scope="module")
def two_threads():
    """An inline context with two threads per task, so the pipelined path runs on any machine."""
    from libertem.executor.inline import InlineJobExecutor
    c = Context(executor=InlineJobExecutor(inline_threads=2))
    yield c
    c.close()


def test_pipelined_writeable_tiles_give_the_same_images(two_threads, data_descan, inline_reference):
    """Writeable tiles (LiberTEM may refill their buffer) are copied before the deferred kernel;
    also when they are sig-split into many small tiles."""
    _TileFlagsUDF.seen = []
    _assert_identical(run(two_threads, data_descan, DESCAN, udf_cls=_TileFlagsUDF,
                          num_partitions=4), inline_reference)
    assert len(_TileFlagsUDF.seen) > 8 and all(_TileFlagsUDF.seen)
    _SPLITS.clear()
    res = run(two_threads, data_descan, DESCAN, udf_cls=SmallTilesUDF, num_partitions=3,
              base_shape=(1, 8, 8))
    assert _SPLITS and all(s != SIG for _, s in _SPLITS)
    _check_equal(res, direct(data_descan, DESCAN))


def test_pipelined_npy_file_gives_the_same_images(two_threads, data, tmp_path):
    """An .npy file through stemcal.formats: LiberTEM's tiles are read-only views of the file's
    mmap, worked on without a copy while the next tile is read (the last one waited for in
    postprocess); the images are those of the in-memory data."""
    from stemcal.formats import open_dataset
    path = tmp_path / "scan.npy"
    np.save(path, data)
    ds = open_dataset(two_threads, str(path))
    _TileFlagsUDF.seen = []
    res = {k: np.asarray(v.data)
           for k, v in two_threads.run_udf(dataset=ds, udf=_TileFlagsUDF(PARAMS)).items()}
    assert len(_TileFlagsUDF.seen) > 8 and not any(_TileFlagsUDF.seen)
    _assert_identical(res, run(two_threads, data, PARAMS, num_partitions=2))


def test_pipelined_mib_file_gives_the_same_images(two_threads, data, tmp_path):
    """A Merlin .mib file: LiberTEM decodes its big-endian frames into one buffer that it
    refills for every tile (at most 1 MiB), so each tile's window is copied before the
    deferred kernel works on it."""
    from stemcal.formats import open_dataset
    from stemcal.formats import write_mib
    hdr = write_mib(tmp_path / "scan.mib", data)
    ds = open_dataset(two_threads, str(hdr))
    _TileFlagsUDF.seen = []
    res = {k: np.asarray(v.data)
           for k, v in two_threads.run_udf(dataset=ds, udf=_TileFlagsUDF(PARAMS)).items()}
    assert len(_TileFlagsUDF.seen) > 8 and all(_TileFlagsUDF.seen)
    _assert_identical(res, run(two_threads, data, PARAMS, num_partitions=2))


def test_disk_window_holds_every_pixel_read():
    """The kernels on the window of a tile give the same as on the whole tile; pixels outside
    the window do not matter."""
    from stemcal.processing.tile import project_tile
    from stemcal.processing.window import disk_extent, disk_window
    from stemcal.processing.kernels import sample_points
    nav, sig = (6, 7), (64, 64)
    params = FINE.replace(scan_pixel_size=1e-9, semiconv=4e-3)
    data = simulate(params, nav, sig, dose=40, seed=9).reshape((-1,) + sig).astype(float)
    geo = ProjectionGeometry(params, nav, sig)
    scan_yx = nav_coordinates(np.arange(len(data)), nav)
    centres = geo.centres(scan_yx)
    offsets = geo.offsets(scan_yx, centres)
    c0 = np.array([params.cy, params.cx])
    A = np.ascontiguousarray(geo.A)
    ext = disk_extent(centres, c0)
    for b in (1, 2, 3):
        nb = (-(-sig[0] // b), -(-sig[1] // b))
        for org, shape in (((0, 0), sig), ((5, 9), (40, 33)), ((17, 0), (13, 64))):
            tile = data[:, org[0]:org[0] + shape[0], org[1]:org[1] + shape[1]]
            y0, y1, x0, x1 = disk_window(ext, geo.r_out, b, org, shape)
            assert (y1 - y0) * (x1 - x0) < shape[0] * shape[1] or shape != sig
            masked = np.full_like(tile, np.nan)  # NaN outside the window: must never be read
            masked[:, y0:y1, x0:x1] = tile[:, y0:y1, x0:x1]
            outs = []
            window = masked[:, y0:y1, x0:x1]
            for frames, oy, ox in ((tile, *org), (window, org[0] + y0, org[1] + x0)):
                acc, fs = np.zeros((1,) + geo.shape + (2,)), np.zeros((1,) + nb)
                project_tile(frames, oy, ox, b, centres, c0, offsets, A, geo.r_in, geo.r_out,
                             acc, fs)
                pts = np.zeros(len(frames))
                sample_points(np.ascontiguousarray(frames), oy, ox, centres, pts)
                outs.append((acc, fs, pts))
            for a, w in zip(*outs):
                np.testing.assert_array_equal(a, w)
    assert disk_window(None, geo.r_out, 2, (0, 0), sig) == (0, sig[0], 0, sig[1])


def test_bad_bin_pitch_is_refused():
    with pytest.raises(ValueError, match="bin_pitch"):
        OverfocusUDF(PARAMS, bin_pitch=float("nan"))
