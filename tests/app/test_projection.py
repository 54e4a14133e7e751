"""The app's images from the reduced cache, against a full OverfocusUDF pass and the truth."""
from __future__ import annotations

import numpy as np
import pytest
from libertem.api import Context

from stemcal.app.projection import IMAGE_ORDER, CacheProjector
from stemcal.app.sources import initial_geometry
from stemcal.fit.passes import full_pass
from stemcal.formats import open_dataset

from scan_setup import SIZES


@pytest.fixture(scope="module")
def projected(small_scan):
    path, truth = small_scan
    ctx = Context.make_with("inline")
    ds = open_dataset(ctx, path)
    projector = CacheProjector.from_dataset(ctx, ds, truth)
    yield projector, full_pass(ctx, ds, truth), truth
    ctx.close()


def test_images_are_the_passes_images(projected):
    projector, udf, truth = projected
    cache = projector.cache
    assert (cache.bin, cache.stride) == (1, 1)  # this scan fits the cache whole
    shown = projector.project(truth)
    assert list(shown.images) == list(IMAGE_ORDER)
    assert all(img.dtype == np.float32 for img in shown.images.values())
    # the bright-field image samples the same frames at the same beam centres
    np.testing.assert_allclose(shown.images["point"], udf["point"], rtol=1e-5)
    # the same disk weights: what is projected adds up to the pass's totals (the grids differ)
    for name in ("selected", "sum"):
        assert float(np.nansum(shown.images[name])) == pytest.approx(
            float(udf[name].sum()), rel=1e-5)
    assert not shown.preview and np.isfinite(shown.blur) and shown.contrast > 0


def test_blur_and_contrast_are_best_at_the_truth(projected):
    projector, _, truth = projected
    rotations = truth.scan_rotation + np.arange(-6.0, 6.5, 1.0)
    full = [projector.project(truth.replace(scan_rotation=r)) for r in rotations]
    preview = [projector.project(truth.replace(scan_rotation=r), preview=True) for r in rotations]
    at_truth = full[6]
    # the blur is flat within a degree or so of the truth (noise), and rises beyond
    assert abs(rotations[np.argmin([p.blur for p in full])] - truth.scan_rotation) <= 1.0
    assert min(full[0].blur, full[-1].blur) > at_truth.blur + 0.02
    assert rotations[np.argmax([p.contrast for p in full])] == truth.scan_rotation
    assert rotations[np.argmax([p.contrast for p in preview])] == truth.scan_rotation
    assert all(p.preview for p in preview)
    wrong = projector.project(truth.replace(flip_y=not truth.flip_y))
    assert wrong.contrast < 0.2 * at_truth.contrast


def test_grid_follows_a_large_change_of_magnification(projected):
    projector, _, truth = projected
    near = projector.project(truth.replace(overfocus=1.2 * truth.overfocus))
    far = projector.project(truth.replace(overfocus=2.0 * truth.overfocus))
    assert near.images["shifted_sum"].shape == projector.project(truth).images["shifted_sum"].shape
    assert far.images["shifted_sum"].shape[0] > 1.5 * near.images["shifted_sum"].shape[0]


def test_first_geometry_is_measured_from_the_frame_sum(projected):
    projector, _, truth = projected
    start = initial_geometry(SIZES, projector.cache)
    assert (start.scan_rotation, start.flip_y, start.overfocus) == (0.0, False, SIZES.overfocus)
    # the disk's centre drifts with the descan: its mean lies near the centre at the middle
    assert start.cy == pytest.approx(truth.cy, abs=1.0)
    assert start.cx == pytest.approx(truth.cx, abs=1.0)
    assert start.disk_radius_px == pytest.approx(truth.disk_radius_px, rel=0.05)


def test_the_app_s_cache_counts_four_bytes_a_pixel_where_the_fit_s_counts_two():
    """The fit keeps every position of a uint16 scan that fits its budget at 2 bytes a
    pixel; the app, whose every redraw projects the whole cache, counts 4 bytes a pixel
    and keeps every other one (its redraw time stays what it was)."""
    from libertem.io.dataset.memory import MemoryDataSet
    from stemcal.fit.cache import build_cache
    from stemcal.twin import OverfocusParams

    data = np.random.default_rng(1).poisson(3.0, (32, 32, 32, 32)).astype(np.uint16)
    p = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                        detector_pixel_size=55e-6, semiconv=2e-3, cy=16.0, cx=16.0)
    ctx = Context.make_with("inline")
    try:
        ds = MemoryDataSet(data=data, num_partitions=2)
        budget = 3 * 2**20     # the frames: 2 MiB as uint16, 4 MiB as float32
        fit = build_cache(ctx, ds, params=p, budget=budget, work=2**62)
        app = CacheProjector.from_dataset(ctx, ds, p, budget=budget).cache
    finally:
        ctx.close()
    assert (fit.stride, app.stride) == (1, 2)
    assert fit.frames.dtype == app.frames.dtype == np.uint16
