"""Shared by the catalog tests: a real ``stemcal serve`` process, keys, and the CLI as a subprocess.

:class:`Server` starts the catalog server (:mod:`stemcal.catalog.server`) on
127.0.0.1 with a free port and stops it (SIGTERM to its process group,
SIGKILL after 10 s) whatever happens. Start-up waits poll the port with a
bounded timeout.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

from stemcal.catalog import server as srv

REPO = Path(__file__).resolve().parents[2]
RETRY_ENV = {"TILED_RETRY_ATTEMPTS": "1", "TILED_RETRY_TIMEOUT": "2"}  # fail fast when down


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_keys(reader: bool = True, admin: bool = True) -> srv.ServerKeys:
    return srv.ServerKeys(secrets.token_hex(32), secrets.token_hex(32) if reader else None,
                          secrets.token_hex(32) if admin else None)


class Server:
    """One catalog served by ``stemcal serve``; start/stop as often as needed."""

    def __init__(self, catalog: Path, keys: srv.ServerKeys, log: Path, **storage):
        self.catalog, self.keys, self.log, self.storage = catalog, keys, log, storage
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.uri = f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float = 120) -> None:
        plan = srv.prepare_server(self.catalog, self.keys, port=self.port, **self.storage)
        assert plan.uri == self.uri and plan.host == "127.0.0.1"
        with open(self.log, "ab") as out:
            self.proc = srv.start_server(plan, stdout=out, stderr=subprocess.STDOUT)
        srv.wait_until_up("127.0.0.1", self.port, timeout=timeout, proc=self.proc)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def cli_env(key: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``stemcal`` subprocess: this repository, fast retries, ``key``."""
    env = {**os.environ, **RETRY_ENV, "PYTHONPATH": str(REPO)}
    for name in ("TILED_API_KEY", "STEMCAL_CATALOG", "PYTHONWARNINGS"):
        env.pop(name, None)
    if key is not None:
        env["TILED_API_KEY"] = key
    env.update(extra)
    return env


def stemcal(*args, key: str | None = None, timeout: float = 300,
            **extra: str) -> subprocess.CompletedProcess:
    """Run ``python -m stemcal.cli ARGS`` and wait for it."""
    return subprocess.run([sys.executable, "-m", "stemcal.cli", *map(str, args)],
                          env=cli_env(key, **extra), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def stemcal_popen(*args, key: str | None = None, **extra: str) -> subprocess.Popen:
    """Start ``python -m stemcal.cli ARGS`` (stdout and stderr piped, text)."""
    return subprocess.Popen([sys.executable, "-m", "stemcal.cli", *map(str, args)],
                            env=cli_env(key, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def drop_dac_override() -> None:
    """In a forked child: root loses the capabilities that ignore file modes (a read-only
    catalog then binds it too)."""
    if os.getuid() != 0:
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; gone from the bounding set,
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # so exec() gives a root without them
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


#: A small calibration that still gives a trusted record (16x16 scan, 64x64 detector, one
#: try). At the simulator's default 5 counts/px a 16x16 scan is at the edge of what the fit
#: trusts (over seeds 0-9: 3 or 4 of 10 "ok", the others flagged uncertain, which of them
#: depending on the final stage's sampling; 2 of 10 since the rim rule of the final stage);
#: at 50 counts/px 9 of 10 (seed 6 says its disk's parts disagree). These tests are about
#: the catalog, so they take a trusted case (seed 0 at 50 counts/px).
SMALL = ("--nav-shape", 16, 16, "--sig-shape", 64, 64, "--dose", 50, "--max-attempts", 1)
