"""A data file truncated under the mapped readers: one line and exit status 2, not "Bus error"."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stemcal.cli.bus_error import MESSAGE

#: Open the file as the CLI does and read it with a UDF that truncates the file at its
#: first tile, after LiberTEM has mapped it: the next tile's pages are gone. The reader
#: beside it: LiberTEM's SumUDF (main thread, GIL held) or the OverfocusUDF (the pass
#: kernel's threads, GIL released).
SCRIPT = """
import os, sys
from libertem.api import Context
from libertem.udf.base import UDF
from libertem.udf.sum import SumUDF
from stemcal.cli.bus_error import install
from stemcal.formats import open_dataset

class Truncate(UDF):
    def get_result_buffers(self):
        return {"n": self.buffer(kind="single", dtype="int64")}
    def process_tile(self, tile):
        if not self.results.n[0]:
            os.truncate(self.params.path, 4096)
        self.results.n[0] += 1
    def merge(self, dest, src):
        dest.n[:] += src.n

install() if sys.argv[2] == "installed" else None
path = sys.argv[1]
ctx = Context.make_with("inline")
ds = open_dataset(ctx, path)
if sys.argv[3] == "sum":
    reader = SumUDF()
else:
    from stemcal.processing import OverfocusUDF
    from stemcal.twin import OverfocusParams
    reader = OverfocusUDF(OverfocusParams(
        overfocus=1e-6, scan_pixel_size=0.5e-9, camera_length=0.2, detector_pixel_size=55e-6,
        semiconv=0.3 * 64 * 55e-6 / 0.2, cy=32, cx=32, scan_rotation=10.0, flip_y=False))
ctx.run_udf(ds, [Truncate(path=path), reader])
print("read a truncated file without a fault")
"""


def _run(tmp_path, how: str, reader: str) -> subprocess.CompletedProcess:
    path = tmp_path / "scan.npy"
    np.save(path, np.ones((64, 64, 64, 64), dtype=np.uint16))
    return subprocess.run([sys.executable, "-c", SCRIPT, str(path), how, reader],
                          capture_output=True, timeout=300)


@pytest.mark.parametrize("reader", ["sum", "overfocus"])
def test_truncated_mapped_file_is_one_line(tmp_path, reader):
    out = _run(tmp_path, "installed", reader)
    assert out.returncode == 2, out.stderr.decode()[-2000:]
    assert out.stderr == MESSAGE, out.stderr.decode()[-2000:]
    assert out.stdout == b""


def test_without_the_handler_it_is_a_bus_error(tmp_path):
    """The case is real: without the handler the same read dies of SIGBUS."""
    out = _run(tmp_path, "none", "sum")
    assert out.returncode == -7, (out.returncode, out.stderr.decode()[-2000:])  # SIGBUS


def test_the_reading_commands_install_it(tmp_path, monkeypatch):
    """fit and demo set the handler before they read (in process: run_fit replaced)."""
    from stemcal.cli import bus_error, main, offline

    calls = []
    monkeypatch.setattr(bus_error, "install", lambda: calls.append("installed") or True)
    monkeypatch.setattr(offline, "run_fit", lambda args: calls.append("fit") or {})
    monkeypatch.setattr(offline, "print_fit", lambda res: None)
    path = tmp_path / "x.npy"
    np.save(path, np.ones((4, 4, 8, 8)))
    assert main(["fit", str(path), "--scan-pixel-size", "1e-9", "--camera-length", "0.2",
                 "--detector-pixel-size", "55e-6", "--overfocus", "1e-6"]) == 0
    assert calls == ["installed", "fit"]


def test_calibrate_installs_it_before_it_scans(monkeypatch):
    """calibrate's live view maps the scan's file: the handler is set before the scan."""
    from stemcal.cli import acquire, bus_error, main
    from stemcal.cli.args import CLIError

    calls = []

    def scan(args):
        calls.append("calibrate")
        raise CLIError("no scan in this test")

    monkeypatch.setattr(bus_error, "install", lambda: calls.append("installed") or True)
    monkeypatch.setattr(acquire, "run_calibrate", scan)
    assert main(["calibrate"]) == 2
    assert calls == ["installed", "calibrate"]
