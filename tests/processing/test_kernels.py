"""Numba projection kernels against their NumPy twins and hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from stemcal.processing.kernels import (bin_frames, sample_points, splat_frame_rows,
                                        splat_frames, splat_frames_moments, splat_frames_numpy)


def _random_case(seed: int, *, n: int = 5, h: int = 13, w: int = 17, out_shape=(40, 50),
                 dtype=np.float64):
    """Random frames/geometry whose projections partly fall off the target grid."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        frames = rng.integers(0, 1000, size=(n, h, w)).astype(dtype)
    else:
        frames = rng.uniform(0.0, 10.0, size=(n, h, w)).astype(dtype)
    A = rng.uniform(-1.2, 1.2, size=(2, 2))
    # Detector coordinates of the tile: (origin + i) * 2 + 0.5 with origin (3, 5),
    # i.e. roughly 6.5 .. 37 (y) and 10.5 .. 43 (x); centres scattered over them.
    centres = np.column_stack([rng.uniform(8, 36, n), rng.uniform(12, 42, n)])
    offsets = rng.uniform(-20, 45, size=(n, 2))
    return frames, A, centres, offsets, out_shape


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16])
def test_splat_frames_matches_numpy_twin(seed, dtype):
    frames, A, centres, offsets, shape = _random_case(seed, dtype=dtype)
    r_in, r_out = 6.0, 11.5
    args = (frames, 3, 5, 2.0, 0.5, centres, offsets, np.ascontiguousarray(A), r_in, r_out)
    out_nb, cov_nb = np.zeros(shape), np.zeros(shape)
    out_np, cov_np = np.zeros(shape), np.zeros(shape)
    splat_frames(*args, out_nb, cov_nb)
    splat_frames_numpy(*args, out_np, cov_np)
    assert cov_np.sum() > 0 and out_np.sum() > 0  # the case is not vacuous
    np.testing.assert_allclose(out_nb, out_np, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(cov_nb, cov_np, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_splat_frame_rows_reads_the_rows_in_place(seed):
    """The fit's groups: frames[rows] of the one cache, in the order of rows, not copied."""
    frames, A, centres, offsets, shape = _random_case(seed, n=9, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(9)[:5].astype(np.int64)   # 5 of 9 frames, out of order
    A = np.ascontiguousarray(A)
    out, cov = np.zeros(shape), np.zeros(shape)
    splat_frame_rows(frames, rows, 2.0, 0.5, centres[:5], offsets[:5], A, 6.0, 11.5, out, cov)
    ref_out, ref_cov = np.zeros(shape), np.zeros(shape)
    splat_frames_numpy(frames[rows], 0, 0, 2.0, 0.5, centres[:5], offsets[:5], A, 6.0, 11.5,
                       ref_out, ref_cov)
    assert ref_cov.sum() > 0
    np.testing.assert_allclose(out, ref_out, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_splat_frames_moments_matches_numpy_twin(seed):
    frames, A, centres, offsets, shape = _random_case(seed, dtype=np.float64)
    args = (frames, 3, 5, 2.0, 0.5, centres, offsets, np.ascontiguousarray(A), 6.0, 11.5)
    nb = [np.zeros(shape) for _ in range(3)]
    ref = [np.zeros(shape) for _ in range(3)]
    splat_frames_moments(*args, *nb)
    splat_frames_numpy(*args, *ref)
    assert ref[2].sum() > 0
    for a, b in zip(nb, ref):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-9)
    # The plain kernel gives the same sums, and sq is what is left of out**2
    # when only one contribution lands on a pixel: never more than out**2.
    out, cov = np.zeros(shape), np.zeros(shape)
    splat_frames(*args, out, cov)
    np.testing.assert_allclose(out, nb[0], rtol=1e-12)
    assert np.all(nb[2] <= nb[0] ** 2 + 1e-9)


def test_splat_frames_adds_into_existing_buffers():
    frames, A, centres, offsets, shape = _random_case(7)
    args = (frames, 3, 5, 2.0, 0.5, centres, offsets, np.ascontiguousarray(A), 6.0, 11.5)
    out, cov = np.full(shape, 1.5), np.full(shape, 2.0)
    ref_out, ref_cov = np.zeros(shape), np.zeros(shape)
    splat_frames(*args, out, cov)
    splat_frames_numpy(*args, ref_out, ref_cov)
    np.testing.assert_allclose(out, ref_out + 1.5, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov + 2.0, rtol=1e-12)


def test_splat_conserves_weight_inside_grid():
    """Bilinear splatting distributes each weight exactly (sum of cov = sum of disk weights)."""
    rng = np.random.default_rng(4)
    frames = rng.uniform(1, 2, size=(3, 16, 16))
    centres = np.array([[7.5, 8.0], [8.2, 7.1], [6.9, 7.7]])
    A = 0.55 * np.array([[np.cos(0.3), np.sin(0.3)], [-np.sin(0.3), np.cos(0.3)]])
    offsets = np.array([[30.0, 30.0], [31.3, 29.6], [28.7, 30.2]]) - centres @ A.T
    out, cov = np.zeros((60, 60)), np.zeros((60, 60))
    r_in, r_out = 4.0, 7.0
    splat_frames(frames, 0, 0, 1.0, 0.0, centres, offsets, A, r_in, r_out, out, cov)
    yy, xx = np.mgrid[0:16, 0:16]
    expected_w = 0.0
    expected_v = 0.0
    for i in range(3):
        r = np.hypot(yy - centres[i, 0], xx - centres[i, 1])
        wgt = np.clip((r_out - r) / (r_out - r_in), 0, 1)
        expected_w += wgt.sum()
        expected_v += (wgt * frames[i]).sum()
    assert cov.sum() == pytest.approx(expected_w, rel=1e-12)
    assert out.sum() == pytest.approx(expected_v, rel=1e-12)


def test_splat_sig_tiles_sum_to_whole_frame():
    """Splatting two sig tiles of a frame (given their origins) equals splatting the whole."""
    frames, A, centres, offsets, shape = _random_case(11, h=20, w=24)
    kw = dict(pix_scale=2.0, pix_offset=0.5)
    whole_o, whole_c = np.zeros(shape), np.zeros(shape)
    splat_frames(frames, 3, 5, kw["pix_scale"], kw["pix_offset"], centres, offsets, A, 6.0, 11.5,
                 whole_o, whole_c)
    tiles_o, tiles_c = np.zeros(shape), np.zeros(shape)
    for ys, xs in [(slice(0, 7), slice(0, 11)), (slice(0, 7), slice(11, 24)),
                   (slice(7, 20), slice(0, 11)), (slice(7, 20), slice(11, 24))]:
        tile = np.ascontiguousarray(frames[:, ys, xs])
        splat_frames(tile, 3 + ys.start, 5 + xs.start, kw["pix_scale"], kw["pix_offset"], centres,
                     offsets, A, 6.0, 11.5, tiles_o, tiles_c)
    np.testing.assert_allclose(tiles_o, whole_o, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(tiles_c, whole_c, rtol=1e-12, atol=1e-12)


# -- sample_points ---------------------------------------------------------------------------

def test_sample_points_bilinear_hand_computed():
    frame = np.arange(6 * 7, dtype=np.float64).reshape(1, 6, 7) ** 1.5  # not linear in y, x
    cy, cx = 2.25, 3.5
    # Hand-computed bilinear interpolation between rows 2, 3 and columns 3, 4.
    f = frame[0]
    expected = (0.75 * (0.5 * f[2, 3] + 0.5 * f[2, 4])
                + 0.25 * (0.5 * f[3, 3] + 0.5 * f[3, 4]))
    out = np.zeros(1)
    sample_points(frame, 0, 0, np.array([[cy, cx]]), out)
    assert out[0] == pytest.approx(expected, rel=1e-14)
    # Integer centre: the pixel value itself.
    out = np.zeros(1)
    sample_points(frame, 0, 0, np.array([[4.0, 1.0]]), out)
    assert out[0] == f[4, 1]


@pytest.mark.parametrize("split_axis", [0, 1])
def test_sample_points_split_tiles_sum_to_whole(split_axis):
    rng = np.random.default_rng(5)
    frames = rng.uniform(0, 100, size=(4, 10, 12))
    # Centres chosen so that the 2x2 stencil straddles the split (row 5 / column 6) for some.
    centres = np.array([[4.3, 5.6], [5.0, 6.0], [4.99, 5.01], [7.7, 2.2]])
    whole = np.zeros(4)
    sample_points(frames, 0, 0, centres, whole)
    parts = np.zeros(4)
    cut = 5 if split_axis == 0 else 6
    if split_axis == 0:
        sample_points(np.ascontiguousarray(frames[:, :cut]), 0, 0, centres, parts)
        sample_points(np.ascontiguousarray(frames[:, cut:]), cut, 0, centres, parts)
    else:
        sample_points(np.ascontiguousarray(frames[:, :, :cut]), 0, 0, centres, parts)
        sample_points(np.ascontiguousarray(frames[:, :, cut:]), 0, cut, centres, parts)
    np.testing.assert_allclose(parts, whole, rtol=1e-13)
    # and the whole equals scipy-free bilinear interpolation
    for i, (cy, cx) in enumerate(centres):
        iy, ix = int(np.floor(cy)), int(np.floor(cx))
        wy, wx = cy - iy, cx - ix
        f = frames[i]
        ref = ((1 - wy) * ((1 - wx) * f[iy, ix] + wx * f[iy, ix + 1])
               + wy * ((1 - wx) * f[iy + 1, ix] + wx * f[iy + 1, ix + 1]))
        assert whole[i] == pytest.approx(ref, rel=1e-13)


# -- bin_frames ------------------------------------------------------------------------------

def _reshape_bin(frames: np.ndarray, f: int) -> np.ndarray:
    n, h, w = frames.shape
    H, W = h // f, w // f
    return frames[:, :H * f, :W * f].reshape(n, H, f, W, f).sum(axis=(2, 4))


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_bin_frames_equals_reshape_sum(factor, dtype):
    rng = np.random.default_rng(factor)
    frames = rng.integers(0, 500, size=(3, 13, 14)).astype(dtype)  # not whole blocks
    ref = _reshape_bin(frames.astype(np.float64), factor)
    out = np.zeros((3, 13 // factor, 14 // factor), dtype=np.float32)
    bin_frames(frames, 0, 0, factor, out)
    np.testing.assert_array_equal(out, ref.astype(np.float32))


@pytest.mark.parametrize("factor", [2, 3])
def test_bin_frames_tiles_at_odd_sig_origin(factor):
    """Tiles starting at odd origins (mid-block) add up to the whole-frame binning."""
    rng = np.random.default_rng(10 + factor)
    frames = rng.integers(0, 500, size=(2, 15, 16)).astype(np.uint16)
    ref = _reshape_bin(frames.astype(np.float64), factor)
    out = np.zeros(ref.shape, dtype=np.float64)
    for ys, xs in [(slice(0, 5), slice(0, 7)), (slice(0, 5), slice(7, 16)),
                   (slice(5, 15), slice(0, 7)), (slice(5, 15), slice(7, 16))]:
        bin_frames(np.ascontiguousarray(frames[:, ys, xs]), ys.start, xs.start, factor, out)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_bin_and_sum_equals_reshape_sum_and_frame_sum(factor):
    from stemcal.processing.kernels import bin_and_sum
    rng = np.random.default_rng(20 + factor)
    frames = rng.integers(0, 500, size=(3, 13, 14)).astype(np.uint16)  # not whole blocks
    out = np.zeros((3, 13 // factor, 14 // factor), dtype=np.float32)
    fsum = np.zeros((13, 14))
    bin_and_sum(frames, 0, 0, factor, out, fsum)
    np.testing.assert_array_equal(out, _reshape_bin(frames.astype(np.float64), factor))
    np.testing.assert_array_equal(fsum, frames.sum(axis=0))
    # tiles at odd origins add up to the same
    out2 = np.zeros_like(out)
    fsum2 = np.zeros_like(fsum)
    for ys, xs in [(slice(0, 5), slice(0, 7)), (slice(0, 5), slice(7, 14)),
                   (slice(5, 13), slice(0, 7)), (slice(5, 13), slice(7, 14))]:
        bin_and_sum(np.ascontiguousarray(frames[:, ys, xs]), ys.start, xs.start, factor, out2, fsum2)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(fsum2, fsum)
