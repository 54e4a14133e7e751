"""``stemcal`` commands for the app's tests, and ``stemcal app`` as a server process.

Each command runs in a fresh interpreter with this checkout first on the path,
as a user's shell would run it.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("STEMCAL_CATALOG", None)
    return env


def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``stemcal ARGS``; never raises on a non-zero exit status."""
    return subprocess.run([sys.executable, "-m", "stemcal.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env())


def run_json(*args):
    """``stemcal ARGS`` that must succeed and print one JSON value."""
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


class AppProcess:
    """``stemcal app ARGS`` serving on a free port; :attr:`url` once it listens."""

    def __init__(self, *args, start_timeout: float = 180) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stemcal.cli", "app", *map(str, args), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
        self._lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self._lines.put),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self._keep_stderr),
                         daemon=True).start()
        try:
            line = self._lines.get(timeout=start_timeout)
        except queue.Empty:
            self.stop()
            raise TimeoutError(f"stemcal app did not start: {''.join(self.stderr)[-3000:]}")
        if line is None:
            raise RuntimeError(f"stemcal app ended: {''.join(self.stderr)[-3000:]}")
        self.first_line = line.strip()
        self.url = self.first_line.split("serving ")[1].split()[0]

    def _keep_stderr(self, line: str | None) -> None:
        if line is not None:
            self.stderr.append(line)

    @staticmethod
    def _read(stream, put) -> None:
        for line in stream:
            put(line)
        put(None)

    def stop(self) -> int:
        """Ctrl-C (SIGINT), as in a terminal; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
