"""The app in an acquisition session: its *Live run* tab follows the session's runs.

A session on the simulated microscope (:func:`stemcal.session.make_session`:
RunEngine, embedded catalog, recorder) and the app on its catalog and
recorder, served in a thread and opened in Chromium. The calibrate plan takes
a live scan; the tab shows the run's images and, once the recorder has
calibrated it, its record, which *Adjust this run's record* opens in the Adjust
tab from the run's own HDF5 file, at the record's values.
"""
from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from stemcal.app import AppServer, StemcalApp
from stemcal.config import SimSettings
from stemcal.plans import calibrate
from stemcal.session import make_session

from chromium import Screenshots, launch, model, wait_drawn, wait_ready


@pytest.fixture
def session(tmp_path):
    s = make_session(tmp_path / "catalog", sim=SimSettings(nav_shape=(40, 40), sig_shape=(96, 96)))
    yield s
    s.close()


def test_live_run_of_the_session(session, tmp_path, capsys):
    app = StemcalApp(catalog=session.client, recorder=session.recorder, operator="tester")
    server = AppServer(app).start()
    shots = Screenshots(tmp_path / "screenshots")
    inst = session.instrument
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(server.url)
            wait_ready(page)
            page.get_by_text("Live run", exact=True).click()
            assert model(page, "live_status", "text") == "no live run yet"

            record = session.RE(calibrate(inst.detector, inst.scan, inst.optics,
                                          callback=session.recorder, live=True)).plan_result
            n = 40 * 40
            page.wait_for_function("(t) => Bokeh.documents[0].get_model_by_name('live_status')"
                                   ".text.includes(t)", arg=f"record {record.uid[:8]}")
            status = model(page, "live_status", "text")
            shots.take(page, "live-run")
            assert f"{n} / {n} frames" in status and "calibration_data" in status, status
            assert model(page, "live_shifted_sum_normalised", "data")["dw"][0] > 1
            assert record.valid

            page.get_by_role("button", name="Adjust this run's record").click()
            page.wait_for_function("() => JSON.parse(Bokeh.documents[0].get_model_by_name("
                                   "'jobs').text).finished > 0", timeout=120_000)
            drawn = wait_drawn(page)
            shots.take(page, "adjust-the-record")
            assert drawn["scan_rotation"] == pytest.approx(record.scan_rotation, abs=1e-9)
            assert drawn["flip_y"] is record.flip_y
            assert f"record {record.uid[:8]}" in model(page, "source", "text")
            browser.close()
    finally:
        server.stop()
        app.close()
        with capsys.disabled():
            print(f"\nlive-run test screenshots: {', '.join(map(str, shots.paths))}")
