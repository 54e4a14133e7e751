"""The one-sweep ring kernel against its NumPy twin and against the nested-disk differences."""
from __future__ import annotations

import numpy as np
import pytest

from stemcal.processing.ring_kernel import splat_rings, splat_rings_numpy

R_OUT = np.array([4.5, 7.0, 9.5])
R_IN = np.maximum(R_OUT - 2.0, 0.0)


def _inside_case(seed: int, n: int = 6, h: int = 24, w: int = 26):
    """Random frames and geometry whose disks all land well inside a 90x90 target."""
    rng = np.random.default_rng(seed)
    frames = rng.uniform(0.0, 10.0, size=(n, h, w))
    angle = rng.uniform(0, 2 * np.pi)
    scale = rng.uniform(0.6, 1.8)
    A = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if rng.integers(2):
        A = A @ np.diag([-1.0, 1.0])  # flipped
    centres = np.column_stack([rng.uniform(10, 14, n), rng.uniform(11, 15, n)])
    # Put each projected centre near the target's middle.
    offsets = np.array([[45.0, 45.0] - A @ c for c in centres]) + rng.uniform(-8, 8, (n, 2))
    return frames, np.ascontiguousarray(A), centres, offsets


def _as_rows(frames: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``frames`` hidden among other frames, shuffled: ``(pool, rows)`` with
    ``pool[rows[i]] == frames[i]``."""
    rng = np.random.default_rng(100 + seed)
    order = rng.permutation(len(frames))
    extra = rng.uniform(0.0, 10.0, size=(3,) + frames.shape[1:])
    pool = np.ascontiguousarray(np.concatenate([extra, frames[order]]))
    rows = (3 + np.argsort(order)).astype(np.int64)
    np.testing.assert_array_equal(pool[rows], frames)
    return pool, rows


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("pix", [(1.0, 0.0), (2.0, 0.5)])
def test_rings_match_numpy_twin(seed, pix):
    frames, A, centres, offsets = _inside_case(seed)
    scale, offset = pix
    if scale != 1.0:   # binned frames: half the pixels, same detector coordinates
        frames = frames[:, ::2, ::2]
    shape = (3, 90, 90)
    out, cov = np.zeros(shape), np.zeros(shape)
    ref_out, ref_cov = np.zeros(shape), np.zeros(shape)
    # the kernel reads its frames as rows of a larger array, in another order
    pool, rows = _as_rows(frames, seed)
    splat_rings(pool, rows, scale, offset, centres, offsets, A, R_IN, R_OUT, out, cov)
    splat_rings_numpy(frames, np.arange(len(frames)), scale, offset, centres, offsets, A, R_IN,
                      R_OUT, ref_out, ref_cov)
    assert (ref_cov.sum(axis=(1, 2)) > 0).all()  # every ring holds something
    np.testing.assert_allclose(out, ref_out, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-11, atol=1e-11)
    # The rings add up to the outer disk's projection, and the inner ring's coverage
    # is a disk's: pixel weights in [0, 1] splatted bilinearly.
    assert cov.min() >= -1e-12


def test_a_pixel_off_the_target_is_dropped_whole():
    """Near the edge the kernel drops a pixel whose bilinear cell is not all inside
    (the twin keeps the shares that land inside); nothing is written out of bounds."""
    frames, A, centres, offsets = _inside_case(5, n=2)
    offsets = offsets - 44.0  # the disks now straddle the target's top-left corner
    shape = (3, 90, 90)
    out, cov = np.zeros(shape), np.zeros(shape)
    ref_out, ref_cov = np.zeros(shape), np.zeros(shape)
    rows = np.arange(len(frames))
    splat_rings(frames, rows, 1.0, 0.0, centres, offsets, A, R_IN, R_OUT, out, cov)
    splat_rings_numpy(frames, rows, 1.0, 0.0, centres, offsets, A, R_IN, R_OUT, ref_out,
                      ref_cov)
    assert 0 < cov.sum() < ref_cov.sum()
    inner = (slice(None), slice(2, 88), slice(2, 88))
    np.testing.assert_allclose(cov[inner], ref_cov[inner], rtol=1e-11, atol=1e-11)


def test_ring_loss_one_sweep_equals_nested_disks():
    """RingLoss.project (one sweep) gives the nested disks' differences on a fit's cache."""
    from stemcal.fit.cache import build_cache
    from stemcal.fit.passes import as_dataset
    from stemcal.fit.rings import RingLoss
    from stemcal.twin import OverfocusParams, simulate

    truth = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.25e-9, camera_length=0.2,
                            detector_pixel_size=55e-6, semiconv=0.3 * 64 * 55e-6 / 0.2,
                            cy=33.0, cx=30.5, scan_rotation=23.0, flip_y=True)
    data = simulate(truth, (16, 16), (64, 64), dose=5.0, seed=1)
    ctx, ds = as_dataset(None, data)
    cache = build_cache(ctx, ds, params=truth)
    trial = truth.replace(scan_rotation=23.4, overfocus=1.02e-6)
    for up in (1.25, 2.0):
        rings = RingLoss(cache, truth, upsample=up)
        S, C = rings.project(trial, grid_shift=0.37)
        S_ref, C_ref = rings.project_by_disks(trial, grid_shift=0.37)
        assert S.shape == S_ref.shape and S.shape[:2] == (3, 4)
        np.testing.assert_allclose(S, S_ref, rtol=1e-9, atol=1e-9 * np.abs(S_ref).max())
        np.testing.assert_allclose(C, C_ref, rtol=1e-9, atol=1e-9 * C_ref.max())


def test_octant_is_the_angle_in_eighths():
    from stemcal.processing.ring_kernel import octant

    rng = np.random.default_rng(7)
    for dy, dx in rng.normal(size=(2000, 2)) * 10:
        angle = np.degrees(np.arctan2(dy, dx)) % 360
        assert octant(dy, dx) == int(angle // 45), (dy, dx, angle)


@pytest.mark.parametrize("seed", [0, 1])
def test_octants_are_the_frames_masked_to_each_octant(seed):
    """sectors=8: part ``ring * 8 + k`` is the ring's projection of the pixels whose offset
    from their frame's beam centre lies in octant ``k`` (each frame masked to it, with its
    own centre), and the octants add up to the ring."""
    frames, A, centres, offsets = _inside_case(seed)
    n, h, w = frames.shape
    shape = (90, 90)
    out8, cov8 = np.zeros((24,) + shape), np.zeros((24,) + shape)
    rows = np.arange(n)
    splat_rings(frames, rows, 1.0, 0.0, centres, offsets, A, R_IN, R_OUT, out8, cov8, 8)
    out1, cov1 = np.zeros((3,) + shape), np.zeros((3,) + shape)
    splat_rings(frames, rows, 1.0, 0.0, centres, offsets, A, R_IN, R_OUT, out1, cov1)
    np.testing.assert_allclose(out8.reshape(3, 8, *shape).sum(axis=1), out1, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(cov8.reshape(3, 8, *shape).sum(axis=1), cov1, rtol=1e-11, atol=1e-11)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    for k in range(8):
        S, C = np.zeros((3,) + shape), np.zeros((3,) + shape)
        for i in range(n):   # frame i alone, masked to octant k about its own centre
            angle = np.degrees(np.arctan2(yy - centres[i, 0], xx - centres[i, 1])) % 360
            mask = (angle // 45 == k)
            ref_S, ref_C = np.zeros((3,) + shape), np.zeros((3,) + shape)
            splat_rings_numpy(frames[i:i + 1] * mask, np.arange(1), 1.0, 0.0, centres[i:i + 1],
                              offsets[i:i + 1], A, R_IN, R_OUT, ref_S, ref_C)
            ones_S, _ = np.zeros((3,) + shape), None
            splat_rings_numpy(mask[None].astype(float), np.arange(1), 1.0, 0.0, centres[i:i + 1],
                              offsets[i:i + 1], A, R_IN, R_OUT, ones_S, np.zeros((3,) + shape))
            S += ref_S
            C += ones_S
        got = out8.reshape(3, 8, *shape)[:, k]
        got_c = cov8.reshape(3, 8, *shape)[:, k]
        assert C.sum() > 0
        np.testing.assert_allclose(got, S, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(got_c, C, rtol=1e-10, atol=1e-8)
