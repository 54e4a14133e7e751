"""The IPython profile starts, wires the session and calibrates the simulated microscope."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "profile_stemcal"

SCRIPT = r"""
import json
rec = RE(calibrate_here()).plan_result
truth = microscope.geometry(scan.state(), optics.state())
hist = calibration_history(catalog)
starts = []  # every run carries the calibration in force (startup/30-attach.py)
keep = lambda name, doc: starts.append(doc) if name == "start" else None
RE(bp.count([optics]), keep)
optics.overfocus.set(optics.overfocus.get() + 1e-7).wait(timeout=5)
RE(bp.count([optics]), keep)
print("RESULT " + json.dumps({
    "attached": [starts[0]["calibration"]["uid"], starts[0]["calibration"]["scan_rotation"]]
                == [rec.uid, rec.scan_rotation],
    "after_change": [starts[1]["calibration"], starts[1]["calibration_status"]["status"],
                     starts[1]["calibration_status"]["changed"]],
    "rotation_error": (rec.scan_rotation - truth.scan_rotation + 180) % 360 - 180,
    "overfocus_error": rec.overfocus / truth.overfocus - 1,
    "flip_right": rec.flip_y == truth.flip_y, "valid": rec.valid,
    "in_catalog": [r.uid for r in hist] == [rec.uid],
    "names": sorted(n for n in ("RE", "catalog", "scan", "optics", "merlin", "bp", "bps",
                                "calibrate", "verify_calibration", "recalibrate_if_stale",
                                "overfocus_scan") if n in globals()),
    "app": app_check()}))
"""

# startup/40-app.py: the app on the session's catalog and recorder, served from a thread
APP_CHECK = r"""
import urllib.request
def app_check():
    server = serve_app()
    page = urllib.request.urlopen(server.url, timeout=30).read().decode()
    server.stop()
    return {"url": server.url, "bokeh": "Bokeh" in page,
            "wired": stemcal_app.recorder is recorder and stemcal_app.catalog() is catalog}
"""


def test_profile_starts_and_calibrates(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[catalog]\nlocation = "{tmp_path / "catalog"}"\n'
        '[simulation]\ntrue_scan_rotation = -41.0\ntrue_flip_y = false\n')
    env = dict(os.environ, STEMCAL_CONFIG=str(config), MPLBACKEND="Agg",
               IPYTHONDIR=str(tmp_path / "ipython"))
    proc = subprocess.run([sys.executable, "-m", "IPython", "--profile-dir", str(PROFILE),
                           "--no-banner", "--HistoryManager.enabled=False", "-c",
                           APP_CHECK + SCRIPT],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(line[0][len("RESULT "):])
    assert res["flip_right"] and res["valid"] and res["in_catalog"]
    assert res["app"]["url"].startswith("http://127.0.0.1:") and res["app"]["bokeh"]
    assert res["app"]["wired"] and f"stemcal app: {res['app']['url']}" in proc.stdout
    assert abs(res["rotation_error"]) <= 0.1
    assert abs(res["overfocus_error"]) <= 0.005
    assert len(res["names"]) == 11
    assert res["attached"]
    assert res["after_change"] == [None, "stale", ["overfocus_setting"]]


def test_bad_config_is_refused(tmp_path):
    from stemcal.config import load_config
    bad = tmp_path / "bad.toml"
    bad.write_text("[detectors]\nbackend = 'nonsense'\n")
    import pytest
    with pytest.raises(ValueError, match="unknown section"):
        load_config(bad)
    with pytest.raises(ValueError, match="no configuration file"):
        load_config(tmp_path / "missing.toml")


RECONNECT_SCRIPT = r"""
import json, os
kept = RE(calibrate_here()).plan_result        # the catalog is damaged: kept
os.rename(BROKEN, BROKEN + ".damaged")          # an admin puts the catalog back
os.rename(GOOD, BROKEN)
back = session.reconnect()
live = RE(calibrate_here()).plan_result         # written to it
session.reconnector.wait(60)
print("RESULT " + json.dumps({
    "back": back, "uids": sorted(r.uid for r in calibration_history(catalog)),
    "kept": kept.uid, "live": live.uid, "data_dir": str(session.data_dir)}))
"""


def test_profile_started_without_its_catalog_says_so_and_writes_to_it_once_back(tmp_path):
    """The profile's session started while its catalog could not be opened (a damaged
    catalog.db): one line says so and what happens; once the catalog is back, the session
    switches to it, and both calibrations (the kept one and the new one) are in it."""
    from stemcal.catalog import open_catalog

    broken, good = tmp_path / "catalog", tmp_path / "restored"
    broken.mkdir()
    (broken / "catalog.db").write_bytes(b"not a database")
    open_catalog(good)
    config = tmp_path / "config.toml"
    config.write_text(f'[catalog]\nlocation = "{broken}"\n'
                      '[simulation]\nnav_shape = [16, 16]\nsig_shape = [64, 64]\ndose = 50.0\n')
    env = dict(os.environ, STEMCAL_CONFIG=str(config), MPLBACKEND="Agg",
               IPYTHONDIR=str(tmp_path / "ipython"), XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("STEMCAL_SPOOL", None)
    script = f"BROKEN, GOOD = {str(broken)!r}, {str(good)!r}\n" + RECONNECT_SCRIPT
    proc = subprocess.run([sys.executable, "-m", "IPython", "--profile-dir", str(PROFILE),
                           "--no-banner", "--HistoryManager.enabled=False", "-c", script],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"stemcal: catalog {broken} unavailable (" in proc.stdout, proc.stdout[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(line[0][len("RESULT "):])
    assert res["back"] and res["uids"] == sorted([res["kept"], res["live"]])
    assert res["data_dir"] == str(broken / "raw")
