"""Defective detector pixels (hot, dead, a chip gap): found, filled, and the fit right.

Truth from the simulator's geometry; the defects are added to its frames as a
detector has them (the same pixels in every frame). Before stemcal.fit.defects one hot
pixel at 5 counts/px stopped the cold start ('the bright-field disk is too small'),
and a dead column or a 3 px cross of zeros through the disk sent the rotation tens of
degrees off or stopped it ('does not move with the scan').
"""
from __future__ import annotations

import numpy as np
import pytest

from stemcal.fit.coarse import cold_start
from stemcal.fit.defects import fill_defects, find_defects
from stemcal.twin import OverfocusParams, simulate

NAV, SIG = (32, 32), (80, 80)
TRUTH = OverfocusParams(overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2,
                        detector_pixel_size=55e-6, semiconv=8e-3, cy=42.3, cx=37.7,
                        scan_rotation=-33.0, flip_y=True)


def frames(dose=5.0, seed=1):
    return simulate(TRUTH, NAV, SIG, dose=dose, seed=seed).astype(np.uint16)


def damaged(data, kind):
    d = data.copy()
    if kind == "hot":
        d[..., 30, 50] = 4095                  # inside the disk
        d[..., 5, 70] = 65535 if d.dtype == np.uint16 else 4095   # in the dark field
    elif kind == "dead column":
        d[..., :, 40] = 0
    elif kind == "cross":
        d[..., 39:42, :] = 0                   # a quad detector's gap, 3 px, through the disk
        d[..., :, 39:42] = 0
    return d


def test_clean_frames_have_no_defects_and_stay_untouched():
    for seed, dose in ((1, 0.5), (2, 5.0), (3, 200.0)):
        data = frames(dose, seed).reshape(-1, *SIG)
        found = find_defects(data.mean(axis=0), frames=len(data))
        assert not found.mask.any(), found.counts()
    # pure noise, sparse: a pixel that never counted at 0.01 counts/px is no dead pixel
    # (without the count it takes, 22 of 9,216 were called dead)
    noise = np.random.default_rng(0).poisson(0.01, (576, 96, 96)).astype(np.float32)
    assert not find_defects(noise.mean(axis=0), frames=576).mask.any()


@pytest.mark.parametrize("kind", ["hot", "dead column", "cross"])
def test_defects_are_found_and_filled_from_their_neighbours(kind):
    clean = frames(50.0).reshape(-1, *SIG)
    data = damaged(clean, kind)
    found = find_defects(data.mean(axis=0))
    expected = np.zeros(SIG, bool)
    if kind == "hot":
        expected[30, 50] = expected[5, 70] = True
        assert np.array_equal(found.hot, expected) and not found.dead.any()
    elif kind == "dead column":
        expected[:, 40] = True                 # along its whole length, not only in the disk
        assert np.array_equal(found.dead, expected) and not found.hot.any()
    else:
        expected[39:42, :] = expected[:, 39:42] = True
        assert np.array_equal(found.dead, expected) and not found.hot.any()
    assert fill_defects(data, found) == expected.sum()
    # filled values follow the frames around them: close to what the detector would have
    # counted there (the clean frames), far from the defect's own value
    inside = expected.copy()
    yy, xx = np.indices(SIG)
    inside &= np.hypot(yy - TRUTH.cy, xx - TRUTH.cx) < 0.8 * TRUTH.disk_radius_px
    if inside.any():
        got, truth = data[:, inside].astype(float), clean[:, inside].astype(float)
        assert abs(got.mean() / truth.mean() - 1) < 0.1
        # each pixel's own counting noise (14 % at 50 counts) is not in its neighbours:
        # the specimen's part is (0.36-0.6 measured; 0 would be a fill that ignores it)
        assert np.corrcoef(got.ravel(), truth.ravel())[0, 1] > 0.25


@pytest.mark.parametrize("kind", ["hot", "dead column", "cross"])
def test_the_cold_start_is_right_with_defects(kind):
    data = damaged(frames(5.0), kind)
    fit = cold_start(data, scan_pixel_size=TRUTH.scan_pixel_size,
                     camera_length=TRUTH.camera_length,
                     detector_pixel_size=TRUTH.detector_pixel_size, overfocus=1.2e-6,
                     confirm=False)
    p = fit.params
    assert fit.quality == "ok", fit.quality
    assert p.flip_y is TRUTH.flip_y
    assert abs((p.scan_rotation - TRUTH.scan_rotation + 180) % 360 - 180) < 0.15
    assert abs(p.overfocus / TRUTH.overfocus - 1) < 0.01
    assert np.hypot(p.cy - TRUTH.cy, p.cx - TRUTH.cx) < 0.3
    assert fit.extra["defects"]["filled"] > 0


def test_stemcal_fit_says_which_pixels_it_filled(tmp_path):
    """`stemcal fit --json` names the defects it filled (and the fit is right)."""
    import json
    import subprocess
    import sys

    path = tmp_path / "hot.npy"
    np.save(path, damaged(frames(5.0), "hot"))
    out = subprocess.run([sys.executable, "-m", "stemcal.cli", "fit", str(path),
                          "--scan-pixel-size", str(TRUTH.scan_pixel_size),
                          "--camera-length", str(TRUTH.camera_length),
                          "--detector-pixel-size", str(TRUTH.detector_pixel_size),
                          "--overfocus", "1.2e-6", "--json", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["detector_defects"] == {"hot": 2, "dead": 0, "filled": 2}, res
    assert res["quality"] == "ok"
    assert abs((res["scan_rotation"] - TRUTH.scan_rotation + 180) % 360 - 180) < 0.15
    assert "detector defects: 2 hot and 0 dead pixels" in out.stderr
