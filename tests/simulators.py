"""LiberTEM-live's Merlin simulator as a test peer on 127.0.0.1 (shared by the test files)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
MIB_SIM = shutil.which("libertem-live-mib-sim", path=str(Path(sys.executable).parent)) \
    or shutil.which("libertem-live-mib-sim")
#: The simulator wrapped so that it refuses a chosen command (tests/faults).
REFUSING_SIM = Path(__file__).parent / "faults" / "refusing_merlin_sim.py"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class MibSim:
    """A ``libertem-live-mib-sim`` subprocess serving one MIB file on 127.0.0.1.

    ``extra``: further simulator options (``--cached MEM``, ``--dwelltime US``).
    ``refuse``: run the refusing wrapper instead, refusing that command.
    ``ports``: (control, data, trigger), e.g. to restart on the same ports.
    """

    def __init__(self, hdr: Path, log: Path, *extra: str, refuse: str | None = None,
                 ports: tuple[int, int, int] | None = None) -> None:
        self.hdr, self.log, self.extra, self.refuse = hdr, log, extra, refuse
        self.control_port, self.data_port, self.trigger_port = ports or free_ports(3)
        self.start()

    def start(self) -> None:
        cmd = [MIB_SIM] if self.refuse is None else [sys.executable, str(REFUSING_SIM)]
        env = {**os.environ, "STEMCAL_SIM_REFUSE": self.refuse or ""}
        self.log.write_bytes(b"")
        self.proc = subprocess.Popen(
            [*cmd, str(self.hdr), "--host", HOST, "--control-port", str(self.control_port),
             "--data-port", str(self.data_port), "--trigger-port", str(self.trigger_port),
             "--wait-trigger", *self.extra],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while not self.has_logged("DataSocketServer listening", "ControlSocketServer listening"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"simulator did not start ({self.proc.returncode}):\n"
                                   f"{self.text()}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def has_logged(self, *needles: str) -> bool:
        text = self.text()
        return all(n in text for n in needles)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.proc.kill()
        self.proc.wait(10)
