"""Feedback while a calibration runs: progress through bluesky's waiting hook, readable tables.

A real :class:`bluesky.utils.ProgressBarManager` is the RunEngine's
``waiting_hook`` during ``calibrate`` on the simulated instrument; its bars
(bluesky's ``TerminalProgressBar``, recording what it is told) must get the
fit's stages in order and reach 100 %. A real ``BestEffortCallback`` prints the
tables: ``bp.count([optics, scan])`` shows the overfocus in nm, and each
attempt of ``calibrate`` adds a row with the fitted values.
"""
from __future__ import annotations

import contextlib
import io
import re
import time
from types import SimpleNamespace

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.simulators import summarize_plan
from bluesky.utils import ProgressBarManager, TerminalProgressBar

from stemcal.callbacks import CalibrationRecorder
from stemcal.callbacks.progress import progress_bars
from stemcal.catalog import open_catalog
from stemcal.devices import ManualClock, make_sim_instrument
from stemcal.fit.progress import COLD_START_STAGES, FitProgress
from stemcal.plans import calibrate

from twin_setup import NAV, SCAN_PIXEL, SIG, SPECIMEN, TRUTH  # noqa: E402


class RecordingBar(TerminalProgressBar):
    """bluesky's terminal progress bar, keeping every update it draws."""

    updates: list[dict] = []

    def update(self, pos, **kw):
        RecordingBar.updates.append(kw)
        super().update(pos, **kw)


def table(text: str, column: str) -> list[str]:
    """The cells of ``column`` in the table(s) a LiveTable printed."""
    cells = []
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        row = [c.strip() for c in line.strip("|").split("|")]
        if column in row:
            header = row
        elif header is not None and len(row) == len(header):
            cells.append(row[header.index(column)])
    return cells


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("feedback")
    client = open_catalog(d / "catalog", readable_storage=[d / "raw"])
    clock = ManualClock()
    inst = make_sim_instrument(d / "raw", truth=TRUTH, sig_shape=(SIG, SIG), specimen=SPECIMEN,
                               dose=5.0, seed=2, clock=clock.time, sleep=clock.sleep)
    for sig, value in ((inst.scan.shape_y, NAV), (inst.scan.shape_x, NAV),
                       (inst.scan.pixel_size, SCAN_PIXEL)):
        sig.set(value).wait(timeout=5)
    RE = RunEngine({}, call_returns_result=True)
    out = io.StringIO()
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
    recorder = CalibrationRecorder(client, figure_dir=d / "figures")
    RE.subscribe(recorder)
    at_stop = {}  # what each live view said when its run stopped (before the fit)

    def probe(name, doc):
        if name == "stop" and recorder.handles(doc["run_start"]):
            view = recorder.live_view(doc["run_start"])
            at_stop[doc["run_start"]] = (view.geometry, view.figure.figure._suptitle.get_text(),
                                         view.blur)

    RE.subscribe(probe)
    RecordingBar.updates = []
    RE.waiting_hook = ProgressBarManager(lambda objs: RecordingBar(objs, delay_draw=0))
    with contextlib.redirect_stdout(out):  # the table and the bars
        record = RE(calibrate(inst.detector, inst.scan, inst.optics,
                              callback=recorder)).plan_result
    view = recorder.live_view(record.acquisition_uid)
    recorder.close()
    yield SimpleNamespace(record=record, updates=list(RecordingBar.updates), table=out.getvalue(),
                          inst=inst, figures=d / "figures", at_stop=at_stop, view=view)


def test_progress_bar_manager_receives_the_fit_progress(calibrated):
    assert calibrated.record.valid
    fit = [u for u in calibrated.updates if "calibration of run" in (u.get("name") or "")]
    assert fit, calibrated.updates
    stages = [u["name"].split(": ", 1)[1] for u in fit]
    seen = [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    # the stages of the cold start, in order, then done
    order = [name for name, _ in COLD_START_STAGES] + ["done"]
    assert [s for s in seen if s in order] == order, seen
    current = [u["current"] for u in fit]
    assert current == sorted(current) and current[-1] == 100.0 and current[0] < 10
    assert all(u["unit"] == "%" and u["target"] == 100.0 and u["initial"] == 0.0 for u in fit)
    # partitions of the cache pass moved the bar within that stage
    assert len({u["current"] for u in fit if u["name"].endswith("cache pass")}) >= 2


def test_progress_bar_manager_receives_the_acquisition_progress(calibrated):
    acq = [u for u in calibrated.updates if u.get("name") == "merlin: acquisition"]
    assert acq and all(u["unit"] == "frames" for u in acq)
    assert acq[-1]["current"] == acq[-1]["target"] == NAV * NAV
    assert [u["current"] for u in acq] == sorted(u["current"] for u in acq)


def test_the_result_row_shows_the_fitted_values(calibrated):
    rec = calibrated.record
    rotation = table(calibrated.table, "fit_scan_rotation")
    overfocus = table(calibrated.table, "fit_overfocus_nm")
    assert rotation and overfocus, calibrated.table
    assert float(rotation[-1]) == pytest.approx(rec.scan_rotation, abs=1e-3)
    assert float(overfocus[-1]) == pytest.approx(rec.overfocus * 1e9, abs=0.01)
    assert 1000 < float(overfocus[-1]) < 1100  # nm: 1.05 um, readable
    assert table(calibrated.table, "fit_valid")[-1] == "True"


def test_figures_are_named_by_the_record_and_the_live_view_says_what_it_shows(calibrated):
    rec, view = calibrated.record, calibrated.view
    names = sorted(p.name for p in calibrated.figures.iterdir())
    assert names == [f"calibration_{rec.uid[:8]}.png", f"live_{rec.acquisition_uid[:8]}.png"]
    geometry, title, blur = calibrated.at_stop[rec.acquisition_uid]
    assert geometry.startswith("projected with the guess (rotation 0.00 deg, no flip, "
                               "overfocus 1000.0 nm)") and geometry.endswith("until the fit is in")
    assert geometry in title
    # redrawn with the fit once it was in, and saved again
    assert view.geometry == (f"projected with the fit: rotation {rec.scan_rotation:.2f} deg, "
                             f"flip, overfocus {rec.overfocus * 1e9:.1f} nm")
    assert view.geometry in view.figure.figure._suptitle.get_text()
    assert view.blur == pytest.approx(rec.blur) and view.blur < blur  # sharper than the guess
    assert view.guess_images  # the report's "before" came from the live view


def test_best_effort_table_shows_the_overfocus_in_nm():
    from stemcal.devices import MicroscopeOptics, ScanGenerator
    optics, scan = MicroscopeOptics(name="optics"), ScanGenerator(name="scan")
    optics.overfocus.set(1.05e-6).wait()
    scan.pixel_size.set(3.75e-10).wait()
    scan.rotation.set(-12.345).wait()
    RE = RunEngine({})
    out = io.StringIO()
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
    with contextlib.redirect_stdout(out):
        RE(bp.count([optics, scan]))
    text = out.getvalue()
    assert table(text, "optics_overfocus_nm") == ["1050.0"], text
    assert table(text, "optics_camera_length") == ["0.200"], text
    assert table(text, "scan_pixel_size_nm") == ["0.3750"], text
    assert table(text, "scan_rotation") == ["-12.35"], text
    desc = optics.describe()["optics_overfocus_nm"]
    assert desc["units"] == "nm" and desc["precision"] == 1


def test_fit_progress_maps_stages_and_passes():
    seen = []
    fp = FitProgress(lambda stage, f: seen.append((stage, f)))
    from libertem.common.progress import ProgressState
    fp.stage("cache pass")
    fp.start(ProgressState(0, 100, 0, 1, 4, "a"))
    fp.update(ProgressState(50, 100, 2, 1, 4, "a"))
    fp.end(ProgressState(100, 100, 4, 0, 4, "a"))
    fp.stage("final stage")
    fp.start(ProgressState(0, 100, 0, 1, 4, "b"))  # the confirming pass inside the final stage
    fp.stage("done")
    names = [s for s, _ in seen]
    assert names[:4] == ["cache pass"] * 4 and "confirming pass" in names
    assert [f for _, f in seen] == sorted(f for _, f in seen) and seen[-1] == ("done", 1.0)
    assert seen[2][1] == pytest.approx(0.5 * COLD_START_STAGES[0][1])


def test_tqdm_bars_go_to_the_given_stream():
    """The CLI's bars: stderr, never stdout (where --json prints)."""
    from stemcal.callbacks.run_collector import ResultStatus
    st = ResultStatus(obj="abcdef0123", name="calibration of run abcdef01")
    err = io.StringIO()
    manager = progress_bars(file=err)
    manager({st})
    st.report_progress("refinement", 0.5)
    st.set_result(1)
    manager(None)
    assert manager.pbar is None
    assert "calibration of run abcdef01: refinement" in err.getvalue()
    assert re.search(r"\b50 %", err.getvalue()), err.getvalue()


def test_calibrate_can_be_summarized(tmp_path, capsys):
    """bluesky's summarize_plan feeds no responses: the plan shows its first acquisition."""
    clock = ManualClock()
    inst = make_sim_instrument(tmp_path, truth=TRUTH, sig_shape=(SIG, SIG), specimen=SPECIMEN,
                               clock=clock.time, sleep=clock.sleep)
    recorder = CalibrationRecorder(None, live=False)
    for live in (False, True):
        summarize_plan(calibrate(inst.detector, inst.scan, inst.optics, callback=recorder,
                                 live=live))
        text = capsys.readouterr().out
        assert text.count("Open Run") == 1 and text.count("Close Run") == 1, text
        assert "Read ['merlin', 'scan', 'optics']" in text or "Read ['scan', 'optics']" in text, \
            text


def test_acquisition_progress_reaches_watchers_ten_times_a_second_and_always_its_end():
    """A detector sets its progress at every tile; a bar hears of a changed target at once,
    of the count at most every 0.1 s, and of the last frame always."""
    from ophyd.sim import SynAxis

    from stemcal.devices.status import AcquisitionStatus

    heard = []
    st = AcquisitionStatus(SynAxis(name="det"))
    st.set_progress(0, target=1000)  # no watcher yet: nothing computed, nothing lost
    st.watch(lambda **kw: heard.append((kw["current"], kw["target"])))
    assert heard == [(0, 1000)]       # a new watcher hears where it stands
    for k in range(8, 1000, 8):
        st.set_progress(k)            # within 0.1 s: held back
    assert heard == [(0, 1000)]
    st.set_progress(1000)             # the end: heard at once
    assert heard[-1] == (1000, 1000)
    st.set_progress(1000, target=2000)
    assert heard[-1] == (1000, 2000)  # a changed target: at once
    time.sleep(0.11)
    st.set_progress(1500)
    assert heard[-1] == (1500, 2000)  # a tenth of a second later: heard
    n = len(heard)
    st.set_finished()
    st.wait(5)
    assert len(heard) == n + 1        # and the status's end
