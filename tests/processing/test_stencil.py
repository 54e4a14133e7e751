"""The fused kernel's stencil path: frames that share a beam centre and sub-pixel offset are
splatted through one precomputed stencil; it must give the images of the bin-by-bin splat
for every tiling, bin side, upsampling and near the target edge, and fall back where it
cannot apply (descan, fractional upsampling, tiles that cut the disk's bins)."""
from __future__ import annotations

import numpy as np
import pytest

from stemcal.processing import ProjectionGeometry
from stemcal.processing.pass_kernel import (_build_stencil, _tile_stencil, flat_pixels,
                                            project_frames)
from stemcal.processing.tile import project_tile
from stemcal.processing.geometry import nav_coordinates
from stemcal.twin import OverfocusParams, simulate

NAV = (9, 11)
SIG = (64, 64)
PARAMS = OverfocusParams(overfocus=1e-6, scan_pixel_size=2e-9, camera_length=0.2,
                         detector_pixel_size=55e-6, semiconv=8e-3, cy=31.4, cx=30.2,
                         scan_rotation=-40.0, flip_y=True)
DESCAN = PARAMS.replace(descan=((0.3, 0.1), (-0.2, 0.25)))


def _case(params, upsample=1.0, margin=None):
    geo = ProjectionGeometry(params, NAV, SIG, upsample=upsample, fixed_margin=margin)
    frames = simulate(params, NAV, SIG, dose=40, seed=3).reshape((-1,) + SIG)
    scan_yx = nav_coordinates(np.arange(len(frames)), NAV)
    centres = geo.centres(scan_yx)
    return geo, frames, centres, geo.offsets(scan_yx, centres)


def _project(geo, frames, centres, offsets, b, tiles, stencil):
    """All frames through project_tile, tile by tile (org, shape); returns (acc, fsum)."""
    acc = np.zeros((1,) + geo.shape + (2,))
    fsum = np.zeros((1, -(-SIG[0] // b), -(-SIG[1] // b)))
    c0 = np.array([geo.params.cy, geo.params.cx])
    for (oy, ox), (h, w) in tiles:
        project_tile(frames[:, oy:oy + h, ox:ox + w], oy, ox, b, centres, c0, offsets,
                     np.ascontiguousarray(geo.A), geo.r_in, geo.r_out, acc, fsum,
                     stencil=stencil)
    return acc, fsum


def _stencil_frames(geo, frames, centres, offsets, b, org, shape):
    """How many frames of one tile go through the stencil (the kernel's return value)."""
    (oy, ox), (h, w) = org, shape
    tile = frames[:, oy:oy + h, ox:ox + w]
    pix, fs, rs = flat_pixels(tile)
    acc = np.zeros(geo.shape + (2,))
    fsum = np.zeros((-(-SIG[0] // b), -(-SIG[1] // b)))
    return project_frames(pix, fs, rs, *tile.shape, oy, ox, b, centres,
                           np.array([geo.params.cy, geo.params.cx]), offsets,
                           np.ascontiguousarray(geo.A), geo.r_in, geo.r_out, acc, fsum, True)


WHOLE = [((0, 0), SIG)]
BANDS = [((y, 0), (min(10, SIG[0] - y), SIG[1])) for y in range(0, SIG[0], 10)]  # cut bins
QUARTERS = [((y, x), (32, 32)) for y in (0, 32) for x in (0, 32)]
ODD = [((0, 0), (29, 64)), ((29, 0), (35, 37)), ((29, 37), (35, 27))]


@pytest.mark.parametrize("b", [1, 2, 3])
@pytest.mark.parametrize("tiles", [WHOLE, BANDS, QUARTERS, ODD], ids=["whole", "bands",
                                                                        "quarters", "odd"])
@pytest.mark.parametrize("params, upsample", [(PARAMS, 1.0), (PARAMS, 2.0), (PARAMS, 1.5),
                                              (DESCAN, 1.0)],
                         ids=["plain", "upsample2", "upsample1.5", "descan"])
def test_stencil_gives_the_bin_by_bin_images(b, tiles, params, upsample):
    geo, frames, centres, offsets = _case(params, upsample)
    fast = _project(geo, frames, centres, offsets, b, tiles, stencil=True)
    slow = _project(geo, frames, centres, offsets, b, tiles, stencil=False)
    for f, s in zip(fast, slow):
        assert s.max() > 0
        np.testing.assert_allclose(f, s, rtol=1e-12, atol=1e-12 * s.max())


def test_stencil_reaching_past_the_target_edge_falls_back():
    """A target grid with too small a margin: the disks of the outer frames reach past it;
    those frames are splatted bin by bin (dropping what falls outside), the others through
    the stencil, and the images are those of the bin-by-bin splat."""
    geo, frames, centres, offsets = _case(PARAMS, margin=2.0)
    n_st = _stencil_frames(geo, frames, centres, offsets, 2, (0, 0), SIG)
    assert 0 < n_st < len(frames)
    fast = _project(geo, frames, centres, offsets, 2, WHOLE, stencil=True)
    slow = _project(geo, frames, centres, offsets, 2, WHOLE, stencil=False)
    for f, s in zip(fast, slow):
        np.testing.assert_allclose(f, s, rtol=1e-12, atol=1e-12 * s.max())


@pytest.mark.parametrize("params, upsample, expected", [
    (PARAMS, 1.0, "all"), (PARAMS, 2.0, "all"), (PARAMS, 1.5, "some"), (DESCAN, 1.0, "one")])
def test_which_frames_share_the_stencil(params, upsample, expected):
    """Same beam centre and offsets apart by whole target pixels: all frames without descan
    at an integer upsample; at upsample 1.5 every other scan position in y and x (a quarter
    of the frames); with descan only the first frame, whose stencil it is."""
    geo, frames, centres, offsets = _case(params, upsample)
    n = len(frames)
    n_st = _stencil_frames(geo, frames, centres, offsets, 2, (0, 0), SIG)
    want = {"all": n, "some": ((NAV[0] + 1) // 2) * ((NAV[1] + 1) // 2), "one": 1}[expected]
    assert n_st == want
    # a tile without any whole row of the disk's bins takes none through the stencil
    assert _stencil_frames(geo, frames, centres, offsets, 2, (0, 0), (SIG[0], 30)) == 0


def test_stencil_weights_are_one_frames_splat():
    """The stencil's weights placed in its block equal the coverage that the bin-by-bin splat
    gives for its frame alone, at the block's target pixel, and nothing lands elsewhere."""
    geo, frames, centres, offsets = _case(PARAMS)
    b = 2
    i = 40
    st = _build_stencil(b, centres[i, 0], centres[i, 1], offsets[i, 0], offsets[i, 1],
                        np.ascontiguousarray(geo.A), geo.r_in, geo.r_out, 32, 32, 2)
    by0, starts, bxs, cells, weights, py0, px0, hs, ws = st
    row_ok, coverage, r0, r1, q0, q1 = _tile_stencil(st, b, 0, 0, *SIG)
    assert row_ok.all() and (r0, r1, q0, q1) == (0, hs, 0, ws)
    acc, _ = _project(geo, frames[i:i + 1], centres[i:i + 1], offsets[i:i + 1], b, WHOLE,
                      stencil=False)
    cov = acc[0, ..., 1]
    np.testing.assert_allclose(cov[py0:py0 + hs, px0:px0 + ws], coverage.reshape(hs, ws),
                               rtol=1e-12, atol=1e-14)
    assert cov.sum() == pytest.approx(coverage.sum(), rel=1e-12)
    # every bin centre within r_out is in the stencil once
    rows = by0 + np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    dy = rows * b + (b - 1) / 2 - centres[i, 0]
    dx = bxs * b + (b - 1) / 2 - centres[i, 1]
    assert np.all(dy ** 2 + dx ** 2 < geo.r_out ** 2)
    yy, xx = np.mgrid[0:32, 0:32] * b + (b - 1) / 2
    inside = (yy - centres[i, 0]) ** 2 + (xx - centres[i, 1]) ** 2 < geo.r_out ** 2
    assert len(bxs) == inside.sum() == len(set(zip(rows, bxs)))


def test_flat_pixels_views_a_cut_tile_and_copies_odd_strides():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, size=(7, 20, 30)).astype(np.uint16)
    for frames in (data, data[2:5, 3:17, 4:29], data[3:4, 5:6], data[:, 7:8, :]):
        pix, fs, rs = flat_pixels(frames)
        assert np.shares_memory(pix, data)
        assert not pix.flags.writeable
        n, h, w = frames.shape
        i, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
        np.testing.assert_array_equal(pix[i * fs + y * rs + x], frames)
    odd = data[:, :, ::2]
    pix, fs, rs = flat_pixels(odd)
    assert not np.shares_memory(pix, data)
    assert (fs, rs) == (odd.shape[1] * odd.shape[2], odd.shape[2])
    np.testing.assert_array_equal(pix.reshape(odd.shape), odd)
    pix, fs, rs = flat_pixels(data[:0])
    assert pix.size == 0
