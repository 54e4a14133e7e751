"""The app end to end in a real headless Chromium: ``stemcal app DATASET`` as a user runs it.

A simulated 40x40 scan of 96x96 frames (rotation 23.5 deg, flipped, descan, 5
counts/px; ``tests/app/scan_setup.py``) is served by ``stemcal app`` with only the
sizes and an overfocus guess 30 % off. In the page: it loads; *Auto* finds the geometry
(checked against the simulation's truth) and the page's blur is that of the
sharpened image; dragging the rotation slider's handle moves the rotation and
the blur grows; *Record* writes a manual record, which ``stemcal history
--json`` and ``stemcal show --json`` find with its provenance; the History tab
lists it. A screenshot of each step is kept under the test's output directory
(the paths are printed).
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from app_process import AppProcess, run, run_json
from chromium import Screenshots, blur_on_page, launch, model, press, wait_drawn, wait_ready

GUESS = 1.3  # the overfocus guess, times the truth


@pytest.fixture(scope="module")
def served(small_scan, tmp_path_factory):
    path, truth = small_scan
    d = tmp_path_factory.mktemp("app")
    app = AppProcess(path, "--scan-pixel-size", truth.scan_pixel_size,
                     "--camera-length", truth.camera_length,
                     "--detector-pixel-size", truth.detector_pixel_size,
                     "--overfocus", truth.overfocus * GUESS, "--catalog", d / "catalog",
                     "--operator", "tester")
    yield app, truth.to_dict(), d
    assert app.stop() == 0, "".join(app.stderr)[-3000:]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        br = launch(pw)
        yield br
        br.close()


def test_load_auto_rotate_record_in_chromium(served, browser, tmp_path, capsys):
    app, truth, d = served
    shots = Screenshots(tmp_path / "screenshots")
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        # 1. the dataset is loaded and shown at the first geometry (no fit yet)
        page.goto(app.url)
        wait_ready(page)
        first = wait_drawn(page)
        shots.take(page, "loaded")
        assert "small.npy" in model(page, "source", "text")
        assert first["scan_rotation"] == 0 and first["flip_y"] is False
        assert first["overfocus"] == pytest.approx(truth["overfocus"] * GUESS * 1e9)

        # 2. Auto: a cold start; the page shows the sharpened image's blur
        status = press(page, "Auto")
        auto = wait_drawn(page)
        sharp = blur_on_page(page)
        shots.take(page, "auto")
        assert "quality ok" in status, status
        assert abs((auto["scan_rotation"] - truth["scan_rotation"] + 180) % 360 - 180) < 0.15
        assert auto["flip_y"] is truth["flip_y"]
        assert auto["overfocus"] == pytest.approx(truth["overfocus"] * 1e9, rel=0.01)
        assert auto["cy"] == pytest.approx(truth["cy"], abs=0.3)
        assert sharp == pytest.approx(auto["blur"], abs=5e-5)  # the text is the drawn image's

        # 3. drag the rotation slider's handle (the first slider) to the right
        handle = page.locator(".noUi-handle").first
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 12, y, steps=6)
        page.mouse.up()
        moved = wait_drawn(page)
        blurred = blur_on_page(page)
        shots.take(page, "rotated")
        assert moved["scan_rotation"] > auto["scan_rotation"] + 5  # 12 px of a 360 deg slider
        assert moved["previews"] >= 1  # while the handle moved: previews from a quarter
        assert float(model(page, "scan_rotation_field", "value")) == moved["scan_rotation"]
        assert blurred > sharp + 0.05, (sharp, blurred)

        # 4. Record: a manual record of the values on the page
        status = press(page, "Record")
        uid = model(page, "recorded", "text")
        shots.take(page, "recorded")
        assert re.fullmatch(r"[0-9a-f-]{36}", uid) and "in the catalog" in status, status

        # 5. the History tab lists it, with its images
        page.get_by_text("History", exact=True).click()
        page.wait_for_function("(u) => Bokeh.documents[0].get_model_by_name('history_table')"
                               ".data.uid.includes(u)", arg=uid[:8])
        page.get_by_text(uid[:8], exact=True).click()
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('history_shifted_sum_"
                               "normalised').data.dw[0] > 1")
        shots.take(page, "history")
    finally:
        page.close()
        with capsys.disabled():
            print(f"\nbrowser test screenshots: {', '.join(map(str, shots.paths))}")
    assert not errors, errors

    # `stemcal history --json` has the record; `show` its provenance
    listed = {r["uid"]: r for r in run_json("history", "--catalog", d / "catalog", "--json")}
    assert listed[uid]["scan_rotation"] == pytest.approx(moved["scan_rotation"], abs=1e-9)
    assert listed[uid]["flip_y"] is truth["flip_y"] and listed[uid]["valid"] is True
    shown = run_json("show", uid, "--catalog", d / "catalog", "--json")
    settings = shown["fit_settings"]
    assert settings["method"] == "manual" and settings["adjusted_by"] == "tester"
    assert settings["from_record"] is None and shown["supersedes"] is None
    assert settings["steps"] == ["file", "auto", "hand"]
    assert settings["data"]["uri"].endswith("small.npy")
    assert shown["blur"] == pytest.approx(blurred, abs=0.03)  # full pass vs the cache


def test_bad_command_lines_are_one_line_errors(tmp_path):
    cases = {
        "sizes": (["app", tmp_path / "x.npy"], "--scan-pixel-size"),
        "both": (["app", tmp_path / "x.npy", "--record", "0123456789"], "not both"),
        "missing file": (["app", tmp_path / "x.npy", "--scan-pixel-size", "1e-9",
                          "--camera-length", "0.2", "--detector-pixel-size", "55e-6",
                          "--overfocus", "1e-6", "--port", "0"], "no such file"),
        "no catalog": (["app", "--record", "0123456789", "--catalog", tmp_path / "none"],
                       "no catalog"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores
        procs = dict(zip(cases, pool.map(lambda case: run(*case[0]), cases.values())))
    for name, (args, words) in cases.items():
        proc = procs[name]
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stemcal: error:"), (name, proc.stderr)
        assert words in lines[0], (name, lines[0])
        assert proc.stdout == "", name


def test_names_and_messages_are_text_never_markup(served, browser):
    """An adversarial sweep ran script in the page: a record naming frames at a path with
    markup in it ('<img src=x onerror=...>'), whose 'not here any more' message went into
    the status line as HTML. Messages, file names and uids are shown as text now: the
    markup is there to read, no element is made and no script runs."""
    from stemcal.catalog import open_catalog, write_record
    from stemcal.record import CalibrationRecord

    app, truth, d = served
    hostile = d / "<img src=x onerror=window.__xss=1>.npy"   # never created: a missing file
    record = CalibrationRecord(scan_rotation=1.0, flip_y=False, overfocus=1e-6, cy=40.0,
                               cx=40.0, scan_pixel_size=1e-9, camera_length=0.2,
                               detector_pixel_size=55e-6, semiconv=0.01,
                               quality="<b>bold</b> <script>window.__xss=2</script>",
                               fit_settings={"data": {"uri": hostile.as_uri()},
                                             "method": "<img src=y onerror=window.__xss=3>"})
    with_images = CalibrationRecord(scan_rotation=2.0, flip_y=False, overfocus=1e-6, cy=40.0,
                                    cx=40.0, scan_pixel_size=1e-9, camera_length=0.2,
                                    detector_pixel_size=55e-6, semiconv=0.01)
    client = open_catalog(d / "catalog")
    write_record(client, with_images, {"shifted_sum_normalised": np.ones((12, 10), np.float32)})
    write_record(client, record)
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.set_default_timeout(60_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    try:
        page.goto(app.url)
        wait_ready(page)
        # an emptied field is no geometry, and says so until the page holds one again
        set_field = "([n, v]) => { Bokeh.documents[0].get_model_by_name(n).value = v; }"
        status_is = "(t) => Bokeh.documents[0].get_model_by_name('status').text == t"
        page.evaluate(set_field, ["cx_field", None])
        page.wait_for_function(status_is, arg="not a geometry: centre x must be a number")
        page.evaluate(set_field, ["cx_field", 47.5])
        page.wait_for_function(status_is, arg="")
        page.get_by_text("History", exact=True).click()
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_function("(u) => Bokeh.documents[0].get_model_by_name('history_table')"
                               ".data.uid.includes(u)", arg=record.uid[:8])
        # a record with images, then one without: its details must not stand above the
        # other's images (they stayed, in the sweep)
        page.get_by_text(with_images.uid[:8], exact=True).click()
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('history_shifted_sum_"
                               "normalised').data.dw[0] == 10")
        page.get_by_text(record.uid[:8], exact=True).click()
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('history_status')"
                               ".text.includes('holds no images')")
        assert model(page, "history_shifted_sum_normalised", "data")["dw"] == [1]
        page.get_by_role("button", name="Adjust this record").click()
        page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('status').text"
                               ".includes('not here any more')")
        status = model(page, "status", "text")
        assert "<img src=x onerror=window.__xss=1>.npy" in status, status
        assert page.locator("img[src=x], img[src=y], b:text('bold')").count() == 0
        assert page.evaluate("() => window.__xss === undefined"), "script ran in the page"
        assert dialogs == []
    finally:
        page.close()
