"""Helpers of the spare tests (tests/catalog/test_spare.py, tests/cli/test_command_spare.py):
the living spare processes of a ``$TMPDIR``, whether a pid lives, waiting for a condition,
killing the spares at a test's end."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path


def living_spares(base: Path) -> dict[int, str]:
    """pid -> key of the living spares of either kind (claimed or not) whose ``$TMPDIR`` is
    ``base``."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"--spare" not in argv:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if f"TMPDIR={base}".encode() in env and state != b"Z":
            out[int(proc.name)] = argv[argv.index(b"--spare") + 1].decode()
    return out


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def wait_for(predicate, timeout: float = 90.0, what: str = "it") -> None:
    """Poll ``predicate`` every 50 ms until it holds; AssertionError after ``timeout`` s."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.05)


def remove_spares(base: Path) -> None:
    """Kill every spare of ``$TMPDIR`` ``base`` and remove the directory."""
    for pid in living_spares(base):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(base, ignore_errors=True)
