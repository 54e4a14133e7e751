"""Rotation and overfocus from the octants' shifts (stemcal.fit.sectors)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from stemcal.fit import build_cache
from stemcal.fit.parts import finish
from stemcal.fit.rings import PARTS, RingLoss
from stemcal.fit.sectors import octant_offsets, overlap_masks, sector_estimates, shifts
from stemcal.twin import OverfocusParams, simulate

BASE = dict(scan_pixel_size=0.5e-9, camera_length=0.2, detector_pixel_size=55e-6)


def test_shifts_of_known_displacements(monkeypatch):
    """Eight copies of one textured image, each displaced by a known sub-pixel amount
    (Fourier shift) and with its own gain: each is measured against the sum of the
    others, i.e. ``d_k`` minus the others' mean (to first order: 3 % short at 0.3 px,
    the shifts that matter being near zero at the optimum). With image and reference
    smoothed alike (the fit's setting) the same shifts, within a common gain."""
    import stemcal.fit.sectors as sectors

    rng = np.random.default_rng(3)
    base = ndimage.gaussian_filter(rng.normal(size=(140, 140)), 2.5)
    d = rng.uniform(-0.15, 0.15, size=(8, 2))
    S = np.stack([np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(base), d[k])).real * (1 + 0.1 * k)
                  for k in range(8)])
    C = np.ones_like(S)
    C[:, :10] = 0   # no coverage at one edge: left out
    monkeypatch.setattr(sectors, "SMOOTH", 0)
    got = shifts(S * C, C, overlap_masks(C))
    monkeypatch.setattr(sectors, "SMOOTH", 1)
    smoothed = shifts(S * C, C, overlap_masks(C))
    gain = float((smoothed * got).sum() / (got * got).sum())
    assert 0.8 < gain < 1.25
    np.testing.assert_allclose(smoothed, gain * got, atol=0.01)
    # the reference of k: the others' sum, displaced by their gain-weighted mean shift
    gains = 1 + 0.1 * np.arange(8)
    for k in range(8):
        others = np.delete(np.arange(8), k)
        want = d[k] - (gains[others, None] * d[others]).sum(axis=0) / gains[others].sum()
        np.testing.assert_allclose(got[k], want, rtol=0.03, atol=0.002)


def _reference_equations(S, C, good, passes):
    """The shifts' normal equations written out with NumPy and SciPy (the kernel's
    reference): image S_k / C_k, reference (sum S - S_k) / (sum C - C_k), both smoothed
    by [1, 2, 1] / 4 along y and x, regressors (ref, 1, d ref / dy, d ref / dx)."""
    rest_S, rest_C = S.sum(axis=0)[None] - S, C.sum(axis=0)[None] - C
    ref = np.divide(rest_S, rest_C, out=np.zeros(S.shape), where=rest_C > 0)
    img = np.divide(S, C, out=np.zeros(S.shape), where=C > 0)
    for _ in range(passes):
        for axis in (-2, -1):
            ref = ndimage.correlate1d(ref, [0.25, 0.5, 0.25], axis=axis, mode="nearest")
            img = ndimage.correlate1d(img, [0.25, 0.5, 0.25], axis=axis, mode="nearest")
    gy = np.zeros_like(ref)
    gx = np.zeros_like(ref)
    gy[:, 1:-1] = 0.5 * (ref[:, 2:] - ref[:, :-2])
    gx[:, :, 1:-1] = 0.5 * (ref[:, :, 2:] - ref[:, :, :-2])
    XtX, Xty = [], []
    for k in range(len(S)):
        X = np.stack([ref[k][good[k]], np.ones(good[k].sum()), gy[k][good[k]], gx[k][good[k]]], axis=1)
        XtX.append(X.T @ X)
        Xty.append(X.T @ img[k][good[k]])
    return np.array(XtX), np.array(Xty)


@pytest.mark.parametrize("passes", [0, 1, 2])
def test_shift_equations_of_all_groups_and_each_left_out(passes):
    """One kernel call gives the normal equations of every row (all groups, then each
    group left out) as the NumPy reference does on that row's sums, to rounding."""
    from stemcal.processing.shift_kernel import octant_shift_equations

    rng = np.random.default_rng(7)
    K, H, W = 4, 40, 36
    part_C = rng.uniform(0.0, 2.0, size=(K, 8, H, W))
    part_C[:, :, :, :5] = 0.0                     # no coverage at one edge
    part_C[1, 3, 10:20, 10:20] = 0.0              # a hole in one group's octant
    part_S = part_C * rng.normal(1.0, 0.3, size=(K, 8, H, W))
    all_S, all_C = part_S.sum(axis=0), part_C.sum(axis=0)
    good = overlap_masks(all_C)
    good[:, :passes + 1] = good[:, -passes - 1:] = False
    good[:, :, :passes + 1] = good[:, :, -passes - 1:] = False
    assert good.sum() > 1000
    XtX = np.zeros((K + 1, 8, 4, 4))
    Xty = np.zeros((K + 1, 8, 4))
    octant_shift_equations(all_S, all_C, part_S, part_C, good, passes, XtX, Xty)
    for row in range(K + 1):
        S = all_S - (part_S[row - 1] if row else 0.0)
        C = all_C - (part_C[row - 1] if row else 0.0)
        want_XtX, want_Xty = _reference_equations(S, C, good, passes)
        np.testing.assert_allclose(XtX[row], want_XtX, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(Xty[row], want_Xty, rtol=1e-10, atol=1e-9)


def test_octant_offsets_point_into_their_octants(ctx):
    truth = OverfocusParams(overfocus=1e-6, semiconv=6e-3, cy=31.0, cx=33.5, **BASE)
    data = simulate(truth, (8, 8), (64, 64), dose=None, seed=1)
    cache = build_cache(ctx, ctx.load("memory", data=data), bin=1, stride=1)
    q = octant_offsets(RingLoss(cache, truth))
    assert q.shape == (3, 8, 2)
    angles = np.degrees(np.arctan2(q[..., 0], q[..., 1])) % 360
    np.testing.assert_allclose(angles, np.broadcast_to(22.5 + 45 * np.arange(8), (3, 8)), atol=1e-9)
    radii = np.hypot(q[..., 0], q[..., 1])[:, 0]
    assert 0 < radii[0] < radii[1] < radii[2] < truth.disk_radius_px


@pytest.fixture(scope="module")
def geometric(ctx):
    truth = OverfocusParams(overfocus=1e-6, semiconv=6e-3, cy=31.0, cx=33.5, scan_rotation=-63.0,
                            flip_y=True, descan=((0.02, 0.0), (-0.01, 0.03)), **BASE)
    out = {}
    for dose in (None, 10.0):
        data = simulate(truth, (40, 40), (64, 64), dose=dose, seed=5)
        out[dose] = build_cache(ctx, ctx.load("memory", data=data, num_partitions=2),
                                params=truth)
    return truth, out


def test_sector_projections_in_reused_buffers_are_fresh_ones(geometric):
    """``project_sectors(reuse=True)`` fills the loss's own arrays again each call: the
    second projection is the same as one into new arrays (nothing of the first left in
    them), summed over the octants it is :meth:`RingLoss.project`'s, and the arrays are
    the same ones."""
    truth, caches = geometric
    rings = RingLoss(caches[10.0], truth, upsample=2.0)
    other = truth.replace(scan_rotation=truth.scan_rotation + 0.4)
    S1, C1 = rings.project_sectors(other, reuse=True)
    first = S1.copy()
    S2, C2 = rings.project_sectors(truth, 0.3, reuse=True)
    assert S2.base is S1.base and np.shares_memory(C1, C2)
    S, C = rings.project_sectors(truth, 0.3)
    np.testing.assert_array_equal(S2, S)
    np.testing.assert_array_equal(C2, C)
    assert not np.array_equal(first, S)
    Sr, Cr = rings.project(truth, 0.3)
    np.testing.assert_allclose(S2.sum(axis=2).transpose(1, 0, 2, 3), Sr, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(C2.sum(axis=2).transpose(1, 0, 2, 3), Cr, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("off", [(0.3, 1.0), (-0.2, -1.5)])
def test_estimates_from_a_start_off_the_truth(geometric, off):
    """From a start 0.2-0.3 deg and 1-1.5 % off: noise-free every part lands within
    0.01 deg and 0.05 % of the truth, in 4 to 6 projections; at 10 counts/px within
    0.15 deg and 0.5 % (this 40x40 scan's noise: rotation sd about 0.07 deg over seeds),
    with a jackknife sigma in that range."""
    truth, caches = geometric
    start = truth.replace(scan_rotation=truth.scan_rotation + off[0],
                          overfocus=truth.overfocus * (1 + off[1] / 100))
    steps = {"scan_rotation": 0.3, "overfocus": 0.75}
    est, n = sector_estimates(RingLoss(caches[None], start), start, steps)
    assert 4 <= n <= 6
    assert set(est) == set(PARTS)
    for part in ("disk70", "disk95", "rim"):
        rot, of = est[part]["scan_rotation"], est[part]["overfocus"]
        assert abs(rot[0] - truth.scan_rotation) < 0.01, (part, rot)
        assert abs(of[0] / truth.overfocus - 1) < 5e-4, (part, of)
    est, n = sector_estimates(RingLoss(caches[10.0], start), start, steps)
    rot, of = est["disk95"]["scan_rotation"], est["disk95"]["overfocus"]
    assert 0.005 < rot[1] < 0.2 and 1e-4 < of[1] / truth.overfocus < 5e-3
    assert abs(rot[0] - truth.scan_rotation) < 0.15
    assert abs(of[0] / truth.overfocus - 1) < 5e-3


def test_no_newton_step_where_the_first_estimate_is_already_within(geometric):
    """At the truth (noise-free) the first estimate's step is below CONVERGED of the gain's
    steps: the estimate comes from the projection there and the two stepped ones (3
    projections; a Newton step and its projection were made before, 4), and is as exact."""
    truth, caches = geometric
    steps = {"scan_rotation": 0.3, "overfocus": 0.75}
    for converge in (("overfocus",), ("scan_rotation", "overfocus")):
        est, n = sector_estimates(RingLoss(caches[None], truth), truth, steps, converge=converge)
        assert n == 3, converge
        rot, of = est["disk95"]["scan_rotation"], est["disk95"]["overfocus"]
        assert abs(rot[0] - truth.scan_rotation) < 0.01
        assert abs(of[0] / truth.overfocus - 1) < 5e-4


def test_finish_agrees_with_sampling_the_loss(geometric):
    """The two ways of the final stage measure the same thing: on the same
    data (10 counts/px) their rotation and overfocus agree within their uncertainties, and the octants
    take a quarter of the projections or fewer."""
    truth, caches = geometric
    start = truth.replace(scan_rotation=truth.scan_rotation + 0.1, overfocus=truth.overfocus * 1.005)
    free = ("scan_rotation", "overfocus")
    a = finish(caches[10.0], start, free=free, method="sectors")
    b = finish(caches[10.0], start, free=free, method="samples")
    for name in free:
        sa, sb = a.uncertainty[name], b.uncertainty[name]
        assert math.isfinite(sa) and sa > 0
        assert abs(getattr(a.params, name) - getattr(b.params, name)) < 2 * math.hypot(sa, sb), name
        assert a.parts[name]["used"] in ("disk95", "disk70")
    assert a.nfev * 4 <= b.nfev
    with pytest.raises(ValueError, match="method"):
        finish(caches[10.0], start, free=free, method="newton")


def test_the_hybrid_takes_the_overfocus_of_the_octants_and_samples_the_rotation(geometric):
    """method="hybrid": the overfocus (value, part used and uncertainty) is the octants',
    the rotation the loss's samples taken at that overfocus, within the samples' own
    uncertainty of the truth; it costs the octants plus one sampling of the rotation."""
    truth, caches = geometric
    start = truth.replace(scan_rotation=truth.scan_rotation + 0.1, overfocus=truth.overfocus * 1.005)
    free = ("scan_rotation", "overfocus")
    octants = finish(caches[10.0], start, free=free, method="sectors")
    hybrid = finish(caches[10.0], start, free=free, method="hybrid")
    assert hybrid.params.overfocus == octants.params.overfocus
    assert hybrid.uncertainty["overfocus"] == octants.uncertainty["overfocus"]
    assert hybrid.parts["overfocus"]["used"] == octants.parts["overfocus"]["used"]
    rotation = hybrid.params.scan_rotation
    assert rotation != octants.params.scan_rotation
    assert abs(rotation - truth.scan_rotation) < 2 * hybrid.uncertainty["scan_rotation"]
    assert octants.nfev < hybrid.nfev < octants.nfev + 2 * 11
