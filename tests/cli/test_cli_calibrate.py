"""``stemcal calibrate``, ``history`` and ``show`` as real subprocesses.

``calibrate`` runs the calibrate plan on the simulated microscope (40x40 scan,
96x96 detector, 5 counts/px) into an embedded catalog; the other commands
read it back. Independent commands run two at a time (2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300
SUMMARY = {"uid", "acquisition_uid", "time", "scan_rotation", "flip_y", "overfocus", "cy", "cx",
           "quality", "valid"}


def stemcal(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    env.pop("STEMCAL_CATALOG", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "stemcal.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO, env=env)


def many(jobs: dict[str, tuple]) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(stemcal, *args[0], env_extra=args[1]) for k, args in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def one_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one JSON value, nothing else on stdout
    return json.loads(lines[0])


def near(rec: dict, rotation: float, flip_y: bool, overfocus: float) -> None:
    drot = (rec["scan_rotation"] - rotation + 180) % 360 - 180
    assert abs(drot) <= 0.1, f"rotation off by {drot:.3f} deg"
    assert rec["flip_y"] is flip_y
    assert abs(rec["overfocus"] / overfocus - 1) <= 0.005
    assert rec["quality"] == "ok" and rec["valid"] is True


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cats = {"default": d / "default", "other": d / "other"}
    res = many({
        # triggered scans here; live scans (the default) in "other"
        "default": (["calibrate", "--catalog", cats["default"], "--json", "--no-live"], None),
        "other": (["calibrate", "--json", "--true-scan-rotation", "-61", "--no-true-flip-y",
                   "--true-overfocus", "0.95e-6", "--figures", d / "figures"],
                  {"STEMCAL_CATALOG": str(cats["other"])}),
    })
    return cats, {k: one_json(p) for k, p in res.items()}, d


def test_calibrate_prints_one_record_near_truth(calibrated):
    cats, recs, d = calibrated
    assert set(recs["default"]) == SUMMARY | {"spooled"}
    assert recs["default"]["spooled"] is False  # the catalog took it
    near(recs["default"], 23.5, True, 1.05e-6)  # the simulator's defaults
    near(recs["other"], -61.0, False, 0.95e-6)
    assert (cats["other"] / "catalog.db").is_file()  # $STEMCAL_CATALOG was used
    assert list((d / "figures").glob("calibration_*.png"))
    assert list((d / "figures").glob("live_*.png"))  # the live view of the live scan


def test_history_and_show_read_the_records_back(calibrated):
    cats, recs, _ = calibrated
    rec = recs["default"]
    res = many({
        "history": (["history", "--catalog", cats["default"], "--json"], None),
        "show": (["show", rec["uid"], "--catalog", cats["default"]], None),
        "show_json": (["show", rec["uid"][:8], "--json"], {"STEMCAL_CATALOG": str(cats["default"])}),
        "history_text": (["history"], {"STEMCAL_CATALOG": str(cats["other"])}),
        "unknown": (["show", "0123abcd", "--catalog", cats["default"]], None),
        "missing": (["history", "--catalog", cats["default"] / "nope"], None),
    })
    assert one_json(res["history"]) == [{**{k: v for k, v in rec.items() if k != "spooled"},
                                         "state": "complete"}]
    text = res["show"]
    assert text.returncode == 0, text.stderr
    for needle in (rec["uid"], rec["acquisition_uid"], "versions", "stemcal", "libertem",
                   "fit settings", "cold_start", "optics state", "overfocus_setting=1e-06",
                   "quality        ok"):
        assert needle in text.stdout, needle
    full = one_json(res["show_json"])
    assert full["uid"] == rec["uid"] and full["scan_rotation"] == rec["scan_rotation"]
    assert full["optics_state"]["camera_length"] == 0.2
    assert full["fit_settings"]["data"]["nav_shape"] == [40, 40]
    hist = res["history_text"]
    assert hist.returncode == 0 and recs["other"]["uid"][:8] in hist.stdout
    for key in ("unknown", "missing"):
        p = res[key]
        assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert res["unknown"].stderr.startswith("stemcal: error: no calibration record")
    assert res["missing"].stderr.startswith("stemcal: error: no catalog at")



def test_calibrate_on_a_terminal_speaks_at_once_then_shows_bars(tmp_path):
    """stderr a terminal (a pty): a first line before the session is built, then tqdm bars
    of the scan and of the fit; stdout (a pipe) holds only the JSON."""
    import pty
    import select
    import time

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("STEMCAL_CATALOG", None)
    main_fd, tty_fd = pty.openpty()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "stemcal.cli", "calibrate", "--json",
                             "--catalog", str(tmp_path / "cat"), "--nav-shape", "16", "16",
                             "--sig-shape", "64", "64", "--dose", "50", "--max-attempts", "1"],
                            stdout=subprocess.PIPE, stderr=tty_fd, text=True, cwd=REPO, env=env)
    os.close(tty_fd)
    seen, first_at = b"", None
    try:
        while True:
            ready, _, _ = select.select([main_fd], [], [], TIMEOUT)
            if not ready:
                break
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            if first_at is None:
                first_at = time.monotonic() - t0
            seen += chunk
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(main_fd)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert text.startswith("stemcal: opening the catalog "), text[:500]
    assert "calibration of run" in text and "%" in text, text[-3000:]  # the fit's bar
    assert "Traceback" not in text
    rec = json.loads(out.strip())
    assert rec["valid"] is True
    # The first line comes before the session (catalog, devices) is built: well before the end.
    assert first_at is not None and first_at < 0.5 * (time.monotonic() - t0)


@pytest.mark.parametrize("spares", ["0", "1"])
def test_ctrl_c_during_the_scan_ends_the_command_cleanly(tmp_path, spares):
    """Ctrl-C (SIGINT) once the scan runs: the run is aborted and the command ends with
    one line, ``stemcal: interrupted``, status 130, nothing on stdout; with bluesky's own
    handling it paused at the next checkpoint and ended in 'RunEngineInterrupted ...
    RE.resume() ... RE.abort()' (status 2), or let the calibration finish (status 0), and
    wrote its words into --json's stdout. With spares on, the caller hands the signal on."""
    import signal
    import time

    state = tmp_path / "state"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    env.update(STEMCAL_CATALOG=str(tmp_path / "cat"), XDG_STATE_HOME=str(state),
               XDG_CONFIG_HOME=str(tmp_path / "config"), STEMCAL_COMMAND_SPARE=spares,
               STEMCAL_COURIER_SPARE=spares)
    argv = [sys.executable, "-m", "stemcal.cli", "calibrate", "--json", "--no-progress"]
    if spares == "1":   # a first command leaves the spares the second one is handed to
        subprocess.run(argv, capture_output=True, timeout=TIMEOUT, cwd=REPO, env=env)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)
    journals = state / "stemcal" / "spool" / "runs"
    end = time.monotonic() + 120
    before = set(journals.glob("*.jsonl")) if journals.is_dir() else set()
    while time.monotonic() < end and proc.poll() is None:
        if journals.is_dir() and set(journals.glob("*.jsonl")) - before:
            break   # a run has started: its journal is kept until the catalog has it
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (130, "", "stemcal: interrupted\n")


def test_detector_write_failure_ends_in_one_line(tmp_path):
    """The detector's file cannot be written (a file-size limit, as a full disk would):
    one line naming the failure, no 'Run aborted' and traceback from bluesky's logger
    (there were 80 lines of them), status 2; any run the catalog did not take is named
    with `stemcal sync`."""
    import resource

    def small_files() -> None:   # 300 kB: the catalog's files fit, the scan's frames do not
        resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, resource.RLIM_INFINITY))

    state = tmp_path / "state"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    env.update(STEMCAL_CATALOG=str(tmp_path / "cat"), XDG_STATE_HOME=str(state),
               XDG_CONFIG_HOME=str(tmp_path / "config"), STEMCAL_COMMAND_SPARE="0",
               STEMCAL_COURIER_SPARE="0")
    proc = subprocess.run([sys.executable, "-m", "stemcal.cli", "calibrate", "--json",
                           "--no-progress", "--nav-shape", "24", "24", "--sig-shape", "64", "64"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO, env=env,
                          preexec_fn=small_files)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    line, = proc.stderr.splitlines()
    assert line.startswith("stemcal: error: AcquisitionFailed: merlin: acquisition failed"), line
    assert line.endswith("(run with -vv for the traceback)"), line
    kept = sorted((state / "stemcal" / "spool" / "runs").glob("*.jsonl"))
    assert all(str(p) in line for p in kept) and ("stemcal sync" in line) == bool(kept), line
