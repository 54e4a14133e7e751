"""The app's jobs without a browser: Auto, Refine from here and Record, with their progress."""
from __future__ import annotations

import numpy as np
import pytest
from libertem.api import Context

from stemcal.app import actions
from stemcal.app.progress import StagedProgress
from stemcal.app.projection import CacheProjector
from stemcal.app.sources import open_file, open_record
from stemcal.catalog import (UnavailableCatalog, calibration_history, get_record, open_catalog,
                             record_images)
from stemcal.catalog.spool import spooled
from stemcal.fit.passes import full_pass, image_quality

from scan_setup import SIZES


def angle_error(a: float, b: float) -> float:
    return (a - b + 180) % 360 - 180


@pytest.fixture(scope="module")
def opened(small_scan):
    path, truth = small_scan
    ctx = Context.make_with("inline")
    source = open_file(ctx, path, SIZES)
    yield ctx, source, truth
    ctx.close()


def progress_log(stages):
    seen = []
    return StagedProgress(stages, seen.append), seen


def test_auto_finds_the_geometry_and_reports_its_stages(opened):
    ctx, source, truth = opened
    progress, seen = progress_log(actions.AUTO_STAGES)
    fit = actions.auto(ctx, source, progress)
    assert abs(angle_error(fit.params.scan_rotation, truth.scan_rotation)) < 0.2
    assert fit.params.flip_y is truth.flip_y
    assert fit.params.overfocus == pytest.approx(truth.overfocus, rel=0.01)
    # the stages in order, entered as LiberTEM started and ended the two raw passes
    labels = [stage.label for stage in actions.AUTO_STAGES]
    order = [next(i for i, label in enumerate(labels) if v.text.startswith(label)) for v in seen]
    assert order == sorted(order) and set(order) == {0, 1, 2}
    fractions = [v.fraction for v in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # the last pass ended
    assert any(0 < f < 1 / 6 for f in fractions)  # frames of the first pass were reported


def test_refine_from_here_on_the_cache(opened):
    ctx, source, truth = opened
    cache = CacheProjector.from_dataset(ctx, source.dataset, truth).cache
    here = truth.replace(scan_rotation=truth.scan_rotation + 1.5, overfocus=1.03 * truth.overfocus)
    progress, seen = progress_log(actions.REFINE_STAGES)
    fit = actions.refine_from(ctx, source, cache, here, progress)
    assert abs(angle_error(fit.params.scan_rotation, truth.scan_rotation)) < 0.15
    assert fit.params.overfocus == pytest.approx(truth.overfocus, rel=0.01)
    assert (fit.params.cy, fit.params.descan) == (here.cy, here.descan)  # not refined
    assert fit.passes == 0 and fit.quality == "ok"
    stages = list(dict.fromkeys(v.text.split(",")[0] for v in seen))
    assert stages == [s.label for s in actions.REFINE_STAGES]


def test_record_from_a_file_then_from_that_record(opened, tmp_path):
    ctx, source, truth = opened
    client = open_catalog(tmp_path / "catalog")
    adjusted = truth.replace(scan_rotation=truth.scan_rotation + 0.4)
    progress, _ = progress_log(actions.RECORD_STAGES)
    first, spooled_, reason = actions.manual_record(
        ctx, source, adjusted, client=client, adjusted_by="alice", steps=["file", "auto", "hand"],
        progress=progress)
    assert (spooled_, reason) == (False, None)
    stored = get_record(client, first.uid)
    assert stored == first and stored.params() == adjusted
    assert stored.fit_settings == {"method": "manual", "adjusted_by": "alice",
                                   "from_record": None, "steps": ["file", "auto", "hand"],
                                   "data": source.data}
    assert stored.acquisition_uid is None and stored.supersedes is None and stored.valid
    # the blur and images are a full pass's at the recorded values
    images = full_pass(ctx, source.dataset, adjusted)
    assert stored.blur == pytest.approx(image_quality(images)[0], abs=1e-9)
    kept = record_images(client, first.uid)
    assert set(kept) == {"point", "selected", "shifted_sum_normalised", "sum"}
    np.testing.assert_allclose(kept["sum"], images["sum"])

    # adjusting that record again: its frames are found from the record, the new one supersedes it
    again = open_record(ctx, stored)
    assert again.start == adjusted and again.record == stored
    second, _, _ = actions.manual_record(
        ctx, again, truth, client=client, adjusted_by="bob", steps=["record", "refine"],
        progress=progress_log(actions.RECORD_STAGES)[0])
    assert second.supersedes == first.uid and second.fit_settings["from_record"] == first.uid
    assert second.fit_settings["data"] == source.data
    assert [r.uid for r in calibration_history(client)] == [second.uid, first.uid]


def test_record_needs_an_operator_and_is_spooled_without_a_catalog(opened, tmp_path):
    ctx, source, truth = opened
    with pytest.raises(ValueError, match="who adjusted"):
        actions.manual_record(ctx, source, truth, client=None, adjusted_by=" ", steps=[],
                              progress=progress_log(actions.RECORD_STAGES)[0])
    down = UnavailableCatalog(tmp_path / "gone", "the disk is gone")
    record, was_spooled, reason = actions.manual_record(
        ctx, source, truth, client=down, adjusted_by="carol", steps=["file"],
        progress=progress_log(actions.RECORD_STAGES)[0])
    assert was_spooled and reason == "the disk is gone"
    assert record.uid in [entry.uid for entry in spooled()]


def test_a_record_without_its_frames_says_so(opened, tmp_path):
    ctx, source, truth = opened
    from stemcal.record import CalibrationRecord
    bare = CalibrationRecord(scan_rotation=1.0, flip_y=False, overfocus=1e-6, cy=1.0, cx=1.0,
                             scan_pixel_size=1e-9, camera_length=0.2, detector_pixel_size=55e-6,
                             semiconv=0.01)
    with pytest.raises(ValueError, match="does not say where its frames are"):
        open_record(ctx, bare)
    moved = bare.correct(fit_settings={"data": {"uri": (tmp_path / "gone.npy").as_uri()}})
    with pytest.raises(ValueError, match="not here any more"):
        open_record(ctx, moved)


def test_nothing_is_recorded_from_frames_holding_nan(opened, tmp_path):
    """Frames with NaN pixels: the page showed 'blur: nan' and Record wrote a record with
    quality 'ok' and no blur; all-zero frames were recorded 'ok' with blur 1.0. Now Record
    refuses both, saying why; nothing is written."""
    ctx, source, truth = opened
    from stemcal.runs import resource_path
    frames = np.load(resource_path(source.data["uri"])).astype(np.float32)
    frames[3, 5, 40, 40] = np.nan
    path = tmp_path / "with_nan.npy"
    np.save(path, frames)
    bad = open_file(ctx, path, SIZES)
    catalog = open_catalog(tmp_path / "catalog")
    kept = len(spooled())
    with pytest.raises(ValueError, match="nothing to record: the frames hold NaN"):
        actions.manual_record(ctx, bad, truth, client=catalog, adjusted_by="dora",
                              steps=["file"], progress=progress_log(actions.RECORD_STAGES)[0])
    np.save(path, np.zeros_like(frames))   # no counts at all: the blur says 1.0, not NaN
    blank = open_file(ctx, path, SIZES)
    with pytest.raises(ValueError, match="nothing to record: the frames are all alike"):
        actions.manual_record(ctx, blank, truth, client=catalog, adjusted_by="dora",
                              steps=["file"], progress=progress_log(actions.RECORD_STAGES)[0])
    assert calibration_history(catalog) == [] and len(spooled()) == kept


def test_the_page_s_values_an_empty_field_and_a_rotation_beyond_a_turn():
    """An emptied field (the browser sends null) kept its last value, which Record then
    wrote; a rotation typed as 1000 deg was recorded as 1000. Now an empty field is no
    geometry (said on the page), and the rotation is taken modulo a turn."""
    from stemcal.app.controls import GeometryControls, params_with

    from scan_setup import TRUTH as SIZES_PARAMS

    changes = []
    controls = GeometryControls(changes.append)
    controls.set(SIZES_PARAMS)
    assert controls.params(SIZES_PARAMS).scan_rotation == pytest.approx(
        SIZES_PARAMS.scan_rotation)
    controls.fields["cx"].value = None
    assert changes[-1] is False
    with pytest.raises(ValueError, match="must be a number"):
        controls.params(SIZES_PARAMS)
    controls.fields["cx"].value = 40.0
    assert controls.params(SIZES_PARAMS).cx == 40.0
    values = {**controls.values, "scan_rotation": 1000.0}
    assert params_with(SIZES_PARAMS, values, False).scan_rotation == pytest.approx(-80.0)
    values["scan_rotation"] = 180.0
    assert params_with(SIZES_PARAMS, values, False).scan_rotation == pytest.approx(-180.0)


def test_a_file_cut_short_after_it_was_opened_says_so(small_scan, tmp_path):
    """Record on a .npy cut to half after the page opened it: 'record failed:
    AssertionError'. Now it says the file changed since it was opened."""
    import shutil

    path, truth = small_scan
    copy = tmp_path / "copy.npy"
    shutil.copyfile(path, copy)
    ctx = Context.make_with("inline")
    try:
        source = open_file(ctx, copy, SIZES)
        with open(copy, "r+b") as f:
            f.truncate(copy.stat().st_size // 2)
        with pytest.raises(OSError, match="the file changed since it was opened"):
            actions.manual_record(ctx, source, truth, client=UnavailableCatalog(tmp_path, "x"),
                                  adjusted_by="erin", steps=["file"],
                                  progress=progress_log(actions.RECORD_STAGES)[0])
    finally:
        ctx.close()
