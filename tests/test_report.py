"""The report figure: before and after, colour bars, scale bars in nm, the disk, values in words.

The images are a simulated scan projected by the real OverfocusUDF with the
true geometry ("after") and with rotation 0 and no flip ("before"); the
figure is inspected as a matplotlib object (its axes, colour bars, scale
bars, circle and text) and written as PNG.
"""
from __future__ import annotations

import numpy as np
import pytest
from libertem.api import Context
from matplotlib.patches import Circle
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from stemcal.fit.passes import as_dataset, full_pass, image_quality
from stemcal.report import (quality_words, report_figure, scale_bar_length, value_lines,
                            write_report)
from stemcal.twin import OverfocusParams, simulate

TRUE = OverfocusParams(overfocus=1e-6, scan_pixel_size=3.75e-10, camera_length=0.2,
                       detector_pixel_size=55e-6, semiconv=0.3 * 64 * 55e-6 / 0.2,
                       cy=33.3, cx=29.3, scan_rotation=23.5, flip_y=True)
GUESS = TRUE.replace(scan_rotation=0.0, flip_y=False, cy=32.0, cx=32.0)


@pytest.fixture(scope="module")
def projected():
    data = simulate(TRUE, (24, 24), (64, 64), dose=5.0, seed=1)
    ctx, ds = as_dataset(Context.make_with("inline"), data)
    after = full_pass(ctx, ds, TRUE)
    before = full_pass(ctx, ds, GUESS)
    ctx.close()
    return after, before, data.sum(axis=(0, 1))


def summary(**extra):
    return {"scan_rotation": 23.512, "flip_y": True, "overfocus": 1.0012e-6, "cy": 33.31,
            "cx": 29.28, "uncertainty": {"scan_rotation": 0.031, "overfocus": 5.4e-10},
            "descan": [[0.01, 0.0], [0.0, -0.02]], "semiconv": TRUE.semiconv, "blur": 0.2345,
            "quality": "ok", "passes": 2, "seconds": 3.2, "uid": "abcdef12-record",
            "acquisition_uid": "01234567-run", **extra}


def test_values_have_units_and_uncertainties():
    text = "\n".join(value_lines(summary()))
    assert "scan rotation  23.512 ± 0.031 deg" in text
    assert "overfocus      1001.20 ± 0.54 nm" in text
    assert "beam centre    y 33.31 px, x 29.28 px" in text
    assert "px per scan px" in text and "mrad" in text
    assert "record         abcdef12-record" in text
    no_unc = "\n".join(value_lines(summary(uncertainty={"scan_rotation": None})))
    assert "23.512 deg" in no_unc and "±" not in no_unc.splitlines()[0]


def test_quality_in_words():
    assert quality_words("ok").startswith("trusted")
    assert quality_words("rotation uncertain (0.70 deg): too little specimen detail") == \
        "NOT trusted: rotation uncertain (0.70 deg): too little specimen detail"


@pytest.mark.parametrize("width, length", [(9.0, 1), (24 * 0.375, 1), (64.0, 10), (0.3, 0.05),
                                           (1000.0, 200)])
def test_scale_bar_lengths_are_round(width, length):
    assert scale_bar_length(width) == pytest.approx(length)


def test_report_figure(projected, tmp_path):
    after, before, frame_sum = projected
    # the guess is blurred, the fit sharp: what the figure is meant to show
    assert image_quality(before)[0] > image_quality(after)[0]
    fig = report_figure(after, summary(), params=TRUE, before=before["shifted_sum_normalised"],
                        guess=GUESS, frame_sum=frame_sum, title="calibration abcdef12")
    titles = [ax.get_title() for ax in fig.axes]
    assert any("projected with the guess" in t and "rotation 0.0 deg, no flip" in t
               for t in titles), titles
    assert any("projected with the fit" in t and "rotation 23.5 deg, flip" in t for t in titles)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 5  # one per image
    assert {b.get_ylabel() for b in bars} == {"mean counts / px", "counts"}
    sizebars = [a for ax in fig.axes for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(sizebars) == 4  # the four specimen-plane images
    # 24 scan px + margins at 0.375 nm: a 2 nm bar, 2 / 0.375 px long
    assert {a.txt_label.get_text() for a in sizebars} == {"2 nm"}
    (circle,) = [p for ax in fig.axes for p in ax.patches if isinstance(p, Circle)]
    assert circle.get_radius() == pytest.approx(TRUE.disk_radius_px)
    assert circle.center == pytest.approx((TRUE.cx, TRUE.cy))
    text = "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "1001.20 ± 0.54 nm" in text and "trusted" in text
    path = write_report(tmp_path / "r.png", after, summary(), params=TRUE, frame_sum=frame_sum)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 800 and img.shape[1] > 1200  # readable, not a 396 px strip
    assert float(np.std(img[..., :3])) > 0
