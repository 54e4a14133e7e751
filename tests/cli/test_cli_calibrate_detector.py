"""``stemcal calibrate`` on the configured detector: LiberTEM-live's Merlin simulator.

The configuration's ``[detector]`` table (``backend = "hardware"``) points the
command at ``libertem-live-mib-sim`` on 127.0.0.1, which serves a MIB file
simulated here with a geometry unlike the digital twin's (35 deg, not
flipped, 1.02 um against the twin's 23.5 deg, flipped, 1.05 um). The record
must find the served geometry, so the frames came from the configured
detector. The twin's truth options are then refused.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stemcal.cli import main
from stemcal.formats import write_mib
from stemcal.twin import OverfocusParams, simulate

from peers import MIB_SIM, MibSim  # tests/peers.py

REPO = Path(__file__).resolve().parents[2]
NAV, SIG = (40, 40), (96, 96)  # calibrate's default --nav-shape; [detector] sig_shape
SCAN_PIXEL = 0.5e-9 * 96 / 128  # the twin's scan generator (its default 96 px detector)
SERVED = OverfocusParams(overfocus=1.02e-6, scan_pixel_size=SCAN_PIXEL, camera_length=0.2,
                         detector_pixel_size=55e-6, semiconv=0.3 * SIG[0] * 55e-6 / 0.2,
                         cy=SIG[0] / 2 + 1.7, cx=SIG[1] / 2 - 2.2, scan_rotation=35.0,
                         flip_y=False)

pytestmark = pytest.mark.skipif(MIB_SIM is None, reason="libertem-live-mib-sim not installed")


@pytest.fixture(scope="module")
def merlin(tmp_path_factory):
    d = tmp_path_factory.mktemp("merlin")
    data = simulate(SERVED, NAV, SIG, dose=5.0, seed=4, dtype="uint16")
    hdr = write_mib(d / "served.mib", data)
    server = MibSim(hdr, d / "sim.log", "--cached", "MEM")
    config = d / "config.toml"
    config.write_text(f'[detector]\nkind = "merlin"\nbackend = "hardware"\n'
                      f'api_port = {server.control_port}\ndata_port = {server.data_port}\n'
                      f'sig_shape = [{SIG[0]}, {SIG[1]}]\ntimeout = 10.0\n'
                      f'[paths]\ndata_dir = "{d / "frames"}"\n')
    yield d, config
    server.stop()


def test_calibrate_drives_the_configured_detector(merlin):
    d, config = merlin
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["STEMCAL_CONFIG"] = str(config)
    env.pop("STEMCAL_CATALOG", None)
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-m", "stemcal.cli", "calibrate", "--catalog",
                           str(d / "catalog"), "--json", "--max-attempts", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rec = json.loads(proc.stdout)
    drot = (rec["scan_rotation"] - SERVED.scan_rotation + 180) % 360 - 180
    assert abs(drot) <= 0.1, rec
    assert rec["flip_y"] is False
    assert abs(rec["overfocus"] / SERVED.overfocus - 1) <= 0.005, rec
    assert abs(rec["cy"] - SERVED.cy) <= 0.5 and abs(rec["cx"] - SERVED.cx) <= 0.5, rec
    # the detector wrote where the configuration's [paths] data_dir says
    assert len(list((d / "frames").glob("*.h5"))) == 1


@pytest.mark.parametrize("argv, named", [
    (["--true-overfocus", "1e-6"], "--true-overfocus"),
    (["--no-true-flip-y", "--dose", "3"], "--true-flip-y/--no-true-flip-y, --dose"),
    (["--sig-shape", "64", "64", "--seed", "1"], "--sig-shape, --seed"),
    (["--true-scan-rotation=-1e1"], "--true-scan-rotation")])
def test_the_twins_options_are_refused_for_a_hardware_detector(merlin, monkeypatch, argv, named):
    d, config = merlin
    monkeypatch.setenv("STEMCAL_CONFIG", str(config))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        status = main(["calibrate", "--catalog", str(d / "refused"), *argv])
    assert status == 2 and out.getvalue() == ""
    line = err.getvalue()
    assert len(line.splitlines()) == 1, line
    assert line.startswith(f"stemcal: error: {named}: the configured detector is a hardware "
                           "detector"), line
    assert not (d / "refused").exists()  # refused before the session
