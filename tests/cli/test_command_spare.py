"""Spare command processes: ``stemcal fit`` and ``stemcal calibrate`` run in a process whose
imports are done, left by the command before (stemcal/cli/spare.py).

Real processes throughout: the console script's client, the spare it claims (``python -m
stemcal.cli.spare_process``), real signals. Each test has a short private ``$TMPDIR``
(Unix socket paths are short) with command spares on; every spare of it is killed at the
end. Whether a command ran in the spare is seen from outside: a claimed spare exits when
its command is done and the command leaves a new one (another pid); a spare that was not
claimed stays (one per key).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stemcal.cli.spare import COMMAND, EXIT_LOST, wants_spare
from stemcal.spares import spare_pid, spare_waiting

from spare_procs import alive as _alive  # tests/spare_procs.py
from spare_procs import living_spares as _procs, remove_spares, wait_for as _wait

NAV, SIG = (32, 32), (64, 64)
CAMERA_LENGTH, DETECTOR_PIXEL = 0.2, 55e-6
SCAN_PIXEL = 0.5e-9 * SIG[0] / 128
FIT = ["--scan-pixel-size", repr(SCAN_PIXEL), "--camera-length", repr(CAMERA_LENGTH),
       "--detector-pixel-size", repr(DETECTOR_PIXEL), "--overfocus", "1.2e-6", "--json",
       "--no-progress"]
TIMEOUT = 120


@pytest.fixture
def env(tmp_path):
    """The commands' environment: command spares on (120 s), couriers' off, in a short
    private $TMPDIR whose spares are all killed at the end."""
    base = Path(tempfile.mkdtemp(prefix="cs", dir="/tmp"))
    e = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    e.update(TMPDIR=str(base), STEMCAL_COMMAND_SPARE="120", STEMCAL_COURIER_SPARE="0",
             STEMCAL_CATALOG=str(tmp_path / "catalog"), MPLBACKEND="Agg")
    yield e
    remove_spares(base)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A 32x32 scan of 64x64 frames, 5 counts/px."""
    from stemcal.formats import write_npy
    from stemcal.twin import OverfocusParams, simulate

    params = OverfocusParams(overfocus=1e-6, scan_pixel_size=SCAN_PIXEL,
                             camera_length=CAMERA_LENGTH, detector_pixel_size=DETECTOR_PIXEL,
                             semiconv=0.3 * SIG[0] * DETECTOR_PIXEL / CAMERA_LENGTH,
                             cy=SIG[0] / 2 + 2.0, cx=SIG[1] / 2 - 1.5, scan_rotation=23.5,
                             flip_y=True)
    path = tmp_path_factory.mktemp("spare_data") / "scan.npy"
    write_npy(path, simulate(params, NAV, SIG, dose=5.0, dtype="uint16"))
    return path


def _stemcal(*args, env: dict, cwd=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stemcal.cli", *map(str, args)], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def _run(*args, env: dict, cwd=None) -> subprocess.CompletedProcess:
    proc = _stemcal(*args, env=env, cwd=cwd)
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _waiting_spare(env: dict) -> int:
    """The pid of this environment's spare command process, once it listens."""
    _wait(lambda: spare_waiting(COMMAND, env), what="a spare command process to listen")
    pid = spare_pid(COMMAND, env)
    assert pid and _alive(pid)
    return pid


def _fit_in_the_spare(env: dict, data: Path) -> tuple[subprocess.Popen, int]:
    """A fit (which leaves a spare), then another that has claimed that spare and runs
    there: (the second's client, the spare's pid)."""
    _run("fit", data, *FIT, env=env)
    spare = _waiting_spare(env)
    proc = _stemcal("fit", data, *FIT, env=env)
    _wait(lambda: _claimed(env, spare), 20, "the spare to be claimed")
    return proc, spare


def _claimed(env: dict, pid: int) -> bool:
    """Whether spare ``pid``, which was waiting, has been claimed (it listens no more and
    lives)."""
    return not spare_waiting(COMMAND, env) and _alive(pid)


def test_which_commands_a_spare_runs():
    assert wants_spare(["calibrate", "--json"]) and wants_spare(["-v", "fit", "x.npy"])
    assert wants_spare(["fit", "--help"])   # answered by the spare, as fast
    assert not wants_spare(["history"]) and not wants_spare(["--version"])
    assert not wants_spare(["--help"]) and not wants_spare([])


def test_a_fit_runs_in_the_spare_the_command_before_left(env, data, tmp_path):
    first = _run("fit", data, *FIT, env=env)
    assert first.returncode == 0, first.stderr
    spare = _waiting_spare(env)
    # the next fit: another directory (a relative path to the data and the report), umask
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(data, work / "here.npy")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.umask(0o027); "
         "from stemcal.cli import run; sys.argv[0] = 'stemcal'; run()",
         "fit", "here.npy", *FIT, "--report", "fit.png"],
        env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    a, b = json.loads(first.stdout), json.loads(out)
    assert a["scan_rotation"] == pytest.approx(b["scan_rotation"], abs=1e-9)
    assert a["overfocus"] == pytest.approx(b["overfocus"], rel=1e-9)
    assert b["dataset"] == "here.npy"   # found from the client's directory
    report = work / "fit.png"
    assert report.stat().st_size > 0 and report.stat().st_mode & 0o777 == 0o640   # its umask
    # the spare ran it: it has gone, and the command left a new one
    _wait(lambda: not _alive(spare), 10, "the claimed spare to exit")
    assert _waiting_spare(env) != spare


def test_statuses_and_errors_come_back_from_the_spare(env, data):
    _run("fit", data, *FIT, env=env)
    cases = [(("fit", Path(data).with_name("missing.npy"), *FIT), 2, "", "stemcal: error:"),
             (("fit",), 2, "", "the following arguments are required"),
             (("fit", "--help"), 0, "usage: stemcal fit", "")]
    for args, status, out, err in cases:
        spare = _waiting_spare(env)
        got = _run(*args, env=env)
        assert got.returncode == status, (args, got.stderr)
        assert out in got.stdout and err in got.stderr, (args, got.stdout, got.stderr)
        assert "Traceback" not in got.stderr
        _wait(lambda: not _alive(spare), 10, "the claimed spare to exit")


def test_ctrl_c_reaches_the_command_in_the_spare(env, data):
    proc, spare = _fit_in_the_spare(env, data)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert "stemcal: interrupted" in err and out == ""
    _wait(lambda: not _alive(spare), 10, "the interrupted spare to exit")


def test_kill_9_of_the_client_kills_the_command_in_the_spare(env, data):
    proc, spare = _fit_in_the_spare(env, data)
    proc.kill()
    proc.communicate(timeout=TIMEOUT)
    _wait(lambda: not _alive(spare), 5, "the spare to follow its client")
    # killed, not ended: a command that ends leaves the next spare, this one left none
    time.sleep(3.0)
    assert _procs(Path(env["TMPDIR"])) == {}


def test_a_spare_killed_under_its_command_is_reported(env, data):
    proc, spare = _fit_in_the_spare(env, data)
    os.kill(spare, signal.SIGKILL)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == EXIT_LOST
    assert f"the spare command process (pid {spare})" in err and "exit status" in err


def test_another_environment_is_not_served_and_its_spare_is_dismissed(env, data):
    _run("fit", data, *FIT, env=env)
    spare = _waiting_spare(env)
    other = {**env, "STEMCAL_TEST_SETTING": "other"}
    got = _run("fit", data, *FIT, env=other)
    assert got.returncode == 0, got.stderr
    mine = _waiting_spare(other)
    assert mine != spare
    _wait(lambda: not _alive(spare), 10, "the other key's spare to be dismissed")
    assert set(_procs(Path(env["TMPDIR"]))) == {mine}


def test_no_spare_where_they_are_off(env, data):
    env["STEMCAL_COMMAND_SPARE"] = "0"
    got = _run("fit", data, *FIT, env=env)
    assert got.returncode == 0, got.stderr
    time.sleep(1.0)
    assert _procs(Path(env["TMPDIR"])) == {}


def test_calibrate_in_a_spare_records_into_the_catalog(env):
    args = ("calibrate", "--json", "--no-progress")
    first = _run(*args, env=env)
    assert first.returncode == 0, first.stderr
    spare = _waiting_spare(env)
    second = _run(*args, env=env)
    assert second.returncode == 0, second.stderr
    _wait(lambda: not _alive(spare), 10, "the claimed spare to exit")
    history = _run("history", "--json", env=env)
    uids = [r["uid"] for r in json.loads(history.stdout)]
    assert {json.loads(first.stdout)["uid"], json.loads(second.stdout)["uid"]} <= set(uids)


def test_a_command_right_after_another_waits_for_the_spare_it_left(env, data):
    from stemcal.spares import spare_alive

    first = _run("fit", data, *FIT, env=env)
    assert first.returncode == 0, first.stderr
    # its lock was taken for it before the command ended: alive at once, still importing
    assert spare_alive(COMMAND, env) and not spare_waiting(COMMAND, env)
    second = _stemcal("fit", data, *FIT, env=env)   # claims it once it listens
    _wait(lambda: spare_pid(COMMAND, env) is not None, 10, "the spare to write its pid")
    spare = spare_pid(COMMAND, env)
    out, err = second.communicate(timeout=TIMEOUT)
    assert second.returncode == 0, err
    assert json.loads(out)["overfocus"] == json.loads(first.stdout)["overfocus"]
    _wait(lambda: not _alive(spare), 10, "the first one's spare to run the second and go")
    assert _waiting_spare(env) != spare


def test_two_commands_at_once_one_in_the_spare_one_by_itself(env, data):
    _run("fit", data, *FIT, env=env)
    spare = _waiting_spare(env)
    procs = [_stemcal("fit", data, *FIT, env=env) for _ in range(2)]
    results = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert json.loads(results[0][0])["overfocus"] == json.loads(results[1][0])["overfocus"]
    _wait(lambda: not _alive(spare), 10, "the claimed spare to exit")
    # one ran in the spare (gone), the other by itself; one spare is left for the next
    assert len(_procs(Path(env["TMPDIR"]))) == 1
